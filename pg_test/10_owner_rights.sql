-- Owner rights that cannot leak (SPEC §2): code an admin attached to session_ext's tables (an
-- expression index, a partial index, an index on a SQL function PostgreSQL inlines, a CHECK
-- constraint) runs with the extension owner's rights whenever a function writes a row, below the
-- executor or through it. A signed-in role without privileges puts a schema of its own first on
-- its search_path, with a lower() that records who runs it and makes mallory a superuser, and an
-- upper() that raises: neither ever runs inside the functions.
\ir fixtures/begin.sql
SELECT plan(16);

\ir fixtures/mallory.sql

-- What an admin attaches: functions that call lower() and upper() without a schema.
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO PUBLIC;
CREATE FUNCTION app.norm(text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN lower($1); END $$;
CREATE FUNCTION app.norm_moment(timestamptz) RETURNS text LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN RETURN lower($1::text); END $$;
-- A SQL function: PostgreSQL inlines it, resolving upper(), when a backend first reads the index.
CREATE FUNCTION app.fold(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper($1) $$;

SET LOCAL ROLE mallory;
CREATE TABLE evil.ran (who text);
GRANT INSERT ON evil.ran TO PUBLIC;
CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO evil.ran VALUES (current_user);
    BEGIN
        ALTER ROLE mallory SUPERUSER;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    RETURN pg_catalog.lower($1);
END
$$;
-- Immutable, so that PostgreSQL inlines it into app.fold: it can only read, and raises.
CREATE FUNCTION evil.upper(text) RETURNS text LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN RAISE EXCEPTION 'hijacked: upper ran as %', current_user; END $$;
RESET ROLE;

-- The trap works where nothing is pinned: on mallory's path an unqualified lower() is hers.
SET LOCAL ROLE mallory;
SELECT is(evil.run($$SELECT lower('X')$$), 'x', 'mallory''s own query runs her lower()');
RESET ROLE;
SELECT is((SELECT string_agg(who, ',') FROM evil.ran), 'mallory', '... as mallory');
DELETE FROM evil.ran;

-- Indexes: on expressions (one of them on last_active_at, so that an activity write is not HOT and
-- indexes the new version), a partial one, one on the audit log.
CREATE INDEX attached_device ON session_ext.user_sessions (app.norm(device_info));
CREATE INDEX attached_agent ON session_ext.user_sessions (app.fold(user_agent));
CREATE INDEX attached_moment ON session_ext.user_sessions (app.norm_moment(last_active_at));
CREATE INDEX attached_partial ON session_ext.user_sessions (user_id) WHERE app.norm(device_info) <> '';
CREATE INDEX attached_events ON session_ext.session_audit_log (app.norm(event));
-- Every validation writes its session's activity.
SET LOCAL session_ext.touch_interval = 0;
SET LOCAL ROLE mallory;
SELECT set_config('request.jwt.claims', '{"sub":"3a110000-0000-4000-8000-00000000000e","role":"mallory"}', true);
-- Mallory reads the table first: this backend's relation cache now holds app.fold inlined with
-- her upper().
SELECT is(evil.run('SELECT count(*)::text FROM session_ext.user_sessions'), '0', 'mallory reads the table on her path');
SELECT is(evil.run($$CREATE TEMP TABLE mine AS
    SELECT * FROM session_ext.create_user_session(user_id => '3a110000-0000-4000-8000-00000000000e', session_data => '{}',
                                                  device_info => 'Phone', user_agent => 'Browser', fingerprint => 'fp')$$),
    'done', 'create (generated token): the row, its index entries and its audit row');
SELECT is(evil.run($$SELECT (session_ext.create_user_session(session_token => repeat('m', 43)) IS NOT NULL)::text$$), 'true',
    'create (the client''s token)');
SELECT is(evil.run($$SELECT (session_ext.validate_session(token, 'fp')).user_id::text FROM mine$$),
    '3a110000-0000-4000-8000-00000000000e', 'validate_session, writing activity that indexes the new version');
SELECT is(evil.run($$SELECT (session_ext.validate_session(token, 'another')).user_id::text FROM mine$$), NULL,
    'validate_session, a fingerprint mismatch audited');
SELECT is(evil.run($$SELECT (set_config('request.jwt.claims',
    json_build_object('sub', '3a110000-0000-4000-8000-00000000000e', 'session_id', id)::text, true) IS NOT NULL)::text FROM mine$$),
    'true', 'claims that name the session');
SELECT is(evil.run('SELECT ((session_ext.current_session()).id = id)::text FROM mine'), 'true',
    'current_session, writing activity');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM evil.ran), 0, 'mallory''s lower() never ran inside a function');
SELECT ok(NOT rolsuper, 'mallory is no superuser') FROM pg_catalog.pg_roles WHERE rolname = 'mallory';
DROP INDEX session_ext.attached_device, session_ext.attached_agent, session_ext.attached_moment,
    session_ext.attached_partial, session_ext.attached_events;

-- CHECK constraints on both tables: a new session's row and its audit row are checked.
ALTER TABLE session_ext.user_sessions ADD CONSTRAINT attached_check CHECK (app.norm(coalesce(device_info, '')) IS NOT NULL);
ALTER TABLE session_ext.session_audit_log ADD CONSTRAINT attached_check CHECK (app.norm(event) IS NOT NULL);
SET LOCAL ROLE mallory;
SELECT set_config('request.jwt.claims', '{"sub":"3a110000-0000-4000-8000-00000000000e","role":"mallory"}', true);
SELECT is(evil.run($$CREATE TEMP TABLE checked AS
    SELECT * FROM session_ext.create_user_session(user_id => '3a110000-0000-4000-8000-00000000000e', session_data => '{}')$$),
    'done', 'create, with CHECK constraints');
SELECT is(evil.run($$SELECT (session_ext.validate_session(token)).user_id::text FROM checked$$),
    '3a110000-0000-4000-8000-00000000000e', 'validate_session, writing activity through the executor');
SELECT is(evil.run('SELECT session_ext.revoke_all_user_sessions()::text'), '3', 'revoke_all_user_sessions, audited');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM evil.ran), 0, 'mallory''s lower() never ran inside a function');
SELECT ok(NOT rolsuper, 'mallory is no superuser') FROM pg_catalog.pg_roles WHERE rolname = 'mallory';
SELECT * FROM finish();
ROLLBACK;
