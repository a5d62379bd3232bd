\set n random(1, :sessions)
SELECT id FROM session_ext.validate_session(bench.token(:n));
