//! The code that bypasses SQL (direct index scans, rows deleted below the executor, cached
//! catalog facts) against what other connections do meanwhile: rows they hold locked, and
//! catalog changes they commit while this connection sits in an open transaction.

mod harness;

use harness::{fresh, session_of};
use postgres::Client;

/// A server error as its SQLSTATE and message.
fn failure(e: postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

const CLUSTER: &str = "bypass";
const ALICE: &str = "a11ce000-0000-4000-8000-000000000001";

/// An admin connection, and a session's token that a second connection has validated (so its
/// backend has looked up its catalog facts) before opening the transaction it now sits in.
fn pooled_in_open_transaction() -> (Client, Client, String) {
    let (_, mut admin, db) = fresh(CLUSTER);
    let (_, token) = session_of(&mut admin, ALICE);
    let mut pooled = harness::shared_cluster(CLUSTER).connect("postgres", &db);
    let valid: bool = pooled
        .query_one("SELECT (session_ext.validate_session($1)).id IS NOT NULL", &[&token])
        .unwrap()
        .get(0);
    assert!(valid);
    pooled.batch_execute("BEGIN; SELECT 1").unwrap();
    (admin, pooled, token)
}

/// Cleanup resumes after the last row it picked with a (cleanup_after, id) row comparison; rows it
/// cannot delete stay behind that position. Expired sessions whose cleanup_after order is the
/// reverse of their id order, all held by another transaction: one batch at a time must still
/// finish (a row comparison made with boolean procedures, not btree's three-way comparison
/// procedures, sent the scan back to rows it had passed, forever).
#[test]
fn cleanup_in_batches_of_one_moves_past_rows_another_transaction_holds() {
    let (_, mut admin, db) = fresh(CLUSTER);
    // Ids grow in creation order (UUIDv7); the later a session is created, the sooner it expires.
    admin
        .execute(
            "SELECT FROM generate_series(5, 1, -1) n, LATERAL session_ext.create_user_session(
                 user_id => $1::text::uuid, session_data => '{}', ttl => n * interval '200 ms')",
            &[&ALICE],
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let mut holder = harness::shared_cluster(CLUSTER).connect("postgres", &db);
    let mut hold = holder.transaction().unwrap();
    hold.execute("SELECT FROM session_ext.user_sessions FOR UPDATE", &[]).unwrap();

    admin.batch_execute("SET statement_timeout = '10s'").unwrap();
    for batch in [1, 2] {
        let deleted = admin
            .query_one("SELECT session_ext.cleanup_expired_sessions(batch_size => $1)", &[&batch])
            .map(|row| row.get::<_, i64>(0))
            .map_err(failure);
        assert_eq!(deleted, Ok(0), "batch_size {batch}: every row is held, none deleted, and the call ends");
    }
    hold.rollback().unwrap();
    assert_eq!(
        admin
            .query_one("SELECT session_ext.cleanup_expired_sessions(batch_size => 1)", &[])
            .unwrap()
            .get::<_, i64>(0),
        5,
        "released, all five are deleted"
    );
}

/// A pooled connection sits in an open transaction while another widens the row type the
/// lookup forms its result from. The next validation must see the new shape (and refuse it),
/// never build a wider row from the old one's fields.
#[test]
fn a_row_type_altered_by_another_connection_is_refused_not_misread() {
    let (mut admin, mut pooled, token) = pooled_in_open_transaction();

    let attributes: Vec<String> = (0..40).map(|i| format!("ADD ATTRIBUTE extra{i} int")).collect();
    admin.batch_execute(&format!("ALTER TYPE session_ext.session_info {}", attributes.join(", "))).unwrap();

    let result = pooled
        .query_one("SELECT session_ext.validate_session($1)::text", &[&token])
        .map(|row| row.get::<_, Option<String>>(0))
        .map_err(failure);
    assert!(
        matches!(&result, Err(e) if e.starts_with("55000: session_ext's objects were altered")),
        "{result:?}"
    );
    pooled.batch_execute("ROLLBACK").unwrap();
}

/// REINDEX CONCURRENTLY replaces the token index by a new one (a new oid) and drops the old. A
/// transaction that began before must use the new index: the old one no longer exists, and
/// while it is dead but not yet dropped it misses every session created since.
#[test]
fn the_token_index_rebuilt_concurrently_is_used_by_a_transaction_open_across_it() {
    let (mut admin, mut pooled, token) = pooled_in_open_transaction();

    admin.batch_execute("REINDEX INDEX CONCURRENTLY session_ext.user_sessions_token_hash_key").unwrap();
    let (_, created_after) = session_of(&mut admin, ALICE);

    for presented in [&token, &created_after] {
        let valid = pooled
            .query_one("SELECT (session_ext.validate_session($1)).id IS NOT NULL", &[presented])
            .map(|row| row.get::<_, bool>(0))
            .map_err(failure);
        assert_eq!(valid, Ok(true));
    }
    pooled.batch_execute("COMMIT").unwrap();
}
