WITH s AS (
    INSERT INTO session_ext.user_sessions
           (id, user_id, session_id, token_hash, session_data, created_at, last_active_at, expires_at,
            idle_timeout, valid_until, cleanup_after, token_key)
    SELECT x.id, gen_random_uuid(), x.id::text,
           sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), '{}',
           now(), now(), now() + interval '1 day', interval '1 hour', now() + interval '1 hour', now() + interval '1 hour',
       sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))
      FROM (SELECT gen_random_uuid() AS id) x
    RETURNING id, user_id)
INSERT INTO session_ext.session_audit_log (event, session_id, user_id, actor_role, details)
SELECT 'create', s.id, s.user_id, current_user, jsonb_build_object('session_id', s.id::text) FROM s;
