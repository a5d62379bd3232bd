-- session_ext 0.5.0 -> 0.6.0: activity writes that change no indexed column, so that PostgreSQL
-- makes them HOT updates (no new index entries, no dead ones for vacuum, a fraction of the WAL).
-- Until 0.5.0 cleanup found expired rows by an index on valid_until, which every activity write
-- moves. Now it walks an index on cleanup_after, a moment never later than valid_until that
-- activity writes leave alone: cleanup reads the exact valid_until of each row the index gives it,
-- deletes the expired ones and moves cleanup_after of the others up to their valid_until (once per
-- idle timeout of a session in use, where activity is written once per touch_interval).
-- A fresh 0.6.0 install runs this file too (src/lib.rs), after 0.4.0--0.5.0: both paths get the
-- same table.
\echo Use "ALTER EXTENSION session_ext UPDATE TO '0.6.0'" to load this file. \quit

DROP INDEX session_ext.user_sessions_valid_until_idx;
-- Room on each page for the new versions of its rows: a HOT update must stay on its row's page.
ALTER TABLE session_ext.user_sessions SET (fillfactor = 90);
ALTER TABLE session_ext.user_sessions ADD COLUMN cleanup_after timestamptz NOT NULL DEFAULT '-infinity';
-- One rewrite of the table: every row's cleanup_after is its valid_until, every page is filled to
-- the new fillfactor, and the indexes are rebuilt. New rows get cleanup_after from the functions
-- that insert them.
ALTER TABLE session_ext.user_sessions
    ALTER COLUMN cleanup_after TYPE timestamptz USING valid_until,
    ALTER COLUMN cleanup_after DROP DEFAULT;
-- id makes every entry unique, so that cleanup can resume exactly where its previous batch ended.
CREATE INDEX user_sessions_cleanup_idx ON session_ext.user_sessions (cleanup_after, id);

GRANT SELECT (cleanup_after) ON session_ext.user_sessions TO session_ext_user;
GRANT SELECT (cleanup_after) ON session_ext.user_sessions TO session_ext_admin;

COMMENT ON COLUMN session_ext.user_sessions.valid_until IS
    'least(expires_at, last_active_at + idle_timeout): the session is valid while now() < valid_until. Not indexed, so that an activity write is a HOT update.';
COMMENT ON COLUMN session_ext.user_sessions.cleanup_after IS
    'When cleanup next looks at the row: never later than valid_until; cleanup deletes the row if it has expired, and otherwise moves this up to valid_until.';
