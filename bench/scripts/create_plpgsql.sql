SELECT * FROM bench.create_user_session(gen_random_uuid(), '{}');
