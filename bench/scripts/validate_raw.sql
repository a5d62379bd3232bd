\set n random(1, :sessions)
SELECT s.id, s.session_id, s.user_id, s.session_data, s.data_version, s.device_info, s.user_agent,
       s.ip_address, s.created_at, s.last_active_at, s.expires_at, s.idle_timeout, s.valid_until,
       s.revoked_at, s.revoke_reason,
       CASE WHEN s.aal_expires_at <= now() THEN 'aal1' ELSE s.aal END,
       CASE WHEN s.aal_expires_at > now() THEN s.aal_expires_at END
  FROM session_ext.user_sessions s
 WHERE s.token_hash = sha256(convert_to(bench.token(:n), 'UTF8'))
   AND s.revoked_at IS NULL AND s.valid_until > now();
