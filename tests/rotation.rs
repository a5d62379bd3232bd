//! Token rotation as real clients meet it (SPEC §4 `rotate_session_token`): tabs and retries
//! racing a rotation converge on one token within `session_ext.rotation_grace`; any earlier token
//! of the family revokes the session, once, with one notification; a reuse found by a request
//! that then fails stays found, with session_ext preloaded and without it; a family's storage
//! does not grow with its rotations.

mod harness;

use harness::{
    begin_request, claims, eventually, fresh, request, session_of, shared_cluster, unpreloaded_cluster, ALICE,
};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;
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
    // a worker cannot revoke while the request runs; one waits for the request's end instead.
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

/// Session `id` was revoked for a token reuse, with both events by the caller and notified.
fn check_revoked_by_the_caller(admin: &mut Client, listener: &mut Client, id: Uuid, call: &str) {
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

#[test]
fn a_reuse_found_by_a_failing_request_stays_found_without_preloading() {
    let cluster = unpreloaded_cluster("rotation_unpreloaded");
    let db = cluster.fresh_database();
    let (mut api, mut admin, mut listener) = (
        cluster.connect("authenticator", &db),
        cluster.connect("postgres", &db),
        cluster.connect("postgres", &db),
    );
    let preloaded: String = admin.query_one("SHOW shared_preload_libraries", &[]).unwrap().get(0);
    assert!(!preloaded.contains("session_ext"));
    a_reuse_found_by_a_failing_request_stays_found(&mut api, &mut admin, &mut listener);
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
