//! Token rotation as real clients meet it (SPEC §4 `rotate_session_token`, §8): tabs and retries
//! racing a rotation converge on one token within `session_ext.rotation_grace`; any earlier token
//! of the family revokes the session, once, with one notification; a reuse found by a request
//! that then fails, or that finds the session's row held, stays found (with session_ext
//! preloaded; without it, as far as the README says); a transaction parking reuses takes no
//! worker slot; the server log never shows a token; a family's storage does not grow with its
//! rotations.

mod harness;

use harness::{
    begin_request, claims, eventually, fresh, request, session_of, shared_cluster, unpreloaded_cluster,
    ALICE, BOB,
};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CLUSTER: &str = "rotation";

fn rotate(api: &mut Client, token: &str) -> Option<String> {
    request(api, "authenticated", &claims(ALICE), |tx| {
        tx.query_one("SELECT (session_ext.rotate_session_token($1)).token", &[&token]).map(|r| r.get(0))
    })
    .unwrap()
}

fn validates(api: &mut Client, token: &str) -> bool {
    request(api, "authenticated", &claims(ALICE), |tx| {
        tx.query_one("SELECT (session_ext.validate_session($1)).id IS NOT NULL", &[&token]).map(|r| r.get(0))
    })
    .unwrap()
}

/// The session's revoke reason ("-" while active) and its audit events, in order.
fn state(admin: &mut Client, id: Uuid) -> (String, Vec<String>) {
    let reason: Option<String> = admin
        .query_one("SELECT revoke_reason FROM session_ext.user_sessions WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    let events = admin
        .query("SELECT event FROM session_ext.session_audit_log WHERE session_id = $1 ORDER BY id", &[&id])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (reason.unwrap_or_else(|| "-".into()), events)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Moves the session's last rotation past the default grace of 10 s.
fn age_rotation(admin: &mut Client, id: Uuid) {
    admin
        .execute(
            "UPDATE session_ext.user_sessions SET rotated_at = now() - interval '11s' WHERE id = $1",
            &[&id],
        )
        .unwrap();
}

#[test]
fn a_second_connection_rotating_the_same_token_within_the_grace_gets_the_same_token() {
    let (mut first, mut admin, db) = fresh(CLUSTER);
    let mut second = shared_cluster(CLUSTER).connect("authenticator", &db);
    for apart in [Duration::ZERO, Duration::from_millis(300), Duration::from_secs(9)] {
        let (id, t0) = session_of(&mut admin, ALICE);
        let t1 = rotate(&mut first, &t0).expect("the first rotation");
        thread::sleep(apart);
        assert_eq!(rotate(&mut second, &t0).as_ref(), Some(&t1), "{apart:?} apart: the same new token");
        assert!(validates(&mut second, &t1), "{apart:?} apart");
        assert_eq!(state(&mut admin, id), ("-".into(), strings(&["create", "rotate"])), "{apart:?} apart");
    }
}

#[test]
fn a_second_rotation_a_second_past_the_grace_revokes() {
    let (mut first, mut admin, db) = fresh(CLUSTER);
    let mut second = shared_cluster(CLUSTER).connect("authenticator", &db);
    let (id, t0) = session_of(&mut admin, ALICE);
    let t1 = rotate(&mut first, &t0).unwrap();
    thread::sleep(Duration::from_secs(11));
    assert_eq!(rotate(&mut second, &t0), None);
    assert!(!validates(&mut first, &t1), "the token the first rotation issued died with the session");
    assert_eq!(
        state(&mut admin, id),
        ("token_reuse".into(), strings(&["create", "rotate", "token_reuse", "revoke"]))
    );
}

#[test]
fn sixteen_connections_rotating_one_token_at_once_get_one_new_token() {
    let (_, mut admin, db) = fresh(CLUSTER);
    let (id, t0) = session_of(&mut admin, ALICE);
    let start = Arc::new(Barrier::new(16));
    let answers: Vec<Option<String>> = (0..16)
        .map(|_| {
            let (db, t0, start) = (db.clone(), t0.clone(), start.clone());
            thread::spawn(move || {
                let mut api = shared_cluster(CLUSTER).connect("authenticator", &db);
                let mut tx = begin_request(&mut api, "authenticated", &claims(ALICE)).unwrap();
                start.wait();
                let token = tx
                    .query_one("SELECT (session_ext.rotate_session_token($1)).token", &[&t0])
                    .unwrap()
                    .get(0);
                tx.commit().unwrap();
                token
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let first = answers[0].clone().expect("a new token");
    assert!(answers.iter().all(|a| a.as_ref() == Some(&first)), "16 identical answers: {answers:?}");
    let mut api = shared_cluster(CLUSTER).connect("authenticator", &db);
    assert!(validates(&mut api, &first));
    assert_eq!(state(&mut admin, id), ("-".into(), strings(&["create", "rotate"])), "one rotation happened");
}

#[test]
fn every_earlier_token_revokes_once_with_one_notification_and_the_current_one_nothing() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let mut listener = shared_cluster(CLUSTER).connect("postgres", &db);
    listener.batch_execute("LISTEN session_ext").unwrap();
    for earlier in [0, 1] {
        let (id, t0) = session_of(&mut admin, ALICE);
        let mut tokens = vec![t0];
        for _ in 0..3 {
            let next = rotate(&mut api, tokens.last().unwrap()).unwrap();
            tokens.push(next);
        }
        assert!(validates(&mut api, &tokens[3]), "T3 is the current token");
        assert_eq!(state(&mut admin, id).0, "-", "presenting T3 revokes nothing");
        assert!(!validates(&mut api, &tokens[earlier]), "T{earlier}");
        let expected = strings(&["create", "rotate", "rotate", "rotate", "token_reuse", "revoke"]);
        assert_eq!(
            state(&mut admin, id),
            ("token_reuse".into(), expected),
            "T{earlier}: one token_reuse and its revoke"
        );
        assert!(!validates(&mut api, &tokens[3]), "T3 died with the session");

        let payloads: Vec<serde_json::Value> = listener
            .notifications()
            .timeout_iter(Duration::from_secs(2))
            .map(|n| Ok(serde_json::from_str(n.payload()).unwrap()))
            .collect()
            .unwrap();
        let events: Vec<String> = payloads
            .iter()
            .filter(|p| p["session_id"] == id.to_string())
            .map(|p| format!("{}:{}", p["event"].as_str().unwrap(), p["reason"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(events, strings(&["rotate:", "rotate:", "rotate:", "revoke:token_reuse"]), "T{earlier}");
    }
}

/// A reuse presented in a request that fails afterwards (a PostgREST pre-request check, then a
/// statement that errors): the revocation, its audit rows and its notification stay.
fn a_reuse_found_by_a_failing_request_stays_found(
    api: &mut Client,
    admin: &mut Client,
    listener: &mut Client,
) {
    listener.batch_execute("LISTEN session_ext").unwrap();
    for call in ["validate_session", "rotate_session_token"] {
        let (id, t0) = session_of(admin, ALICE);
        let t1 = rotate(api, &t0).unwrap(); // think: the thief rotated first
        age_rotation(admin, id);
        listener.notifications().timeout_iter(Duration::from_millis(200)).count().unwrap();
        let mut tx = begin_request(api, "authenticated", &claims(ALICE)).unwrap();
        let found: Option<String> =
            tx.query_one(&format!("SELECT session_ext.{call}($1)::text"), &[&t0]).unwrap().get(0);
        assert_eq!(found, None, "{call}");
        assert!(tx.execute("SELECT 1/0", &[]).is_err());
        drop(tx); // rolled back

        assert!(!validates(api, &t1), "{call}: the thief's token is dead on the next request");
        check_revoked_by_the_caller(admin, listener, id, call);
    }
    // The request had written the session itself before the reuse (here: recorded activity), so
    // the worker cannot revoke while the request runs; it does once the request is over.
    let (id, t0) = session_of(admin, ALICE);
    let t1 = rotate(api, &t0).unwrap();
    age_rotation(admin, id);
    listener.notifications().timeout_iter(Duration::from_millis(200)).count().unwrap();
    let mut tx = begin_request(api, "authenticated", &claims(ALICE)).unwrap();
    tx.execute("SELECT session_ext.touch_session($1)", &[&id]).unwrap();
    let found: Option<String> =
        tx.query_one("SELECT session_ext.validate_session($1)::text", &[&t0]).unwrap().get(0);
    assert_eq!(found, None);
    assert!(tx.execute("SELECT 1/0", &[]).is_err());
    drop(tx);
    assert!(
        eventually(Duration::from_secs(5), || !validates(api, &t1)),
        "after the request that had written the session: the thief's token dies"
    );
    check_revoked_by_the_caller(admin, listener, id, "validate_session after touch_session");
}

/// Session `id` was revoked for a token reuse (by the worker, within seconds), with both events
/// by the caller and notified.
fn check_revoked_by_the_caller(admin: &mut Client, listener: &mut Client, id: Uuid, call: &str) {
    assert!(eventually(Duration::from_secs(5), || state(admin, id).0 == "token_reuse"), "{call}: revoked");
    let (reason, events) = state(admin, id);
    assert_eq!(
        (reason.as_str(), &events[2..]),
        ("token_reuse", &strings(&["token_reuse", "revoke"])[..]),
        "{call}"
    );
    let actors: i64 = admin
            .query_one(
                "SELECT count(*) FROM session_ext.session_audit_log WHERE session_id = $1 AND event IN ('token_reuse', 'revoke')
                    AND actor_role = 'authenticated' AND actor_user_id = $2::text::uuid",
                &[&id, &ALICE],
            )
            .unwrap()
            .get(0);
    assert_eq!(actors, 2, "{call}: the caller is the actor of both events");
    let heard = listener
        .notifications()
        .timeout_iter(Duration::from_secs(2))
        .filter(|n| Ok(n.payload().contains(&id.to_string()) && n.payload().contains("token_reuse")))
        .count()
        .unwrap();
    assert_eq!(heard, 1, "{call}: the revoke was notified");
}

#[test]
fn a_reuse_found_by_a_failing_request_stays_found_with_session_ext_preloaded() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let mut listener = shared_cluster(CLUSTER).connect("postgres", &db);
    a_reuse_found_by_a_failing_request_stays_found(&mut api, &mut admin, &mut listener);
}

/// Without preloading there is no queue and no worker (README, "reuse detection"): the request
/// revokes in its own transaction, which keeps the revocation when it commits and loses it when it
/// rolls back.
#[test]
fn without_preloading_a_reuse_is_revoked_in_the_presenting_transaction() {
    let cluster = unpreloaded_cluster("rotation_unpreloaded");
    let db = cluster.fresh_database();
    let (mut api, mut admin) = (cluster.connect("authenticator", &db), cluster.connect("postgres", &db));
    let preloaded: String = admin.query_one("SHOW shared_preload_libraries", &[]).unwrap().get(0);
    assert!(!preloaded.contains("session_ext"));
    for commit in [true, false] {
        let (id, t0) = session_of(&mut admin, ALICE);
        let t1 = rotate(&mut api, &t0).unwrap();
        age_rotation(&mut admin, id);
        let mut tx = begin_request(&mut api, "authenticated", &claims(ALICE)).unwrap();
        let found: Option<String> =
            tx.query_one("SELECT session_ext.validate_session($1)::text", &[&t0]).unwrap().get(0);
        assert_eq!(found, None);
        if commit {
            tx.commit().unwrap();
        } else {
            drop(tx);
        }
        assert_eq!(validates(&mut api, &t1), !commit, "committed: {commit}");
        let expected = if commit { "token_reuse" } else { "-" };
        assert_eq!(state(&mut admin, id).0, expected, "committed: {commit}");
    }
}

/// The reuses a transaction parks (its own sessions, rotated twice, their first tokens presented
/// again, the transaction left open) take no worker slot: parallel queries get their workers, and
/// another user's reuse, presented in a request that rolls back and in a read-only one, is still
/// revoked by the launcher's worker. Once the parking transaction commits, its sessions are revoked.
#[test]
fn a_transaction_parking_reuses_takes_no_worker_slot_and_other_reuses_stay_revoked() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let cluster = shared_cluster(CLUSTER);
    admin
        .batch_execute("CREATE TABLE wide AS SELECT i FROM generate_series(1, 200000) i; ANALYZE wide;")
        .unwrap();
    let mut parker = cluster.connect("authenticator", &db);
    let mut parking = begin_request(&mut parker, "authenticated", &claims(BOB)).unwrap();
    let parked = 12;
    for _ in 0..parked {
        let first: String = parking
            .query_one(
                "SELECT token FROM session_ext.create_user_session(user_id => $1::text::uuid, session_data => '{}')",
                &[&BOB],
            )
            .unwrap()
            .get(0);
        let second: String = parking
            .query_one("SELECT (session_ext.rotate_session_token($1)).token", &[&first])
            .unwrap()
            .get(0);
        parking.query_one("SELECT (session_ext.rotate_session_token($1)).token", &[&second]).unwrap();
        let reused: Option<String> =
            parking.query_one("SELECT session_ext.validate_session($1)::text", &[&first]).unwrap().get(0);
        assert_eq!(reused, None, "the first token of a twice-rotated session is reuse");
    }

    let processes = "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'session_ext%'";
    for _ in 0..5 {
        let running: i64 = admin.query_one(processes, &[]).unwrap().get(0);
        assert!(running <= 2, "the launcher and at most one worker, not {running}");
        thread::sleep(Duration::from_millis(200));
    }
    admin
        .batch_execute(
            "SET max_parallel_workers_per_gather = 4; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0;",
        )
        .unwrap();
    let plan: serde_json::Value =
        admin.query_one("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM wide", &[]).unwrap().get(0);
    let (planned, launched) = gather(&plan).expect("a parallel plan");
    assert_eq!((planned, launched), (4, 4), "a parallel query gets its workers");

    // Another user's stolen token: presented in a request that rolls back, and in a read-only one.
    for read_only in [false, true] {
        let (id, t0) = session_of(&mut admin, ALICE);
        let t1 = rotate(&mut api, &t0).unwrap();
        age_rotation(&mut admin, id);
        let mut tx = begin_request(&mut api, "authenticated", &claims(ALICE)).unwrap();
        if read_only {
            tx.batch_execute("SET TRANSACTION READ ONLY").unwrap();
        }
        let found: Option<String> =
            tx.query_one("SELECT session_ext.validate_session($1)::text", &[&t0]).unwrap().get(0);
        assert_eq!(found, None);
        if read_only {
            tx.commit().unwrap();
        } else {
            drop(tx);
        }
        assert!(!validates(&mut api, &t1), "read-only {read_only}: refused on the next request");
        assert!(
            eventually(Duration::from_secs(5), || state(&mut admin, id).0 == "token_reuse"),
            "read-only {read_only}: the worker revoked it"
        );
    }

    parking.commit().unwrap();
    let revoked =
        "SELECT count(*) FILTER (WHERE revoke_reason = 'token_reuse') FROM session_ext.user_sessions
                    WHERE user_id = $1::text::uuid";
    assert!(
        eventually(Duration::from_secs(10), || admin.query_one(revoked, &[&BOB]).unwrap().get::<_, i64>(0)
            == parked),
        "once the parking transaction committed, each of its sessions was revoked"
    );
    let pending: i64 =
        admin.query_one("SELECT count(*) FROM session_ext.pending_revocations", &[]).unwrap().get(0);
    assert!(
        eventually(Duration::from_secs(5), || admin
            .query_one("SELECT count(*) FROM session_ext.pending_revocations", &[])
            .unwrap()
            .get::<_, i64>(0)
            == 0),
        "nothing left pending ({pending} a moment ago)"
    );
}

/// The workers an EXPLAIN (ANALYZE, FORMAT JSON) plan's Gather node planned and launched.
fn gather(plan: &serde_json::Value) -> Option<(i64, i64)> {
    match plan {
        serde_json::Value::Object(node) => {
            match (node.get("Workers Planned"), node.get("Workers Launched")) {
                (Some(planned), Some(launched)) => Some((planned.as_i64()?, launched.as_i64()?)),
                _ => node.values().find_map(gather),
            }
        }
        serde_json::Value::Array(items) => items.iter().find_map(gather),
        _ => None,
    }
}

/// A reuse presented while another request holds the session's row (a data update left open), by
/// a request with a short statement_timeout: the call returns at once, the session is refused
/// from then on, and the revocation lands once the row is free.
#[test]
fn a_reuse_presented_while_the_row_is_held_returns_at_once_and_lands_once_the_row_is_free() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let cluster = shared_cluster(CLUSTER);
    let (id, t0) = session_of(&mut admin, ALICE);
    let t1 = rotate(&mut api, &t0).unwrap();
    age_rotation(&mut admin, id);

    let mut holder_client = cluster.connect("postgres", &db);
    let mut holder = holder_client.transaction().unwrap();
    holder.query_one("SELECT session_ext.update_session_data($1, '{\"held\": true}')", &[&id]).unwrap();

    let mut tx = begin_request(&mut api, "authenticated", &claims(ALICE)).unwrap();
    tx.batch_execute("SET LOCAL statement_timeout = '2500ms'").unwrap();
    let started = Instant::now();
    let found: Option<String> =
        tx.query_one("SELECT session_ext.validate_session($1)::text", &[&t0]).unwrap().get(0);
    assert_eq!(found, None);
    assert!(started.elapsed() < Duration::from_secs(1), "returned at once: {:?}", started.elapsed());
    drop(tx);
    assert!(!validates(&mut api, &t1), "refused on the next request, while the row is held");
    let active: bool = admin.query_one("SELECT session_ext.is_session_active($1)", &[&id]).unwrap().get(0);
    assert!(!active, "is_session_active agrees");

    thread::sleep(Duration::from_secs(3));
    assert_eq!(state(&mut admin, id).0, "-", "not in the row while the row is held");
    assert!(!validates(&mut api, &t1), "still refused after the worker found the row held");
    let parked: i64 = admin
        .query_one("SELECT count(*) FROM session_ext.pending_revocations WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(parked, 1, "parked while the row is held");

    holder.commit().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || state(&mut admin, id).0 == "token_reuse"),
        "revoked once the row is free"
    );
    let (_, events) = state(&mut admin, id);
    assert_eq!(&events[events.len() - 2..], &strings(&["token_reuse", "revoke"])[..]);
    assert!(!validates(&mut api, &t1));
}

/// With PostgreSQL's default logging (log_min_error_statement = error, which logs a LOG line's
/// statement too), neither session_ext's LOG line on a reuse nor its errors put the statement, and
/// the token a simple-query client sent in it, into the server log.
#[test]
fn the_server_log_never_shows_a_token() {
    let (mut api, mut admin, _) = fresh(CLUSTER);
    let setting: String = admin.query_one("SHOW log_min_error_statement", &[]).unwrap().get(0);
    assert_eq!(setting, "error", "PostgreSQL's default");
    let (id, t0) = session_of(&mut admin, ALICE);
    let t1 = rotate(&mut api, &t0).unwrap();
    age_rotation(&mut admin, id);
    // Simple query protocol: the statement text carries the tokens.
    api.batch_execute(&format!(
        "BEGIN; SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{}', true);
         SELECT session_ext.validate_session('{t0}'); COMMIT;",
        claims(ALICE)
    ))
    .unwrap();
    let refused = api.batch_execute(&format!(
        "BEGIN; SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{}', true);
         SELECT session_ext.create_user_session(session_token => '{t1}'); COMMIT;",
        claims(ALICE)
    ));
    assert!(refused.is_err(), "a client's token already in use is refused");
    api.batch_execute("ROLLBACK").unwrap();
    let log_line = format!("an earlier token of session {id} was presented again");
    let log = || std::fs::read_to_string(shared_cluster(CLUSTER).dir.join("server.log")).unwrap();
    assert!(eventually(Duration::from_secs(5), || log().contains(&log_line)), "the reuse is logged");
    assert!(log().contains("session_token is already in use"), "the error is logged");
    for token in [&t0, &t1] {
        assert!(!log().contains(token.as_str()), "no token in the server log");
    }
}

#[test]
fn a_family_rotated_ten_thousand_times_keeps_its_size_and_knows_every_token() {
    let (mut api, mut admin, _) = fresh(CLUSTER);
    let (id, t0) = session_of(&mut admin, ALICE);
    let size = |admin: &mut Client| -> (i32, i32) {
        let row = admin
            .query_one(
                "SELECT pg_column_size(s.*), cardinality(s.root_token_hashes) FROM session_ext.user_sessions s WHERE id = $1",
                &[&id],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let rotate_once = |admin: &mut Client, token: &str| -> String {
        admin.query_one("SELECT (session_ext.rotate_session_token($1)).token", &[&token]).unwrap().get(0)
    };
    let mut token = rotate_once(&mut admin, &t0);
    let after_one = size(&mut admin);
    let mut middle = String::new();
    for n in 2..=10_000 {
        token = rotate_once(&mut admin, &token);
        if n == 5_000 {
            middle = token.clone();
        }
    }
    assert_eq!(size(&mut admin), after_one, "the row after 10,000 rotations is the row after one");
    let generation: i64 = admin
        .query_one("SELECT token_generation FROM session_ext.user_sessions WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(generation, 10_000);
    assert!(validates(&mut api, &token));
    assert!(!validates(&mut api, &middle), "the 5,000th token is known as an earlier one");
    assert_eq!(state(&mut admin, id).0, "token_reuse");
}
