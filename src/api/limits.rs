//! Per-user limits on creating sessions (SPEC §5): `max_creates_per_minute` refuses a creation
//! with 53400, `max_sessions_per_user` makes room by revoking the user's oldest sessions.
//! Both are checked under a per-user transaction lock, so concurrent logins cannot overshoot.

use super::revoke::{revoke, revoking};
use crate::db::{Columns, Statement, INT4, INT8, TEXT, UUID};
use crate::errors::{self, ApiError, ApiResult};
use crate::settings::{MAX_CREATES_PER_MINUTE, MAX_SESSIONS_PER_USER};
use crate::shmem::{self, Refusal};
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, PgSqlErrorCode, Uuid};

/// First key of session_ext's advisory locks, so they never meet an application's own.
const LOCK_CLASS: i32 = i32::from_be_bytes(*b"sesx");

static LOCK_USER: Statement =
    Statement::new("SELECT pg_catalog.pg_advisory_xact_lock($1, $2)", &[INT4, INT4]);

static CREATED_LAST_MINUTE: Statement = Statement::new(
    "SELECT count(*) FROM session_ext.user_sessions s
      WHERE s.user_id = $1 AND s.created_at > pg_catalog.now() - interval '1 minute'",
    &[UUID],
);

// Keeps the newest $4 of the user's other active sessions; the new one ($3) makes it the limit.
static REVOKE_OLDEST: Statement = Statement::new(
    revoking!(
        "s.id IN (SELECT o.id FROM session_ext.user_sessions o
                   WHERE o.user_id = $2 AND o.id <> $3
                     AND o.revoked_at IS NULL AND o.valid_until > pg_catalog.now()
                   ORDER BY o.created_at DESC, o.id DESC OFFSET $4)"
    ),
    &[TEXT, UUID, UUID, INT8],
);

/// Before a session of `user_id` is created: takes the user's lock when a limit is set, and
/// refuses the creation past `max_creates_per_minute`.
pub fn before_create(client: &SpiClient<'_>, user_id: Uuid) -> ApiResult<()> {
    let per_minute = MAX_CREATES_PER_MINUTE.get();
    if per_minute == 0 && MAX_SESSIONS_PER_USER.get() == 0 {
        return Ok(());
    }
    LOCK_USER.count(client, &[LOCK_CLASS.into(), lock_key(user_id).into()]);
    if per_minute == 0 {
        return Ok(());
    }
    let created: i64 = CREATED_LAST_MINUTE.one(client, &[user_id.into()]).and_then(|r| r.col(1)).unwrap_or(0);
    if created < i64::from(per_minute) {
        return Ok(());
    }
    errors::log(format!(
        "session_ext: refused a session for user {user_id}: {created} created in the last minute"
    ));
    // SAFETY: backend globals and the clock.
    let (database, role, at) = unsafe {
        (pg_sys::MyDatabaseId.to_u32(), pg_sys::GetOuterUserId().to_u32(), pg_sys::GetCurrentTimestamp())
    };
    shmem::push_refusal(Refusal {
        database,
        role,
        user_id: *user_id.as_bytes(),
        at,
        created,
        limit: per_minute,
    });
    Err(ApiError::new(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        "too many sessions created for this user",
    )
    .detail(format!(
        "User {user_id} created {created} sessions in the last minute; session_ext.max_creates_per_minute is {per_minute}."
    ))
    .hint("Wait a minute before creating another session."))
}

/// After session `new_id` of `user_id` was created: revokes the user's oldest active sessions
/// beyond `max_sessions_per_user`, with reason `session_limit`.
pub fn after_create(client: &SpiClient<'_>, user_id: Uuid, new_id: Uuid) {
    let max = MAX_SESSIONS_PER_USER.get();
    if max == 0 {
        return;
    }
    let keep = i64::from(max - 1);
    let reason = "session_limit";
    revoke(client, &REVOKE_OLDEST, &[reason.into(), user_id.into(), new_id.into(), keep.into()], reason);
}

/// The second lock key: the user id folded into 32 bits (a collision only serializes two users).
fn lock_key(user_id: Uuid) -> i32 {
    user_id
        .as_bytes()
        .chunks_exact(4)
        .fold(0, |key, chunk| key ^ i32::from_be_bytes(chunk.try_into().unwrap()))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{count, create, ALICE, BOB};
    use pgrx::prelude::*;

    #[pg_test]
    fn a_limit_of_one_keeps_only_the_newest_session() {
        Spi::run("SET session_ext.max_sessions_per_user = 1").unwrap();
        create(ALICE, "");
        create(ALICE, "");
        let (newest, _) = create(ALICE, "");
        create(BOB, "");
        let active = format!(
            "SELECT count(*) FROM session_ext.user_sessions WHERE user_id = '{ALICE}' AND revoked_at IS NULL AND id = '{newest}'"
        );
        assert_eq!(count(&active), 1);
        assert_eq!(
            count("SELECT count(*) FROM session_ext.user_sessions WHERE revoke_reason = 'session_limit'"),
            2
        );
        assert_eq!(count(&format!("SELECT count(*) FROM session_ext.user_sessions WHERE user_id = '{BOB}' AND revoked_at IS NULL")), 1);
    }

    #[pg_test(error = "too many sessions created for this user")]
    fn the_rate_limit_counts_the_last_minute() {
        Spi::run("SET session_ext.max_creates_per_minute = 1").unwrap();
        let (first, _) = create(ALICE, "");
        // A creation older than a minute no longer counts.
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET created_at = now() - interval '61s' WHERE id = '{first}'"
        ))
        .unwrap();
        create(ALICE, "");
        create(ALICE, "");
    }

    #[test]
    fn lock_keys_fold_the_whole_uuid() {
        let a = pgrx::Uuid::from_bytes([1; 16]);
        let mut bytes = [1; 16];
        bytes[15] = 2;
        assert_ne!(super::lock_key(a), super::lock_key(pgrx::Uuid::from_bytes(bytes)));
    }
}
