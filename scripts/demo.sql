-- The session lifecycle, walked through in SQL. Run by scripts/demo.sh as the superuser of a
-- throwaway cluster; the calls that an application or PostgREST would make run as an ordinary
-- role with JWT claims set, exactly as PostgREST sets them.
\set ON_ERROR_STOP 1
\pset footer off
\set alice 'a11ce000-0000-4000-8000-000000000001'

\echo '\n--- 1. CREATE EXTENSION session_ext, and its settings'
CREATE EXTENSION session_ext;
SELECT name, setting, unit FROM pg_settings WHERE name LIKE 'session\_ext.%' ORDER BY name;

\echo '\n--- 2. An application role (as Supabase''s "authenticated"), allowed the self-service API'
CREATE ROLE demo_app NOLOGIN;
GRANT session_ext_user TO demo_app;

\echo '\n--- 3. A request as user alice: SET ROLE demo_app and her JWT claims, as PostgREST does'
BEGIN;
SELECT set_config('role', 'demo_app', true) AS role,
       set_config('request.jwt.claims', '{"sub":"' || :'alice' || '","role":"demo_app"}', true) AS claims;
SELECT session_ext.current_user_id();

\echo '\n--- 4. Create a session, three ways'
\echo '(a) with a token the client already holds (only its SHA-256 is stored):'
SELECT session_ext.create_user_session(session_token => 'client-held-token-0123456789abcdefghij') AS id;
\echo '(b) with generated id and token, session data and options; the token is shown only this once:'
SELECT * FROM session_ext.create_user_session(
    user_id => :'alice', session_data => '{"theme": "dark", "cart": 3}',
    device_info => 'Firefox on Linux', ip_address => '203.0.113.9', idle_timeout => '30 minutes') \gset web_
SELECT :'web_id' AS id, :'web_token' AS token, :'web_expires_at' AS expires_at;
\echo '(c) under a session id of the application''s choosing, living for 2 seconds:'
SELECT * FROM session_ext.create_user_session(user_id => :'alice', session_id => 'mobile:alice-phone', ttl => '2 seconds') \gset phone_
SELECT :'phone_id' AS id, :'phone_session_id' AS session_id, :'phone_expires_at' AS expires_at;
COMMIT;

\echo '\n--- 5. What is stored: hashes, never tokens (as the superuser)'
SELECT session_id, encode(token_hash, 'hex') AS token_hash, session_data, expires_at - created_at AS lifetime, idle_timeout
  FROM session_ext.user_sessions ORDER BY created_at;

\echo '\n--- 6. The next request validates the bearer token (the hot path) and checks a session by id'
BEGIN;
SELECT set_config('role', 'demo_app', true), set_config('request.jwt.claims', '{"sub":"' || :'alice' || '"}', true) \g /dev/null
SELECT id, session_id, user_id, session_data, last_active_at, valid_until
  FROM session_ext.validate_session(session_token => :'web_token');
SELECT session_ext.is_session_active(:'web_id') AS web_active, session_ext.is_session_active(:'phone_id') AS phone_active;
\echo 'A token that was never issued does not validate:'
SELECT session_ext.validate_session(session_token => 'not-a-real-token-0123456789abcdefghij') IS NULL AS rejected;
COMMIT;

\echo '\n--- 7. Two and a half seconds later, the 2-second session has expired'
SELECT pg_sleep(2.5) \g /dev/null
BEGIN;
SELECT set_config('role', 'demo_app', true), set_config('request.jwt.claims', '{"sub":"' || :'alice' || '"}', true) \g /dev/null
SELECT session_ext.is_session_active(:'phone_id') AS phone_active,
       session_ext.validate_session(session_token => :'phone_token') IS NULL AS phone_token_rejected,
       session_ext.is_session_active(:'web_id') AS web_still_active;
COMMIT;

\echo '\n--- 8. Cleanup of what expired (the background worker also does this every session_ext.cleanup_interval)'
SELECT session_ext.cleanup_expired_sessions() AS deleted;
SELECT session_id, device_info FROM session_ext.user_sessions ORDER BY created_at;

\echo '\n--- 9. Health: sessions by state and the cleanup worker, from session_stats()'
SELECT jsonb_pretty(session_ext.session_stats() - 'settings') AS session_stats;

\echo '\n--- 10. Token rotation: tabs that race a rotation get the same new token; an older token ends the session'
BEGIN;
SELECT set_config('role', 'demo_app', true), set_config('request.jwt.claims', '{"sub":"' || :'alice' || '"}', true) \g /dev/null
SELECT token AS rotated_token FROM session_ext.rotate_session_token(:'web_token') \gset
\echo 'A second tab (or a retry) rotates the same token within session_ext.rotation_grace:'
SELECT (session_ext.rotate_session_token(:'web_token')).token = :'rotated_token' AS same_new_token;
SELECT token AS rotated_again FROM session_ext.rotate_session_token(:'rotated_token') \gset
COMMIT;
\echo 'The first token comes back two rotations later (a thief, or a stale device): the session ends for everyone'
BEGIN;
SELECT set_config('role', 'demo_app', true), set_config('request.jwt.claims', '{"sub":"' || :'alice' || '"}', true) \g /dev/null
SELECT session_ext.validate_session(session_token => :'web_token') IS NULL AS rejected,
       session_ext.validate_session(session_token => :'rotated_again') IS NULL AS current_token_rejected_too;
COMMIT;
SELECT event, details FROM session_ext.session_audit_log WHERE session_id = :'web_id' ORDER BY id;

\echo '\n--- 11. A JWT that names its session (as Supabase Auth''s session_id claim): refused at once after a logout'
SELECT id AS laptop_id FROM session_ext.create_user_session(user_id => :'alice', session_data => '{}', device_info => 'laptop') \gset
\echo 'The auth server signs the session id into the access token; each request checks the session it names:'
BEGIN;
SELECT set_config('role', 'demo_app', true),
       set_config('request.jwt.claims', json_build_object('sub', :'alice', 'session_id', :'laptop_id')::text, true) \g /dev/null
SELECT id, device_info, aal FROM session_ext.require_session();
COMMIT;
\echo 'After a second factor, the auth server raises the session to aal2 for 15 minutes:'
SELECT session_ext.set_session_aal(:'laptop_id', 'aal2', valid_for => '15 minutes') AS raised;
BEGIN;
SELECT set_config('role', 'demo_app', true),
       set_config('request.jwt.claims', json_build_object('sub', :'alice', 'session_id', :'laptop_id')::text, true) \g /dev/null
SELECT id, aal, aal_expires_at FROM session_ext.require_session(min_aal => 'aal2');
COMMIT;
\echo 'Logged out from another device; the same JWT, still signed and unexpired, on its next request:'
SELECT session_ext.revoke_session(:'laptop_id') AS logged_out;
BEGIN;
SELECT set_config('role', 'demo_app', true),
       set_config('request.jwt.claims', json_build_object('sub', :'alice', 'session_id', :'laptop_id')::text, true) \g /dev/null
DO $$
BEGIN
    PERFORM session_ext.require_session();
EXCEPTION WHEN invalid_authorization_specification THEN
    RAISE NOTICE 'refused, SQLSTATE % (HTTP 401 through the PostgREST hook): %', SQLSTATE, SQLERRM;
END
$$;
COMMIT;
