\set n random(1, :sessions)
SELECT * FROM bench.validate_session(bench.token(:n));
