//! Helpers for the `#[pg_test]`s: they run inside one transaction as a superuser, which is
//! rolled back afterwards, so they may create roles and rewrite rows freely.

use pgrx::prelude::*;
use pgrx::Uuid;

pub const ALICE: &str = "a11ce000-0000-4000-8000-000000000001";
pub const BOB: &str = "b0b00000-0000-4000-8000-000000000002";

/// Creates a session through the generating overload; `extra` is appended to the named
/// arguments. Returns the id and the token.
pub fn create(user: &str, extra: &str) -> (Uuid, String) {
    let sql = format!(
        "SELECT id, token FROM session_ext.create_user_session(user_id => '{user}', session_data => '{{}}'{extra})"
    );
    match Spi::get_two::<Uuid, String>(&sql) {
        Ok((Some(id), Some(token))) => (id, token),
        other => panic!("{sql}: {other:?}"),
    }
}

/// Runs the rest of the transaction as a fresh non-admin role acting for `user`, the way
/// PostgREST sets up a request.
pub fn act_as_user(user: &str) {
    Spi::run(&format!(
        "CREATE ROLE unit_test_user NOLOGIN IN ROLE session_ext_user;
         SET LOCAL ROLE unit_test_user;
         SELECT set_config('request.jwt.claims', '{{\"sub\":\"{user}\"}}', true);"
    ))
    .expect("switching to a user role");
}

pub fn count(sql: &str) -> i64 {
    Spi::get_one::<i64>(sql).expect(sql).expect(sql)
}
