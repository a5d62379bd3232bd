//! `cleanup_expired_sessions` (SPEC §4 "Maintenance"): deletes what can no longer validate, in
//! short batches that skip rows other transactions hold.

use crate::db::{Statement, INT4, INTERVAL};
use crate::errors::{boundary, ApiError};
use crate::identity;
use crate::settings::{self, MAX_BATCH_SIZE};
use pgrx::prelude::*;

// Rows are picked by ctid so that each batch deletes through a TID scan, without a second
// index lookup; FOR UPDATE SKIP LOCKED leaves rows another transaction is using for a later run.
static DELETE_EXPIRED: Statement = Statement::write(
    "DELETE FROM session_ext.user_sessions
      WHERE ctid = ANY (ARRAY(
            SELECT s.ctid FROM session_ext.user_sessions s
             WHERE s.valid_until <= pg_catalog.now()
             LIMIT $1 FOR UPDATE SKIP LOCKED))",
    &[INT4],
);

static DELETE_REVOKED: Statement = Statement::write(
    "DELETE FROM session_ext.user_sessions
      WHERE ctid = ANY (ARRAY(
            SELECT s.ctid FROM session_ext.user_sessions s
             WHERE s.revoked_at <= pg_catalog.now() - $2
             LIMIT $1 FOR UPDATE SKIP LOCKED))",
    &[INT4, INTERVAL],
);

/// Deletes sessions past `expires_at` or their idle timeout, and revoked sessions older than
/// `session_ext.revoked_retention`. Returns how many were deleted. Admins only.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn cleanup_expired_sessions(batch_size: default!(Option<i32>, "NULL")) -> i64 {
    boundary(|| {
        let batch = match batch_size {
            None => settings::CLEANUP_BATCH_SIZE.get(),
            Some(n) if (1..=MAX_BATCH_SIZE).contains(&n) => n,
            Some(n) => {
                return Err(ApiError::invalid_argument(
                    "batch_size",
                    format!("is {n}; it must be between 1 and {MAX_BATCH_SIZE}"),
                )
                .hint("Pass NULL to use session_ext.cleanup_batch_size."))
            }
        };
        identity::require_admin("cleanup_expired_sessions")?;
        let retention = settings::revoked_retention();
        Ok(Spi::connect(|client| {
            let mut deleted = 0i64;
            for (statement, extra) in [(&DELETE_EXPIRED, None), (&DELETE_REVOKED, Some(retention))] {
                loop {
                    check_for_interrupts!();
                    let mut arguments = vec![batch.into()];
                    arguments.extend(extra.map(Into::into));
                    let n = statement.run(client, &arguments).len();
                    deleted += n as i64;
                    if n < batch as usize {
                        break;
                    }
                }
            }
            deleted
        }))
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{count, create, ALICE, BOB};
    use pgrx::prelude::*;

    #[pg_test]
    fn deletes_exactly_the_expired_and_the_long_revoked() {
        Spi::run("SET session_ext.revoked_retention = '1h'").unwrap();
        let states = [
            ("live", ""),
            ("absolute", "expires_at = now() - interval '1s', valid_until = now() - interval '1s'"),
            ("idle", "last_active_at = now() - interval '2h', valid_until = now() - interval '1h'"),
            ("revoked_recently", "revoked_at = now() - interval '59 min', revoke_reason = 'logout'"),
            ("revoked_long_ago", "revoked_at = now() - interval '61 min', revoke_reason = 'logout'"),
            ("ends_now", "expires_at = now(), valid_until = now()"),
        ];
        for (i, (name, assignments)) in states.iter().enumerate() {
            let (id, _) = create(if i % 2 == 0 { ALICE } else { BOB }, &format!(", session_id => '{name}'"));
            if !assignments.is_empty() {
                Spi::run(&format!(
                    "UPDATE session_ext.user_sessions SET created_at = now() - interval '1 day', {assignments} WHERE id = '{id}'"
                ))
                .unwrap();
            }
        }
        // batch_size 1 makes every deletion its own statement.
        assert_eq!(count("SELECT session_ext.cleanup_expired_sessions(1)"), 4);
        let left = Spi::get_one::<String>(
            "SELECT string_agg(session_id, ',' ORDER BY session_id) FROM session_ext.user_sessions",
        )
        .unwrap();
        assert_eq!(left.as_deref(), Some("live,revoked_recently"));
        assert_eq!(count("SELECT session_ext.cleanup_expired_sessions()"), 0);
    }

    #[pg_test(error = "invalid value for argument \"batch_size\"")]
    fn batch_size_must_be_positive() {
        count("SELECT session_ext.cleanup_expired_sessions(0)");
    }
}
