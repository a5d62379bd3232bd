-- Hostile inputs (SPEC §7): every argument of every function is given NULL, empty and blank
-- text, 1 MB text, SQL-injection strings, odd Unicode, non-object and 10,000-deep JSON, huge and
-- negative intervals, extreme numbers, unknown ids and values its type cannot even hold, while
-- the other arguments are valid. Each call succeeds or fails with the SQLSTATE §7 gives, never
-- with an internal error, and a refused call writes nothing. Functions and arguments are read
-- from pg_proc, so a new function is swept as soon as it exists (or fails the coverage check).
\ir fixtures/begin.sql
SELECT plan(9);

-- Everything session_ext stores, as one value. A refused call's rows roll back with it; the audit
-- log's id sequence does not, so it shows an audit row that was written before the refusal.
CREATE FUNCTION pg_temp.rows() RETURNS text LANGUAGE sql SECURITY DEFINER AS $$
    SELECT pg_catalog.md5(
        coalesce((SELECT string_agg(s::text, ',' ORDER BY s.id) FROM session_ext.user_sessions s), '') ||
        coalesce((SELECT string_agg(a::text, ',' ORDER BY a.id) FROM session_ext.session_audit_log a), '') ||
        coalesce(pg_catalog.pg_sequence_last_value(
            pg_catalog.pg_get_serial_sequence('session_ext.session_audit_log', 'id')::regclass)::text, ''))
$$;

-- The outcome of one call: 'ok', or the SQLSTATE it raised, and for a refusal whether anything
-- stored changed. A call that succeeds is rolled back too, so every call sees the same sessions.
CREATE FUNCTION pg_temp.outcome(call text, OUT state text, OUT wrote boolean) LANGUAGE plpgsql AS $f$
DECLARE
    before text := pg_temp.rows();
BEGIN
    BEGIN
        EXECUTE call;
        RAISE SQLSTATE 'ZZ000';
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
    END;
    IF state = 'ZZ000' THEN
        state := 'ok';
    ELSE
        wrote := pg_temp.rows() IS DISTINCT FROM before;
    END IF;
END
$f$;

-- The SQLSTATE of PostgreSQL's own input function for a value of a type; NULL if it converts.
CREATE FUNCTION pg_temp.input_error(val text, type regtype) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
    state text;
BEGIN
    EXECUTE format('SELECT (%s)::%s', val, type);
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
    RETURN state;
END
$f$;

-- Alice's live session, bound to a fingerprint so that hostile fingerprints reach the comparison.
\o /dev/null
SELECT id AS alice_id, token AS alice_token
  FROM session_ext.create_user_session(user_id => :alice, session_data => '{"v": 1}', fingerprint => 'alice-laptop') \gset
\o

-- Hostile values by type, as SQL expressions, and what §7 makes of them (the call's expected
-- outcome, given `baseline`, the outcome of the same call with a valid value):
--   null      baseline where the argument's default is NULL, else 22023 (a required value);
--   accepted  baseline for the arguments in `only_for` (all when NULL), 22023 for the others;
--   refused   22023;
--   stranger  an id nobody has: baseline as a session id; as a user_id, 42501 for a non-admin
--             and success for an admin;
--   stale     40001 (an expected_version the session is not at);
--   jsonb     the error PostgreSQL's jsonb input raises for it (session_data is stored as jsonb).
-- A value the argument's type cannot hold fails with that type's input error before session_ext
-- is called, whatever its verdict. A refused value is 22023, but where the caller may not make the
-- call at all (the baseline is 42501 or 28000), that refusal may come first.
CREATE TEMP TABLE hostile (type regtype, label text, val text, verdict text, only_for text[], input_error text);
INSERT INTO hostile (type, label, val, verdict, only_for) VALUES
    ('text', 'NULL', 'NULL', 'null', NULL),
    ('text', 'empty', $$''$$, 'refused', NULL),
    ('text', 'blank', $$'   '$$, 'refused', NULL),
    ('text', 'tab, CR, LF', $$E'\t\r\n'$$, 'refused', NULL),
    ('text', 'Unicode spaces', $$U&'\00A0\3000'$$, 'refused', NULL),
    ('text', '1 MB', $$repeat('x', 1048576)$$, 'refused', NULL),
    ('text', 'SQL injection', quote_literal($$'; DROP TABLE session_ext.user_sessions; --$$), 'accepted',
        '{device_info,user_agent,fingerprint,reason}'),
    ('text', 'tautology', quote_literal($$' OR '1'='1$$), 'accepted', '{device_info,user_agent,fingerprint,reason}'),
    -- Visible ASCII without spaces: a well-formed (unknown) token, but no session_id.
    ('text', 'token-shaped injection', quote_literal($$x'OR'1'='1'--;DROP/**/TABLE/**/x;--$$), 'accepted',
        '{session_token,device_info,user_agent,fingerprint,reason}'),
    -- Allowed characters only: a legal session_id and token too.
    ('text', 'path traversal', $$'../../../../../../../../etc/passwd'$$, 'accepted',
        '{session_token,session_id,device_info,user_agent,fingerprint,reason}'),
    -- Right-to-left override, zero-width joiner, a lone combining accent, an emoji.
    ('text', 'Unicode oddities', $$U&'\202E\200D\0301\+01F600'$$, 'accepted', '{device_info,user_agent,fingerprint,reason}'),
    -- 1,000 characters but 3,000 bytes: limits count characters.
    ('text', '1,000 euro signs', $$repeat('€', 1000)$$, 'accepted', '{device_info,user_agent,fingerprint}'),
    ('interval', 'NULL', 'NULL', 'null', NULL),
    ('interval', 'negative', $$'-1 day'$$, 'refused', NULL),
    ('interval', 'zero', $$'0'$$, 'accepted', '{idle_timeout}'),
    ('interval', 'mixed signs, net negative', $$'1 mon -31 days'$$, 'refused', NULL),
    ('interval', '100 years and 1 µs', $$'100 years 1 microsecond'$$, 'refused', NULL),
    ('interval', '1,000,000 years', $$'1000000 years'$$, 'refused', NULL),
    ('interval', 'largest', $$'178956970 years 7 months 2147483647 days 2562047788:00:54.775807'$$, 'refused', NULL),
    ('interval', 'smallest', $$'-178956970 years -8 months -2147483648 days -2562047788:00:54.775807'$$, 'refused', NULL),
    ('interval', 'infinity', $$'infinity'$$, 'refused', NULL),
    ('uuid', 'NULL', 'NULL', 'null', NULL),
    ('uuid', 'unknown', $$'deadbeef-dead-4ead-8ead-deaddeaddead'$$, 'stranger', NULL),
    ('uuid', 'nil', $$'00000000-0000-0000-0000-000000000000'$$, 'stranger', NULL),
    ('uuid', 'max', $$'ffffffff-ffff-ffff-ffff-ffffffffffff'$$, 'stranger', NULL),
    ('uuid', 'not a uuid', $$'not-a-uuid'$$, 'refused', NULL),
    ('uuid', 'SQL injection', quote_literal($$' OR '1'='1$$), 'refused', NULL),
    ('inet', 'NULL', 'NULL', 'null', NULL),
    ('inet', 'every IPv4 address', $$'0.0.0.0/0'$$, 'accepted', NULL),
    ('inet', 'IPv4-mapped IPv6', $$'::ffff:203.0.113.9'$$, 'accepted', NULL),
    ('inet', 'octet over 255', $$'999.1.1.1'$$, 'refused', NULL),
    ('inet', 'IPv6 zone', $$'fe80::1%eth0'$$, 'refused', NULL),
    ('inet', 'empty', $$''$$, 'refused', NULL),
    ('integer', 'NULL', 'NULL', 'null', NULL),
    ('integer', 'zero', '0', 'refused', NULL),
    ('integer', '-1', '-1', 'refused', NULL),
    ('integer', 'smallest', '-2147483648', 'refused', NULL),
    ('integer', 'largest', '2147483647', 'refused', NULL),
    ('integer', 'over the range', $$'2147483648'$$, 'refused', NULL),
    ('bigint', 'NULL', 'NULL', 'null', NULL),
    ('bigint', 'zero', '0', 'refused', NULL),
    ('bigint', '-1', '-1', 'refused', NULL),
    ('bigint', 'smallest', '-9223372036854775808', 'refused', NULL),
    ('bigint', 'a version not reached', '2', 'stale', NULL),
    ('bigint', 'largest', '9223372036854775807', 'stale', NULL),
    ('bigint', 'over the range', $$'9223372036854775808'$$, 'refused', NULL),
    ('bytea', 'NULL', 'NULL', 'null', NULL),
    ('bytea', 'empty', $$'\x'$$, 'refused', NULL),
    ('bytea', '31 bytes', $$substr(sha256('x'), 2)$$, 'refused', NULL),
    ('bytea', '1 MB', $$decode(repeat('00', 1048576), 'hex')$$, 'refused', NULL),
    ('bytea', 'another SHA-256', $$sha256('another')$$, 'accepted', NULL),
    ('timestamp with time zone', 'NULL', 'NULL', 'null', NULL),
    ('timestamp with time zone', 'infinity', $$'infinity'$$, 'refused', NULL),
    ('timestamp with time zone', '-infinity', $$'-infinity'$$, 'refused', NULL),
    ('timestamp with time zone', 'year 200,000', $$'200000-01-01 00:00:00+00'$$, 'refused', NULL),
    ('timestamp with time zone', 'in a year', $$now() + interval '1 year'$$, 'accepted', '{expires_at}'),
    ('timestamp with time zone', '1970', $$'epoch'$$, 'accepted', NULL),
    ('boolean', 'NULL', 'NULL', 'null', NULL),
    ('boolean', 'not a boolean', $$'maybe'$$, 'refused', NULL);
INSERT INTO hostile (type, label, val, verdict)
SELECT t, v.* FROM unnest('{json,jsonb}'::regtype[]) AS t, (VALUES
    ('NULL', 'NULL', 'null'),
    ('array', $$'[]'$$, 'refused'),
    ('string', $$'"str"'$$, 'refused'),
    ('number', $$'42'$$, 'refused'),
    ('JSON null', $$'null'$$, 'refused'),
    ('boolean', $$'true'$$, 'refused'),
    ('array after whitespace', $$E' \n\t\r[1]'$$, 'refused'),
    ('10,000-deep array', $$repeat('[', 10000) || repeat(']', 10000)$$, 'refused'),
    ('10,000-deep object', $$repeat('{"a":', 10000) || '1' || repeat('}', 10000)$$, 'refused'),
    ('1 MB object', $$json_build_object('pad', repeat('x', 1048576))::text$$, 'refused'),
    ('\u0000', $$'{"a": "\u0000"}'$$, 'jsonb'),
    ('number beyond numeric', $$'{"n": 1e1000000}'$$, 'jsonb')) AS v;
UPDATE hostile SET input_error = coalesce(pg_temp.input_error(val, type),
                                          CASE verdict WHEN 'jsonb' THEN pg_temp.input_error(val, 'jsonb') END);

-- Valid values for the arguments a call cannot leave out (the others keep their defaults).
-- session_token is a well-formed token nobody holds, except where validating Alice's session.
CREATE TEMP TABLE valid (proname text, name text, type regtype, val text);
INSERT INTO valid VALUES
    (NULL, 'user_id', 'uuid', :'alice'),
    (NULL, 'session_id', 'uuid', quote_literal(:'alice_id')),
    (NULL, 'current_session_id', 'uuid', quote_literal(:'alice_id')),
    (NULL, 'session_id', 'text', $$'hostile-sweep'$$),
    (NULL, 'session_data', 'json', $$'{}'$$),
    (NULL, 'session_data', 'jsonb', $$'{}'$$),
    (NULL, 'session_token', 'text', quote_literal(repeat('t', 43))),
    (NULL, 'token_sha256', 'bytea', $$sha256('hostile-sweep')$$),
    (NULL, 'expires_at', 'timestamp with time zone', $$now() + interval '1 day'$$),
    (NULL, 'aal', 'text', $$'aal2'$$),
    ('validate_session', 'session_token', 'text', quote_literal(:'alice_token')),
    ('session_csrf_token', 'session_token', 'text', quote_literal(:'alice_token')),
    ('verify_csrf_token', 'session_token', 'text', quote_literal(:'alice_token')),
    ('verify_csrf_token', 'csrf_token', 'text', quote_literal(session_ext.session_csrf_token(:'alice_token', 'alice-laptop')));

-- Every argument of every function in the schema.
CREATE TEMP VIEW args AS
SELECT p.oid::regprocedure AS fn, p.proname, a.name, a.type::regtype AS type, a.n,
       pg_catalog.pg_get_function_arg_default(p.oid, a.n::int) AS dflt,
       (SELECT v.val FROM valid v
         WHERE v.name = a.name AND v.type = a.type AND coalesce(v.proname, p.proname) = p.proname
         ORDER BY v.proname NULLS LAST LIMIT 1) AS valid
  FROM pg_catalog.pg_proc p,
       unnest(p.proargnames, p.proargtypes::oid[]) WITH ORDINALITY AS a(name, type, n)
 WHERE p.pronamespace = 'session_ext'::regnamespace;

SELECT is_empty($$
    SELECT fn, name, type FROM args a
     WHERE NOT EXISTS (SELECT FROM hostile h WHERE h.type = a.type) OR (a.dflt IS NULL AND a.valid IS NULL)
$$, 'every argument of every function has hostile values for its type, and a valid value if it is required');

-- Each caller runs each function once with valid arguments (label 'valid', the baseline) and once
-- per argument and hostile value of its type: Alice as PostgREST's authenticated role, and
-- service_role (an admin) with a JWT that has no sub, as Supabase's service key does.
CREATE TEMP TABLE callers (role text, claims text, admin boolean);
INSERT INTO callers VALUES ('authenticated', :alice_claims, false), ('service_role', '{"role":"service_role"}', true);
CREATE TEMP TABLE calls AS
WITH target AS (
    SELECT fn, name AS arg, type, label, val, verdict, only_for, input_error, dflt FROM args JOIN hostile USING (type)
    UNION ALL
    SELECT oid::regprocedure, NULL, NULL, 'valid', NULL, NULL, NULL, NULL, NULL
      FROM pg_catalog.pg_proc WHERE pronamespace = 'session_ext'::regnamespace
)
SELECT c.role AS caller, c.admin, t.*,
       format('SELECT session_ext.%I(%s)', p.proname,
              (SELECT string_agg(format('%I => %s', a.name,
                                        CASE WHEN a.name = t.arg THEN format('(%s)::%s', t.val, a.type) ELSE a.valid END),
                                 ', ' ORDER BY a.n)
                 FROM args a WHERE a.fn = t.fn AND (a.name = t.arg OR a.dflt IS NULL))) AS call,
       NULL::text AS outcome, NULL::boolean AS wrote
  FROM target t JOIN pg_catalog.pg_proc p ON p.oid = t.fn CROSS JOIN callers c;
GRANT SELECT ON callers TO PUBLIC;
GRANT SELECT, UPDATE ON calls TO PUBLIC;

SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', claims, true) FROM callers WHERE role = 'authenticated' \g /dev/null
UPDATE calls SET (outcome, wrote) = (SELECT * FROM pg_temp.outcome(call)) WHERE caller = 'authenticated';
RESET ROLE;
SET LOCAL ROLE service_role;
SELECT set_config('request.jwt.claims', claims, true) FROM callers WHERE role = 'service_role' \g /dev/null
UPDATE calls SET (outcome, wrote) = (SELECT * FROM pg_temp.outcome(call)) WHERE caller = 'service_role';
RESET ROLE;

-- With valid arguments every function works, except where the caller lacks the right: Alice is
-- no admin, and the service key's JWT names no user for the functions that act on the caller's own.
SELECT results_eq($$
    SELECT caller, fn::text, outcome FROM calls WHERE label = 'valid' AND outcome <> 'ok' ORDER BY 1, 2
$$, $$ VALUES
    ('authenticated', 'session_ext.cleanup_expired_sessions(integer)', '42501'),
    ('authenticated', 'session_ext.end_user_sessions()', '42501'),
    ('authenticated', 'session_ext.import_session(uuid,bytea,timestamp with time zone,timestamp with time zone,timestamp with time zone,interval,text,text,inet,json,uuid)', '42501'),
    ('authenticated', 'session_ext.session_stats()', '42501'),
    ('authenticated', 'session_ext.set_session_aal(uuid,text,interval)', '42501'),
    ('service_role', 'session_ext.count_user_sessions(uuid)', '28000'),
    ('service_role', 'session_ext.create_user_session(text)', '28000'),
    -- A trigger function, called other than by the trigger manager.
    ('service_role', 'session_ext.end_user_sessions()', '39P01'),
    ('service_role', 'session_ext.list_user_sessions(uuid)', '28000'),
    ('service_role', 'session_ext.revoke_all_user_sessions(uuid,text)', '28000')
$$, 'the baseline: valid calls succeed where the caller may make them');

SELECT is_empty($$
    SELECT caller, fn, arg, label, outcome FROM calls WHERE outcome LIKE 'XX%'
$$, 'no hostile input causes an internal error (class XX)');

SELECT is_empty($$
    SELECT caller, fn, arg, label, outcome FROM calls
     WHERE outcome NOT IN ('ok', '22023', '22P02', '23505', '28000', '40001', '42501', '53400')
       AND outcome IS DISTINCT FROM input_error
       AND NOT (fn = 'session_ext.end_user_sessions()'::regprocedure AND outcome = '39P01')
$$, 'every refusal has a SQLSTATE of SPEC §7, or the input error of the argument''s type');

-- The values PostgreSQL itself refuses: never session_ext's to judge (and the deep and huge JSON
-- are not among them: they reach session_ext). From 17 on, intervals can be infinite: 'infinity'
-- then reaches session_ext, which refuses it (its verdict above).
SELECT results_eq($$
    SELECT type::text, label, input_error FROM hostile WHERE input_error IS NOT NULL ORDER BY type::text, label COLLATE "C"
$$, $$ SELECT * FROM (VALUES
    ('bigint', 'over the range', '22003'),
    ('boolean', 'not a boolean', '22P02'),
    ('inet', 'IPv6 zone', '22P02'),
    ('inet', 'empty', '22P02'),
    ('inet', 'octet over 255', '22P02'),
    ('integer', 'over the range', '22003'),
    ('interval', 'infinity', '22007'),
    ('json', '\u0000', '22P05'),
    ('json', 'number beyond numeric', '22003'),
    ('jsonb', '\u0000', '22P05'),
    ('jsonb', 'number beyond numeric', '22003'),
    ('uuid', 'SQL injection', '22P02'),
    ('uuid', 'not a uuid', '22P02')
    ) expected (type, label, input_error)
    WHERE NOT (type = 'interval' AND current_setting('server_version_num')::int >= 170000)
    ORDER BY type, label COLLATE "C"
$$, 'values the argument types cannot hold fail with the type''s input error');

SELECT is_empty($$
    WITH expected AS (
        SELECT c.*, CASE
                   -- JSON that only jsonb refuses reaches the function: a caller who may not call it hears that first.
                   WHEN c.input_error IS NOT NULL AND c.verdict = 'jsonb' THEN ARRAY[c.input_error, b.outcome]
                   WHEN c.input_error IS NOT NULL THEN ARRAY[c.input_error]
                   -- A CSRF token is compared, never judged (SPEC §4 "CSRF"): anything but the
                   -- session's own is false, not an error.
                   WHEN c.arg = 'csrf_token' THEN ARRAY[b.outcome]
                   WHEN c.verdict = 'null' AND c.dflt LIKE 'NULL::%'
                     OR c.verdict = 'accepted' AND (c.only_for IS NULL OR c.arg = ANY (c.only_for))
                     OR c.verdict = 'stranger' AND c.arg <> 'user_id' THEN ARRAY[b.outcome]
                   WHEN c.verdict = 'stranger' THEN ARRAY[CASE WHEN c.admin THEN 'ok' ELSE '42501' END]
                   WHEN c.verdict = 'stale' THEN ARRAY['40001']
                   -- A bad argument; a caller who may not make the call at all may hear that first.
                   WHEN b.outcome = 'ok' THEN ARRAY['22023']
                   ELSE ARRAY['22023', b.outcome]
               END AS expected
          FROM calls c JOIN calls b ON b.caller = c.caller AND b.fn = c.fn AND b.label = 'valid'
         WHERE c.label <> 'valid')
    SELECT caller, fn, arg, label, outcome, expected FROM expected WHERE outcome <> ALL (expected)
$$, 'each hostile value gets the outcome SPEC §7 gives it');

SELECT is_empty($$
    SELECT caller, fn, arg, label, outcome FROM calls WHERE wrote
$$, 'a refused call writes nothing: no session, no audit row');

-- The JWT claims are an input too, of every function: anything but a JSON object, a sub that is
-- not a UUID, or two subs is 22P02; an empty setting is no user. Whatever else a valid object
-- holds is not session_ext's business (Supabase puts user-editable user_metadata in the claims).
CREATE FUNCTION pg_temp.user_from(claims text) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
    state text;
BEGIN
    PERFORM set_config('request.jwt.claims', claims, true);
    RETURN coalesce(session_ext.current_user_id()::text, 'no user');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
    RETURN state;
END
$f$;
SET LOCAL ROLE authenticated;
SELECT results_eq(format($$
    SELECT label, pg_temp.user_from(claims) FROM (VALUES
        ('empty', ''),
        ('blank', '   '),
        ('sub null', '{"sub": null}'),
        ('array', '[]'),
        ('array holding a uuid', '[%1$s]'),
        ('string holding a uuid', '%1$s'),
        ('number', '42'),
        ('JSON null', 'null'),
        ('not JSON', '{"sub":'),
        ('sub a number', '{"sub": 42}'),
        ('sub empty', '{"sub": ""}'),
        ('sub an array', '{"sub": [%1$s]}'),
        ('sub an SQL injection', '{"sub": "'' OR ''1''=''1"}'),
        ('two subs', '{"sub": %1$s, "sub": "b0b00000-0000-4000-8000-000000000002"}'),
        ('10,000-deep', repeat('[', 10000) || repeat(']', 10000)),
        ('10,000-deep claim beside sub', '{"sub": %1$s, "user_metadata": ' || repeat('[', 10000) || repeat(']', 10000) || '}'),
        ('1 MB claim beside sub', json_build_object('sub', %2$L, 'pad', repeat('x', 1048576))::text)
    ) AS t(label, claims)
$$, to_json(:alice::text), :alice), $$ VALUES
    ('empty', 'no user'),
    ('blank', 'no user'),
    ('sub null', 'no user'),
    ('array', '22P02'),
    ('array holding a uuid', '22P02'),
    ('string holding a uuid', '22P02'),
    ('number', '22P02'),
    ('JSON null', '22P02'),
    ('not JSON', '22P02'),
    ('sub a number', '22P02'),
    ('sub empty', '22P02'),
    ('sub an array', '22P02'),
    ('sub an SQL injection', '22P02'),
    ('two subs', '22P02'),
    ('10,000-deep', '22P02'),
    ('10,000-deep claim beside sub', 'a11ce000-0000-4000-8000-000000000001'),
    ('1 MB claim beside sub', 'a11ce000-0000-4000-8000-000000000001')
$$, 'hostile JWT claims: a JSON object with a UUID sub, or no user, or 22P02');

-- What the sweep accepted is stored as given, not executed or mangled.
SELECT set_config('request.jwt.claims', :alice_claims, true) \g /dev/null
\o /dev/null
SELECT id AS odd_id FROM session_ext.create_user_session(
    user_id => :alice, session_data => '{}',
    device_info => $$'; DROP TABLE session_ext.user_sessions; --$$, user_agent => U&'\202E\200D\0301\+01F600') \gset
SELECT session_ext.revoke_session(:'odd_id', reason => $$' OR '1'='1$$);
\o
SELECT is((SELECT ARRAY[device_info, user_agent, revoke_reason] FROM session_ext.get_session(:'odd_id')),
          ARRAY[$$'; DROP TABLE session_ext.user_sessions; --$$, U&'\202E\200D\0301\+01F600', $$' OR '1'='1$$],
          'injection strings and odd Unicode are stored verbatim');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
