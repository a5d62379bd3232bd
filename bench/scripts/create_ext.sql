SELECT * FROM session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}');
