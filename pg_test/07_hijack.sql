-- Search-path hijack (SPEC §2): a hostile role puts a schema of its own first on its search_path,
-- with functions and operators named like the ones session_ext uses, and temp tables named like
-- its tables. Every one of them raises, so a single call that picked one up would fail here.
\ir fixtures/begin.sql
SELECT plan(20);

\ir fixtures/mallory.sql

SET LOCAL ROLE mallory;
CREATE FUNCTION evil.trap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
-- Look-alikes of what the API's SQL calls, each raising.
DO $evil$
DECLARE
    decoy text;
BEGIN
    FOREACH decoy IN ARRAY ARRAY[
        'now() RETURNS timestamptz',
        'sha256(bytea) RETURNS bytea',
        'gen_random_uuid() RETURNS uuid',
        'current_setting(text) RETURNS text',
        'current_setting(text, boolean) RETURNS text',
        'current_user_id() RETURNS uuid',
        'pg_notify(text, text) RETURNS void',
        'jsonb_build_object(VARIADIC text[]) RETURNS jsonb',
        'jsonb_typeof(jsonb) RETURNS text',
        'pg_column_size(jsonb) RETURNS integer',
        'count_user_sessions(uuid) RETURNS bigint',
        'uuid_eq(uuid, uuid) RETURNS boolean',
        'bytea_eq(bytea, bytea) RETURNS boolean',
        'text_eq(text, text) RETURNS boolean',
        'tstz_lt(timestamptz, timestamptz) RETURNS boolean',
        'tstz_gt(timestamptz, timestamptz) RETURNS boolean',
        'jsonb_concat(jsonb, jsonb) RETURNS jsonb',
        'tstz_pl(timestamptz, interval) RETURNS timestamptz'
    ] LOOP
        EXECUTE format('CREATE FUNCTION evil.%s LANGUAGE plpgsql AS $b$ BEGIN RAISE EXCEPTION %L; END $b$',
                       decoy, 'hijacked: ' || decoy);
    END LOOP;
END
$evil$;
CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.uuid_eq);
CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.bytea_eq);
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
CREATE OPERATOR evil.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.tstz_lt);
CREATE OPERATOR evil.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.tstz_gt);
CREATE OPERATOR evil.|| (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = evil.jsonb_concat);
CREATE OPERATOR evil.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = evil.tstz_pl);
-- Temp tables named like the extension's: pg_temp is on the pinned search_path, last.
CREATE TEMP TABLE user_sessions (id uuid);
CREATE TEMP TABLE session_audit_log (id bigint);
CREATE TRIGGER trap BEFORE INSERT OR UPDATE OR DELETE ON pg_temp.user_sessions FOR EACH ROW EXECUTE FUNCTION evil.trap();
CREATE TRIGGER trap BEFORE INSERT OR UPDATE OR DELETE ON pg_temp.session_audit_log FOR EACH ROW EXECUTE FUNCTION evil.trap();
RESET ROLE;

-- The decoys work where nothing is pinned: plain queries on that search_path are hijacked.
SELECT is(evil.run('SELECT now()::text'), 'ERROR: hijacked: now() RETURNS timestamptz', 'an unqualified now() runs the decoy');
SELECT is(evil.run($$SELECT ('00000000-0000-0000-0000-000000000000'::uuid = '00000000-0000-0000-0000-000000000000'::uuid)::text$$),
          'ERROR: hijacked: uuid_eq(uuid, uuid) RETURNS boolean', 'an unqualified = runs the decoy operator');

-- Every API function, called by mallory on that search_path, never runs a decoy.
SET LOCAL session_ext.audit = on;
SET LOCAL session_ext.notify_channel = 'session_events';
SET LOCAL ROLE mallory;
SELECT set_config('request.jwt.claims', :mallory_claims, true);
SELECT is(evil.run($$CREATE TEMP TABLE mine AS
    SELECT * FROM session_ext.create_user_session(user_id => '3a110000-0000-4000-8000-00000000000e', session_data => '{"a":1}',
                                                  idle_timeout => '1 hour', fingerprint => 'fp')$$), 'done', 'create (generated overload)');
SELECT is(evil.run($$CREATE TEMP TABLE custom AS
    SELECT * FROM session_ext.create_user_session(user_id => '3a110000-0000-4000-8000-00000000000e', session_id => 'mallory-tab')$$),
    'done', 'create (custom id overload)');
SELECT is(evil.run($$SELECT (session_ext.create_user_session(session_token => repeat('m', 43)) IS NOT NULL)::text$$), 'true',
    'create (token overload)');
SELECT is(evil.run($$SELECT (session_ext.validate_session(token, 'fp')).user_id::text FROM mine$$), :mallory, 'validate_session');
SELECT is(evil.run($$SELECT (session_ext.validate_session(token, 'other')).user_id::text FROM mine$$), NULL,
    'validate_session, fingerprint mismatch');
SELECT is(evil.run('SELECT session_ext.is_session_active(id)::text FROM mine'), 'true', 'is_session_active');
SELECT is(evil.run('SELECT (session_ext.get_session(id)).session_data::text FROM mine'), '{"a": 1}', 'get_session');
SELECT is(evil.run('SELECT (session_ext.touch_session(id) IS NOT NULL)::text FROM mine'), 'true', 'touch_session');
SELECT is(evil.run($$SELECT session_ext.update_session_data(session_id => id, session_data => '{"b":2}', expected_version => 1)::text
                     FROM mine$$), '2', 'update_session_data (merge)');
SELECT is(evil.run('SELECT session_ext.count_user_sessions()::text'), '3', 'count_user_sessions');
SELECT is(evil.run('SELECT count(*)::text FROM session_ext.list_user_sessions()'), '3', 'list_user_sessions');
SELECT is(evil.run('SELECT (r.token IS NOT NULL)::text FROM mine, session_ext.rotate_session_token(mine.token) r'), 'true',
    'rotate_session_token');
SELECT is(evil.run($$SELECT (session_ext.validate_session(token, 'fp')).user_id::text FROM mine$$), :mallory,
    'the replaced token validates within the rotation grace (its family is recognised)');
SELECT is(evil.run('SELECT session_ext.revoke_other_sessions(id)::text FROM mine'), '2', 'revoke_other_sessions');
SELECT is(evil.run('SELECT session_ext.revoke_session(id)::text FROM mine'), 'true', 'revoke_session');
SELECT is(evil.run('SELECT session_ext.revoke_all_user_sessions()::text'), '0', 'revoke_all_user_sessions');
RESET ROLE;

-- The maintenance functions, by an admin on the same search_path.
SET LOCAL ROLE service_role;
SELECT is(evil.run('SELECT session_ext.cleanup_expired_sessions()::text'), '0', 'cleanup_expired_sessions');
SELECT is(evil.run($$SELECT (session_ext.session_stats() ? 'sessions')::text$$), 'true', 'session_stats');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
