//! `cleanup_expired_sessions` (SPEC §4 "Maintenance"): deletes what can no longer validate, and
//! audit rows past their retention, in short batches that skip rows other transactions hold.

use crate::cache::Relations;
use crate::db::{Statement, TID_ARRAY};
use crate::definer;
use crate::errors::ApiError;
use crate::events::{self, Event};
use crate::identity;
use crate::schema::{column, AUDIT_OCCURRED_AT};
use crate::settings::{self, MAX_BATCH_SIZE};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::IntoDatum;
use serde_json::json;
use std::mem::MaybeUninit;

/// `$command` (a DELETE or UPDATE of `$table`) on the rows of $1 that no other transaction
/// holds, each locked first as the command would lock it.
macro_rules! unheld {
    ($command:literal, $table:literal, $lock:literal) => {
        Statement::new(
            concat!(
                $command,
                " WHERE ctid = ANY (ARRAY(",
                "SELECT t.ctid FROM ",
                $table,
                " t WHERE t.ctid = ANY ($1) FOR ",
                $lock,
                " SKIP LOCKED))"
            ),
            &[TID_ARRAY],
        )
    };
}

/// The executor's way, for a table that needs it (say, triggers of a foreign key that
/// cascades).
static DELETE_SESSIONS: Statement =
    unheld!("DELETE FROM session_ext.user_sessions", "session_ext.user_sessions", "UPDATE");
static DELETE_AUDIT_ROWS: Statement =
    unheld!("DELETE FROM session_ext.session_audit_log", "session_ext.session_audit_log", "UPDATE");
/// Sessions whose cleanup_after has passed while they are still valid: cleanup looks at them
/// again when they can expire, at their valid_until. The one write to this indexed column after
/// creation, so that activity writes leave every index alone (sql/session_ext--0.5.0--0.6.0.sql).
static RECHECK_AT_VALID_UNTIL: Statement = unheld!(
    "UPDATE session_ext.user_sessions SET cleanup_after = valid_until",
    "session_ext.user_sessions",
    "NO KEY UPDATE"
);

/// Deletes the rows at `tids` that no other transaction holds (a row locked or changed since it
/// was picked is left for a later run), and returns how many it deleted. Where the executor
/// would do nothing more ([`crate::rows::direct_write`]), each row is deleted as the executor
/// would, minus the row lock that FOR UPDATE SKIP LOCKED would write first: one WAL record per
/// row instead of two.
fn delete_unheld(
    client: &SpiClient<'_>,
    table: pg_sys::Oid,
    tids: &[pg_sys::ItemPointerData],
    by_executor: &'static Statement,
) -> usize {
    // Deleting below the executor skips its refusal of a read-only transaction (or a hot
    // standby): refuse here, with 25006.
    // SAFETY: raises a PostgreSQL error, or returns.
    unsafe { pg_sys::PreventCommandIfReadOnly(c"cleanup_expired_sessions()".as_ptr()) };
    // SAFETY: the table was locked as DELETE locks it by `Pass::walk`, and is closed before
    // returning; each tid comes from this transaction's snapshot of the same table. The
    // deletions run inside one error trap and call PostgreSQL only through `internals::untrapped`.
    unsafe {
        let relation = pg_sys::table_open(table, pg_sys::NoLock as _);
        let deleted = if !crate::rows::direct_write(relation, pg_sys::ACL_DELETE) {
            by_executor.count(client, &[tids.to_vec().into()])
        } else {
            // As the executor checks every DELETE: a table that publishes deletes needs a
            // replica identity, or subscribers would never hear of them.
            pg_sys::CheckCmdReplicaIdentity(relation, pg_sys::CmdType::CMD_DELETE);
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                use crate::internals::untrapped::*;
                let command = GetCurrentCommandId(true);
                let mut failure = MaybeUninit::<pg_sys::TM_FailureData>::uninit();
                let mut deleted = 0;
                for tid in tids {
                    let mut tid = *tid;
                    let result = heap_delete(
                        relation,
                        &mut tid,
                        command,
                        std::ptr::null_mut(),
                        false,
                        failure.as_mut_ptr(),
                        false,
                    );
                    deleted += usize::from(result == pg_sys::TM_Result::TM_Ok);
                }
                deleted
            })
        };
        pg_sys::table_close(relation, pg_sys::NoLock as _);
        deleted
    }
}

/// A row's id: sessions have uuids, audit rows bigints.
#[derive(Debug, Clone, Copy)]
enum Id {
    Uuid([u8; 16]),
    Int(i64),
}

/// Where a pass has got to: the (moment, id) of the last row it picked, in the order of the
/// pass's index. Batches go forward through the index, never back, so that no batch walks again
/// over the entries of rows already deleted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor(Option<(pg_sys::TimestampTz, Id)>);

/// What a pass walks: the table, its index on (moment, id), and the table's column of the
/// moment (both tables have their id in column 1); and how the table's rows are deleted when
/// it needs the executor.
struct Walk {
    table: pg_sys::Oid,
    index: pg_sys::Oid,
    moment_column: usize,
    /// The column of the row's own moment, when the indexed one may come earlier (sessions'
    /// cleanup_after, never later than valid_until): rows past the indexed moment but not past
    /// their own are not deleted.
    own_moment_column: Option<usize>,
    uuid_ids: bool,
    by_executor: &'static Statement,
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

    /// The pass's relations, its table locked as DELETE locks it and its index as a scan does.
    fn walk(self) -> Walk {
        let build = |r: &Relations| match self {
            Pass::Expired => Walk {
                table: r.table,
                index: r.cleanup_index,
                moment_column: column::CLEANUP_AFTER,
                own_moment_column: Some(column::VALID_UNTIL),
                uuid_ids: true,
                by_executor: &DELETE_SESSIONS,
            },
            Pass::Revoked => Walk {
                table: r.table,
                index: r.revoked_index,
                moment_column: column::REVOKED_AT,
                own_moment_column: None,
                uuid_ids: true,
                by_executor: &DELETE_SESSIONS,
            },
            Pass::Audit => Walk {
                table: r.audit_table,
                index: r.audit_occurred_index,
                moment_column: AUDIT_OCCURRED_AT,
                own_moment_column: None,
                uuid_ids: false,
                by_executor: &DELETE_AUDIT_ROWS,
            },
        };
        build(&crate::cache::locked(|r| {
            let walk = build(r);
            [(walk.table, pg_sys::RowExclusiveLock), (walk.index, pg_sys::AccessShareLock)]
        }))
    }

    /// How long past the row's own moment it is kept.
    fn retention(self) -> Interval {
        match self {
            Pass::Expired => settings::seconds(0),
            Pass::Revoked => settings::revoked_retention(),
            Pass::Audit => settings::audit_retention(),
        }
    }

    /// For sessions (counted, and audited per batch), the kind their cleanup event names;
    /// none for audit rows.
    fn session_kind(self) -> Option<&'static str> {
        match self {
            Pass::Expired => Some("expired"),
            Pass::Revoked => Some("revoked"),
            Pass::Audit => None,
        }
    }

    /// Deletes one batch of at most `batch` rows from `cursor` on, and moves `cursor` past the
    /// rows it picked (deleted, or held by another transaction and left for a later run).
    pub fn run_batch(self, client: &SpiClient<'_>, batch: i32, cursor: &mut Cursor) -> Batch {
        let walk = self.walk();
        // now() - retention, with PostgreSQL's calendar arithmetic (a day is not always 24 hours).
        // SAFETY: a strict function of two non-null datums of its argument types.
        let cutoff = unsafe {
            pgrx::direct_function_call::<i64>(
                pg_sys::timestamptz_mi_interval,
                &[
                    Some(pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp())),
                    self.retention().into_datum(),
                ],
            )
        }
        .expect("a timestamp");
        let batch = batch as usize;
        let mut picked = Picked { over: Vec::with_capacity(batch), not_yet: Vec::with_capacity(batch) };
        // The pick reads the table below the executor: only with the SELECT a query would need.
        crate::rows::require_select(walk.table);
        // SAFETY: inside a transaction; `pick` calls PostgreSQL only through `untrapped` and
        // cannot panic (each vector has room for the whole batch).
        let last = unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| pick(&walk, cutoff, *cursor, batch, &mut picked))
        };
        if last.is_some() {
            *cursor = Cursor(last);
        }
        let deleted = delete_unheld(client, walk.table, &picked.over, walk.by_executor);
        if !picked.not_yet.is_empty() {
            RECHECK_AT_VALID_UNTIL.count(client, &[picked.not_yet.clone().into()]);
        }
        let sessions = match self.session_kind() {
            Some(kind) if deleted > 0 => {
                events::record(client, Event::Cleanup, None, json!({ "deleted": deleted, "kind": kind }));
                deleted as i64
            }
            _ => 0,
        };
        Batch { picked: picked.over.len() + picked.not_yet.len(), sessions }
    }
}

/// The rows one batch picked: those past their moment, and those whose indexed moment has
/// passed but not their own (see [`Walk::own_moment_column`]).
struct Picked {
    over: Vec<pg_sys::ItemPointerData>,
    not_yet: Vec<pg_sys::ItemPointerData>,
}

/// Fills `picked` with up to `batch` rows of the walk's index whose moment is at most
/// `cutoff`, in index order from just after `from`, as a fresh snapshot of the transaction sees
/// them: one index scan, with no plan and no executor. Returns the (moment, id) of the last row
/// when the batch is full, where the next batch starts.
///
/// # Safety
/// Inside a transaction and an error trap; `walk` names session_ext's relations.
unsafe fn pick(
    walk: &Walk,
    cutoff: pg_sys::TimestampTz,
    mut from: Cursor,
    batch: usize,
    picked: &mut Picked,
) -> Option<(pg_sys::TimestampTz, Id)> {
    use crate::internals::untrapped::*;
    use pg_sys::{BTGreaterStrategyNumber as GREATER, BTLessEqualStrategyNumber as AT_MOST};
    // SAFETY: the caller's contract. The scan keys, and the id they point to, outlive the scan.
    unsafe {
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        let mut row: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        ScanKeyInit(&mut keys[0], 1, AT_MOST as _, pg_sys::F_TIMESTAMPTZ_LE.into(), cutoff.into());
        let mut nkeys = 1;
        // (moment, id) > from, as the executor builds a row comparison for btree
        // (ExecIndexBuildScanKeys): each member compares with the opfamily's three-way
        // comparison procedure (BTORDER_PROC), not with its boolean operator.
        if let Some((moment, id)) = &mut from.0 {
            let (procedure, id_type, argument) = match id {
                Id::Uuid(bytes) => {
                    (pg_sys::F_UUID_CMP, pg_sys::UUIDOID, pg_sys::Datum::from(bytes.as_mut_ptr()))
                }
                Id::Int(n) => (pg_sys::F_BTINT8CMP, pg_sys::INT8OID, pg_sys::Datum::from(*n)),
            };
            let member = pg_sys::SK_ROW_MEMBER as i32;
            ScanKeyEntryInitialize(
                &mut row[0],
                member,
                1,
                GREATER as _,
                pg_sys::TIMESTAMPTZOID,
                pg_sys::InvalidOid,
                pg_sys::F_TIMESTAMPTZ_CMP.into(),
                (*moment).into(),
            );
            ScanKeyEntryInitialize(
                &mut row[1],
                member | pg_sys::SK_ROW_END as i32,
                2,
                GREATER as _,
                id_type,
                pg_sys::InvalidOid,
                procedure.into(),
                argument,
            );
            keys[1].sk_flags = pg_sys::SK_ROW_HEADER as _;
            keys[1].sk_attno = 1;
            keys[1].sk_strategy = GREATER as _;
            keys[1].sk_argument = pg_sys::Datum::from(row.as_mut_ptr());
            nkeys = 2;
        }
        // Both relations are locked by `Pass::walk`.
        index_scan(walk.table, walk.index, &mut keys, nkeys, ScanSnapshot::Statement, |scan, slot| {
            let value = |column: usize| *(*slot).tts_values.add(column - 1);
            let mut count = 0;
            while count < batch && index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot)
            {
                count += 1;
                let own_moment = walk.own_moment_column.map(|column| {
                    slot_getsomeattrs_int(slot, column as _);
                    value(column).value() as i64
                });
                if own_moment.is_some_and(|moment| moment > cutoff) {
                    picked.not_yet.push((*slot).tts_tid);
                } else {
                    picked.over.push((*slot).tts_tid);
                }
            }
            // A full batch leaves its last row in the slot.
            (count == batch).then(|| {
                slot_getsomeattrs_int(slot, walk.moment_column as _);
                let id = value(1);
                let id = if walk.uuid_ids {
                    Id::Uuid(*(id.cast_mut_ptr::<[u8; 16]>()))
                } else {
                    Id::Int(id.value() as i64)
                };
                (value(walk.moment_column).value() as i64, id)
            })
        })
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    picked: usize,
    /// Sessions deleted (audit rows are not counted).
    pub sessions: i64,
}

/// Runs every pass to its end, one batch of up to `batch` rows at a time through `run` (which
/// decides the transaction each runs in); returns how many sessions were deleted.
pub fn run_passes(batch: i32, mut run: impl FnMut(Pass, &mut Cursor) -> Batch) -> i64 {
    let mut sessions = 0;
    for pass in Pass::ALL {
        let mut cursor = Cursor::default();
        loop {
            check_for_interrupts!();
            let done = run(pass, &mut cursor);
            sessions += done.sessions;
            // A batch that picked fewer rows than it could is the last of its pass.
            if done.picked < batch as usize {
                break;
            }
        }
    }
    sessions
}

/// Deletes sessions past `expires_at` or their idle timeout, revoked sessions older than
/// `session_ext.revoked_retention`, and audit rows older than `session_ext.audit_retention`.
/// Returns how many sessions were deleted. Admins only.
#[pg_extern(volatile, parallel_unsafe)]
fn cleanup_expired_sessions(batch_size: default!(Option<i32>, "NULL")) -> i64 {
    definer::as_owner(|| {
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
        Ok(Spi::connect(|client| run_passes(batch, |pass, cursor| pass.run_batch(client, batch, cursor))))
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
            ("absolute", "expires_at = now() - interval '1s', valid_until = now() - interval '1s', cleanup_after = now() - interval '1s'"),
            ("idle", "last_active_at = now() - interval '2h', valid_until = now() - interval '1h', cleanup_after = now() - interval '1h'"),
            ("revoked_recently", "revoked_at = now() - interval '59 min', revoke_reason = 'logout'"),
            ("revoked_long_ago", "revoked_at = now() - interval '61 min', revoke_reason = 'logout'"),
            ("ends_now", "expires_at = now(), valid_until = now(), cleanup_after = now()"),
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

    /// An activity write leaves cleanup_after behind (it is indexed; valid_until is not):
    /// cleanup then finds a session still in use, keeps it, and looks again at its valid_until.
    #[pg_test]
    fn a_session_in_use_past_its_cleanup_after_is_kept_and_rechecked_at_its_valid_until() {
        let (id, _) = create(ALICE, ", idle_timeout => '1h'");
        let (idle, _) = create(ALICE, ", idle_timeout => '1h'");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET cleanup_after = now() - interval '5 min' WHERE id = '{id}';
             UPDATE session_ext.user_sessions SET last_active_at = now() - interval '2h',
                    valid_until = now() - interval '1h', cleanup_after = now() - interval '1h' WHERE id = '{idle}';"
        ))
        .unwrap();
        assert_eq!(count("SELECT session_ext.cleanup_expired_sessions(1)"), 1);
        let kept = format!(
            "SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}'
                AND cleanup_after = valid_until AND valid_until = now() + interval '1h'"
        );
        assert_eq!(count(&kept), 1);
        assert_eq!(count("SELECT count(*) FROM session_ext.user_sessions"), 1);
    }

    #[pg_test(error = "cannot execute cleanup_expired_sessions() in a read-only transaction")]
    fn a_read_only_transaction_is_refused() {
        let (id, _) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s', cleanup_after = now() - interval '1s' WHERE id = '{id}';
             SET session_ext.audit = off;
             SET LOCAL transaction_read_only = on;"
        ))
        .unwrap();
        count("SELECT session_ext.cleanup_expired_sessions()");
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
             UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s', cleanup_after = now() - interval '1s' WHERE id = '{id}';"
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
        // One statement gives all of them, and all their audit rows, the same moment.
        Spi::run(
            "SET session_ext.audit_retention = '1d';
             UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s', cleanup_after = now() - interval '1s';
             UPDATE session_ext.session_audit_log SET occurred_at = now() - interval '2 days';",
        )
        .unwrap();
        assert_eq!(count("SELECT session_ext.cleanup_expired_sessions(10)"), 25);
        assert_eq!(count("SELECT count(*) FROM session_ext.user_sessions"), 0);
        let left = Spi::get_one::<String>(
            "SELECT string_agg(details->>'deleted', ',' ORDER BY id) FROM session_ext.session_audit_log",
        )
        .unwrap();
        assert_eq!(left.as_deref(), Some("10,10,5"), "batches of 10, 10 and 5; the 25 old audit rows pruned");
    }

    /// As the executor refuses a DELETE from a table that publishes deletes without a replica
    /// identity (subscribers could not apply it), cleanup refuses to delete from it.
    #[pg_test(
        error = "cannot delete from table \"user_sessions\" because it does not have a replica identity and publishes deletes"
    )]
    fn a_table_that_publishes_deletes_without_a_replica_identity_is_refused() {
        let (id, _) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s', cleanup_after = now() - interval '1s' WHERE id = '{id}';
             CREATE PUBLICATION sessions FOR TABLE session_ext.user_sessions;
             ALTER TABLE session_ext.user_sessions REPLICA IDENTITY NOTHING;"
        ))
        .unwrap();
        count("SELECT session_ext.cleanup_expired_sessions()");
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
            "UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s', cleanup_after = now() - interval '1s' WHERE id = '{expired}'"
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
