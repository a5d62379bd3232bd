//! PostgreSQL functions declared without the error trap (a `sigsetjmp`) that pgrx's bindings
//! set around every single call. The token lookup makes about fifteen calls on every
//! validation, and cleanup two on every row it deletes; each runs all of its calls inside one
//! trap instead (`pg_sys::ffi::pg_guard_ffi_boundary`). Code calling these must run inside such
//! a trap and must not panic there.
//!
//! Every declaration is checked at compile time against pgrx's binding of the same function,
//! which is generated from the headers of the major being built: a signature that changes in a
//! new major (18 added a parameter to `index_beginscan`) fails the build instead of passing
//! garbage.

use pgrx::pg_sys::{self, *};
use std::ffi::c_int;

/// Declares each function as PostgreSQL exports it, and asserts that the declaration has the
/// signature of `pg_sys`'s binding.
macro_rules! untrapped {
    ($($(#[$attr:meta])* fn $name:ident($($arg:ident: $type:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        unsafe extern "C-unwind" {
            $($(#[$attr])* pub fn $name($($arg: $type),*) $(-> $ret)?;)*
        }
        $($(#[$attr])* const _: unsafe fn($($type),*) $(-> $ret)? = pg_sys::$name;)*
    };
}

untrapped! {
    fn table_open(relation: Oid, lockmode: LOCKMODE) -> Relation;
    fn index_open(relation: Oid, lockmode: LOCKMODE) -> Relation;
    fn ScanKeyInit(
        entry: ScanKey,
        attribute: AttrNumber,
        strategy: StrategyNumber,
        procedure: RegProcedure,
        argument: Datum,
    );
    fn ScanKeyEntryInitialize(
        entry: ScanKey,
        flags: c_int,
        attribute: AttrNumber,
        strategy: StrategyNumber,
        subtype: Oid,
        collation: Oid,
        procedure: RegProcedure,
        argument: Datum,
    );
    fn GetTransactionSnapshot() -> Snapshot;
    fn GetLatestSnapshot() -> Snapshot;
    fn RegisterSnapshot(snapshot: Snapshot) -> Snapshot;
    fn UnregisterSnapshot(snapshot: Snapshot);
    fn CommandCounterIncrement();
    fn GetCurrentCommandId(used: bool) -> CommandId;
    #[cfg(not(feature = "pg18"))]
    fn index_beginscan(
        heap: Relation,
        index: Relation,
        snapshot: Snapshot,
        nkeys: c_int,
        norderbys: c_int,
    ) -> IndexScanDesc;
    #[cfg(feature = "pg18")]
    fn index_beginscan(
        heap: Relation,
        index: Relation,
        snapshot: Snapshot,
        instrument: *mut IndexScanInstrumentation,
        nkeys: c_int,
        norderbys: c_int,
    ) -> IndexScanDesc;
    fn index_rescan(
        scan: IndexScanDesc,
        keys: ScanKey,
        nkeys: c_int,
        orderbys: ScanKey,
        norderbys: c_int,
    );
    fn table_slot_create(relation: Relation, reglist: *mut *mut List) -> *mut TupleTableSlot;
    fn index_getnext_slot(
        scan: IndexScanDesc,
        direction: ScanDirection::Type,
        slot: *mut TupleTableSlot,
    ) -> bool;
    fn slot_getsomeattrs_int(slot: *mut TupleTableSlot, attnum: c_int);
    fn ExecDropSingleTupleTableSlot(slot: *mut TupleTableSlot);
    fn index_endscan(scan: IndexScanDesc);
    fn index_close(relation: Relation, lockmode: LOCKMODE);
    fn table_close(relation: Relation, lockmode: LOCKMODE);
    fn heap_delete(
        relation: Relation,
        tid: ItemPointer,
        cid: CommandId,
        crosscheck: Snapshot,
        wait: bool,
        tmfd: *mut TM_FailureData,
        changing_part: bool,
    ) -> TM_Result::Type;
    fn GetCurrentTransactionStartTimestamp() -> TimestampTz;
    fn lookup_rowtype_tupdesc(type_id: Oid, typmod: i32) -> TupleDesc;
    fn DecrTupleDescRefCount(tupdesc: TupleDesc);
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    fn heap_form_tuple(tupdesc: TupleDesc, values: *mut Datum, isnull: *mut bool) -> HeapTuple;
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    fn heap_form_tuple(tupdesc: TupleDesc, values: *const Datum, isnull: *const bool) -> HeapTuple;
    fn HeapTupleHeaderGetDatum(tuple: HeapTupleHeader) -> Datum;
    fn heap_deform_tuple(tuple: HeapTuple, tupdesc: TupleDesc, values: *mut Datum, isnull: *mut bool);
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    fn heap_modify_tuple_by_cols(
        tuple: HeapTuple,
        tupdesc: TupleDesc,
        ncols: c_int,
        columns: *mut c_int,
        values: *mut Datum,
        isnull: *mut bool,
    ) -> HeapTuple;
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    fn heap_modify_tuple_by_cols(
        tuple: HeapTuple,
        tupdesc: TupleDesc,
        ncols: c_int,
        columns: *const c_int,
        values: *const Datum,
        isnull: *const bool,
    ) -> HeapTuple;
    #[cfg(feature = "pg15")]
    fn heap_update(
        relation: Relation,
        otid: ItemPointer,
        newtup: HeapTuple,
        cid: CommandId,
        crosscheck: Snapshot,
        wait: bool,
        tmfd: *mut TM_FailureData,
        lockmode: *mut LockTupleMode::Type,
    ) -> TM_Result::Type;
    #[cfg(not(feature = "pg15"))]
    fn heap_update(
        relation: Relation,
        otid: ItemPointer,
        newtup: HeapTuple,
        cid: CommandId,
        crosscheck: Snapshot,
        wait: bool,
        tmfd: *mut TM_FailureData,
        lockmode: *mut LockTupleMode::Type,
        update_indexes: *mut TU_UpdateIndexes::Type,
    ) -> TM_Result::Type;
    fn heap_lock_tuple(
        relation: Relation,
        tuple: HeapTuple,
        cid: CommandId,
        mode: LockTupleMode::Type,
        wait_policy: LockWaitPolicy::Type,
        follow_updates: bool,
        buffer: *mut Buffer,
        tmfd: *mut TM_FailureData,
    ) -> TM_Result::Type;
    fn ReleaseBuffer(buffer: Buffer);
    fn pg_detoast_datum_copy(datum: *mut varlena) -> *mut varlena;
}

/// Starts a scan of `index` with `nkeys` keys and no ordering, without instrumentation (which
/// 18 added as a parameter; EXPLAIN ANALYZE's counters have no reader here).
///
/// # Safety
/// As `index_beginscan`: inside a transaction and an error trap, both relations open.
pub unsafe fn begin_index_scan(
    heap: Relation,
    index: Relation,
    snapshot: Snapshot,
    nkeys: c_int,
) -> IndexScanDesc {
    // SAFETY: the caller's contract.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        let scan = index_beginscan(heap, index, snapshot, nkeys, 0);
        #[cfg(feature = "pg18")]
        let scan = index_beginscan(heap, index, snapshot, std::ptr::null_mut(), nkeys, 0);
        scan
    }
}

/// The snapshot an index scan reads with, taken when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanSnapshot {
    /// As a statement of a VOLATILE function takes one: after this transaction's earlier
    /// commands (a command counter increment first).
    Statement,
    /// The latest committed state, whatever this transaction's own snapshot is.
    Latest,
}

/// Runs `read` on a forward scan of `index` (an index of `table`) with the first `nkeys` of
/// `keys`, under `snapshot`, with a slot for the table's rows; opens and registers what the scan
/// needs, and closes and releases it all after, as PostgreSQL's own single-relation lookups do.
///
/// # Safety
/// Inside a transaction and an error trap; both relations locked; `read` does not panic.
pub unsafe fn index_scan<R>(
    table: Oid,
    index: Oid,
    keys: &mut [ScanKeyData],
    nkeys: c_int,
    snapshot: ScanSnapshot,
    read: impl FnOnce(IndexScanDesc, *mut TupleTableSlot) -> R,
) -> R {
    // SAFETY: the caller's contract.
    unsafe {
        let table = table_open(table, NoLock as _);
        let index = index_open(index, NoLock as _);
        let snapshot = match snapshot {
            ScanSnapshot::Statement => {
                CommandCounterIncrement();
                RegisterSnapshot(GetTransactionSnapshot())
            }
            ScanSnapshot::Latest => RegisterSnapshot(GetLatestSnapshot()),
        };
        let scan = begin_index_scan(table, index, snapshot, nkeys);
        index_rescan(scan, keys.as_mut_ptr(), nkeys, std::ptr::null_mut(), 0);
        let slot = table_slot_create(table, std::ptr::null_mut());
        let result = read(scan, slot);
        ExecDropSingleTupleTableSlot(slot);
        index_endscan(scan);
        UnregisterSnapshot(snapshot);
        index_close(index, NoLock as _);
        table_close(table, NoLock as _);
        result
    }
}

/// Which index entries a row's new version needs after `update_row`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewEntries {
    /// A HOT update: none.
    None,
    /// A HOT update that changed a column of a summarizing index (BRIN, from 16 on): those only.
    Summarizing,
    /// Every index's.
    All,
}

/// Locks the row version at `tid` for an update that changes no key column, unless another
/// transaction holds it, as `SELECT ... FOR NO KEY UPDATE SKIP LOCKED` locks a row
/// (`heapam_tuple_lock` with `LockWaitSkip`, not following updates): `TM_WouldBlock` for a held
/// row, `TM_Updated` or `TM_Deleted` for one changed since.
///
/// # Safety
/// As `heap_lock_tuple`: inside a transaction and an error trap, `relation` open and locked for
/// writing.
pub unsafe fn lock_row_unless_held(
    relation: Relation,
    tid: ItemPointerData,
    tmfd: *mut TM_FailureData,
) -> TM_Result::Type {
    // SAFETY: the caller's contract; the buffer `heap_lock_tuple` pins is released.
    unsafe {
        let mut tuple = HeapTupleData { t_self: tid, ..Default::default() };
        let mut buffer: Buffer = 0;
        let result = heap_lock_tuple(
            relation,
            &mut tuple,
            GetCurrentCommandId(true),
            LockTupleMode::LockTupleNoKeyExclusive,
            LockWaitPolicy::LockWaitSkip,
            false,
            &mut buffer,
            tmfd,
        );
        if buffer != 0 {
            ReleaseBuffer(buffer);
        }
        result
    }
}

/// `heap_update` of the row at `otid` to `newtup`, waiting for a transaction that holds the row,
/// and which index entries the new version needs, as `heapam_tuple_update` decides them (15 reads
/// it from the new tuple's HOT flag; 16 added the summarizing case and returns it).
///
/// # Safety
/// As `heap_update`: inside a transaction and an error trap, `relation` open and locked for
/// writing, `newtup` a tuple of its descriptor.
pub unsafe fn update_row(
    relation: Relation,
    otid: ItemPointer,
    newtup: HeapTuple,
    tmfd: *mut TM_FailureData,
) -> (TM_Result::Type, NewEntries) {
    // SAFETY: the caller's contract.
    unsafe {
        let command = GetCurrentCommandId(true);
        let mut lockmode = LockTupleMode::LockTupleExclusive;
        #[cfg(feature = "pg15")]
        let result = {
            let result =
                heap_update(relation, otid, newtup, command, std::ptr::null_mut(), true, tmfd, &mut lockmode);
            let heap_only = (*(*newtup).t_data).t_infomask2 as u32 & HEAP_ONLY_TUPLE != 0;
            (
                result,
                if result == TM_Result::TM_Ok && !heap_only { NewEntries::All } else { NewEntries::None },
            )
        };
        #[cfg(not(feature = "pg15"))]
        let result = {
            let mut update_indexes = TU_UpdateIndexes::TU_None;
            let result = heap_update(
                relation,
                otid,
                newtup,
                command,
                std::ptr::null_mut(),
                true,
                tmfd,
                &mut lockmode,
                &mut update_indexes,
            );
            let entries = match update_indexes {
                TU_UpdateIndexes::TU_All => NewEntries::All,
                TU_UpdateIndexes::TU_Summarizing => NewEntries::Summarizing,
                _ => NewEntries::None,
            };
            (result, entries)
        };
        result
    }
}
