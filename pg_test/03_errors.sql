-- Errors are part of the API (SPEC §7): each refusal has its SQLSTATE, and a refused call
-- writes nothing. Calls are made as PostgREST makes them: role authenticated, JWT claims set.
\ir fixtures/begin.sql
SELECT plan(173);

-- Everything session_ext stores, as one value: equal before and after means nothing was written.
CREATE FUNCTION pg_temp.rows() RETURNS text LANGUAGE sql SECURITY DEFINER AS $$
    SELECT pg_catalog.md5(
        coalesce((SELECT string_agg(s::text, ',' ORDER BY s.id) FROM session_ext.user_sessions s), '') ||
        coalesce((SELECT string_agg(a::text, ',' ORDER BY a.id) FROM session_ext.session_audit_log a), ''))
$$;

-- throws_ok, plus the proof that the table did not change.
CREATE FUNCTION pg_temp.refused(call text, errcode text, message text, description text)
RETURNS SETOF text LANGUAGE plpgsql AS $f$
DECLARE
    before text := pg_temp.rows();
BEGIN
    RETURN NEXT throws_ok(call, errcode, message, description);
    RETURN NEXT is(pg_temp.rows(), before, description || ': nothing written');
END
$f$;

-- SQLSTATE, message, detail and hint of the error a call raises.
CREATE FUNCTION pg_temp.error_of(call text) RETURNS text[] LANGUAGE plpgsql AS $f$
DECLARE
    state text; message text; detail text; hint text;
BEGIN
    EXECUTE call;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RETURN ARRAY[state, message, detail, hint];
END
$f$;

-- Sessions to collide with and to act on: Alice's, and Bob's (with his token kept).
\o /dev/null
SELECT session_ext.create_user_session(user_id => :alice, session_id => 'taken');
SELECT id AS bob_id, token AS bob_token FROM session_ext.create_user_session(user_id => :bob, session_data => '{}') \gset
SELECT id AS alice_id FROM session_ext.create_user_session(user_id => :alice, session_data => '{"v": 1}') \gset
SET LOCAL session_ext.max_session_data_bytes = 100;
SET LOCAL ROLE authenticated;
SET LOCAL request.jwt.claims = :alice_claims;
SELECT session_ext.create_user_session('client-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa');
\o

-- 22023: bad arguments.
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(NULL::text)$$, '22023', 'invalid value for argument "session_token"', 'NULL token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session('')$$, '22023', NULL, 'empty token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(repeat('a', 31))$$, '22023', NULL, '31-character token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(repeat('a', 1025))$$, '22023', NULL, '1025-character token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session('Bearer ' || repeat('a', 40))$$, '22023', NULL, 'token with a space');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => NULL, session_data => '{}')$$, '22023', 'invalid value for argument "user_id"', 'NULL user_id');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => NULL)$$, '22023', 'invalid value for argument "session_data"', 'NULL session_data');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '[1,2]')$$, '22023', 'invalid value for argument "session_data"', 'array session_data');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '"text"')$$, '22023', NULL, 'string session_data');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => 'null')$$, '22023', NULL, 'JSON null session_data');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => json_build_object('pad', repeat('x', 200)))$$, '22023', NULL, 'session_data over the size limit');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '{}', ttl => '-1 hour')$$, '22023', 'invalid value for argument "ttl"', 'negative ttl');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '{}', ttl => '0')$$, '22023', NULL, 'zero ttl');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '{}', ttl => '1000 years')$$, '22023', NULL, 'ttl of 1000 years');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '{}', idle_timeout => '-1 min')$$, '22023', 'invalid value for argument "idle_timeout"', 'negative idle_timeout');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '{}', device_info => '')$$, '22023', 'invalid value for argument "device_info"', 'empty device_info');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '{}', user_agent => repeat('u', 1025))$$, '22023', 'invalid value for argument "user_agent"', 'over-long user_agent');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '{}', fingerprint => '   ')$$, '22023', 'invalid value for argument "fingerprint"', 'blank fingerprint');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_id => NULL)$$, '22023', 'invalid value for argument "session_id"', 'NULL session_id');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_id => '')$$, '22023', NULL, 'empty session_id');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_id => 'a b')$$, '22023', NULL, 'session_id with a space');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_id => repeat('s', 129))$$, '22023', NULL, '129-character session_id');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_id => 'ok', session_data => '[]')$$, '22023', NULL, 'array session_data with a custom id');
SELECT * FROM pg_temp.refused($$SELECT session_ext.is_session_active(NULL)$$, '22023', 'invalid value for argument "session_id"', 'is_session_active(NULL)');
SELECT * FROM pg_temp.refused($$SELECT session_ext.validate_session(NULL)$$, '22023', 'invalid value for argument "session_token"', 'validate_session(NULL)');
SELECT * FROM pg_temp.refused($$SELECT session_ext.validate_session('short')$$, '22023', NULL, 'validate_session with a short token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.validate_session(repeat('a', 40), '')$$, '22023', 'invalid value for argument "fingerprint"', 'validate_session with an empty fingerprint');
SELECT * FROM pg_temp.refused($$SELECT session_ext.session_csrf_token(NULL)$$, '22023', 'invalid value for argument "session_token"', 'session_csrf_token(NULL)');
SELECT * FROM pg_temp.refused($$SELECT session_ext.session_csrf_token('short')$$, '22023', NULL, 'session_csrf_token with a short token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.verify_csrf_token(NULL, 'x')$$, '22023', 'invalid value for argument "session_token"', 'verify_csrf_token with a NULL session token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.verify_csrf_token(repeat('a', 1025), NULL)$$, '22023', NULL, 'verify_csrf_token with an over-long session token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.session_csrf_token(repeat('a', 40), '')$$, '22023', 'invalid value for argument "fingerprint"', 'session_csrf_token with an empty fingerprint');

SELECT * FROM pg_temp.refused($$SELECT session_ext.update_session_data(NULL, '{}')$$, '22023', 'invalid value for argument "session_id"', 'update_session_data: NULL session_id');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.update_session_data(%L, NULL)$$, :'alice_id'), '22023', 'invalid value for argument "session_data"', 'update_session_data: NULL data');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.update_session_data(%L, '[1]')$$, :'alice_id'), '22023', NULL, 'update_session_data: array data');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.update_session_data(%L, '{}', expected_version => 0)$$, :'alice_id'), '22023', 'invalid value for argument "expected_version"', 'update_session_data: version 0');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.update_session_data(%L, '{}', merge => NULL)$$, :'alice_id'), '22023', 'invalid value for argument "merge"', 'update_session_data: NULL merge');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.update_session_data(%L, json_build_object('pad', repeat('x', 200))::jsonb)$$, :'alice_id'), '22023', NULL, 'update_session_data: over the size limit');
SELECT * FROM pg_temp.refused($$SELECT session_ext.rotate_session_token(NULL)$$, '22023', 'invalid value for argument "session_token"', 'rotate_session_token(NULL)');
SELECT * FROM pg_temp.refused($$SELECT session_ext.rotate_session_token('short')$$, '22023', NULL, 'rotate_session_token with a short token');
SELECT * FROM pg_temp.refused($$SELECT session_ext.touch_session(NULL)$$, '22023', NULL, 'touch_session(NULL)');
SELECT * FROM pg_temp.refused($$SELECT session_ext.get_session(NULL)$$, '22023', NULL, 'get_session(NULL)');
SELECT * FROM pg_temp.refused($$SELECT session_ext.revoke_session(NULL)$$, '22023', NULL, 'revoke_session(NULL)');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.revoke_session(%L, '')$$, :'alice_id'), '22023', 'invalid value for argument "reason"', 'revoke_session with an empty reason');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.revoke_session(%L, NULL)$$, :'alice_id'), '22023', NULL, 'revoke_session with a NULL reason');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.revoke_session(%L, repeat('r', 129))$$, :'alice_id'), '22023', NULL, 'revoke_session with a 129-character reason');
SELECT * FROM pg_temp.refused($$SELECT session_ext.revoke_other_sessions(NULL)$$, '22023', 'invalid value for argument "current_session_id"', 'revoke_other_sessions(NULL)');
SELECT * FROM pg_temp.refused($$SELECT session_ext.revoke_all_user_sessions(reason => ' ')$$, '22023', NULL, 'revoke_all_user_sessions with a blank reason');

-- 40001: a stale expected_version, with both versions in DETAIL.
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.update_session_data(%L, '{}', expected_version => 7)$$, :'alice_id'), '40001', 'session data was changed by someone else', 'update_session_data: stale version');
SELECT is(pg_temp.error_of(format($$SELECT session_ext.update_session_data(%L, '{}', expected_version => 7)$$, :'alice_id')),
    ARRAY['40001', 'session data was changed by someone else', 'expected_version is 7, but the session is at version 1.',
          'Read the session again, then retry with its current data_version.'],
    'the stale-version error names both versions');

-- 53400: the creation rate limit.
RESET ROLE;
SET LOCAL session_ext.max_creates_per_minute = 3;
SET LOCAL ROLE authenticated;
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_data => '{}')$$, '53400', 'too many sessions created for this user', 'the fourth creation in a minute');
RESET ROLE;
SET LOCAL session_ext.max_creates_per_minute = 0;
SET LOCAL ROLE authenticated;

-- 23505: taken ids and tokens.
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => session_ext.current_user_id(), session_id => 'taken')$$, '23505', 'session_id "taken" is already taken', 'duplicate session_id');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session('client-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')$$, '23505', 'session_token is already in use', 'duplicate client token');

-- 42501: another user's sessions, and admin-only functions.
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => $$ || quote_literal(:bob) || $$, session_data => '{}')$$, '42501', 'permission denied for the sessions of another user', 'create for another user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => $$ || quote_literal(:bob) || $$, session_id => 'bobs')$$, '42501', NULL, 'create with a custom id for another user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.cleanup_expired_sessions()$$, '42501', NULL, 'cleanup as a user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.session_stats()$$, '42501', NULL, 'session_stats as a user');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.update_session_data(%L, '{}')$$, :'bob_id'), '42501', NULL, 'update another user''s data');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.rotate_session_token(%L)$$, :'bob_token'), '42501', NULL, 'rotate another user''s token');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.touch_session(%L)$$, :'bob_id'), '42501', NULL, 'touch another user''s session');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.get_session(%L)$$, :'bob_id'), '42501', NULL, 'get another user''s session');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.revoke_session(%L)$$, :'bob_id'), '42501', NULL, 'revoke another user''s session');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.revoke_other_sessions(%L)$$, :'bob_id'), '42501', NULL, 'revoke around another user''s session');
SELECT * FROM pg_temp.refused($$SELECT session_ext.revoke_all_user_sessions($$ || quote_literal(:bob) || $$)$$, '42501', NULL, 'revoke all of another user''s sessions');
SELECT * FROM pg_temp.refused($$SELECT session_ext.list_user_sessions($$ || quote_literal(:bob) || $$)$$, '42501', NULL, 'list another user''s sessions');
SELECT * FROM pg_temp.refused($$SELECT session_ext.count_user_sessions($$ || quote_literal(:bob) || $$)$$, '42501', NULL, 'count another user''s sessions');

-- 22P02: a sub claim that is not a UUID.
SET LOCAL request.jwt.claims = '{"sub":"alice","role":"authenticated"}';
SELECT * FROM pg_temp.refused($$SELECT session_ext.current_user_id()$$, '22P02', 'the "sub" claim is not a UUID', 'current_user_id with a non-UUID sub');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(repeat('b', 40))$$, '22P02', NULL, 'create (token) with a non-UUID sub');
SELECT * FROM pg_temp.refused($$SELECT session_ext.validate_session(repeat('b', 40))$$, '22P02', NULL, 'validate with a non-UUID sub');
SELECT * FROM pg_temp.refused($$SELECT session_ext.is_session_active(gen_random_uuid())$$, '22P02', NULL, 'is_session_active with a non-UUID sub');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}')$$, '22P02', NULL, 'create (data) with a non-UUID sub');
SET LOCAL request.jwt.claims = '{not json';
SELECT * FROM pg_temp.refused($$SELECT session_ext.current_user_id()$$, '22P02', 'request.jwt.claims is not a JSON object', 'malformed claims');

-- 28000: no authenticated user where one is needed.
SET LOCAL request.jwt.claims = '{"role":"authenticated"}';
SELECT is(session_ext.current_user_id(), NULL, 'claims without sub: no user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(repeat('c', 40))$$, '28000', 'no authenticated user', 'create (token) without a user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}')$$, '28000', NULL, 'create (data) without a user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => gen_random_uuid(), session_id => 'nobody')$$, '28000', NULL, 'create (id) without a user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.validate_session(repeat('c', 40))$$, '28000', NULL, 'validate without a user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.is_session_active(gen_random_uuid())$$, '28000', NULL, 'is_session_active without a user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.list_user_sessions()$$, '28000', NULL, 'list without a user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.count_user_sessions()$$, '28000', NULL, 'count without a user');
SELECT * FROM pg_temp.refused($$SELECT session_ext.revoke_all_user_sessions()$$, '28000', NULL, 'revoke all without a user');
SELECT * FROM pg_temp.refused(format($$SELECT session_ext.revoke_session(%L)$$, :'alice_id'), '28000', NULL, 'revoke without a user');
SET LOCAL request.jwt.claims = '';
SELECT * FROM pg_temp.refused($$SELECT session_ext.validate_session(repeat('c', 40))$$, '28000', NULL, 'validate with empty claims');

-- Admins: argument errors still apply.
RESET ROLE;
SELECT * FROM pg_temp.refused($$SELECT session_ext.cleanup_expired_sessions(0)$$, '22023', 'invalid value for argument "batch_size"', 'batch_size 0');
SELECT * FROM pg_temp.refused($$SELECT session_ext.cleanup_expired_sessions(-5)$$, '22023', NULL, 'negative batch_size');
SELECT * FROM pg_temp.refused($$SELECT session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}', ip_address => 'not-an-ip')$$, '22P02', NULL, 'invalid inet');
-- Errors carry a DETAIL naming the argument and a HINT where one helps.
SELECT is(pg_temp.error_of($$SELECT session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}', ttl => '-1s')$$),
    ARRAY['22023', 'invalid value for argument "ttl"', 'ttl must be a positive interval.', 'Pass NULL to use session_ext.session_lifetime.'],
    'ttl error: message, detail and hint');
SELECT is(pg_temp.error_of($$SELECT session_ext.create_user_session(user_id => gen_random_uuid(), session_id => '{"a":1}')$$),
    ARRAY['22023', 'invalid value for argument "session_id"', 'session_id "{"a":1}" may contain only letters, digits and - _ . ~ : @ + = /.',
          'To pass session data, name the argument: session_data => ''{...}''.'],
    'a positional JSON mistaken for a session_id says how to pass session data');
SELECT is((pg_temp.error_of($$SELECT session_ext.create_user_session(repeat('x', 2000))$$))[3],
    'session_token has 2000 characters, more than the maximum of 1024.',
    'a token error never echoes the token');

SELECT * FROM finish();
ROLLBACK;
