//! Ending sessions (SPEC §4 "Multi-device"): one, all but the current one, or all of a user's.
//! Every other way a session ends early (the per-user limit, token reuse) goes through
//! [`revoke`] as well, so each revocation is audited and notified the same way.

use super::{active, args, on_own_session, target_user, Subject};
use crate::db::{Columns, Statement, TEXT, UUID};
use crate::definer;
use crate::events::{self, Event, Recorder};
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
/// As REVOKE_ONE, but a row another transaction holds is left alone instead of waited for.
static REVOKE_ONE_UNLESS_HELD: Statement = Statement::new(
    revoking!(
        "s.ctid = ANY (ARRAY(SELECT h.ctid FROM session_ext.user_sessions h WHERE h.id = $2
                               FOR NO KEY UPDATE SKIP LOCKED))"
    ),
    &[TEXT, UUID],
);
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

/// Revokes every active session of `user` with `reason`; returns how many.
pub fn revoke_user(client: &SpiClient<'_>, user: Uuid, reason: &str) -> i64 {
    revoke(client, &REVOKE_ALL, &[reason.into(), user.into()], reason)
}

/// An earlier token of session `id` came back (`api::reuse`): the session, if still active, is
/// revoked with reason `token_reuse`, recorded by `recorder` as a `token_reuse` and a `revoke`
/// event. With `unless_held`, a row another transaction holds is not waited for (and not revoked).
/// Returns whether it revoked the session.
pub fn token_reused(client: &SpiClient<'_>, id: Uuid, recorder: &Recorder, unless_held: bool) -> bool {
    let reason = "token_reuse";
    let statement = if unless_held { &REVOKE_ONE_UNLESS_HELD } else { &REVOKE_ONE };
    let revoked = statement.each(client, &[reason.into(), id.into()], |row| {
        let subject = Subject::from_row(row, 1);
        recorder.record(client, Event::TokenReuse, Some(&subject), json!({}));
        recorder.record(client, Event::Revoke, Some(&subject), json!({ "reason": reason }));
    });
    revoked == 1
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

// Not locked: two devices logging each other out at once would deadlock on each other's rows.
static STILL_ACTIVE: Statement = Statement::new(
    concat!("SELECT ", active!(), " FROM session_ext.user_sessions s WHERE s.id = $1"),
    &[UUID],
);

/// "Log out everywhere else": revokes every other active session of the owner of
/// `current_session_id`. Returns how many. A session that is itself revoked or expired ends
/// nothing (SPEC §4): the call returns 0 and records a `suspicious` event.
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_other_sessions(current_session_id: Option<Uuid>) -> i64 {
    definer::as_owner(|| {
        on_own_session(current_session_id, "current_session_id", 0, |client, id, owner| {
            if STILL_ACTIVE.one(client, &[id.into()]).and_then(|row| row.col::<bool>(1)) != Some(true) {
                let details = json!({ "reason": "inactive_session", "function": "revoke_other_sessions" });
                events::record(client, Event::Suspicious, Subject::of(client, id).as_ref(), details);
                return 0;
            }
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
        Ok(Spi::connect(|client| revoke_user(client, user, reason)))
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

    #[pg_test]
    fn a_dead_session_ends_nothing() {
        for end in ["revoked_at = now(), revoke_reason = 'logout'", "valid_until = now() - interval '1s'"] {
            let (dead, _) = create(ALICE, "");
            let (live, _) = create(ALICE, "");
            Spi::run(&format!("UPDATE session_ext.user_sessions SET {end} WHERE id = '{dead}'")).unwrap();
            assert_eq!(count(&format!("SELECT session_ext.revoke_other_sessions('{dead}')")), 0, "{end}");
            let still_active = format!(
                "SELECT count(*) FROM session_ext.user_sessions WHERE id = '{live}' AND revoked_at IS NULL"
            );
            assert_eq!(count(&still_active), 1, "{end}");
            let suspicious = format!(
                "SELECT count(*) FROM session_ext.session_audit_log WHERE session_id = '{dead}' AND event = 'suspicious'
                    AND details = '{{\"reason\": \"inactive_session\", \"function\": \"revoke_other_sessions\"}}'"
            );
            assert_eq!(count(&suspicious), 1, "{end}");
        }
    }

    #[pg_test(error = "invalid value for argument \"reason\"")]
    fn a_blank_reason_is_refused() {
        let (a, _) = create(ALICE, "");
        count(&format!("SELECT session_ext.revoke_session('{a}', ' ')::int::bigint"));
    }
}
