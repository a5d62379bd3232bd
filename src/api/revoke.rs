//! Ending sessions (SPEC §4 "Multi-device"): one, all but the current one, or all of a user's.
//! Every other way a session ends early (the per-user limit, token reuse) goes through
//! [`revoke`] as well, so each revocation is audited and notified the same way.

use super::{args, on_own_session, target_user, Subject};
use crate::db::{Statement, TEXT, UUID};
use crate::definer;
use crate::events::{self, Event};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use serde_json::json;

/// Marks the rows a statement selects as revoked; every statement passed here ends with
/// `RETURNING s.id, s.user_id, s.ip_address`.
macro_rules! revoking {
    ($where:literal) => {
        concat!(
            "UPDATE session_ext.user_sessions s
                SET revoked_at = pg_catalog.now(), revoke_reason = $1
              WHERE s.revoked_at IS NULL AND s.valid_until > pg_catalog.now() AND ",
            $where,
            " RETURNING s.id, s.user_id, s.ip_address"
        )
    };
}
pub(crate) use revoking;

static REVOKE_ONE: Statement = Statement::new(revoking!("s.id = $2"), &[TEXT, UUID]);
static REVOKE_ALL: Statement = Statement::new(revoking!("s.user_id = $2"), &[TEXT, UUID]);
static REVOKE_OTHERS: Statement =
    Statement::new(revoking!("s.user_id = $2 AND s.id <> $3"), &[TEXT, UUID, UUID]);

/// Runs a `revoking!` statement, whose first argument is `reason`, and records each
/// revocation; returns how many there were.
pub fn revoke(
    client: &SpiClient<'_>,
    statement: &'static Statement,
    args: &[DatumWithOid<'_>],
    reason: &str,
) -> i64 {
    let revoked = statement.each(client, args, |row| {
        let subject = Subject::from_row(row, 1);
        events::record(client, Event::Revoke, Some(&subject), json!({ "reason": reason }));
    });
    revoked as i64
}

/// A rotated-away token came back: the reuse is recorded and the session, if still active,
/// revoked with reason `token_reuse`.
pub fn token_reused(client: &SpiClient<'_>, subject: &Subject, active: bool) {
    pgrx::log!("session_ext: a rotated-away token of session {} was presented again", subject.id);
    events::record(client, Event::TokenReuse, Some(subject), json!({}));
    if active {
        let reason = "token_reuse";
        revoke(client, &REVOKE_ONE, &[reason.into(), subject.id.into()], reason);
    }
}

/// Revokes one active session. True if it was active and now is not.
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_session(session_id: Option<Uuid>, reason: default!(Option<&str>, "'logout'")) -> bool {
    definer::as_owner(|| {
        let reason = args::reason(reason)?;
        on_own_session(session_id, "session_id", false, |client, id, _| {
            revoke(client, &REVOKE_ONE, &[reason.into(), id.into()], reason) == 1
        })
    })
}

/// "Log out everywhere else": revokes every other active session of the owner of
/// `current_session_id`. Returns how many.
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_other_sessions(current_session_id: Option<Uuid>) -> i64 {
    definer::as_owner(|| {
        on_own_session(current_session_id, "current_session_id", 0, |client, id, owner| {
            let reason = "logout_others";
            revoke(client, &REVOKE_OTHERS, &[reason.into(), owner.into(), id.into()], reason)
        })
    })
}

/// Revokes every active session of a user (the caller's own when `user_id` is NULL).
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_all_user_sessions(
    user_id: default!(Option<Uuid>, "NULL"),
    reason: default!(Option<&str>, "'logout_all'"),
) -> i64 {
    definer::as_owner(|| {
        let reason = args::reason(reason)?;
        let user = target_user(user_id)?;
        Ok(Spi::connect(|client| revoke(client, &REVOKE_ALL, &[reason.into(), user.into()], reason)))
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{count, create, ALICE, BOB};
    use pgrx::prelude::*;

    fn reasons() -> String {
        Spi::get_one::<String>(
            "SELECT string_agg(coalesce(revoke_reason, '-'), ',' ORDER BY created_at, id) FROM session_ext.user_sessions",
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn each_revocation_keeps_its_reason() {
        let (a, _) = create(ALICE, "");
        let (b, _) = create(ALICE, "");
        let (c, _) = create(ALICE, "");
        create(BOB, "");
        assert_eq!(
            count(&format!("SELECT session_ext.revoke_session('{a}', 'password_changed')::int::bigint")),
            1
        );
        assert_eq!(count(&format!("SELECT session_ext.revoke_other_sessions('{c}')")), 1);
        assert_eq!(reasons(), "password_changed,logout_others,-,-");
        assert_eq!(count(&format!("SELECT session_ext.revoke_all_user_sessions('{ALICE}')")), 1);
        assert_eq!(reasons(), "password_changed,logout_others,logout_all,-");
        let _ = b;
    }

    #[pg_test]
    fn an_unknown_session_revokes_nothing() {
        create(ALICE, "");
        let unknown = pgrx::Uuid::from_bytes([3; 16]);
        assert_eq!(count(&format!("SELECT session_ext.revoke_session('{unknown}')::int::bigint")), 0);
        assert_eq!(count(&format!("SELECT session_ext.revoke_other_sessions('{unknown}')")), 0);
        assert_eq!(reasons(), "-");
    }

    #[pg_test(error = "invalid value for argument \"reason\"")]
    fn a_blank_reason_is_refused() {
        let (a, _) = create(ALICE, "");
        count(&format!("SELECT session_ext.revoke_session('{a}', ' ')::int::bigint"));
    }
}
