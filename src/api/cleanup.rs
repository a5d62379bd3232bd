//! `cleanup_expired_sessions` (SPEC §4 "Maintenance"): deletes what can no longer validate, and
//! audit rows past their retention, in short batches that skip rows other transactions hold.

use crate::db::{Columns, Statement, INT4, INTERVAL, TEXT, TID_ARRAY, TIMESTAMPTZ};
use crate::errors::{boundary, ApiError};
use crate::events::{self, Event};
use crate::identity;
use crate::settings::{self, MAX_BATCH_SIZE};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::json;

/// Up to $1 rows of `table` whose `column` is at least $2 in the past, in the order of its
/// (`column`, id) index from just after ($3, $4): their ctids, and the (`column`, id) of the last,
/// where the next batch starts, so that no batch walks again over the index entries of rows
/// already deleted. One row comes back, whatever the batch size.
macro_rules! candidates {
    ($table:literal, $column:literal, $id_type:literal) => {
        Statement::new(
            concat!(
                "WITH picked AS (SELECT t.ctid, t.", $column, " AS reached, t.id FROM ", $table, " t",
                "                 WHERE t.", $column, " <= pg_catalog.now() - $2",
                "                   AND (t.", $column, ", t.id) > ($3, $4::", $id_type, ")",
                "                 ORDER BY t.", $column, ", t.id LIMIT $1)",
                " SELECT (SELECT pg_catalog.array_agg(p.ctid) FROM picked p), last.reached, last.id::text",
                "   FROM (SELECT) one LEFT JOIN",
                "        (SELECT p.reached, p.id FROM picked p ORDER BY p.reached DESC, p.id DESC LIMIT 1) last ON true"
            ),
            &[INT4, INTERVAL, TIMESTAMPTZ, TEXT],
        )
    };
}

static EXPIRED: Statement = candidates!("session_ext.user_sessions", "valid_until", "uuid");
static REVOKED: Statement = candidates!("session_ext.user_sessions", "revoked_at", "uuid");
static AUDIT_ROWS: Statement = candidates!("session_ext.session_audit_log", "occurred_at", "bigint");

/// The executor's way, for a table someone gave triggers (a foreign key that cascades, say):
/// the rows of $1 that no other transaction holds.
macro_rules! delete_by_executor {
    ($table:literal) => {
        Statement::new(
            concat!(
                "DELETE FROM ",
                $table,
                " WHERE ctid = ANY (ARRAY(",
                "SELECT t.ctid FROM ",
                $table,
                " t WHERE t.ctid = ANY ($1) FOR UPDATE SKIP LOCKED))"
            ),
            &[TID_ARRAY],
        )
    };
}

static DELETE_SESSIONS: Statement = delete_by_executor!("session_ext.user_sessions");
static DELETE_AUDIT_ROWS: Statement = delete_by_executor!("session_ext.session_audit_log");

/// Deletes the rows at `tids` that no other transaction holds (a row locked or changed since it
/// was picked is left for a later run), and returns how many it deleted. Without triggers on the
/// table, each row is deleted as the executor would, minus the row lock that FOR UPDATE SKIP
/// LOCKED would write first: one WAL record per row instead of two.
fn delete_unheld(
    client: &SpiClient<'_>,
    table: pg_sys::Oid,
    tids: &[pg_sys::ItemPointerData],
    by_executor: &'static Statement,
) -> usize {
    // SAFETY: the table is opened with the lock DELETE takes and closed before returning; each
    // tid comes from this transaction's snapshot of the same table.
    unsafe {
        let relation = pg_sys::table_open(table, pg_sys::RowExclusiveLock as _);
        let deleted = if (*(*relation).rd_rel).relhastriggers {
            by_executor.count(client, &[tids.to_vec().into()])
        } else {
            let command = pg_sys::GetCurrentCommandId(true);
            let mut failure = std::mem::MaybeUninit::<pg_sys::TM_FailureData>::uninit();
            tids.iter()
                .filter(|tid| {
                    let mut tid = **tid;
                    let result = pg_sys::heap_delete(
                        relation,
                        &mut tid,
                        command,
                        std::ptr::null_mut(),
                        false,
                        failure.as_mut_ptr(),
                        false,
                    );
                    result == pg_sys::TM_Result::TM_Ok
                })
                .count()
        };
        pg_sys::table_close(relation, pg_sys::NoLock as _);
        deleted
    }
}

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

    fn candidates(self) -> &'static Statement {
        match self {
            Pass::Expired => &EXPIRED,
            Pass::Revoked => &REVOKED,
            Pass::Audit => &AUDIT_ROWS,
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
    fn deletes_sessions(self) -> bool {
        self != Pass::Audit
    }

    /// Deletes one batch of at most `batch` rows from `cursor` on, and moves `cursor` past the
    /// rows it picked (deleted, or held by another transaction and left for a later run).
    pub fn run_batch(self, client: &SpiClient<'_>, batch: i32, cursor: &mut Cursor) -> Batch {
        let first_id = cursor.1.clone().unwrap_or_else(|| self.smallest_id().to_string());
        let arguments = [batch.into(), self.retention().into(), cursor.0.into(), first_id.into()];
        let picked = self.candidates().one(client, &arguments).expect("one row comes back");
        let tids: Vec<pg_sys::ItemPointerData> = picked.col(1).unwrap_or_default();
        if let (Some(reached), Some(id)) = (picked.col::<TimestampWithTimeZone>(2), picked.col::<String>(3)) {
            *cursor = Cursor(reached, Some(id));
        }
        let relations = crate::cache::relations();
        let deleted = if self.deletes_sessions() {
            delete_unheld(client, relations.table, &tids, &DELETE_SESSIONS)
        } else {
            delete_unheld(client, relations.audit_table, &tids, &DELETE_AUDIT_ROWS)
        };
        if deleted > 0 && self.deletes_sessions() {
            let kind = if self == Pass::Expired { "expired" } else { "revoked" };
            events::record(client, Event::Cleanup, None, json!({ "deleted": deleted, "kind": kind }));
        }
        Batch { picked: tids.len(), sessions: if self.deletes_sessions() { deleted as i64 } else { 0 } }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    picked: usize,
    /// Sessions deleted (audit rows are not counted).
    pub sessions: i64,
}

impl Batch {
    /// A batch that picked fewer rows than it could is the last of its pass.
    pub fn was_last(self, batch: i32) -> bool {
        self.picked < batch as usize
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
                    let done = pass.run_batch(client, batch, &mut cursor);
                    sessions += done.sessions;
                    if done.was_last(batch) {
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

    #[pg_test]
    fn a_table_with_triggers_is_cleaned_through_the_executor() {
        Spi::run(
            "CREATE TABLE public.gone (id uuid);
             CREATE FUNCTION public.remember() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO public.gone VALUES (OLD.id); RETURN OLD; END $$;
             CREATE TRIGGER remember AFTER DELETE ON session_ext.user_sessions
               FOR EACH ROW EXECUTE FUNCTION public.remember();",
        )
        .unwrap();
        let (expired, _) = create(ALICE, "");
        let (live, _) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s' WHERE id = '{expired}'"
        ))
        .unwrap();
        assert_eq!(count("SELECT session_ext.cleanup_expired_sessions()"), 1);
        assert_eq!(
            count(&format!("SELECT count(*) FROM public.gone WHERE id = '{expired}'")),
            1,
            "the trigger fired"
        );
        assert_eq!(count(&format!("SELECT count(*) FROM session_ext.user_sessions WHERE id = '{live}'")), 1);
    }
}
