//! Sessions carried by JWTs (SPEC §4): Supabase Auth, and other auth servers in front of
//! PostgREST, put the session's id in the access token's `session_id` claim. PostgREST checks
//! the token's signature, not the session, so a signed-out session's token works until it
//! expires; `require_session` in PostgREST's `db-pre-request` refuses it on its next request.

use super::aal::Level;
use super::check::{activity_due, record_activity, writable};
use super::lookup::{self, Key};
use crate::db::{Columns, Statement, UUID};
use crate::definer;
use crate::errors::ApiError;
use crate::identity::{self, Claimed};
use crate::types::SessionInfo;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};

/// The active session the request's claims name (`session_id`), if it belongs to their `sub`;
/// NULL otherwise, and for claims without a `session_id`. Records activity as
/// `validate_session` does: at most once per `session_ext.touch_interval`, never in a
/// read-only transaction. One probe of the primary key.
#[pg_extern(volatile, parallel_unsafe)]
fn current_session() -> Option<SessionInfo> {
    definer::as_owner(|| Ok(claimed_session(identity::claimed()?)))
}

fn claimed_session(claimed: Claimed) -> Option<SessionInfo> {
    let (user, id) = (claimed.user?, claimed.session?);
    let live = lookup::live(Key::Id(id), activity_due(writable())).filter(|live| live.user_id == user)?;
    record_activity(live, Key::Id(id))
}

/// As `current_session`, for PostgREST's `db-pre-request` and for functions that need a live
/// session: claims without a `session_id` (anon, service role) pass and return NULL, unless a
/// `min_aal` is asked, which only a session can meet (42501). Claims that name a session raise
/// 28000 when it is not the active session of their `sub` (revoked, expired, unknown, another
/// user's) and 42501 when its assurance level is below `min_aal` (`aal1`, `aal2` or `aal3`;
/// 22023 for another value). The README's recipe turns them into HTTP 401 and 403.
#[pg_extern(volatile, parallel_unsafe)]
fn require_session(min_aal: default!(Option<&str>, "NULL")) -> Option<SessionInfo> {
    definer::as_owner(|| {
        let min = min_aal.map(|name| Level::argument(name, "min_aal")).transpose()?;
        let claimed = identity::claimed()?;
        let Some(id) = claimed.session else {
            // No session proves a level: a gate for aal2 must not open to anon or a service key.
            return match min {
                None => Ok(None),
                Some(min) => Err(no_session_for(min)),
            };
        };
        let user = identity::require_user()?;
        let due = activity_due(writable());
        let Some(live) = lookup::live(Key::Id(id), due).filter(|live| live.user_id == user) else {
            return Err(not_active(id, user));
        };
        if let Some(min) = min.filter(|&min| live.aal() < min) {
            return Err(level_too_low(id, live.aal(), min));
        }
        record_activity(live, Key::Id(id)).map(Some).ok_or_else(|| not_active(id, user))
    })
}

static STATE: Statement = Statement::stable(
    "SELECT s.revoke_reason FROM session_ext.user_sessions s WHERE s.id = $1 AND s.user_id = $2",
    &[UUID, UUID],
);

/// 28000, saying why: revoked (and the reason), expired, or not a session of this user (which
/// does not tell another user's session from an unknown one).
fn not_active(id: Uuid, user: Uuid) -> ApiError {
    let state =
        Spi::connect(|client| STATE.one(client, &[id.into(), user.into()]).map(|row| row.col::<String>(1)));
    let why = match state {
        Some(Some(reason)) => format!("was revoked (reason {reason})"),
        Some(None) => "has expired".to_string(),
        None => "is not a session of the user in the \"sub\" claim".to_string(),
    };
    ApiError::new(
        PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        "the session of this request is not active",
    )
    .detail(format!("Session {id}, named by the \"session_id\" claim, {why}."))
    .hint("Sign in again: the access token outlived its session.")
}

fn level_too_low(id: Uuid, level: Level, min: Level) -> ApiError {
    needs(min).detail(format!("Session {id} is at {}.", level.name())).hint(
        "Verify another factor; the auth server then raises the session with session_ext.set_session_aal.",
    )
}

fn no_session_for(min: Level) -> ApiError {
    needs(min)
        .detail("The request's claims name no session (no \"session_id\" claim).")
        .hint("Only a signed-in session reaches a level: sign in, then verify the factor.")
}

fn needs(min: Level) -> ApiError {
    ApiError::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("this request needs assurance level {}", min.name()),
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{count, create, ALICE};
    use pgrx::prelude::*;

    fn name_session_in_claims(id: &pgrx::Uuid) {
        Spi::run(&format!(
            "SELECT set_config('request.jwt.claims', json_build_object('sub', '{ALICE}', 'session_id', '{id}')::text, true)"
        ))
        .unwrap();
    }

    #[pg_test]
    fn a_read_only_request_reads_its_session_and_writes_nothing() {
        let (id, _) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET last_active_at = now() - interval '10 min' WHERE id = '{id}'"
        ))
        .unwrap();
        name_session_in_claims(&id);
        Spi::run("SET LOCAL transaction_read_only = on").unwrap();
        let found = Spi::get_one::<pgrx::Uuid>("SELECT (session_ext.current_session()).id").unwrap();
        assert_eq!(found, Some(id));
        let untouched = format!(
            "SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}' AND last_active_at = now() - interval '10 min'"
        );
        assert_eq!(count(&untouched), 1);
    }

    /// As `validate_session`: the session is read after the transaction's earlier commands, even
    /// those of the statement that asks.
    #[pg_test]
    fn a_session_revoked_earlier_in_the_same_statement_is_not_current() {
        let (id, _) = create(ALICE, "");
        name_session_in_claims(&id);
        let sql = format!(
            "WITH r AS MATERIALIZED (SELECT session_ext.revoke_session('{id}'))
             SELECT (session_ext.current_session()).id IS NULL FROM r"
        );
        assert_eq!(Spi::get_one::<bool>(&sql).unwrap(), Some(true));
    }

    /// The probe reads the index by its name: one that no longer is the primary key is refused,
    /// never probed.
    #[pg_test(error = "session_ext's objects were altered")]
    fn a_primary_key_replaced_under_its_name_is_refused() {
        let (id, _) = create(ALICE, "");
        name_session_in_claims(&id);
        Spi::run(
            "ALTER TABLE session_ext.user_sessions DROP CONSTRAINT user_sessions_pkey;
             CREATE UNIQUE INDEX user_sessions_pkey ON session_ext.user_sessions (user_id);",
        )
        .unwrap();
        Spi::run("SELECT session_ext.current_session()").unwrap();
    }

    #[pg_test(error = "the session of this request is not active")]
    fn require_session_refuses_it_in_the_same_statement_too() {
        let (id, _) = create(ALICE, "");
        name_session_in_claims(&id);
        Spi::run(&format!(
            "WITH r AS MATERIALIZED (SELECT session_ext.revoke_session('{id}')) SELECT session_ext.require_session() FROM r"
        ))
        .unwrap();
    }
}
