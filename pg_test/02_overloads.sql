-- PostgREST calls a function with a JSON body of named arguments and picks the overload whose
-- arguments include every key of the body and every argument without a default. No body may
-- match two overloads (SPEC §4), or PostgREST refuses the call as ambiguous.
\ir fixtures/begin.sql
SELECT plan(5);

CREATE TEMP VIEW overloads AS
SELECT p.oid::regprocedure AS signature,
       p.proname,
       -- catalog text uses collation "C"; compare it like any other text
       p.proargnames[1:p.pronargs] COLLATE "default" AS accepted,
       p.proargnames[1:p.pronargs - p.pronargdefaults] COLLATE "default" AS required
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'session_ext'::regnamespace;

SELECT is((SELECT count(*) FROM overloads WHERE proname = 'create_user_session'), 3::bigint,
    'create_user_session has its three overloads');

-- Two overloads are ambiguous when some body satisfies both: one holding the required names of
-- both, inside the names both accept.
SELECT is_empty($$
    SELECT a.signature::text, b.signature::text
      FROM overloads a JOIN overloads b ON a.proname = b.proname AND a.signature < b.signature
     WHERE (a.required || b.required) <@ ARRAY(SELECT unnest(a.accepted) INTERSECT SELECT unnest(b.accepted))
$$, 'no JSON body matches two overloads of any function');

SELECT results_eq($$
    SELECT required FROM overloads WHERE proname = 'create_user_session' ORDER BY required
$$, $$ VALUES (ARRAY['session_token']), (ARRAY['user_id', 'session_data']), (ARRAY['user_id', 'session_id']) $$,
    'each overload has its own required names');

SELECT is(
    (SELECT accepted FROM overloads WHERE required = ARRAY['user_id', 'session_data']),
    ARRAY['user_id', 'session_data', 'ttl', 'idle_timeout', 'device_info', 'user_agent', 'ip_address', 'fingerprint'],
    'the generated-token overload takes the optional named arguments');

SELECT is(
    (SELECT accepted FROM overloads WHERE required = ARRAY['user_id', 'session_id']),
    ARRAY['user_id', 'session_id', 'session_data', 'ttl', 'idle_timeout', 'device_info', 'user_agent', 'ip_address', 'fingerprint'],
    'the custom-id overload takes session_data and the same options');

SELECT * FROM finish();
ROLLBACK;
