-- Objects and layout (SPEC §2): table, columns, indexes, types, roles, RLS, pg_dump registration.
\ir fixtures/begin.sql
SELECT plan(32);

SELECT has_schema('session_ext');
SELECT has_table('session_ext', 'user_sessions', 'the sessions table exists');
SELECT columns_are('session_ext', 'user_sessions', ARRAY[
    'id', 'user_id', 'session_id', 'token_hash', 'root_token_hashes', 'rotated_at', 'session_data', 'data_version', 'device_info',
    'user_agent', 'ip_address', 'fingerprint_hash', 'created_at', 'last_active_at', 'expires_at',
    'idle_timeout', 'valid_until', 'revoked_at', 'revoke_reason', 'token_key', 'token_generation', 'aal', 'aal_expires_at',
    'cleanup_after'
]);
SELECT col_is_pk('session_ext', 'user_sessions', 'id', 'id is the primary key');
SELECT col_type_is('session_ext', 'user_sessions', 'token_hash', 'bytea', 'only a hash of the token is stored');
SELECT col_not_null('session_ext', 'user_sessions', 'user_id', 'user_id is required');
SELECT col_is_unique('session_ext', 'user_sessions', 'session_id', 'session_id is unique');
SELECT col_is_unique('session_ext', 'user_sessions', 'token_hash', 'token_hash is unique');

-- Every lookup the functions make is served by an index.
SELECT index_is_unique('session_ext', 'user_sessions', 'user_sessions_token_hash_key', 'token lookup is one unique index probe');
SELECT has_index('session_ext', 'user_sessions', 'user_sessions_user_idx', ARRAY['user_id', 'created_at'], 'per-user index');
SELECT has_index('session_ext', 'user_sessions', 'user_sessions_cleanup_idx', ARRAY['cleanup_after', 'id'], 'expiry index: cleanup''s deadline');
-- An activity write changes last_active_at and valid_until only: with neither in any index (its
-- columns, expressions or predicate), PostgreSQL can make it a HOT update.
SELECT is((SELECT count(*)::int FROM pg_catalog.pg_index i
            WHERE i.indrelid = 'session_ext.user_sessions'::regclass
              AND (i.indkey::int2[] && ARRAY[14, 17]::int2[]
                   OR pg_catalog.pg_get_expr(i.indexprs, i.indrelid) ~ '(last_active_at|valid_until)'
                   OR pg_catalog.pg_get_expr(i.indpred, i.indrelid) ~ '(last_active_at|valid_until)')),
          0, 'no index covers what an activity write changes');
SELECT is((SELECT reloptions FROM pg_catalog.pg_class WHERE oid = 'session_ext.user_sessions'::regclass),
          ARRAY['fillfactor=90'], 'pages keep room for the new versions of their rows');
SELECT has_index('session_ext', 'user_sessions', 'user_sessions_revoked_idx', ARRAY['revoked_at', 'id'], 'revocation index');

SELECT has_index('session_ext', 'user_sessions', 'user_sessions_root_tokens_idx', ARRAY['root_token_hashes'], 'reuse detection index of the token families'' roots');
SELECT is((SELECT amname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_am a ON a.oid = c.relam
            WHERE c.oid = 'session_ext.user_sessions_root_tokens_idx'::regclass), 'gin', 'a GIN index finds a root in the arrays');
SELECT col_not_null('session_ext', 'user_sessions', 'token_key', 'every session has its secret key');

SELECT has_table('session_ext', 'session_audit_log', 'the audit log exists');
SELECT columns_are('session_ext', 'session_audit_log', ARRAY[
    'id', 'occurred_at', 'event', 'session_id', 'user_id', 'actor_role', 'actor_user_id', 'ip_address', 'details'
]);
SELECT has_index('session_ext', 'session_audit_log', 'session_audit_log_occurred_idx', ARRAY['occurred_at', 'id'], 'pruning index');
SELECT ok(relrowsecurity AND relforcerowsecurity, 'the audit log has forced row-level security')
  FROM pg_catalog.pg_class WHERE oid = 'session_ext.session_audit_log'::regclass;
SELECT policies_are('session_ext', 'session_audit_log',
    ARRAY['session_audit_log_select_own', 'session_audit_log_select_admin']);

SELECT has_type('session_ext', 'session_info', 'session_info type');
SELECT hasnt_column('session_ext', 'session_info', 'token_hash', 'session_info carries no secret');
SELECT has_type('session_ext', 'new_session', 'new_session type');

SELECT ok(relrowsecurity AND relforcerowsecurity, 'row-level security is enabled and forced')
  FROM pg_catalog.pg_class WHERE oid = 'session_ext.user_sessions'::regclass;
SELECT policies_are('session_ext', 'user_sessions',
    ARRAY['user_sessions_select_own', 'user_sessions_select_admin']);
SELECT policy_cmd_is('session_ext', 'user_sessions', 'user_sessions_select_own', 'select',
    'users may only read; there is no write policy');

SELECT is(rolcanlogin, false, 'session_ext_user exists and cannot log in')
  FROM pg_catalog.pg_roles WHERE rolname = 'session_ext_user';
SELECT is(rolcanlogin, false, 'session_ext_admin exists and cannot log in')
  FROM pg_catalog.pg_roles WHERE rolname = 'session_ext_admin';

SELECT ok('session_ext.user_sessions'::regclass = ANY (extconfig)
          AND 'session_ext.session_audit_log'::regclass = ANY (extconfig), 'pg_dump keeps sessions and audit rows')
  FROM pg_catalog.pg_extension WHERE extname = 'session_ext';

SELECT is(
    (SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM pg_catalog.pg_extension e,
            LATERAL (VALUES ('schema', e.extnamespace::regnamespace::text),
                            ('relocatable', e.extrelocatable::text)) AS c(k, v)
      WHERE e.extname = 'session_ext'),
    'relocatable=false,schema=session_ext',
    'installed in schema session_ext, not relocatable');

SELECT * FROM finish();
ROLLBACK;
