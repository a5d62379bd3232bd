//! The activity write (SPEC §4 "Checking", §9): a validation whose `touch_interval` is due sets
//! the session's `last_active_at` to now and its `valid_until` to
//! `least(expires_at, now + idle_timeout)`. It is made below the executor, on the row the lookup
//! found, as the executor's UPDATE makes it (`ExecUpdate`: `heap_update`, then the new version's
//! index entries when it needs them): no plan, no second index probe. Neither column is in any
//! index (sql/session_ext--0.5.0--0.6.0.sql), so PostgreSQL makes the write a HOT update whenever
//! the row's page has room, which the table's fillfactor keeps.
//!
//! The write is optional, and a request never waits for it: the row is locked first as
//! `SELECT ... FOR NO KEY UPDATE SKIP LOCKED` locks it (`heap_lock_tuple` with `LockWaitSkip`), and
//! a row another transaction holds (another request recording the same activity, a data update
//! left open) is left to it or to the next request.

use super::aal::Level;
use super::lookup::{self, Due, Live};
use crate::internals::untrapped::NewEntries;
use crate::schema::column;
use pgrx::{pg_sys, IntoDatum};
use std::mem::MaybeUninit;

/// The columns the activity write sets.
const WRITTEN: [usize; 2] = [column::LAST_ACTIVE_AT, column::VALID_UNTIL];

/// What came of the write.
pub enum Written {
    /// The session as the new version of its row has it.
    Done(Live),
    /// Another transaction changed or deleted the row first, and this one sees each statement's
    /// changes (read committed): it recorded the activity, or ended the session; a fresh look
    /// tells which.
    Raced,
    /// Not written: another transaction holds the row, or (repeatable read, serializable)
    /// changed it after this one's snapshot, which still shows the session as found.
    Skipped,
    /// The table needs the executor for this write (a trigger, a rule, row security, a CHECK
    /// constraint someone added, the owner's UPDATE privilege limited to columns).
    ByExecutor,
}

/// Writes the activity of the session `due` is the row of, unless another transaction holds the
/// row; refused with 25006 in a read-only transaction.
pub fn write(due: Due) -> Written {
    // As the executor locks a table it updates; the row type, as the lookup locks it.
    let relations = crate::cache::locked(|r| {
        [(r.table, pg_sys::RowExclusiveLock), (r.info_relation, pg_sys::AccessShareLock)]
    });
    let now = crate::rows::now().into_inner();
    let valid_until = due.idle_timeout.map_or(due.expires_at, |mut idle| {
        // now + idle_timeout with PostgreSQL's calendar arithmetic, as the SQL of an UPDATE would.
        // SAFETY: a strict function of two non-null datums of its argument types.
        let idle_end = unsafe {
            pgrx::direct_function_call::<i64>(
                pg_sys::timestamptz_pl_interval,
                &[Some(pg_sys::Datum::from(now)), Some(pg_sys::Datum::from(&raw mut idle))],
            )
        }
        .expect("a timestamp");
        idle_end.min(due.expires_at)
    });
    let lapsed = Level::Aal1.name().into_datum().expect("a text datum");
    // SAFETY: the table is locked for writing above and closed before returning; `update` runs
    // inside one error trap and calls PostgreSQL only through `internals::untrapped`; the index
    // entries are inserted by the executor's own function.
    unsafe {
        let relation = pg_sys::table_open(relations.table, pg_sys::NoLock as _);
        if !crate::rows::direct_update(relation) {
            pg_sys::table_close(relation, pg_sys::NoLock as _);
            return Written::ByExecutor;
        }
        // The executor's checks of an UPDATE: no write in a read-only transaction, and a table
        // that publishes updates needs a replica identity.
        pg_sys::PreventCommandIfReadOnly(c"UPDATE".as_ptr());
        pg_sys::CheckCmdReplicaIdentity(relation, pg_sys::CmdType::CMD_UPDATE);
        let natts = (*(*relation).rd_att).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        let outcome = pg_sys::ffi::pg_guard_ffi_boundary(|| {
            update(relation, due, [now, valid_until], (&mut values, &mut nulls), relations.info_type, lapsed)
        });
        let written = match outcome {
            Outcome::Updated { found, entries, version } => {
                if entries != NewEntries::None {
                    crate::rows::as_result_relation(relation, &WRITTEN, |info, estate| {
                        let slot =
                            pg_sys::MakeSingleTupleTableSlot((*relation).rd_att, &pg_sys::TTSOpsHeapTuple);
                        pg_sys::ExecStoreHeapTuple(version, slot, false);
                        crate::internals::insert_index_entries(
                            info,
                            slot,
                            estate,
                            entries == NewEntries::Summarizing,
                        );
                        pg_sys::ExecDropSingleTupleTableSlot(slot);
                    });
                }
                // As SPI after each command: what this one wrote is seen by the next.
                pg_sys::CommandCounterIncrement();
                found.map_or(Written::Raced, |found| Written::Done(found.into_live()))
            }
            Outcome::NotUpdated(result) => not_updated(result),
        };
        pg_sys::table_close(relation, pg_sys::NoLock as _);
        written
    }
}

enum Outcome {
    /// The row's new version, the session as it has it, and the index entries it needs.
    Updated {
        found: Option<lookup::Found>,
        entries: NewEntries,
        version: pg_sys::HeapTuple,
    },
    NotUpdated(pg_sys::TM_Result::Type),
}

/// What comes of a row that could not be locked for the write (`heap_lock_tuple`'s answer):
/// under read committed a changed row is looked at again (here the caller does), as the executor
/// would follow its update chain; a row held by another transaction, and under repeatable read
/// and serializable a row changed since the snapshot, are not written.
fn not_updated(result: pg_sys::TM_Result::Type) -> Written {
    use pg_sys::TM_Result as Tm;
    // SAFETY: reads a backend-global setting.
    let snapshot_per_transaction = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    match result {
        Tm::TM_WouldBlock => Written::Skipped,
        Tm::TM_Updated | Tm::TM_Deleted if snapshot_per_transaction => Written::Skipped,
        // Changed by another transaction, or by this one since its snapshot.
        Tm::TM_Updated | Tm::TM_Deleted | Tm::TM_SelfModified => Written::Raced,
        _ => pgrx::error!("attempted to lock invisible tuple"),
    }
}

/// The write itself, calling PostgreSQL only through `crate::internals::untrapped`: the row's
/// new version with `[last_active_at, valid_until]` set to `times`, and the session as that
/// version has it (deformed into `row`).
///
/// # Safety
/// Inside a transaction and an error trap; `relation` is session_ext's table, open and locked
/// for writing; `due` is a row of it; `row` has one entry per attribute; as `lookup::copy_out`
/// for `info_type` and `lapsed`.
unsafe fn update(
    relation: pg_sys::Relation,
    due: Due,
    times: [pg_sys::TimestampTz; 2],
    row: (&mut [pg_sys::Datum], &mut [bool]),
    info_type: pg_sys::Oid,
    lapsed: pg_sys::Datum,
) -> Outcome {
    use crate::internals::untrapped::*;
    // SAFETY: the caller's contract.
    unsafe {
        let desc = (*relation).rd_att;
        let mut columns = [column::LAST_ACTIVE_AT as i32, column::VALID_UNTIL as i32];
        let mut values = times.map(pg_sys::Datum::from);
        let mut nulls = [false; 2];
        let version = heap_modify_tuple_by_cols(
            due.row,
            desc,
            2,
            columns.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        let mut tid = due.tid;
        let mut failure = MaybeUninit::<pg_sys::TM_FailureData>::uninit();
        let locked = lock_row_unless_held(relation, tid, failure.as_mut_ptr());
        if locked != pg_sys::TM_Result::TM_Ok {
            return Outcome::NotUpdated(locked);
        }
        // The row is this transaction's now: the update does not wait.
        let (result, entries) = update_row(relation, &mut tid, version, failure.as_mut_ptr());
        if result != pg_sys::TM_Result::TM_Ok {
            return Outcome::NotUpdated(result);
        }
        let (values, nulls) = row;
        heap_deform_tuple(version, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        Outcome::Updated { found: lookup::copy_out(values, nulls, info_type, lapsed), entries, version }
    }
}
