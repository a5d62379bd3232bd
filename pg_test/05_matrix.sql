-- The privilege matrix (SPEC §2, §3): for anon, user A (alice, the owner of the session), user B
-- (bob), a plain member of session_ext_admin, a BYPASSRLS admin (Supabase's service_role) and the
-- table owner, what every function does with A's session and what every table command does.
-- Each cell runs in a subtransaction that is rolled back, so no cell sees another's effects;
-- a cell is the call's result as text, or the SQLSTATE it raised.
\ir fixtures/begin.sql
SELECT plan(36 + 5 * (SELECT count(*)::int FROM pg_catalog.pg_proc WHERE pronamespace = 'session_ext'::regnamespace));

CREATE ROLE matrix_admin NOLOGIN;
GRANT session_ext_admin TO matrix_admin;

\o /dev/null
CREATE TEMP TABLE made ON COMMIT DROP AS
SELECT 'alice' AS who, * FROM session_ext.create_user_session(user_id => :alice, session_data => '{"n":1}')
UNION ALL
SELECT 'bob', * FROM session_ext.create_user_session(user_id => :bob, session_data => '{"n":2}');
\o

-- The callers, as PostgREST would present them; the owner is the superuser that created the
-- extension, calling without claims.
CREATE TEMP TABLE callers (ord int, role text, claims text) ON COMMIT DROP;
INSERT INTO callers VALUES
    (1, 'anon', '{"role":"anon"}'),
    (2, 'authenticated', :alice_claims),
    (3, 'authenticated', :bob_claims),
    (4, 'matrix_admin', '{"role":"matrix_admin"}'),
    (5, 'service_role', '{"role":"service_role"}'),
    (6, 'none', '');

CREATE FUNCTION pg_temp.cell(api_role text, claims text, statement text) RETURNS text
LANGUAGE plpgsql AS $f$
DECLARE
    result text;
BEGIN
    PERFORM set_config('role', api_role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
    EXECUTE statement INTO result;
    -- Undo whatever the call did; the message carries its result out of the subtransaction.
    RAISE SQLSTATE 'P0099' USING MESSAGE = coalesce(result, 'null');
EXCEPTION
    WHEN SQLSTATE 'P0099' THEN RETURN SQLERRM;
    WHEN OTHERS THEN RETURN SQLSTATE;
END
$f$;

-- One row of the matrix: the statement (with %1$s = alice's session id, %2$s = her token,
-- %3$s = her user id) for every caller, in the order of `callers`.
CREATE FUNCTION pg_temp.row_of(statement text) RETURNS text[] LANGUAGE sql AS $f$
    SELECT array_agg(pg_temp.cell(c.role, c.claims,
                                  format(statement, quote_literal(m.id), quote_literal(m.token), quote_literal(m.user_id)))
                     ORDER BY c.ord)
      FROM callers c, (SELECT s.id, m.token, s.user_id FROM made m JOIN session_ext.user_sessions s ON s.id = m.id
                        WHERE m.who = 'alice') m
$f$;

--                                                                          anon     alice    bob      admin    service  owner
SELECT is(pg_temp.row_of('SELECT session_ext.current_user_id()::text'),
    ARRAY['42501', :alice, :bob, 'null', 'null', 'null'], 'current_user_id');
SELECT is(pg_temp.row_of('SELECT session_ext.is_session_active(%1$s)::text'),
    ARRAY['42501', 'true', 'false', 'true', 'true', 'true'], 'is_session_active on alice''s session');
SELECT is(pg_temp.row_of('SELECT (session_ext.validate_session(%2$s)).user_id::text'),
    ARRAY['42501', :alice, 'null', :alice, :alice, :alice], 'validate_session with alice''s token');
SELECT is(pg_temp.row_of('SELECT (session_ext.get_session(%1$s)).user_id::text'),
    ARRAY['42501', :alice, '42501', :alice, :alice, :alice], 'get_session of alice''s session');
SELECT is(pg_temp.row_of('SELECT (session_ext.touch_session(%1$s) IS NOT NULL)::text'),
    ARRAY['42501', 'true', '42501', 'true', 'true', 'true'], 'touch_session of alice''s session');
SELECT is(pg_temp.row_of($$SELECT session_ext.update_session_data(session_id => %1$s, session_data => '{"x":1}')::text$$),
    ARRAY['42501', '2', '42501', '2', '2', '2'], 'update_session_data of alice''s session');
SELECT is(pg_temp.row_of('SELECT ((session_ext.rotate_session_token(%2$s)).token IS NOT NULL)::text'),
    ARRAY['42501', 'true', '42501', 'true', 'true', 'true'], 'rotate_session_token with alice''s token');
SELECT is(pg_temp.row_of('SELECT count(*)::text FROM session_ext.list_user_sessions(%3$s)'),
    ARRAY['42501', '1', '42501', '1', '1', '1'], 'list_user_sessions of alice');
SELECT is(pg_temp.row_of('SELECT session_ext.count_user_sessions(%3$s)::text'),
    ARRAY['42501', '1', '42501', '1', '1', '1'], 'count_user_sessions of alice');
SELECT is(pg_temp.row_of('SELECT session_ext.revoke_session(%1$s)::text'),
    ARRAY['42501', 'true', '42501', 'true', 'true', 'true'], 'revoke_session of alice''s session');
SELECT is(pg_temp.row_of('SELECT session_ext.revoke_other_sessions(%1$s)::text'),
    ARRAY['42501', '0', '42501', '0', '0', '0'], 'revoke_other_sessions for alice''s session');
SELECT is(pg_temp.row_of('SELECT session_ext.revoke_all_user_sessions(%3$s)::text'),
    ARRAY['42501', '1', '42501', '1', '1', '1'], 'revoke_all_user_sessions of alice');
SELECT is(pg_temp.row_of($$SELECT (session_ext.create_user_session(user_id => %3$s, session_data => '{}')).id IS NOT NULL$$),
    ARRAY['42501', 'true', '42501', 'true', 'true', 'true'], 'create_user_session for alice');
SELECT is(pg_temp.row_of($$SELECT session_ext.create_user_session(session_token => repeat('t', 43)) IS NOT NULL$$),
    ARRAY['42501', 'true', 'true', '28000', '28000', '28000'], 'create_user_session with a token, for oneself (admins have no user id)');
SELECT is(pg_temp.row_of('SELECT session_ext.cleanup_expired_sessions()::text'),
    ARRAY['42501', '42501', '42501', '0', '0', '0'], 'cleanup_expired_sessions');
SELECT is(pg_temp.row_of($$SELECT (session_ext.session_stats() ? 'sessions')::text$$),
    ARRAY['42501', '42501', '42501', 'true', 'true', 'true'], 'session_stats');

-- Sessions carried by JWTs (claims without session_id here: pg_test/08_jwt.sql names sessions).
SELECT is(pg_temp.row_of('SELECT session_ext.current_session_id()::text'),
    ARRAY['42501', 'null', 'null', 'null', 'null', 'null'], 'current_session_id');
SELECT is(pg_temp.row_of('SELECT (session_ext.current_session()).id::text'),
    ARRAY['42501', 'null', 'null', 'null', 'null', 'null'], 'current_session');
SELECT is(pg_temp.row_of('SELECT (session_ext.require_session()).id::text'),
    ARRAY['42501', 'null', 'null', 'null', 'null', 'null'], 'require_session');
SELECT is(pg_temp.row_of($$SELECT session_ext.set_session_aal(%1$s, 'aal2')::text$$),
    ARRAY['42501', '42501', '42501', 'true', 'true', 'true'], 'set_session_aal of alice''s session');
SELECT is(pg_temp.row_of($$SELECT (session_ext.import_session(%3$s, sha256('imported'), now() + interval '1 day') IS NOT NULL)::text$$),
    ARRAY['42501', '42501', '42501', 'true', 'true', 'true'], 'import_session for alice');
SELECT is(pg_temp.row_of('SELECT session_ext.end_user_sessions()::text'),
    ARRAY['42501', '42501', '42501', '39P01', '39P01', '39P01'], 'end_user_sessions, called other than as a trigger');

-- CSRF (a bearer of alice's token gets her session's CSRF token, and it verifies).
SELECT is(pg_temp.row_of('SELECT (session_ext.session_csrf_token(%2$s) IS NOT NULL)::text'),
    ARRAY['42501', 'true', 'false', 'true', 'true', 'true'], 'session_csrf_token with alice''s token');
SELECT is(pg_temp.row_of('SELECT session_ext.verify_csrf_token(%2$s, session_ext.session_csrf_token(%2$s))::text'),
    ARRAY['42501', 'true', 'false', 'true', 'true', 'true'], 'verify_csrf_token with alice''s token');

-- Every function is in the matrix above.
SELECT is((SELECT count(DISTINCT proname) FROM pg_catalog.pg_proc WHERE pronamespace = 'session_ext'::regnamespace),
    23::bigint, 'the matrix covers every function of the schema');

-- The tables: users read their own rows, admins all; nobody but the owner writes directly.
SELECT is(pg_temp.row_of('SELECT count(*)::text FROM session_ext.user_sessions'),
    ARRAY['42501', '1', '1', '2', '2', '2'], 'SELECT on user_sessions');
SELECT is(pg_temp.row_of($$WITH w AS (INSERT INTO session_ext.user_sessions (id, user_id, session_id, expires_at, valid_until, cleanup_after, token_key)
                          VALUES (gen_random_uuid(), %3$s, 'forged', now() + '1 day', now() + '1 day', now() + '1 day', '\x00') RETURNING 1)
                          SELECT count(*)::text FROM w$$),
    ARRAY['42501', '42501', '42501', '42501', '42501', '1'], 'INSERT into user_sessions');
SELECT is(pg_temp.row_of($$WITH w AS (UPDATE session_ext.user_sessions SET expires_at = now() + '10 years' RETURNING 1)
                          SELECT count(*)::text FROM w$$),
    ARRAY['42501', '42501', '42501', '42501', '42501', '2'], 'UPDATE of user_sessions');
SELECT is(pg_temp.row_of('WITH w AS (DELETE FROM session_ext.user_sessions RETURNING 1) SELECT count(*)::text FROM w'),
    ARRAY['42501', '42501', '42501', '42501', '42501', '2'], 'DELETE from user_sessions');
SELECT is(pg_temp.row_of('SELECT count(*)::text FROM session_ext.session_audit_log'),
    ARRAY['42501', '1', '1', '2', '2', '2'], 'SELECT on session_audit_log');
SELECT is(pg_temp.row_of($$WITH w AS (INSERT INTO session_ext.session_audit_log (event, user_id, actor_role)
                          VALUES ('forged', %3$s, 'x') RETURNING 1) SELECT count(*)::text FROM w$$),
    ARRAY['42501', '42501', '42501', '42501', '42501', '1'], 'INSERT into session_audit_log');
SELECT is(pg_temp.row_of($$WITH w AS (UPDATE session_ext.session_audit_log SET event = 'forged' RETURNING 1)
                          SELECT count(*)::text FROM w$$),
    ARRAY['42501', '42501', '42501', '42501', '42501', '2'], 'UPDATE of session_audit_log');
SELECT is(pg_temp.row_of('WITH w AS (DELETE FROM session_ext.session_audit_log RETURNING 1) SELECT count(*)::text FROM w'),
    ARRAY['42501', '42501', '42501', '42501', '42501', '2'], 'DELETE from session_audit_log');
SELECT is(pg_temp.row_of('SELECT count(token_hash)::text FROM session_ext.user_sessions'),
    ARRAY['42501', '42501', '42501', '2', '2', '2'], 'the token hashes: admins only');

-- Execute privileges and definer status of every function, by role.
CREATE FUNCTION pg_temp.privileges() RETURNS SETOF text LANGUAGE plpgsql AS $f$
DECLARE
    f record;
    admin_only boolean;
BEGIN
    FOR f IN
        SELECT p.proname, p.oid::regprocedure AS signature,
               ARRAY(SELECT pg_catalog.format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, n) ORDER BY n) AS args
          FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'session_ext'::regnamespace ORDER BY 2
    LOOP
        admin_only := f.proname IN ('cleanup_expired_sessions', 'session_stats', 'set_session_aal',
                                    'import_session', 'end_user_sessions');
        RETURN NEXT function_privs_are('session_ext', f.proname, f.args, 'anon', ARRAY[]::text[]);
        RETURN NEXT function_privs_are('session_ext', f.proname, f.args, 'authenticated',
            CASE WHEN admin_only THEN ARRAY[]::text[] ELSE ARRAY['EXECUTE'] END);
        RETURN NEXT function_privs_are('session_ext', f.proname, f.args, 'matrix_admin', ARRAY['EXECUTE']);
        RETURN NEXT function_privs_are('session_ext', f.proname, f.args, 'service_role', ARRAY['EXECUTE']);
        -- Each runs as its caller and switches to the owner itself, after deciding the caller's rights.
        RETURN NEXT isnt_definer('session_ext', f.proname, f.args);
    END LOOP;
END
$f$;
SELECT * FROM pg_temp.privileges();
SELECT policies_are('session_ext', 'user_sessions', ARRAY['user_sessions_select_own', 'user_sessions_select_admin']);
SELECT policies_are('session_ext', 'session_audit_log', ARRAY['session_audit_log_select_own', 'session_audit_log_select_admin']);

SELECT * FROM finish();
ROLLBACK;
