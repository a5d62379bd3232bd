//! `cleanup_expired_sessions` (SPEC §4 "Maintenance"): deletes what can no longer validate, and
//! audit rows past their retention, in short batches that skip rows other transactions hold.

use crate::db::{Columns, Statement, INT4, INTERVAL, TEXT, TIMESTAMPTZ};
use crate::errors::{boundary, ApiError};
use crate::events::{self, Event};
use crate::identity;
use crate::settings::{self, MAX_BATCH_SIZE};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::json;

/// Deletes up to $1 rows of `table` whose `column` is at least $2 in the past, in the order of
/// its (`column`, id) index from just after ($3, $4); returns how many, and the (`column`, id) of
/// the last one, where the next batch starts: no batch walks again over the index entries of
/// rows already deleted. Rows are deleted by ctid, through a TID scan; FOR UPDATE SKIP LOCKED
/// leaves rows another transaction holds for a later run.
macro_rules! delete_batch {
    ($table:literal, $column:literal, $id_type:literal) => {
        Statement::new(
            concat!(
                "WITH doomed AS (SELECT t.ctid, t.", $column, " AS reached, t.id FROM ", $table, " t",
                "                 WHERE t.", $column, " <= pg_catalog.now() - $2",
                "                   AND (t.", $column, ", t.id) > ($3, $4::", $id_type, ")",
                "                 ORDER BY t.", $column, ", t.id LIMIT $1 FOR UPDATE SKIP LOCKED),",
                "     gone AS (DELETE FROM ", $table, " WHERE ctid = ANY (ARRAY(SELECT d.ctid FROM doomed d))",
                "              RETURNING 1)",
                " SELECT (SELECT count(*) FROM gone), last.reached, last.id::text",
                "   FROM (SELECT NULL) one",
                "   LEFT JOIN (SELECT d.reached, d.id FROM doomed d ORDER BY d.reached DESC, d.id DESC LIMIT 1) last ON true"
            ),
            &[INT4, INTERVAL, TIMESTAMPTZ, TEXT],
        )
    };
}

static DELETE_EXPIRED: Statement = delete_batch!("session_ext.user_sessions", "valid_until", "uuid");
static DELETE_REVOKED: Statement = delete_batch!("session_ext.user_sessions", "revoked_at", "uuid");
static DELETE_AUDIT: Statement = delete_batch!("session_ext.session_audit_log", "occurred_at", "bigint");

/// Where a pass has got to, as (timestamp, id as text): batches go forward through the index,
/// never back. It starts before every row: no row's timestamp is -infinity.
#[derive(Debug, Clone)]
pub struct Cursor(TimestampWithTimeZone, Option<String>);

impl Default for Cursor {
    fn default() -> Self {
        Cursor(TimestampWithTimeZone::negative_infinity(), None)
    }
}

/// One kind of row cleanup deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Sessions past `expires_at` or their idle timeout.
    Expired,
    /// Revoked sessions past `session_ext.revoked_retention`.
    Revoked,
    /// Audit rows past `session_ext.audit_retention`.
    Audit,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Expired, Pass::Revoked, Pass::Audit];

    fn statement(self) -> &'static Statement {
        match self {
            Pass::Expired => &DELETE_EXPIRED,
            Pass::Revoked => &DELETE_REVOKED,
            Pass::Audit => &DELETE_AUDIT,
        }
    }

    /// How long past the row's own moment it is kept.
    fn retention(self) -> Interval {
        match self {
            Pass::Expired => settings::seconds(0),
            Pass::Revoked => settings::revoked_retention(),
            Pass::Audit => settings::audit_retention(),
        }
    }

    /// An id below every id of the pass's table, to start from.
    fn smallest_id(self) -> &'static str {
        match self {
            Pass::Expired | Pass::Revoked => "00000000-0000-0000-0000-000000000000",
            Pass::Audit => "-9223372036854775808",
        }
    }

    /// Whether the rows are sessions (counted, and audited per batch).
    pub fn deletes_sessions(self) -> bool {
        self != Pass::Audit
    }

    /// Deletes one batch of at most `batch` rows from `cursor` on, and moves `cursor` past them;
    /// returns how many were deleted.
    pub fn run_batch(self, client: &SpiClient<'_>, batch: i32, cursor: &mut Cursor) -> usize {
        let first_id = cursor.1.clone().unwrap_or_else(|| self.smallest_id().to_string());
        let arguments = [batch.into(), self.retention().into(), cursor.0.into(), first_id.into()];
        let row = self.statement().one(client, &arguments).expect("an aggregate returns a row");
        let deleted = row.col::<i64>(1).unwrap_or(0) as usize;
        if let (Some(reached), Some(id)) = (row.col::<TimestampWithTimeZone>(2), row.col::<String>(3)) {
            *cursor = Cursor(reached, Some(id));
        }
        if deleted > 0 && self.deletes_sessions() {
            let kind = if self == Pass::Expired { "expired" } else { "revoked" };
            events::record(client, Event::Cleanup, None, json!({ "deleted": deleted, "kind": kind }));
        }
        deleted
    }
}

/// Deletes sessions past `expires_at` or their idle timeout, revoked sessions older than
/// `session_ext.revoked_retention`, and audit rows older than `session_ext.audit_retention`.
/// Returns how many sessions were deleted. Admins only.
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
        Ok(Spi::connect(|client| {
            let mut sessions = 0i64;
            for pass in Pass::ALL {
                let mut cursor = Cursor::default();
                loop {
                    check_for_interrupts!();
                    let deleted = pass.run_batch(client, batch, &mut cursor);
                    if pass.deletes_sessions() {
                        sessions += deleted as i64;
                    }
                    if deleted < batch as usize {
                        break;
                    }
                }
            }
            sessions
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

    #[pg_test]
    fn audit_rows_are_pruned_past_their_retention_and_batches_are_audited() {
        Spi::run("SET session_ext.audit_retention = '1d'").unwrap();
        let (id, _) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.session_audit_log SET occurred_at = now() - interval '2 days';
             UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s' WHERE id = '{id}';"
        ))
        .unwrap();
        assert_eq!(count("SELECT session_ext.cleanup_expired_sessions()"), 1);
        let left = Spi::get_one::<String>(
            "SELECT string_agg(event || ' ' || details::text, ';') FROM session_ext.session_audit_log",
        )
        .unwrap();
        assert_eq!(left.as_deref(), Some(r#"cleanup {"kind": "expired", "deleted": 1}"#));
    }

    #[pg_test]
    fn batches_resume_past_rows_that_share_a_timestamp() {
        for _ in 0..25 {
            create(ALICE, "");
        }
        // One statement gives all of them the same valid_until.
        Spi::run("UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s'").unwrap();
        assert_eq!(count("SELECT session_ext.cleanup_expired_sessions(10)"), 25);
        assert_eq!(count("SELECT count(*) FROM session_ext.user_sessions"), 0);
        assert_eq!(
            count("SELECT count(*) FROM session_ext.session_audit_log WHERE event = 'cleanup'"),
            3,
            "batches of 10, 10 and 5"
        );
    }
}
