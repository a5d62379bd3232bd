\set n random(1, :sessions)
BEGIN;
SELECT set_config('request.jwt.claims', bench.claims(:n), true);
SELECT * FROM session_ext.current_session();
COMMIT;
