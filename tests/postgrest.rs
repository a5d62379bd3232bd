//! The API as PostgREST and Supabase call it: connected as the `authenticator` login role, one
//! transaction per request that takes on the JWT's role and claims, functions called with
//! named arguments (SPEC §1, §3, §4).

mod harness;

use harness::{claims, column, fresh, request, sqlstate, ALICE, BOB};
use postgres::Client;
use uuid::Uuid;

/// A database of its own: PostgREST's connection to it, and a superuser's.
fn setup() -> (Client, Client) {
    let (api, admin, _) = fresh("postgrest");
    (api, admin)
}

const GENERATED: &str = "SELECT id, session_id, token FROM session_ext.create_user_session(
    user_id => $1, session_data => '{\"theme\":\"dark\"}', ttl => '2 hours', idle_timeout => '30 minutes',
    device_info => 'Firefox on Linux', user_agent => 'Mozilla/5.0', ip_address => '203.0.113.9', fingerprint => 'fp-1')";

fn alice_session(api: &mut Client) -> (Uuid, String) {
    request(api, "authenticated", &claims(ALICE), |tx| {
        let row = tx.query_one(GENERATED, &[&Uuid::parse_str(ALICE).unwrap()])?;
        Ok((row.get(0), row.get(2)))
    })
    .expect("alice creates a session")
}

#[test]
fn every_create_overload_works_as_a_postgrest_rpc() {
    let (mut api, mut admin) = setup();
    let alice = Uuid::parse_str(ALICE).unwrap();

    // POST /rpc/create_user_session {"session_token": "..."}
    let client_token = "client-generated-token-0123456789abcdef";
    let from_token: Uuid = request(&mut api, "authenticated", &claims(ALICE), |tx| {
        tx.query_one("SELECT session_ext.create_user_session(session_token => $1)", &[&client_token])
            .map(|r| r.get(0))
    })
    .unwrap();

    // POST /rpc/create_user_session {"user_id": ..., "session_data": {...}, "ttl": ..., ...}
    let (generated_id, generated_sid, generated_token): (Uuid, String, String) =
        request(&mut api, "authenticated", &claims(ALICE), |tx| {
            tx.query_one(GENERATED, &[&alice]).map(|r| (r.get(0), r.get(1), r.get(2)))
        })
        .unwrap();
    assert_eq!(generated_sid, generated_id.to_string(), "session_id defaults to the id");
    assert_eq!(generated_token.len(), 43, "256 bits, URL-safe base64 without padding");

    // POST /rpc/create_user_session {"user_id": ..., "session_id": "..."}
    let (custom_id, custom_sid, custom_token): (Uuid, String, String) =
        request(&mut api, "authenticated", &claims(ALICE), |tx| {
            tx.query_one(
                "SELECT id, session_id, token FROM session_ext.create_user_session(user_id => $1, session_id => $2)",
                &[&alice, &"web:alice-laptop"],
            )
            .map(|r| (r.get(0), r.get(1), r.get(2)))
        })
        .unwrap();
    assert_eq!(custom_sid, "web:alice-laptop");

    // Each validates by its token in a later request, and reads as active.
    for (id, token) in [
        (from_token, client_token),
        (generated_id, generated_token.as_str()),
        (custom_id, custom_token.as_str()),
    ] {
        let (validated, active): (Option<Uuid>, bool) =
            request(&mut api, "authenticated", &claims(ALICE), |tx| {
                let fingerprint = (id == generated_id).then_some("fp-1");
                let validated = tx.query_one(
                    "SELECT (session_ext.validate_session(session_token => $1, fingerprint => $2)).id",
                    &[&token, &fingerprint],
                )?;
                let active =
                    tx.query_one("SELECT session_ext.is_session_active(session_id => $1)", &[&id])?;
                Ok((validated.get(0), active.get(0)))
            })
            .unwrap();
        assert_eq!(validated, Some(id));
        assert!(active);
    }

    // What was stored: the options, and no token anywhere.
    let row = admin
        .query_one(
            "SELECT user_id, session_data::text, device_info, host(ip_address), expires_at - created_at,
                    idle_timeout, token_hash = sha256(convert_to($2, 'UTF8'))
               FROM session_ext.user_sessions WHERE id = $1",
            &[&generated_id, &generated_token],
        )
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), alice);
    assert_eq!(row.get::<_, String>(1), r#"{"theme": "dark"}"#);
    assert_eq!(row.get::<_, String>(2), "Firefox on Linux");
    assert_eq!(row.get::<_, String>(3), "203.0.113.9");
    assert!(row.get::<_, bool>(6), "token_hash is the SHA-256 of the token");
    let leaks: i64 = admin
        .query_one(
            "SELECT count(*) FROM session_ext.user_sessions s WHERE strpos(row_to_json(s)::text, $1) > 0 OR strpos(row_to_json(s)::text, $2) > 0",
            &[&generated_token, &client_token],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0, "no token is stored");
}

#[test]
fn a_user_cannot_read_use_or_act_on_another_users_session() {
    let (mut api, _admin) = setup();
    let (alice_id, alice_token) = alice_session(&mut api);
    let bob = claims(BOB);

    let (visible, validated, active): (i64, Option<Uuid>, bool) =
        request(&mut api, "authenticated", &bob, |tx| {
            let visible = tx.query_one("SELECT count(*) FROM session_ext.user_sessions", &[])?.get(0);
            let validated =
                tx.query_one("SELECT (session_ext.validate_session($1)).id", &[&alice_token])?.get(0);
            let active = tx.query_one("SELECT session_ext.is_session_active($1)", &[&alice_id])?.get(0);
            Ok((visible, validated, active))
        })
        .unwrap();
    assert_eq!(visible, 0, "RLS hides alice's rows from bob");
    assert_eq!(validated, None, "alice's token does not validate as bob's");
    assert!(!active, "alice's session reads as inactive to bob");

    let create_for_alice = request(&mut api, "authenticated", &bob, |tx| {
        tx.query_one(GENERATED, &[&Uuid::parse_str(ALICE).unwrap()]).map(|_| ())
    });
    assert_eq!(sqlstate(create_for_alice), "42501");

    // Alice herself still sees exactly her session.
    let own: i64 = request(&mut api, "authenticated", &claims(ALICE), |tx| {
        tx.query_one("SELECT count(*) FROM session_ext.user_sessions", &[]).map(|r| r.get(0))
    })
    .unwrap();
    assert_eq!(own, 1);
}

#[test]
fn anon_is_refused_by_every_function_and_the_table() {
    let (mut api, _admin) = setup();
    let anon = r#"{"role":"anon"}"#;
    let calls = [
        "SELECT session_ext.current_user_id()",
        "SELECT session_ext.create_user_session(session_token => 'anon-token-0123456789abcdefghijkl')",
        "SELECT session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}')",
        "SELECT session_ext.create_user_session(user_id => gen_random_uuid(), session_id => 'x')",
        "SELECT session_ext.is_session_active(session_id => gen_random_uuid())",
        "SELECT session_ext.validate_session(session_token => 'anon-token-0123456789abcdefghijkl')",
        "SELECT session_ext.cleanup_expired_sessions()",
        "SELECT count(*) FROM session_ext.user_sessions",
    ];
    for call in calls {
        let result = request(&mut api, "anon", anon, |tx| tx.query_one(call, &[]).map(|_| ()));
        assert_eq!(sqlstate(result), "42501", "{call}");
    }
}

#[test]
fn users_cannot_write_the_table_directly() {
    let (mut api, mut admin) = setup();
    let (alice_id, _) = alice_session(&mut api);
    let writes = [
        "INSERT INTO session_ext.user_sessions (id, user_id, session_id, expires_at, valid_until)
         VALUES (gen_random_uuid(), session_ext.current_user_id(), 'forged', now() + '1 year', now() + '1 year')",
        "UPDATE session_ext.user_sessions SET expires_at = now() + '10 years'",
        "UPDATE session_ext.user_sessions SET revoked_at = NULL, revoke_reason = NULL",
        "DELETE FROM session_ext.user_sessions",
    ];
    for write in writes {
        let result =
            request(&mut api, "authenticated", &claims(ALICE), |tx| tx.execute(write, &[]).map(|_| ()));
        assert_eq!(sqlstate(result), "42501", "{write}");
    }
    let untouched: bool = admin
        .query_one(
            "SELECT expires_at - created_at = interval '2 hours' AND revoked_at IS NULL
               FROM session_ext.user_sessions WHERE id = $1",
            &[&alice_id],
        )
        .unwrap()
        .get(0);
    assert!(untouched, "the session is as it was created");
    let forged: i64 = admin
        .query_one("SELECT count(*) FROM session_ext.user_sessions WHERE session_id = 'forged'", &[])
        .unwrap()
        .get(0);
    assert_eq!(forged, 0);
}

#[test]
fn sessions_expire_on_the_clock_and_cleanup_deletes_exactly_those() {
    let (mut api, mut admin) = setup();
    let alice = Uuid::parse_str(ALICE).unwrap();
    let create = "SELECT id, token FROM session_ext.create_user_session(user_id => $1, session_data => '{}', ttl => $2::text::interval, idle_timeout => $3::text::interval)";
    let mut make = |ttl: &str, idle: &str| -> (Uuid, String) {
        request(&mut api, "authenticated", &claims(ALICE), |tx| {
            tx.query_one(create, &[&alice, &ttl, &idle]).map(|r| (r.get(0), r.get(1)))
        })
        .unwrap()
    };
    let absolute = make("1 second", "0");
    let idle = make("1 hour", "1 second");
    let live = make("1 hour", "1 hour");

    std::thread::sleep(std::time::Duration::from_millis(1500));

    for (name, (id, token), alive) in
        [("absolute", &absolute, false), ("idle", &idle, false), ("live", &live, true)]
    {
        let (validated, active): (Option<Uuid>, bool) =
            request(&mut api, "authenticated", &claims(ALICE), |tx| {
                let v = tx.query_one("SELECT (session_ext.validate_session($1)).id", &[token])?.get(0);
                let a = tx.query_one("SELECT session_ext.is_session_active($1)", &[id])?.get(0);
                Ok((v, a))
            })
            .unwrap();
        assert_eq!(validated.is_some(), alive, "{name} validates");
        assert_eq!(active, alive, "{name} is active");
    }

    // service_role is the admin of a Supabase project.
    let deleted: i64 = request(&mut api, "service_role", r#"{"role":"service_role"}"#, |tx| {
        tx.query_one("SELECT session_ext.cleanup_expired_sessions()", &[]).map(|r| r.get(0))
    })
    .unwrap();
    assert_eq!(deleted, 2);
    let left: Vec<Uuid> = column(&mut admin, "SELECT id FROM session_ext.user_sessions");
    assert_eq!(left, vec![live.0]);
}

/// Claims as Supabase Auth writes them: the user, and the session the access token belongs to.
fn session_claims(user: &str, session: Uuid) -> String {
    format!(r#"{{"sub":"{user}","role":"authenticated","aal":"aal1","session_id":"{session}"}}"#)
}

/// The README's `db-pre-request` hook (examples/postgrest/require_session.sql), run first in
/// each request as PostgREST runs it; the request then reads its session.
fn jwt_request(api: &mut Client, role: &str, claims: &str) -> Result<Option<Uuid>, postgres::Error> {
    request(api, role, claims, |tx| {
        tx.execute("SELECT public.require_live_session()", &[])?;
        tx.query_one("SELECT (session_ext.current_session()).id", &[]).map(|r| r.get(0))
    })
}

#[test]
fn a_revoked_sessions_still_signed_jwt_is_refused_on_its_next_request() {
    let (mut api, mut admin) = setup();
    admin
        .batch_execute(include_str!("../examples/postgrest/require_session.sql"))
        .expect("installing the pre-request hook");
    let (session, _) = alice_session(&mut api);
    let jwt = session_claims(ALICE, session);

    // A live session: the hook passes, and the request sees its session.
    assert_eq!(jwt_request(&mut api, "authenticated", &jwt).unwrap(), Some(session));
    // Requests whose JWT carries no session pass unchanged: anon, the service role.
    for (role, claims) in [("anon", r#"{"role":"anon"}"#), ("service_role", r#"{"role":"service_role"}"#)] {
        request(&mut api, role, claims, |tx| tx.execute("SELECT public.require_live_session()", &[]))
            .unwrap_or_else(|e| panic!("{role}: {e}"));
    }
    // Another user's session id in Bob's JWT: refused, HTTP 401.
    assert_eq!(sqlstate(jwt_request(&mut api, "authenticated", &session_claims(BOB, session))), "PT401");

    // Alice signs out on another connection (her other device, or the auth server).
    let revoked: bool = request(&mut admin, "service_role", r#"{"role":"service_role"}"#, |tx| {
        tx.query_one("SELECT session_ext.revoke_session($1)", &[&session]).map(|r| r.get(0))
    })
    .unwrap();
    assert!(revoked);
    // Her access token is still signed and unexpired; its very next request is refused.
    assert_eq!(sqlstate(jwt_request(&mut api, "authenticated", &jwt)), "PT401");
    // Without the hook, the function itself says 28000.
    let direct = request(&mut api, "authenticated", &jwt, |tx| {
        tx.query_one("SELECT (session_ext.require_session()).id", &[]).map(|r| r.get::<_, Option<Uuid>>(0))
    });
    assert_eq!(sqlstate(direct), "28000");
}

#[test]
fn a_step_up_level_is_required_where_asked_and_lapses() {
    let (mut api, mut admin) = setup();
    admin.batch_execute(include_str!("../examples/postgrest/require_session.sql")).unwrap();
    let (session, _) = alice_session(&mut api);
    let jwt = session_claims(ALICE, session);
    let needs_aal2 = |api: &mut Client| {
        request(api, "authenticated", &jwt, |tx| {
            tx.execute("SELECT public.require_live_session('aal2')", &[]).map(|_| ())
        })
    };
    assert_eq!(sqlstate(needs_aal2(&mut api)), "PT403", "aal1 is refused where aal2 is asked");
    // The auth server verified a second factor.
    let raised: bool = request(&mut admin, "service_role", r#"{"role":"service_role"}"#, |tx| {
        tx.query_one("SELECT session_ext.set_session_aal($1, 'aal2', interval '2 seconds')", &[&session])
            .map(|r| r.get(0))
    })
    .unwrap();
    assert!(raised);
    needs_aal2(&mut api).expect("aal2 passes");
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    assert_eq!(sqlstate(needs_aal2(&mut api)), "PT403", "refused again once valid_for ran out");
    // The session itself lives on at aal1.
    assert_eq!(jwt_request(&mut api, "authenticated", &jwt).unwrap(), Some(session));
}
