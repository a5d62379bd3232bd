-- session_ext 0.6.0 -> 0.7.0: CSRF protection (SPEC §4 "CSRF"), the synchronizer token pattern
-- with the token derived from each session's secret key: session_csrf_token gives it to the page,
-- verify_csrf_token checks what a state-changing request sent back.
-- A fresh 0.7.0 install runs this file too (src/lib.rs), after the functions exist: both paths get
-- the same functions, privileges and comments.
\echo Use "ALTER EXTENSION session_ext UPDATE TO '0.7.0'" to load this file. \quit

-- The functions, as the library declares them (a fresh install has just created them alike).
CREATE OR REPLACE FUNCTION session_ext.session_csrf_token("session_token" text, "fingerprint" text DEFAULT NULL)
    RETURNS text VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'session_csrf_token_wrapper';
CREATE OR REPLACE FUNCTION session_ext.verify_csrf_token("session_token" text, "csrf_token" text, "fingerprint" text DEFAULT NULL)
    RETURNS bool VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'verify_csrf_token_wrapper';

-- Self-service, as validate_session: whoever holds a session's token may ask for its CSRF token.
REVOKE ALL ON FUNCTION session_ext.session_csrf_token(text, text), session_ext.verify_csrf_token(text, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION session_ext.session_csrf_token(text, text), session_ext.verify_csrf_token(text, text, text)
    TO session_ext_user;

COMMENT ON FUNCTION session_ext.session_csrf_token(text, text) IS
    'The CSRF (synchronizer) token of the session a bearer token belongs to (with its fingerprint, if bound to one), derived from the session''s secret key: the same across rotations, NULL when the session is not active. Example: SELECT session_ext.session_csrf_token(''...'').';
COMMENT ON FUNCTION session_ext.verify_csrf_token(text, text, text) IS
    'True when csrf_token is the CSRF token of the active session session_token belongs to (constant-time comparison); false for a wrong, missing or ended one, never an error.';
