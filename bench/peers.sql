-- The peers session_ext is measured against (SPEC §9), in schema bench:
--   * bench.validate_session / bench.create_user_session: the same functions written in
--     PL/pgSQL, SECURITY DEFINER with a pinned search_path, with the same checks, rules and
--     writes (activity at most once per touch_interval, an audit row per creation);
--   * bench.v7(): UUIDv7-like ids, time-ordered like session_ext's, for the PL/pgSQL peer;
--   * bench.load: sessions numbered 1..n, each with its token (bench.token) and its JWT claims
--     (bench.claims).
CREATE SCHEMA bench;

CREATE FUNCTION bench.validate_session(session_token text, fingerprint text DEFAULT NULL)
RETURNS session_ext.session_info
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller name := CASE current_setting('role') WHEN 'none' THEN session_user ELSE current_setting('role') END;
    admin boolean;
    claims text := nullif(current_setting('request.jwt.claims', true), '');
    me uuid;
    s session_ext.user_sessions;
BEGIN
    IF session_token IS NULL OR length(session_token) NOT BETWEEN 32 AND 1024 OR session_token ~ '[^!-~]' THEN
        RAISE EXCEPTION 'invalid value for argument "session_token"' USING ERRCODE = '22023';
    END IF;
    SELECT r.rolsuper OR r.rolbypassrls OR pg_has_role(r.oid, 'session_ext_admin', 'USAGE')
      INTO admin FROM pg_roles r WHERE r.rolname = caller;
    IF NOT admin THEN
        me := coalesce(claims::jsonb ->> 'sub', nullif(current_setting('request.jwt.claim.sub', true), ''))::uuid;
        IF me IS NULL THEN
            RAISE EXCEPTION 'no authenticated user' USING ERRCODE = '28000';
        END IF;
    END IF;
    SELECT * INTO s FROM session_ext.user_sessions u
     WHERE u.token_hash = sha256(convert_to(session_token, 'UTF8'))
       AND u.revoked_at IS NULL AND u.valid_until > now();
    IF NOT FOUND OR (NOT admin AND s.user_id <> me) THEN
        RETURN NULL;
    END IF;
    IF s.fingerprint_hash IS NOT NULL
       AND s.fingerprint_hash IS DISTINCT FROM sha256(convert_to(fingerprint, 'UTF8')) THEN
        RETURN NULL;
    END IF;
    IF s.last_active_at < now() - current_setting('session_ext.touch_interval')::interval
       AND NOT current_setting('transaction_read_only')::boolean THEN
        UPDATE session_ext.user_sessions u
           SET last_active_at = now(), valid_until = LEAST(u.expires_at, now() + u.idle_timeout)
         WHERE u.id = s.id
        RETURNING * INTO s;
    END IF;
    RETURN ROW(s.id, s.session_id, s.user_id, s.session_data, s.data_version, s.device_info,
               s.user_agent, s.ip_address, s.created_at, s.last_active_at, s.expires_at,
               s.idle_timeout, s.valid_until, s.revoked_at, s.revoke_reason,
               CASE WHEN s.aal_expires_at <= now() THEN 'aal1' ELSE s.aal END,
               CASE WHEN s.aal_expires_at > now() THEN s.aal_expires_at END)::session_ext.session_info;
END
$$;

CREATE FUNCTION bench.create_user_session(user_id uuid, session_data json)
RETURNS session_ext.new_session
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    token text := translate(encode(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'), 'base64'), '+/=', '-_');
    id uuid := bench.v7();
    lifetime interval := current_setting('session_ext.session_lifetime')::interval;
    idle interval := nullif(current_setting('session_ext.idle_timeout')::interval, interval '0');
    result session_ext.new_session;
BEGIN
    IF user_id IS NULL OR session_data IS NULL OR json_typeof(session_data) <> 'object' THEN
        RAISE EXCEPTION 'invalid argument' USING ERRCODE = '22023';
    END IF;
    INSERT INTO session_ext.user_sessions AS s
           (id, user_id, session_id, token_hash, session_data, created_at, last_active_at,
            expires_at, idle_timeout, valid_until, cleanup_after, token_key)
    VALUES (id, user_id, id::text, sha256(convert_to(token, 'UTF8')), session_data::jsonb, now(), now(),
            now() + lifetime, idle, LEAST(now() + lifetime, now() + idle), LEAST(now() + lifetime, now() + idle),
            sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())))
    RETURNING s.id, s.session_id, token, s.expires_at INTO result;
    INSERT INTO session_ext.session_audit_log (event, session_id, user_id, actor_role, details)
    VALUES ('create', id, user_id, current_user, jsonb_build_object('session_id', id::text));
    RETURN result;
END
$$;

-- A UUIDv7-shaped id: 48 bits of milliseconds, version 7, random rest.
CREATE FUNCTION bench.v7(at timestamptz DEFAULT clock_timestamp()) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || '7' || substr(md5(random()::text), 1, 3)
            || to_hex(8 + (random() * 3)::int) || substr(md5(random()::text), 1, 15))::uuid
$$;

-- The id of loaded session number n, shaped as a UUIDv7 and ordered by n (as ids made one after
-- another are), and its user: 100,000 users share the sessions. JWT claims name both.
CREATE FUNCTION bench.session_uuid(n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT ('019a0000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid
$$;
CREATE FUNCTION bench.user_uuid(n bigint) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(n % 100000), 12, '0'))::uuid
$$;
-- The request.jwt.claims of a request of session number n, as Supabase Auth writes them.
CREATE FUNCTION bench.claims(n bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT json_build_object('sub', bench.user_uuid(n), 'role', 'authenticated', 'aal', 'aal1',
                             'session_id', bench.session_uuid(n))::text
$$;

-- The token of loaded session number n: what a client would present.
CREATE FUNCTION bench.token(n bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'bench-token-' || lpad(n::text, 40, '0')
$$;

-- Loads sessions number first..last, live (expires in a day) or already expired, all last active
-- just now so that validations within the run write nothing, with idle timeout `idle`.
CREATE PROCEDURE bench.load(first bigint, last bigint, expired boolean DEFAULT false, idle interval DEFAULT '1 day')
LANGUAGE plpgsql AS $$
DECLARE
    chunk constant bigint := 500000;
    from_n bigint := first;
BEGIN
    WHILE from_n <= last LOOP
        INSERT INTO session_ext.user_sessions
               (id, user_id, session_id, token_hash, session_data, created_at, last_active_at,
                expires_at, idle_timeout, valid_until, cleanup_after, token_key)
        SELECT v.id, v.user_id, v.id::text, sha256(convert_to(bench.token(n), 'UTF8')), '{"plan": "pro"}',
               now(), now(), v.ends, idle, least(v.ends, now() + idle), least(v.ends, now() + idle),
               sha256(convert_to('bench-key-' || n, 'UTF8'))
          FROM generate_series(from_n, least(from_n + chunk - 1, last)) AS n,
               LATERAL (SELECT bench.session_uuid(n) AS id, bench.user_uuid(n) AS user_id,
                               CASE WHEN expired THEN now() - interval '1 minute' ELSE now() + interval '1 day' END AS ends) v;
        COMMIT;
        from_n := from_n + chunk;
    END LOOP;
END
$$;
