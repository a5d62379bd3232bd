//! PostgreSQL functions declared without the error trap (a `sigsetjmp`) that pgrx's bindings
//! set around every single call. The token lookup makes about fifteen calls on every
//! validation, and cleanup two on every row it deletes; each runs all of its calls inside one
//! trap instead (`pg_sys::ffi::pg_guard_ffi_boundary`). Code calling these must run inside such
//! a trap and must not panic there. The signatures are those of pgrx's bindings for
//! PostgreSQL 15.

use pgrx::pg_sys::*;
use std::ffi::c_int;

unsafe extern "C-unwind" {
    pub fn table_open(relation: Oid, lockmode: LOCKMODE) -> Relation;
    pub fn index_open(relation: Oid, lockmode: LOCKMODE) -> Relation;
    pub fn ScanKeyInit(
        entry: ScanKey,
        attribute: AttrNumber,
        strategy: StrategyNumber,
        procedure: RegProcedure,
        argument: Datum,
    );
    pub fn ScanKeyEntryInitialize(
        entry: ScanKey,
        flags: c_int,
        attribute: AttrNumber,
        strategy: StrategyNumber,
        subtype: Oid,
        collation: Oid,
        procedure: RegProcedure,
        argument: Datum,
    );
    pub fn ActiveSnapshotSet() -> bool;
    pub fn GetActiveSnapshot() -> Snapshot;
    pub fn GetTransactionSnapshot() -> Snapshot;
    pub fn RegisterSnapshot(snapshot: Snapshot) -> Snapshot;
    pub fn UnregisterSnapshot(snapshot: Snapshot);
    pub fn CommandCounterIncrement();
    pub fn GetCurrentCommandId(used: bool) -> CommandId;
    pub fn index_beginscan(
        heap: Relation,
        index: Relation,
        snapshot: Snapshot,
        nkeys: c_int,
        norderbys: c_int,
    ) -> IndexScanDesc;
    pub fn index_rescan(
        scan: IndexScanDesc,
        keys: ScanKey,
        nkeys: c_int,
        orderbys: ScanKey,
        norderbys: c_int,
    );
    pub fn table_slot_create(relation: Relation, reglist: *mut *mut List) -> *mut TupleTableSlot;
    pub fn index_getnext_slot(
        scan: IndexScanDesc,
        direction: ScanDirection::Type,
        slot: *mut TupleTableSlot,
    ) -> bool;
    pub fn slot_getsomeattrs_int(slot: *mut TupleTableSlot, attnum: c_int);
    pub fn ExecDropSingleTupleTableSlot(slot: *mut TupleTableSlot);
    pub fn index_endscan(scan: IndexScanDesc);
    pub fn index_close(relation: Relation, lockmode: LOCKMODE);
    pub fn table_close(relation: Relation, lockmode: LOCKMODE);
    pub fn heap_delete(
        relation: Relation,
        tid: ItemPointer,
        cid: CommandId,
        crosscheck: Snapshot,
        wait: bool,
        tmfd: *mut TM_FailureData,
        changing_part: bool,
    ) -> TM_Result::Type;
    pub fn GetCurrentTransactionStartTimestamp() -> TimestampTz;
    pub fn lookup_rowtype_tupdesc(type_id: Oid, typmod: i32) -> TupleDesc;
    pub fn DecrTupleDescRefCount(tupdesc: TupleDesc);
    pub fn heap_form_tuple(tupdesc: TupleDesc, values: *mut Datum, isnull: *mut bool) -> HeapTuple;
    pub fn HeapTupleHeaderGetDatum(tuple: HeapTupleHeader) -> Datum;
    pub fn datumCopy(value: Datum, typbyval: bool, typlen: c_int) -> Datum;
}
