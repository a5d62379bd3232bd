-- Sessions carried by JWTs (SPEC §4): the session a request's claims name, assurance levels,
-- sessions that end with their user, imports from a hand-rolled table, and the settings a
-- non-superuser project owner may be granted. Requests are made as PostgREST makes them.
\ir fixtures/begin.sql
SELECT plan(71);

-- SQLSTATE, message and detail of the error a call raises, NULL when it raises none.
CREATE FUNCTION pg_temp.error_of(call text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
    detail text;
BEGIN
    EXECUTE call;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ' ' || SQLERRM || ' ' || detail;
END
$f$;

-- Claims as Supabase Auth writes them, naming a session.
CREATE FUNCTION pg_temp.claims(sub text, session uuid) RETURNS text LANGUAGE sql AS $$
    SELECT pg_catalog.json_build_object('sub', sub, 'role', 'authenticated', 'aal', 'aal1',
                                        'session_id', session)::text
$$;

\o /dev/null
SELECT id AS alice_id, token AS alice_token FROM session_ext.create_user_session(user_id => :alice, session_data => '{}') \gset
SELECT id AS bob_id FROM session_ext.create_user_session(user_id => :bob, session_data => '{}') \gset
SELECT id AS revoked_id FROM session_ext.create_user_session(user_id => :alice, session_data => '{}') \gset
SELECT id AS expired_id FROM session_ext.create_user_session(user_id => :alice, session_data => '{}') \gset
SELECT session_ext.revoke_session(:'revoked_id');
UPDATE session_ext.user_sessions SET valid_until = now() - interval '1 second' WHERE id = :'expired_id';
\o

-- current_session_id: the claim, NULL when absent or empty, 22P02 when not a UUID.
SET LOCAL ROLE authenticated;
SET LOCAL request.jwt.claims = :alice_claims;
SELECT is(session_ext.current_session_id(), NULL, 'claims without session_id name no session');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'alice_id'), true) \g /dev/null
SELECT is(session_ext.current_session_id(), :'alice_id'::uuid, 'the session_id claim');
SELECT set_config('request.jwt.claims', json_build_object('sub', :alice, 'session_id', '')::text, true) \g /dev/null
SELECT is(session_ext.current_session_id(), NULL, 'an empty session_id claim is none');
SELECT set_config('request.jwt.claims', '{"session_id":"s-1"}', true) \g /dev/null
SELECT throws_ok('SELECT session_ext.current_session_id()', '22P02', 'the "session_id" claim is not a UUID', 'a session_id that is not a UUID');
SELECT throws_ok('SELECT session_ext.current_session()', '22P02', NULL, 'current_session: likewise');

-- current_session: the named session of the claims' user, or NULL.
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'alice_id'), true) \g /dev/null
SELECT is((session_ext.current_session()).id, :'alice_id'::uuid, 'current_session: the session the claims name');
SELECT is((session_ext.current_session()).aal, 'aal1', 'a new session is at aal1');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'bob_id'), true) \g /dev/null
SELECT is(session_ext.current_session(), NULL, 'another user''s session: NULL');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'revoked_id'), true) \g /dev/null
SELECT is(session_ext.current_session(), NULL, 'a revoked session: NULL');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'expired_id'), true) \g /dev/null
SELECT is(session_ext.current_session(), NULL, 'an expired session: NULL');
SELECT set_config('request.jwt.claims', json_build_object('session_id', :'alice_id')::text, true) \g /dev/null
SELECT is(session_ext.current_session(), NULL, 'claims without a sub: NULL');

-- It records activity as validate_session does: once touch_interval has passed.
RESET ROLE;
UPDATE session_ext.user_sessions SET last_active_at = now() - interval '10 minutes' WHERE id = :'alice_id';
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'alice_id'), true) \g /dev/null
SELECT is((session_ext.current_session()).last_active_at, now(), 'current_session records activity when touch_interval has passed');
RESET ROLE;
UPDATE session_ext.user_sessions SET last_active_at = now() - interval '30 seconds' WHERE id = :'alice_id';
SET LOCAL ROLE authenticated;
SELECT is((session_ext.current_session()).last_active_at, now() - interval '30 seconds', 'and not before');

-- require_session: anon and service role requests pass; a named session must be live.
SET LOCAL request.jwt.claims = '{"role":"anon"}';
SELECT is(session_ext.require_session(), NULL, 'claims without session_id pass');
SELECT throws_ok($$SELECT session_ext.require_session('aal1')$$, '42501', 'this request needs assurance level aal1',
    'but asked for a level, a request with no session is refused: no session proves one');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'alice_id'), true) \g /dev/null
SELECT is((session_ext.require_session()).id, :'alice_id'::uuid, 'a live session of the claims'' user passes');
SELECT is((session_ext.require_session('aal1')).id, :'alice_id'::uuid, 'at aal1 when aal1 is asked');
SELECT throws_ok($$SELECT session_ext.require_session('aal2')$$, '42501', 'this request needs assurance level aal2', 'aal1 is refused for aal2');
SELECT throws_ok($$SELECT session_ext.require_session('AAL2')$$, '22023', 'invalid value for argument "min_aal"', 'an unknown level is a bad argument');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'revoked_id'), true) \g /dev/null
SELECT throws_ok('SELECT session_ext.require_session()', '28000', 'the session of this request is not active', 'a revoked session is refused');
SELECT matches(pg_temp.error_of('SELECT session_ext.require_session()'), 'revoked', 'saying so');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'expired_id'), true) \g /dev/null
SELECT throws_ok('SELECT session_ext.require_session()', '28000', NULL, 'an expired session is refused');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'bob_id'), true) \g /dev/null
SELECT throws_ok('SELECT session_ext.require_session()', '28000', NULL, 'another user''s session is refused');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, gen_random_uuid()), true) \g /dev/null
SELECT throws_ok('SELECT session_ext.require_session()', '28000', NULL, 'an unknown session is refused');
SELECT set_config('request.jwt.claims', json_build_object('session_id', :'alice_id')::text, true) \g /dev/null
SELECT throws_ok('SELECT session_ext.require_session()', '28000', 'no authenticated user', 'a session without a sub is refused');

-- set_session_aal: admins only; the raised level, its expiry, the fall back to aal1.
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, :'alice_id'), true) \g /dev/null
SELECT throws_ok(format($$SELECT session_ext.set_session_aal(%L, 'aal2')$$, :'alice_id'), '42501', NULL, 'a user cannot raise its own level');
SET LOCAL ROLE service_role;
SELECT throws_ok(format($$SELECT session_ext.set_session_aal(%L, 'aal9')$$, :'alice_id'), '22023', 'invalid value for argument "aal"', 'an unknown level');
SELECT throws_ok(format($$SELECT session_ext.set_session_aal(%L, NULL)$$, :'alice_id'), '22023', NULL, 'a NULL level');
SELECT throws_ok(format($$SELECT session_ext.set_session_aal(%L, 'aal2', '-1 minute')$$, :'alice_id'), '22023', 'invalid value for argument "valid_for"', 'a negative valid_for');
SELECT throws_ok($$SELECT session_ext.set_session_aal(NULL, 'aal2')$$, '22023', NULL, 'a NULL session');
SELECT is(session_ext.set_session_aal(:'revoked_id', 'aal2'), false, 'a revoked session is not raised');
SELECT is(session_ext.set_session_aal(gen_random_uuid(), 'aal2'), false, 'nor an unknown one');
SELECT is(session_ext.set_session_aal(:'alice_id', 'aal2', '5 minutes'), true, 'the auth server raises a session to aal2 for 5 minutes');
SELECT is(
    (SELECT details FROM session_ext.session_audit_log WHERE event = 'aal_change' AND session_id = :'alice_id'),
    jsonb_build_object('from', 'aal1', 'to', 'aal2', 'valid_until', now() + interval '5 minutes'),
    'an aal_change event records both levels and the expiry');
SET LOCAL ROLE authenticated;
SELECT is((session_ext.require_session('aal2')).aal, 'aal2', 'now aal2 passes');
SELECT is((session_ext.require_session('aal2')).aal_expires_at, now() + interval '5 minutes', 'showing when the level lapses');
SELECT is((session_ext.validate_session(:'alice_token')).aal, 'aal2', 'validate_session shows the level');
SELECT is((session_ext.get_session(:'alice_id')).aal, 'aal2', 'get_session too');
SELECT is((SELECT aal FROM session_ext.list_user_sessions() WHERE id = :'alice_id'), 'aal2', 'list_user_sessions too');
SELECT throws_ok($$SELECT session_ext.require_session('aal3')$$, '42501', 'this request needs assurance level aal3', 'aal2 is refused for aal3');
-- Five minutes later (the raised level's expiry, moved into the past).
RESET ROLE;
UPDATE session_ext.user_sessions SET aal_expires_at = now() - interval '1 second' WHERE id = :'alice_id';
SET LOCAL ROLE authenticated;
SELECT throws_ok($$SELECT session_ext.require_session('aal2')$$, '42501', NULL, 'after valid_for ran out, aal2 is refused again');
SELECT is(ARRAY[(session_ext.current_session()).aal, (session_ext.current_session()).aal_expires_at::text], ARRAY['aal1', NULL], 'the session reads as aal1, with no expiry');
SELECT is((session_ext.validate_session(:'alice_token')).aal, 'aal1', 'validate_session agrees');
SELECT is((session_ext.get_session(:'alice_id')).aal, 'aal1', 'get_session agrees');
SET LOCAL ROLE service_role;
SELECT is(session_ext.set_session_aal(:'alice_id', 'aal2'), true, 'raised with no valid_for');
SELECT is((SELECT aal_expires_at FROM session_ext.get_session(:'alice_id')), NULL, 'it holds for the rest of the session');
RESET ROLE;

-- end_user_sessions: a users table whose id column is user_uuid. Deleting 3 users with 1,000
-- sessions each in one statement revokes those 3,000 and nothing else.
CREATE TABLE pg_temp.members (user_uuid uuid PRIMARY KEY, name text);
INSERT INTO pg_temp.members SELECT gen_random_uuid(), 'member ' || i FROM generate_series(1, 5) i;
CREATE TRIGGER members_end_sessions AFTER DELETE ON pg_temp.members
    FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions('user_uuid');
\o /dev/null
SELECT session_ext.create_user_session(user_id => m.user_uuid, session_data => '{}')
  FROM pg_temp.members m, generate_series(1, 1000);
\o
CREATE TEMP TABLE before_delete AS SELECT id, revoked_at FROM session_ext.user_sessions;
SET LOCAL session_ext.notify_channel = '';
DELETE FROM pg_temp.members WHERE name IN ('member 1', 'member 2', 'member 3');
SELECT is(
    (SELECT count(*) FROM session_ext.user_sessions WHERE revoke_reason = 'user_deleted'), 3000::bigint,
    'the 3,000 sessions of the 3 deleted users are revoked (reason user_deleted)');
SELECT is(
    (SELECT count(*) FROM session_ext.user_sessions s JOIN before_delete b USING (id)
      WHERE s.revoked_at IS DISTINCT FROM b.revoked_at AND s.revoke_reason IS DISTINCT FROM 'user_deleted'), 0::bigint,
    'nothing else changed');
SELECT is(
    (SELECT count(*) FROM session_ext.user_sessions s JOIN pg_temp.members m ON m.user_uuid = s.user_id WHERE s.revoked_at IS NULL),
    2000::bigint, 'the remaining users keep their sessions');
SELECT is(
    (SELECT count(*) FROM session_ext.session_audit_log WHERE event = 'revoke' AND details ->> 'reason' = 'user_deleted'),
    3000::bigint, 'each revocation is audited');
CREATE TABLE pg_temp.people (id uuid PRIMARY KEY);
CREATE TRIGGER people_end_sessions AFTER DELETE ON pg_temp.people
    FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions();
INSERT INTO pg_temp.people VALUES (:bob);
DELETE FROM pg_temp.people;
SELECT is((SELECT revoke_reason FROM session_ext.user_sessions WHERE id = :'bob_id'), 'user_deleted', 'the id column is id by default');
CREATE TABLE pg_temp.wrong (id integer, uid uuid);
CREATE TRIGGER wrong_type AFTER DELETE ON pg_temp.wrong FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions();
INSERT INTO pg_temp.wrong VALUES (1, gen_random_uuid());
SELECT throws_ok('DELETE FROM pg_temp.wrong', '42804', NULL, 'an id column that is not uuid');
DROP TRIGGER wrong_type ON pg_temp.wrong;
CREATE TRIGGER wrong_column AFTER DELETE ON pg_temp.wrong FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions('user_id');
SELECT throws_ok('DELETE FROM pg_temp.wrong', '42703', NULL, 'an id column that does not exist');
DROP TRIGGER wrong_column ON pg_temp.wrong;
CREATE TRIGGER wrong_timing BEFORE DELETE ON pg_temp.wrong FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions('uid');
SELECT throws_ok('DELETE FROM pg_temp.wrong', '39P01', NULL, 'a trigger fired BEFORE');
DROP TRIGGER wrong_timing ON pg_temp.wrong;
CREATE TRIGGER wrong_event AFTER INSERT ON pg_temp.wrong FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions('uid');
SELECT throws_ok('INSERT INTO pg_temp.wrong VALUES (2, gen_random_uuid())', '39P01', NULL, 'a trigger fired on INSERT');
-- Attaching it takes EXECUTE, which users do not have.
CREATE TABLE public.own_users (id uuid);
GRANT ALL ON public.own_users TO authenticated;
SET LOCAL ROLE authenticated;
SELECT throws_ok($$CREATE TRIGGER mine AFTER DELETE ON public.own_users FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions()$$,
    '42501', NULL, 'a user cannot attach the trigger to a table of its own');
RESET ROLE;

-- Moving in: 10,000 sessions from a table shaped as teams write it, SHA-256 kept as hex.
CREATE TABLE pg_temp.old_sessions (
    user_id uuid, refresh_token text, refresh_token_hash text, device_info text, user_agent text,
    ip_address inet, last_active_at timestamptz, expires_at timestamptz);
INSERT INTO pg_temp.old_sessions
SELECT gen_random_uuid(), t, encode(sha256(convert_to(t, 'UTF8')), 'hex'), 'device ' || i, 'agent/' || i,
       ('10.0.' || (i / 256) || '.' || (i % 256))::inet, now() - (i % 50) * interval '1 second', now() + interval '7 days'
  FROM generate_series(1, 10000) i, LATERAL (SELECT 'legacy-token-' || i || '-' || md5(i::text)) AS tok(t);
INSERT INTO pg_temp.old_sessions VALUES
    (gen_random_uuid(), 'ended-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', encode(sha256('ended-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'), 'hex'),
     NULL, NULL, NULL, now() - interval '1 day', now() - interval '1 hour');
GRANT SELECT ON pg_temp.old_sessions TO service_role;
SET LOCAL ROLE service_role;
CREATE TEMP TABLE imported AS
SELECT session_ext.import_session(
           user_id => o.user_id, token_sha256 => decode(o.refresh_token_hash, 'hex'), expires_at => o.expires_at,
           last_active_at => o.last_active_at, device_info => o.device_info, user_agent => o.user_agent,
           ip_address => o.ip_address) AS id
  FROM pg_temp.old_sessions o;
SELECT is((SELECT count(id) FROM imported), 10000::bigint, '10,000 sessions imported');
SELECT is((SELECT count(*) FROM imported WHERE id IS NULL), 1::bigint, 'the one already over is not (NULL)');
SELECT is(
    (SELECT count(*) FROM pg_temp.old_sessions o, session_ext.validate_session(o.refresh_token) v
      WHERE v.user_id = o.user_id AND v.device_info = o.device_info AND v.ip_address = o.ip_address),
    10000::bigint, 'every imported token validates, as its user and device');
SELECT throws_ok(
    $$SELECT session_ext.import_session(user_id => gen_random_uuid(), token_sha256 => decode((SELECT refresh_token_hash FROM pg_temp.old_sessions LIMIT 1), 'hex'), expires_at => now() + interval '1 day')$$,
    '23505', 'the session is already here', 'importing a session twice');
SELECT throws_ok($$SELECT session_ext.import_session(gen_random_uuid(), '\x0102', now() + interval '1 day')$$,
    '22023', 'invalid value for argument "token_sha256"', 'a hash that is not 32 bytes');
SELECT throws_ok($$SELECT session_ext.import_session(gen_random_uuid(), sha256('x'), now() + interval '1 day', now() + interval '1 hour')$$,
    '22023', 'invalid value for argument "last_active_at"', 'activity in the future');
SELECT throws_ok($$SELECT session_ext.import_session(gen_random_uuid(), NULL, now() + interval '1 day')$$,
    '22023', 'invalid value for argument "token_sha256"', 'no hash');
-- A session under the id it had, which JWTs name.
SELECT is(session_ext.import_session(user_id => :alice, token_sha256 => sha256('kept-id'), expires_at => now() + interval '1 hour',
                                     id => '01234567-89ab-7def-8123-456789abcdef'),
          '01234567-89ab-7def-8123-456789abcdef'::uuid, 'a session imported under its own id');
SET LOCAL ROLE authenticated;
SELECT throws_ok($$SELECT session_ext.import_session(gen_random_uuid(), sha256('y'), now() + interval '1 day')$$,
    '42501', NULL, 'users cannot import');
SELECT set_config('request.jwt.claims', pg_temp.claims(:alice, '01234567-89ab-7def-8123-456789abcdef'), true) \g /dev/null
SELECT is((session_ext.require_session()).id, '01234567-89ab-7def-8123-456789abcdef'::uuid, 'the JWT naming it passes');
RESET ROLE;

-- Settings a non-superuser project owner (Supabase's postgres role) may be granted.
CREATE ROLE project_owner NOLOGIN;
SET LOCAL ROLE project_owner;
SELECT throws_ok($$SET LOCAL session_ext.idle_timeout = '30min'$$, '42501', NULL, 'without a grant, a non-superuser cannot change a setting');
RESET ROLE;
GRANT SET ON PARAMETER session_ext.idle_timeout, session_ext.session_lifetime TO project_owner;
SET LOCAL ROLE project_owner;
SET LOCAL session_ext.idle_timeout = '30min';
SELECT is(current_setting('session_ext.idle_timeout'), '30min', 'GRANT SET ON PARAMETER lets it');
SELECT lives_ok($$ALTER ROLE project_owner SET session_ext.session_lifetime = '7d'$$, 'and lets it keep a default of its own');
RESET ROLE;
SELECT format('ALTER DATABASE %I OWNER TO project_owner', current_database()) \gexec
SET LOCAL ROLE project_owner;
SELECT lives_ok(format('ALTER DATABASE %I SET session_ext.idle_timeout = %L', current_database(), '30min'),
    'and set a default for a database it owns');
SELECT throws_ok($$SET LOCAL session_ext.audit = off$$, '42501', NULL, 'the audit setting stays with superusers');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
