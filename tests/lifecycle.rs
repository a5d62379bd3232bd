//! The session lifecycle beyond creation (SPEC §4–§6), through real connections in PostgREST's
//! request shape: each function for each kind of caller, concurrent updates and rotations,
//! per-user limits, notifications and the audit log.

mod harness;

use harness::{
    begin_request, claims, column, fresh, request, session_of, shared_cluster, sqlstate, ALICE, BOB,
};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Transaction};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CLUSTER: &str = "lifecycle";

fn alice() -> Uuid {
    Uuid::parse_str(ALICE).unwrap()
}

/// Who calls, as PostgREST would present them: role and claims.
const OWNER: (&str, &str) = ("authenticated", "owner");
const CALLERS: [(&str, &str); 5] = [
    OWNER,
    ("authenticated", "other user"),
    ("service_role", "admin"),
    ("anon", "anon"),
    ("authenticated", "no claims"),
];

fn claims_of(who: &str) -> String {
    match who {
        "owner" => claims(ALICE),
        "other user" => claims(BOB),
        "admin" => r#"{"role":"service_role"}"#.into(),
        "anon" => r#"{"role":"anon"}"#.into(),
        _ => r#"{"role":"authenticated"}"#.into(),
    }
}

/// What each kind of caller gets: success for the owner and an admin, 42501 for another user
/// and for anon, 28000 without a user id.
fn expected(who: &str) -> Option<&'static str> {
    match who {
        "owner" | "admin" => None,
        "other user" | "anon" => Some("42501"),
        _ => Some("28000"),
    }
}

#[test]
fn every_function_answers_each_kind_of_caller() {
    let (mut api, mut admin, _) = fresh(CLUSTER);
    let calls = [
        "SELECT session_ext.touch_session(session_id => '{id}')",
        "SELECT session_ext.get_session(session_id => '{id}')",
        "SELECT session_ext.update_session_data(session_id => '{id}', session_data => '{\"k\": 1}')",
        "SELECT session_ext.rotate_session_token(session_token => '{token}')",
        "SELECT count(*) FROM session_ext.list_user_sessions(user_id => '{user}')",
        "SELECT session_ext.count_user_sessions(user_id => '{user}')",
        "SELECT session_ext.revoke_session(session_id => '{id}')",
        "SELECT session_ext.revoke_other_sessions(current_session_id => '{id}')",
        "SELECT session_ext.revoke_all_user_sessions(user_id => '{user}')",
    ];
    for call in calls {
        for (role, who) in CALLERS {
            let (id, token) = session_of(&mut admin, ALICE);
            let sql =
                call.replace("{id}", &id.to_string()).replace("{token}", &token).replace("{user}", ALICE);
            let result = request(&mut api, role, &claims_of(who), |tx| tx.batch_execute(&sql));
            match expected(who) {
                None => assert!(result.is_ok(), "{who}: {sql}: {result:?}"),
                Some(code) => assert_eq!(sqlstate(result), code, "{who}: {sql}"),
            }
        }
    }
}

#[test]
fn the_owner_manages_its_devices() {
    let (mut api, mut admin, _) = fresh(CLUSTER);
    let (laptop, _) = session_of(&mut admin, ALICE);
    let (phone, _) = session_of(&mut admin, ALICE);
    let (tablet, _) = session_of(&mut admin, ALICE);
    let (bobs, _) = session_of(&mut admin, BOB);
    let alice_claims = claims(ALICE);

    let listed: Vec<Uuid> = request(&mut api, OWNER.0, &alice_claims, |tx| {
        tx.execute("SELECT session_ext.touch_session($1)", &[&phone])?;
        let rows = tx.query("SELECT id FROM session_ext.list_user_sessions()", &[])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    })
    .unwrap();
    assert_eq!(listed.len(), 3, "alice's three sessions, not bob's");
    assert_eq!(listed[0], phone, "most recently active first");

    let (revoked_one, others, count, info): (bool, i64, i64, (Option<String>, bool)) =
        request(&mut api, OWNER.0, &alice_claims, |tx| {
            let one =
                tx.query_one("SELECT session_ext.revoke_session($1, 'lost_device')", &[&tablet])?.get(0);
            let others = tx.query_one("SELECT session_ext.revoke_other_sessions($1)", &[&laptop])?.get(0);
            let count = tx.query_one("SELECT session_ext.count_user_sessions()", &[])?.get(0);
            let info = tx.query_one(
                "SELECT revoke_reason, session_ext.is_session_active(id) FROM session_ext.get_session($1)",
                &[&tablet],
            )?;
            Ok((one, others, count, (info.get(0), info.get(1))))
        })
        .unwrap();
    assert!(revoked_one);
    assert_eq!(others, 1, "the phone; the tablet was already revoked");
    assert_eq!(count, 1, "only the laptop is left");
    assert_eq!(info, (Some("lost_device".to_string()), false));

    let again: bool = request(&mut api, OWNER.0, &alice_claims, |tx| {
        tx.query_one("SELECT session_ext.revoke_session($1)", &[&tablet]).map(|r| r.get(0))
    })
    .unwrap();
    assert!(!again, "revoking a revoked session changes nothing");

    let all: i64 = request(&mut api, OWNER.0, &alice_claims, |tx| {
        tx.query_one("SELECT session_ext.revoke_all_user_sessions()", &[]).map(|r| r.get(0))
    })
    .unwrap();
    assert_eq!(all, 1);
    let bob_active: bool =
        admin.query_one("SELECT session_ext.is_session_active($1)", &[&bobs]).unwrap().get(0);
    assert!(bob_active, "bob's session is untouched");
}

/// Runs `call` in a request on a second connection that began before `first` acted, so that
/// the two requests are concurrent; returns what the second one got.
fn concurrently<T: Send + 'static>(
    db: &str,
    call: impl FnOnce(&mut Transaction<'_>) -> Result<T, postgres::Error> + Send + 'static,
    first: impl FnOnce(),
) -> Result<T, postgres::Error> {
    let mut second = shared_cluster(CLUSTER).connect("authenticator", db);
    let (begun_tx, begun) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        let mut tx = begin_request(&mut second, OWNER.0, &claims(ALICE))?;
        begun_tx.send(()).unwrap();
        go.recv().unwrap();
        let out = call(&mut tx)?;
        tx.commit()?;
        Ok(out)
    });
    begun.recv().unwrap();
    first();
    go_tx.send(()).unwrap();
    handle.join().unwrap()
}

#[test]
fn concurrent_updates_with_the_same_version_one_wins_one_gets_40001() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let (id, _) = session_of(&mut admin, ALICE);
    let mut winner = begin_request(&mut api, OWNER.0, &claims(ALICE)).unwrap();
    let loser = concurrently(
        &db,
        move |tx| {
            tx.query_one(
                "SELECT session_ext.update_session_data($1, '{\"platform\": \"android\"}', 1)",
                &[&id],
            )
            .map(|r| r.get::<_, Option<i64>>(0))
        },
        || {
            let version: Option<i64> = winner
                .query_one("SELECT session_ext.update_session_data($1, '{\"platform\": \"ios\"}', 1)", &[&id])
                .unwrap()
                .get(0);
            assert_eq!(version, Some(2));
            // The loser is now waiting for the row; let it wait, then commit.
            thread::sleep(Duration::from_millis(300));
            winner.commit().unwrap();
        },
    );
    assert_eq!(sqlstate(loser), "40001");
    let row = admin
        .query_one(
            "SELECT session_data->>'platform', data_version FROM session_ext.user_sessions WHERE id = $1",
            &[&id],
        )
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i64>(1)), ("ios".to_string(), 2));
}

/// `sql` (one text column, `$1` the token) in two of the owner's requests at once: the second
/// began before the first called it, and calls it while the first, having called it, holds its
/// transaction open for 300 ms. Returns what each got.
fn twice_at_once(
    api: &mut Client,
    db: &str,
    sql: &'static str,
    token: &str,
) -> (Option<String>, Option<String>) {
    let mut first = begin_request(api, OWNER.0, &claims(ALICE)).unwrap();
    let presented = token.to_string();
    let mut first_got = None;
    let second = concurrently(
        db,
        move |tx| tx.query_one(sql, &[&presented]).map(|r| r.get::<_, Option<String>>(0)),
        || {
            first_got = first.query_one(sql, &[&token]).unwrap().get(0);
            thread::sleep(Duration::from_millis(300));
            first.commit().unwrap();
        },
    )
    .unwrap();
    (first_got, second)
}

#[test]
fn a_rotation_waiting_for_a_concurrent_one_gets_the_same_new_token() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let (id, token) = session_of(&mut admin, ALICE);
    let (first_token, second) =
        twice_at_once(&mut api, &db, "SELECT (session_ext.rotate_session_token($1)).token", &token);
    let first_token: String = first_token.expect("the first rotation returns a token");

    let valid = |admin: &mut Client, token: &str| -> bool {
        admin.query_one("SELECT (session_ext.validate_session($1)).id IS NOT NULL", &[&token]).unwrap().get(0)
    };
    assert!(valid(&mut admin, &first_token), "the first rotation's token validates");
    assert_eq!(second.as_ref(), Some(&first_token), "the racing rotation converges on it (rotation grace)");
    assert!(!valid(&mut admin, &token_of_other(&token)), "no other token validates");
    let active: bool = admin.query_one("SELECT session_ext.is_session_active($1)", &[&id]).unwrap().get(0);
    assert!(active, "a race is not a reuse: the session stays");
}

/// Two requests of one session whose activity is due, the second's transaction begun before the
/// first's write committed: it finds the activity recorded and takes the session as the first left
/// it, writing nothing of its own (read committed).
#[test]
fn a_validation_racing_another_activity_write_returns_the_session_and_writes_once() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let (id, token) = session_of(&mut admin, ALICE);
    admin
        .execute(
            "UPDATE session_ext.user_sessions SET last_active_at = now() - interval '10 min' WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let (first_write, second) = twice_at_once(
        &mut api,
        &db,
        "SELECT (session_ext.validate_session($1)).last_active_at::text",
        &token,
    );
    let first_write = first_write.expect("the first validation returns the session");
    assert_eq!(second.as_ref(), Some(&first_write), "the second request sees the first one's write");
    let stored: String = admin
        .query_one("SELECT last_active_at::text FROM session_ext.user_sessions WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(stored, first_write, "one write: the second request's own now() was never written");
}

/// A validation whose activity write finds the row changed by another kind of write (here the
/// owner's, as cleanup moves `cleanup_after`) looks again and still writes its activity.
#[test]
fn a_validation_racing_another_write_still_records_its_activity() {
    let (_, mut admin, db) = fresh(CLUSTER);
    let (id, token) = session_of(&mut admin, ALICE);
    admin
        .execute(
            "UPDATE session_ext.user_sessions SET last_active_at = now() - interval '10 min' WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let presented = token.clone();
    let second = concurrently(
        &db,
        move |tx| {
            tx.query_one("SELECT (session_ext.validate_session($1)).last_active_at::text", &[&presented])
                .map(|r| r.get::<_, Option<String>>(0))
        },
        || {
            let mut other = admin.transaction().unwrap();
            other
                .execute(
                    "UPDATE session_ext.user_sessions SET cleanup_after = cleanup_after - interval '1 min' WHERE id = $1",
                    &[&id],
                )
                .unwrap();
            thread::sleep(Duration::from_millis(300));
            other.commit().unwrap();
        },
    )
    .unwrap();
    let written = second.expect("the validation returns the session");
    let stored: (String, bool) = admin
        .query_one(
            "SELECT last_active_at::text, last_active_at > now() - interval '1 min' FROM session_ext.user_sessions WHERE id = $1",
            &[&id],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(stored, (written, true), "the activity was written after the other write");
}

/// Repeatable read: a validation whose snapshot predates another transaction's activity write of
/// the same session returns the session as its snapshot shows it, writing nothing: the activity
/// write is optional, and the other transaction recorded it.
#[test]
fn a_repeatable_read_validation_after_a_concurrent_activity_write_returns_the_session() {
    let (_, mut admin, db) = fresh(CLUSTER);
    let (id, token) = session_of(&mut admin, ALICE);
    admin
        .execute(
            "UPDATE session_ext.user_sessions SET last_active_at = now() - interval '10 min' WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let mut late = shared_cluster(CLUSTER).connect("postgres", &db);
    let mut tx =
        late.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    tx.execute("SELECT 1", &[]).unwrap();
    let written: String = admin
        .query_one("SELECT (session_ext.validate_session($1)).last_active_at::text", &[&token])
        .unwrap()
        .get(0);
    let seen: Option<String> = tx
        .query_one("SELECT (session_ext.validate_session($1)).last_active_at::text", &[&token])
        .unwrap()
        .get(0);
    assert!(seen.is_some_and(|seen| seen < written), "the session as the snapshot shows it");
    tx.commit().unwrap();
    let stored: String = admin
        .query_one("SELECT last_active_at::text FROM session_ext.user_sessions WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(stored, written, "one write");
}

/// A request of a session whose row another request holds (its activity write, in a request still
/// running; a data update left open) returns at once with the session, under a lock_timeout that
/// any wait would exceed: validate_session, current_session and require_session alike. The
/// holder records the activity.
#[test]
fn a_request_never_waits_for_another_request_holding_its_session_row() {
    let (_, mut admin, db) = fresh(CLUSTER);
    let (id, token) = session_of(&mut admin, ALICE);
    let cluster = shared_cluster(CLUSTER);
    let claims_of_session = format!(r#"{{"sub":"{ALICE}","role":"authenticated","session_id":"{id}"}}"#);
    let mut api = cluster.connect("authenticator", &db);
    for holding in ["validate_session", "update_session_data"] {
        admin
            .execute(
                "UPDATE session_ext.user_sessions SET last_active_at = now() - interval '10 min' WHERE id = $1",
                &[&id],
            )
            .unwrap();
        let mut holder_client = cluster.connect("authenticator", &db);
        let mut holder = begin_request(&mut holder_client, "authenticated", &claims(ALICE)).unwrap();
        let held_at: String = holder.query_one("SELECT now()::text", &[]).unwrap().get(0);
        match holding {
            "validate_session" => holder.query_one("SELECT session_ext.validate_session($1)", &[&token]),
            _ => holder.query_one("SELECT session_ext.update_session_data($1, '{\"tab\": 2}')", &[&id]),
        }
        .unwrap();
        for call in [
            "SELECT (session_ext.validate_session($1)).id",
            "SELECT (session_ext.current_session()).id WHERE $1::text IS NOT NULL",
            "SELECT (session_ext.require_session()).id WHERE $1::text IS NOT NULL",
        ] {
            let mut tx = begin_request(&mut api, "authenticated", &claims_of_session).unwrap();
            tx.batch_execute("SET LOCAL lock_timeout = '200ms'").unwrap();
            let started = Instant::now();
            let found: Option<Uuid> = tx.query_one(call, &[&token]).unwrap().get(0);
            assert_eq!(found, Some(id), "{holding}: {call}");
            assert!(
                started.elapsed() < Duration::from_millis(200),
                "{holding}: {call}: {:?}",
                started.elapsed()
            );
            tx.commit().unwrap();
        }
        holder.commit().unwrap();
        let recorded: bool = admin
            .query_one(
                "SELECT last_active_at = $2::text::timestamptz FROM session_ext.user_sessions WHERE id = $1",
                &[&id, &held_at],
            )
            .unwrap()
            .get(0);
        assert!(recorded, "{holding}: the holder recorded the activity");
    }
}

/// A token that was never issued, shaped like one.
fn token_of_other(token: &str) -> String {
    token.chars().rev().collect()
}

#[test]
fn max_sessions_per_user_revokes_the_oldest() {
    let (_, mut admin, db) = fresh(CLUSTER);
    admin.batch_execute(&format!("ALTER DATABASE {db} SET session_ext.max_sessions_per_user = 3")).unwrap();
    let mut api = shared_cluster(CLUSTER).connect("authenticator", &db);
    let mut created = Vec::new();
    for _ in 0..5 {
        let id: Uuid = request(&mut api, OWNER.0, &claims(ALICE), |tx| {
            tx.query_one(
                "SELECT id FROM session_ext.create_user_session(user_id => $1, session_data => '{}')",
                &[&alice()],
            )
            .map(|r| r.get(0))
        })
        .unwrap();
        created.push(id);
    }
    let rows = admin
        .query("SELECT id, revoke_reason FROM session_ext.user_sessions ORDER BY created_at, id", &[])
        .unwrap();
    let states: Vec<(Uuid, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let limit = Some("session_limit".to_string());
    assert_eq!(
        states,
        vec![
            (created[0], limit.clone()),
            (created[1], limit),
            (created[2], None),
            (created[3], None),
            (created[4], None)
        ]
    );
}

#[test]
fn max_creates_per_minute_refuses_with_53400_and_writes_nothing() {
    let (_, mut admin, db) = fresh(CLUSTER);
    admin.batch_execute(&format!("ALTER DATABASE {db} SET session_ext.max_creates_per_minute = 2")).unwrap();
    let mut api = shared_cluster(CLUSTER).connect("authenticator", &db);
    let create = |api: &mut Client| {
        request(api, OWNER.0, &claims(ALICE), |tx| {
            tx.query_one(
                "SELECT id FROM session_ext.create_user_session(user_id => $1, session_data => '{}')",
                &[&alice()],
            )
            .map(|r| r.get::<_, Uuid>(0))
        })
    };
    create(&mut api).unwrap();
    create(&mut api).unwrap();
    assert_eq!(sqlstate(create(&mut api)), "53400");
    let (sessions, events): (i64, i64) = {
        let row = admin
            .query_one(
                "SELECT (SELECT count(*) FROM session_ext.user_sessions), (SELECT count(*) FROM session_ext.session_audit_log)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((sessions, events), (2, 2), "the refused call wrote no session and no audit row");
}

#[test]
fn a_listener_hears_revocations_without_tokens() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let (id, token) = session_of(&mut admin, ALICE);
    let mut listener = shared_cluster(CLUSTER).connect("postgres", &db);
    listener.batch_execute("LISTEN session_ext").unwrap();
    request(&mut api, OWNER.0, &claims(ALICE), |tx| {
        tx.execute("SELECT session_ext.update_session_data($1, '{\"cart\": 2}')", &[&id])?;
        tx.execute("SELECT session_ext.revoke_session($1)", &[&id])
    })
    .unwrap();
    let received: Vec<String> = listener
        .notifications()
        .timeout_iter(Duration::from_secs(5))
        .take(2)
        .map(|n| Ok(n.payload().to_string()))
        .collect()
        .unwrap();
    assert_eq!(received.len(), 2, "a data_update and a revoke");
    let revoke: serde_json::Value = serde_json::from_str(&received[1]).unwrap();
    assert_eq!(revoke["event"], "revoke");
    assert_eq!(revoke["session_id"], id.to_string());
    assert_eq!(revoke["user_id"], ALICE);
    assert_eq!(revoke["reason"], "logout");
    let update: serde_json::Value = serde_json::from_str(&received[0]).unwrap();
    assert_eq!(update["event"], "data_update");
    assert!(received.iter().all(|p| !p.contains(&token)), "no token in any payload");
}

#[test]
fn no_notification_when_the_channel_is_off() {
    let (_, mut admin, db) = fresh(CLUSTER);
    admin.batch_execute(&format!("ALTER DATABASE {db} SET session_ext.notify_channel = ''")).unwrap();
    let mut api = shared_cluster(CLUSTER).connect("authenticator", &db);
    let mut listener = shared_cluster(CLUSTER).connect("postgres", &db);
    listener.batch_execute("LISTEN session_ext").unwrap();
    let (id, _) = session_of(&mut admin, ALICE);
    request(&mut api, OWNER.0, &claims(ALICE), |tx| {
        tx.execute("SELECT session_ext.revoke_session($1)", &[&id])
    })
    .unwrap();
    let heard = listener.notifications().timeout_iter(Duration::from_millis(500)).count().unwrap();
    assert_eq!(heard, 0);
}

#[test]
fn each_event_kind_is_audited_and_a_failed_call_audits_nothing() {
    let (mut api, mut admin, _) = fresh(CLUSTER);
    let alice_claims = claims(ALICE);
    let (id, token): (Uuid, String) = request(&mut api, OWNER.0, &alice_claims, |tx| {
        let row = tx.query_one(
            "SELECT id, token FROM session_ext.create_user_session(user_id => $1, session_data => '{}', fingerprint => 'fp')",
            &[&alice()],
        )?;
        Ok((row.get(0), row.get(1)))
    })
    .unwrap();
    let new_token: String = request(&mut api, OWNER.0, &alice_claims, |tx| {
        tx.execute("SELECT session_ext.update_session_data($1, '{\"a\": 1}')", &[&id])?;
        tx.execute("SELECT session_ext.validate_session($1, 'wrong-fingerprint')", &[&token])?;
        tx.query_one("SELECT (session_ext.rotate_session_token($1)).token", &[&token]).map(|r| r.get(0))
    })
    .unwrap();
    assert_eq!(new_token.len(), 98, "a derived token");
    // The old token comes back in a later request, past the rotation grace: token_reuse, then
    // the revoke it causes.
    admin
        .execute(
            "UPDATE session_ext.user_sessions SET rotated_at = now() - interval '1 min' WHERE id = $1",
            &[&id],
        )
        .unwrap();
    request(&mut api, OWNER.0, &alice_claims, |tx| {
        tx.execute("SELECT session_ext.validate_session($1)", &[&token])
    })
    .unwrap();
    admin
        .batch_execute("SET session_ext.revoked_retention = 0; SELECT session_ext.cleanup_expired_sessions()")
        .unwrap();

    let kinds = |admin: &mut Client| -> Vec<String> {
        column(admin, "SELECT event FROM session_ext.session_audit_log ORDER BY id")
    };
    let expected = ["create", "data_update", "suspicious", "rotate", "token_reuse", "revoke", "cleanup"]
        .map(String::from)
        .to_vec();
    assert_eq!(kinds(&mut admin), expected);

    let details: Vec<String> = column(&mut admin, "SELECT details::text FROM session_ext.session_audit_log");
    assert!(
        details.iter().all(|d| !d.contains(&token) && !d.contains(&new_token)),
        "no token in the audit log"
    );

    // Alice reads her own events through row-level security; the cleanup row is not hers.
    let visible: i64 = request(&mut api, OWNER.0, &alice_claims, |tx| {
        tx.query_one("SELECT count(*) FROM session_ext.session_audit_log", &[]).map(|r| r.get(0))
    })
    .unwrap();
    assert_eq!(visible, 6);

    // A call that fails writes no audit row.
    let (other, _) = session_of(&mut admin, ALICE);
    let before = kinds(&mut admin).len();
    let stale = request(&mut api, OWNER.0, &alice_claims, |tx| {
        tx.execute("SELECT session_ext.update_session_data($1, '{\"b\": 2}')", &[&other])?;
        tx.execute(
            "SELECT session_ext.update_session_data($1, '{\"c\": 3}', expected_version => 1)",
            &[&other],
        )
    });
    assert_eq!(sqlstate(stale), "40001");
    assert_eq!(kinds(&mut admin).len(), before, "the failed request left no audit row");
}

#[test]
fn audit_off_writes_no_rows() {
    let (_, mut admin, db) = fresh(CLUSTER);
    admin.batch_execute(&format!("ALTER DATABASE {db} SET session_ext.audit = off")).unwrap();
    let mut admin = shared_cluster(CLUSTER).connect("postgres", &db);
    let (id, _) = session_of(&mut admin, ALICE);
    admin.execute("SELECT session_ext.revoke_session($1)", &[&id]).unwrap();
    let events: i64 =
        admin.query_one("SELECT count(*) FROM session_ext.session_audit_log", &[]).unwrap().get(0);
    assert_eq!(events, 0);
}

#[test]
fn cleanup_skips_rows_another_transaction_holds_and_takes_them_later() {
    let (_, mut admin, db) = fresh(CLUSTER);
    let expire = |admin: &mut Client| -> Uuid {
        let (id, _) = session_of(admin, ALICE);
        admin
            .execute(
                "UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s', cleanup_after = now() - interval '1s' WHERE id = $1",
                &[&id],
            )
            .unwrap();
        id
    };
    let held = expire(&mut admin);
    let free = expire(&mut admin);
    let mut holder = shared_cluster(CLUSTER).connect("postgres", &db);
    let mut lock = holder.transaction().unwrap();
    lock.execute("SELECT 1 FROM session_ext.user_sessions WHERE id = $1 FOR UPDATE", &[&held]).unwrap();

    // The held row neither blocks cleanup nor is deleted by it.
    let deleted: i64 = admin.query_one("SELECT session_ext.cleanup_expired_sessions()", &[]).unwrap().get(0);
    assert_eq!(deleted, 1);
    let left: Vec<Uuid> = column(&mut admin, "SELECT id FROM session_ext.user_sessions");
    assert_eq!(left, vec![held]);
    assert_ne!(held, free);

    lock.commit().unwrap();
    let deleted: i64 = admin.query_one("SELECT session_ext.cleanup_expired_sessions()", &[]).unwrap().get(0);
    assert_eq!(deleted, 1, "a later run takes it");
}
