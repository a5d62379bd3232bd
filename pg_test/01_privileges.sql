-- Roles and privileges (SPEC §2, §3): who may execute what, functions that run as their caller
-- and switch to the owner themselves, and that a user cannot reach the table except through them.
\ir fixtures/begin.sql
SELECT plan(37 + (SELECT count(*)::int FROM pg_catalog.pg_proc
                    WHERE pronamespace = 'session_ext'::regnamespace));

-- The catalog rules every function in the schema must follow.
SELECT is(
    (SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text) FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'session_ext'::regnamespace
        AND p.proconfig IS NOT NULL),
    NULL, 'no function has a SET clause (the library pins search_path for the SQL it runs)');
SELECT is(
    (SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text) FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'session_ext'::regnamespace
        AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')),
    NULL, 'no function is executable by PUBLIC');
SELECT is(
    (SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text) FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'session_ext'::regnamespace
        AND (p.prosecdef OR p.prolang <> (SELECT l.oid FROM pg_catalog.pg_language l WHERE l.lanname = 'c') OR p.probin <> 'session_ext')),
    NULL, 'every function is SECURITY INVOKER C code of the session_ext library, which decides identity from its caller and then switches to the owner itself');

SELECT is(
    (SELECT array_agg(c.oid::regclass::text ORDER BY c.relname) FROM pg_catalog.pg_class c
      WHERE c.relnamespace = 'session_ext'::regnamespace AND c.relkind IN ('r', 'p')
        AND NOT (c.relrowsecurity AND c.relforcerowsecurity)),
    NULL, 'every table has row-level security enabled and forced');
SELECT is(
    (SELECT array_agg(p.tablename || '.' || p.policyname ORDER BY p.tablename, p.policyname) FROM pg_catalog.pg_policies p
      WHERE p.schemaname = 'session_ext' AND p.permissive = 'PERMISSIVE'
        AND regexp_replace(coalesce(p.qual, 'true'), '[()\s]', '', 'g') = 'true'
        AND p.roles <> ARRAY['session_ext_admin']::name[]),
    NULL, 'no permissive USING (true) policy applies to anyone but session_ext_admin');
SELECT isnt_definer('session_ext', 'create_user_session', ARRAY['text'], 'create (token) runs as its caller');
SELECT isnt_definer('session_ext', 'validate_session', ARRAY['text', 'text'], 'validate_session runs as its caller');
SELECT isnt_definer('session_ext', 'cleanup_expired_sessions', ARRAY['integer'], 'cleanup runs as its caller');

-- Who may execute: anon nothing; authenticated the self-service API; service_role everything.
SELECT function_privs_are('session_ext', 'validate_session', ARRAY['text', 'text'], 'anon', ARRAY[]::text[]);
SELECT function_privs_are('session_ext', 'cleanup_expired_sessions', ARRAY['integer'], 'anon', ARRAY[]::text[]);
SELECT function_privs_are('session_ext', 'create_user_session', ARRAY['text'], 'authenticated', ARRAY['EXECUTE']);
SELECT function_privs_are('session_ext', 'validate_session', ARRAY['text', 'text'], 'authenticated', ARRAY['EXECUTE']);
SELECT function_privs_are('session_ext', 'cleanup_expired_sessions', ARRAY['integer'], 'authenticated', ARRAY[]::text[]);
SELECT function_privs_are('session_ext', 'cleanup_expired_sessions', ARRAY['integer'], 'service_role', ARRAY['EXECUTE']);
SELECT function_privs_are('session_ext', 'session_stats', ARRAY[]::text[], 'authenticated', ARRAY[]::text[]);
SELECT function_privs_are('session_ext', 'session_stats', ARRAY[]::text[], 'service_role', ARRAY['EXECUTE']);

-- anon is refused by every function with 42501, and by the tables.
CREATE FUNCTION pg_temp.called_by_anon() RETURNS SETOF text LANGUAGE plpgsql AS $f$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS signature, p.proname,
               (SELECT string_agg('NULL::' || pg_catalog.format_type(t, NULL), ', ')
                  FROM unnest(p.proargtypes::oid[]) AS t) AS nulls
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'session_ext'::regnamespace
         ORDER BY 1
    LOOP
        RETURN NEXT throws_ok(format('SELECT session_ext.%I(%s)', f.proname, coalesce(f.nulls, '')),
                              '42501', NULL, 'anon: ' || f.signature);
    END LOOP;
END
$f$;
SET LOCAL ROLE anon;
SELECT * FROM pg_temp.called_by_anon();
SELECT throws_ok($$SELECT count(*) FROM session_ext.user_sessions$$, '42501', NULL, 'anon: the sessions table');
SELECT throws_ok($$SELECT count(*) FROM session_ext.session_audit_log$$, '42501', NULL, 'anon: the audit log');
RESET ROLE;

-- Sessions of two users, created by an admin.
\o /dev/null
CREATE TEMP TABLE made ON COMMIT DROP AS
SELECT 'alice' AS who, * FROM session_ext.create_user_session(user_id => :alice, session_data => '{"n":1}')
UNION ALL
SELECT 'bob', * FROM session_ext.create_user_session(user_id => :bob, session_data => '{"n":2}');
GRANT SELECT ON made TO PUBLIC;
\o

-- A user reads its own rows only, without the secret columns, and writes nothing directly.
SET LOCAL ROLE authenticated;
SET LOCAL request.jwt.claims = :alice_claims;
SELECT results_eq($$SELECT user_id FROM session_ext.user_sessions$$, ARRAY[:alice::uuid], 'alice sees only her session');
SELECT throws_ok($$SELECT token_hash FROM session_ext.user_sessions$$, '42501', NULL, 'token_hash is not readable');
SELECT throws_ok($$SELECT fingerprint_hash FROM session_ext.user_sessions$$, '42501', NULL, 'fingerprint_hash is not readable');
SELECT throws_ok($$SELECT root_token_hashes FROM session_ext.user_sessions$$, '42501', NULL, 'root_token_hashes is not readable');
SELECT throws_ok($$SELECT token_key FROM session_ext.user_sessions$$, '42501', NULL, 'token_key is not readable');
SELECT throws_ok($$SELECT token_generation FROM session_ext.user_sessions$$, '42501', NULL, 'token_generation is not readable');
SELECT results_eq($$SELECT DISTINCT user_id FROM session_ext.session_audit_log$$, ARRAY[:alice::uuid], 'alice reads only her own events');
SELECT throws_ok($$DELETE FROM session_ext.session_audit_log$$, '42501', NULL, 'no direct DELETE of audit rows');
SELECT throws_ok($$INSERT INTO session_ext.user_sessions (id, user_id, session_id, expires_at, valid_until)
                   VALUES (gen_random_uuid(), $$ || quote_literal(:alice) || $$, 'forged', now() + '1d', now() + '1d')$$,
                 '42501', NULL, 'no direct INSERT');
SELECT throws_ok($$UPDATE session_ext.user_sessions SET expires_at = now() + '10 years'$$, '42501', NULL, 'no direct UPDATE');
SELECT throws_ok($$DELETE FROM session_ext.user_sessions$$, '42501', NULL, 'no direct DELETE');

-- Alice cannot use, see or act on Bob's session.
SELECT is((SELECT session_ext.validate_session(token) FROM made WHERE who = 'bob'), NULL, 'bob''s token does not validate for alice');
SELECT is((SELECT session_ext.is_session_active(id) FROM made WHERE who = 'bob'), false, 'bob''s session reads as inactive for alice');
SELECT is((SELECT (session_ext.validate_session(token)).user_id FROM made WHERE who = 'alice'), :alice::uuid, 'her own token validates');
SELECT throws_ok($$SELECT session_ext.create_user_session(user_id => $$ || quote_literal(:bob) || $$, session_data => '{}')$$,
                 '42501', 'permission denied for the sessions of another user', 'alice cannot create a session for bob');
SELECT throws_ok($$SELECT session_ext.cleanup_expired_sessions()$$, '42501', NULL, 'a user cannot run cleanup');

-- service_role (BYPASSRLS, session_ext_admin) acts for any user.
RESET ROLE;
SET LOCAL ROLE service_role;
SET LOCAL request.jwt.claims = '{"role":"service_role"}';
SELECT is((SELECT count(*) FROM made WHERE session_ext.is_session_active(id)), 2::bigint, 'service_role sees every session');
SELECT ok((SELECT count(token_hash) FROM session_ext.user_sessions) >= 2, 'an admin reads the table, hashes included');
SELECT throws_ok($$SELECT token_key FROM session_ext.user_sessions$$, '42501', NULL, 'not even an admin reads the session keys');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
