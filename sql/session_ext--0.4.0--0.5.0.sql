-- session_ext 0.4.0 -> 0.5.0: sessions carried by JWTs (SPEC §4): the session a request's
-- claims name (current_session, require_session), an assurance level per session
-- (set_session_aal), a trigger that ends a deleted user's sessions (end_user_sessions), and
-- import_session for moving in from a table of one's own.
-- A fresh 0.5.0 install runs this file too (src/lib.rs), after the functions exist and after
-- 0.3.0--0.4.0: both paths get the same table, row type, functions and privileges.
\echo Use "ALTER EXTENSION session_ext UPDATE TO '0.5.0'" to load this file. \quit

-- No rewrite: a constant default is kept in the catalog for the existing rows.
ALTER TABLE session_ext.user_sessions
    ADD COLUMN aal text NOT NULL DEFAULT 'aal1',
    ADD COLUMN aal_expires_at timestamptz;
ALTER TYPE session_ext.session_info
    ADD ATTRIBUTE aal text,
    ADD ATTRIBUTE aal_expires_at timestamptz;
GRANT SELECT (aal, aal_expires_at) ON session_ext.user_sessions TO session_ext_user;
GRANT SELECT (aal, aal_expires_at) ON session_ext.user_sessions TO session_ext_admin;

-- The functions, as the library declares them (a fresh install has just created them alike).
CREATE OR REPLACE FUNCTION session_ext.current_session_id() RETURNS uuid
    STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'current_session_id_wrapper';
CREATE OR REPLACE FUNCTION session_ext.current_session() RETURNS session_ext.session_info
    STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'current_session_wrapper';
CREATE OR REPLACE FUNCTION session_ext.require_session("min_aal" text DEFAULT NULL) RETURNS session_ext.session_info
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'require_session_wrapper';
CREATE OR REPLACE FUNCTION session_ext.set_session_aal("session_id" uuid, "aal" text, "valid_for" interval DEFAULT NULL)
    RETURNS bool VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'set_session_aal_wrapper';
CREATE OR REPLACE FUNCTION session_ext.end_user_sessions() RETURNS trigger
    STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'end_user_sessions_wrapper';
CREATE OR REPLACE FUNCTION session_ext.import_session(
    "user_id" uuid,
    "token_sha256" bytea,
    "expires_at" timestamptz,
    "last_active_at" timestamptz DEFAULT NULL,
    "created_at" timestamptz DEFAULT NULL,
    "idle_timeout" interval DEFAULT NULL,
    "device_info" text DEFAULT NULL,
    "user_agent" text DEFAULT NULL,
    "ip_address" inet DEFAULT NULL,
    "session_data" json DEFAULT '{}',
    "id" uuid DEFAULT NULL
) RETURNS uuid VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'import_session_wrapper';

-- Users read their own session; admins set levels, import, and attach the trigger (whoever may
-- create it decides that deleting a row of that table ends a user's sessions).
REVOKE ALL ON FUNCTION session_ext.current_session_id(), session_ext.current_session(),
    session_ext.require_session(text), session_ext.set_session_aal(uuid, text, interval),
    session_ext.end_user_sessions(),
    session_ext.import_session(uuid, bytea, timestamptz, timestamptz, timestamptz, interval, text, text, inet, json, uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION session_ext.current_session_id(), session_ext.current_session(),
    session_ext.require_session(text) TO session_ext_user;
GRANT EXECUTE ON FUNCTION session_ext.set_session_aal(uuid, text, interval), session_ext.end_user_sessions(),
    session_ext.import_session(uuid, bytea, timestamptz, timestamptz, timestamptz, interval, text, text, inet, json, uuid)
    TO session_ext_admin;

COMMENT ON COLUMN session_ext.user_sessions.aal IS
    'Authenticator assurance level: aal1 (one factor, the default), aal2 or aal3; set by set_session_aal.';
COMMENT ON COLUMN session_ext.user_sessions.aal_expires_at IS
    'When a raised aal lapses back to aal1; NULL for the rest of the session.';
COMMENT ON COLUMN session_ext.session_info.aal IS
    'The assurance level in force: aal1 once a raised level has lapsed.';
COMMENT ON COLUMN session_ext.session_info.aal_expires_at IS
    'When the level in force lapses to aal1; NULL when it does not.';
COMMENT ON FUNCTION session_ext.current_session_id() IS
    'The session_id claim of request.jwt.claims; NULL when absent or empty; 22P02 when not a UUID.';
COMMENT ON FUNCTION session_ext.current_session() IS
    'The active session the claims name (session_id), owned by their sub; NULL otherwise. Records activity as validate_session does.';
COMMENT ON FUNCTION session_ext.require_session(text) IS
    'For db-pre-request: claims without session_id pass (NULL); otherwise the session, or 28000 when it is not active and 42501 when its aal is below min_aal.';
COMMENT ON FUNCTION session_ext.set_session_aal(uuid, text, interval) IS
    'Sets an active session''s assurance level (admins), optionally for valid_for only; true when the session is active.';
COMMENT ON FUNCTION session_ext.end_user_sessions() IS
    'Trigger for AFTER DELETE FOR EACH ROW on a users table: revokes the deleted user''s sessions (reason user_deleted). Argument: the uuid id column (default id).';
COMMENT ON FUNCTION session_ext.import_session(uuid, bytea, timestamptz, timestamptz, timestamptz, interval, text, text, inet, json, uuid) IS
    'Imports a session from another store by the SHA-256 of its token, and optionally its id (admins); NULL for one already over.';
