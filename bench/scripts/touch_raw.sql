\set n random(1, :sessions)
UPDATE bench.plain_sessions s SET last_active_at = now()
 WHERE s.token_hash = sha256(convert_to(bench.token(:n), 'UTF8'))
   AND s.revoked_at IS NULL AND s.expires_at > now()
   AND (s.idle_timeout IS NULL OR s.last_active_at + s.idle_timeout > now())
RETURNING s.id;
