-- session_ext 0.3.0 -> 0.4.0: token families (SPEC §4 rotate_session_token). Every token a
-- session ever had stays recognisable while the session row exists, at no storage per rotation:
-- a rotated token is derived from its parent with the session's secret key (src/token.rs), and
-- carries the session id, its generation and a MAC under that key. Only the family's roots, the
-- tokens session_ext did not derive, are remembered by their SHA-256.
-- A fresh 0.4.0 install runs this file too (src/lib.rs), after sql/schema.sql: both paths get
-- the same table, column for column.
\echo Use "ALTER EXTENSION session_ext UPDATE TO '0.4.0'" to load this file. \quit

-- One rewrite of the table: the one rotated-away token a 0.3.0 session remembers becomes the
-- first root of its family; every existing session gets its secret key, 256 bits that never leave
-- the database (the SHA-256 of two random UUIDs: 244 bits of the server's strong random source,
-- as gen_random_uuid reads it; new sessions get 32 bytes of the operating system's generator);
-- the generation of each current token is 0.
DROP INDEX session_ext.user_sessions_previous_token_idx;
ALTER TABLE session_ext.user_sessions RENAME COLUMN previous_token_hash TO root_token_hashes;
ALTER TABLE session_ext.user_sessions
    ALTER COLUMN root_token_hashes TYPE bytea[]
        USING CASE WHEN root_token_hashes IS NOT NULL THEN ARRAY[root_token_hashes] END,
    ADD COLUMN token_key bytea NOT NULL
        DEFAULT pg_catalog.sha256(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                                  OPERATOR(pg_catalog.||) pg_catalog.uuid_send(pg_catalog.gen_random_uuid())),
    ADD COLUMN token_generation bigint NOT NULL DEFAULT 0;
ALTER TABLE session_ext.user_sessions ALTER COLUMN token_key DROP DEFAULT;
-- Built once over the rewritten table. Looked up only when a presented token is no session's
-- current one. Without fastupdate a lookup never scans a pending list; a session adds its
-- entries once, at its first rotation.
CREATE INDEX user_sessions_root_tokens_idx ON session_ext.user_sessions
    USING gin (root_token_hashes) WITH (fastupdate = off);

-- Column privileges, users' then admins' (the order a fresh install must match): users never
-- see the secret hashes; admins read every column but the session keys, since with a key and any
-- earlier token of its family the session's current token could be computed (src/token.rs). No
-- role reads the keys.
REVOKE SELECT ON session_ext.user_sessions FROM session_ext_admin;
GRANT SELECT (id, user_id, session_id, session_data, data_version, device_info, user_agent,
              ip_address, created_at, last_active_at, expires_at, idle_timeout, valid_until,
              revoked_at, revoke_reason)
    ON session_ext.user_sessions TO session_ext_user;
GRANT SELECT (id, user_id, session_id, token_hash, root_token_hashes, rotated_at, session_data, data_version,
              device_info, user_agent, ip_address, fingerprint_hash, created_at, last_active_at, expires_at,
              idle_timeout, valid_until, revoked_at, revoke_reason, token_generation)
    ON session_ext.user_sessions TO session_ext_admin;

COMMENT ON COLUMN session_ext.user_sessions.root_token_hashes IS
    'SHA-256 of the token family''s roots once rotated away: the token the session was created with (and for a session from before 0.4.0, the token rotated away before the update). Presenting one revokes the session (token_reuse). Not readable by session_ext_user.';
COMMENT ON COLUMN session_ext.user_sessions.rotated_at IS
    'When the token was last rotated: the replaced token still works for session_ext.rotation_grace after it.';
COMMENT ON COLUMN session_ext.user_sessions.token_key IS
    'The session''s secret key: derives each rotated token from its parent and authenticates the family''s tokens. Never leaves the database; not readable by session_ext_user.';
COMMENT ON COLUMN session_ext.user_sessions.token_generation IS
    'How many times the token was rotated; rotated tokens carry their generation.';
