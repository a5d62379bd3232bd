\set n random(1, :sessions)
BEGIN;
SELECT set_config('request.jwt.claims', bench.claims(:n), true);
SELECT s.id, s.session_id, s.user_id, s.session_data, s.data_version, s.device_info, s.user_agent,
       s.ip_address, s.created_at, s.last_active_at, s.expires_at, s.idle_timeout, s.valid_until,
       s.revoked_at, s.revoke_reason,
       CASE WHEN s.aal_expires_at <= now() THEN 'aal1' ELSE s.aal END,
       CASE WHEN s.aal_expires_at > now() THEN s.aal_expires_at END
  FROM session_ext.user_sessions s
 WHERE s.id = (current_setting('request.jwt.claims')::jsonb ->> 'session_id')::uuid
   AND s.user_id = (current_setting('request.jwt.claims')::jsonb ->> 'sub')::uuid
   AND s.revoked_at IS NULL AND s.valid_until > now();
COMMIT;
