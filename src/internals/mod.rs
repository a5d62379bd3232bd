//! The one layer for calls into PostgreSQL internals whose shape differs between the supported
//! majors (15 to 18). Everything version-dependent is here, behind `#[cfg(feature = "pgNN")]`,
//! so the rest of the code calls one signature on every major. Each bridge follows what
//! PostgreSQL's own code does for the same operation on that major (named at each function).

pub mod untrapped;

use pgrx::pg_sys;

/// The executor state's range table: one entry, `rte`, the result relation. This is how
/// logical replication's apply worker sets up an insert (`create_edata_for_relation`): from 16
/// on with the entry's permission info (which `ExecConstraints` reads when it reports a failed
/// row), and from 18 on with the entry marked unpruned. `updated` holds the attribute numbers an
/// update sets, as the planner records them for `ExecUpdate` (the entry's `updatedCols`, in the
/// permission info from 16 on): `ExecInsertIndexTuples` tells each index from them whether the
/// new version's key is unchanged (`index_unchanged_by_update`).
///
/// # Safety
/// `estate` is a fresh executor state, its query memory context current; `rte` is a
/// `RangeTblEntry` node allocated there.
pub unsafe fn init_range_table(
    estate: *mut pg_sys::EState,
    rte: *mut pg_sys::RangeTblEntry,
    updated: &[usize],
) {
    // SAFETY: the caller's contract; list cells, the column set and permission info are
    // allocated in the current (executor) memory context.
    unsafe {
        let range_table = pg_sys::lappend(std::ptr::null_mut(), rte.cast());
        let mut columns: *mut pg_sys::Bitmapset = std::ptr::null_mut();
        for &column in updated {
            // Attribute sets are offset so that system attributes (negative numbers) fit.
            columns =
                pg_sys::bms_add_member(columns, column as i32 - pg_sys::FirstLowInvalidHeapAttributeNumber);
        }
        #[cfg(feature = "pg15")]
        {
            (*rte).updatedCols = columns;
            pg_sys::ExecInitRangeTable(estate, range_table);
        }
        #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
        {
            let mut permission_infos: *mut pg_sys::List = std::ptr::null_mut();
            (*pg_sys::addRTEPermissionInfo(&mut permission_infos, rte)).updatedCols = columns;
            #[cfg(any(feature = "pg16", feature = "pg17"))]
            pg_sys::ExecInitRangeTable(estate, range_table, permission_infos);
            #[cfg(feature = "pg18")]
            pg_sys::ExecInitRangeTable(estate, range_table, permission_infos, pg_sys::bms_make_singleton(1));
        }
    }
}

/// Whether a table with constraints `constraints` has generated columns: stored ones, and from 18
/// on virtual ones (which `ExecConstraints` computes to check them).
///
/// # Safety
/// `constraints` is a relation's `TupleConstr`.
pub unsafe fn has_generated_columns(constraints: *const pg_sys::TupleConstr) -> bool {
    // SAFETY: the caller's contract.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        let generated = (*constraints).has_generated_stored;
        #[cfg(feature = "pg18")]
        let generated = (*constraints).has_generated_stored || (*constraints).has_generated_virtual;
        generated
    }
}

/// Inserts the index entries of a row's new version (in `slot`, with its tid) after an update, as
/// the executor's `ExecUpdateEpilogue` does; `only_summarizing` for a HOT update that changed a
/// column of a summarizing index (a parameter from 16 on; 15 has no such update).
///
/// # Safety
/// `info` is the row's result relation in `estate`, its indexes open.
pub unsafe fn insert_index_entries(
    info: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState,
    only_summarizing: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        #[cfg(feature = "pg15")]
        let rechecks = {
            debug_assert!(!only_summarizing, "15 makes no summarizing-only updates");
            pg_sys::ExecInsertIndexTuples(
                info,
                slot,
                estate,
                true,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        #[cfg(not(feature = "pg15"))]
        let rechecks = pg_sys::ExecInsertIndexTuples(
            info,
            slot,
            estate,
            true,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            only_summarizing,
        );
        pg_sys::list_free(rechecks);
    }
}

/// The sequence of identity column `column` of table `table` (17 takes the open relation).
///
/// # Safety
/// Inside a transaction; `column` of `table` is an identity column.
pub unsafe fn identity_sequence(table: pg_sys::Oid, column: pg_sys::AttrNumber) -> pg_sys::Oid {
    // SAFETY: the caller's contract; from 17 on the table is opened with the lock a reader
    // takes, kept to the end of the transaction as the executor keeps it.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        let sequence = pg_sys::getIdentitySequence(table, column, false);
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let sequence = {
            let relation = pg_sys::table_open(table, pg_sys::AccessShareLock as _);
            let sequence = pg_sys::getIdentitySequence(relation, column, false);
            pg_sys::table_close(relation, pg_sys::NoLock as _);
            sequence
        };
        sequence
    }
}

/// Installs `handler` for `signal`, as a background worker sets PostgreSQL's own handlers
/// (18 renamed the backend's `pqsignal` to `pqsignal_be`, returning nothing).
///
/// # Safety
/// `handler` is async-signal-safe, as PostgreSQL's handlers are.
pub unsafe fn set_signal_handler(signal: u32, handler: unsafe extern "C-unwind" fn(std::ffi::c_int)) {
    // SAFETY: the caller's contract.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(signal as _, Some(handler));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(signal as _, Some(handler));
    }
}

// PostgreSQL's signal handlers themselves, as the C functions they are: pgrx's bindings are Rust
// wrappers, whose address is no handler.
unsafe extern "C-unwind" {
    /// Marks the configuration file for reloading (`ConfigReloadPending`).
    pub fn SignalHandlerForConfigReload(signal: std::ffi::c_int);
    /// Requests termination: the next `CHECK_FOR_INTERRUPTS`, also inside lock waits, ends the
    /// process.
    pub fn die(signal: std::ffi::c_int);
}

// The declarations above have the signatures of this major's headers.
const _: unsafe fn(std::ffi::c_int) = pg_sys::SignalHandlerForConfigReload;
const _: unsafe fn(std::ffi::c_int) = pg_sys::die;
