//! The hot path's token lookup, made directly on the unique index on `token_hash` instead of
//! through SPI: no second executor, no plan, no snapshot of its own — the statement's snapshot,
//! one index probe, one heap fetch. This is what lets `validate_session` keep up with the same
//! lookup written as a raw query (SPEC §9).

use crate::token::TokenHash;
use pgrx::{pg_sys, FromDatum, IntoDatum, Uuid};
use std::mem::MaybeUninit;

/// Attribute numbers of `session_ext.user_sessions`, in the order of sql/schema.sql (a test
/// holds them to the catalog).
pub mod column {
    pub const ID: usize = 1;
    pub const USER_ID: usize = 2;
    pub const SESSION_ID: usize = 3;
    pub const SESSION_DATA: usize = 7;
    pub const DATA_VERSION: usize = 8;
    pub const DEVICE_INFO: usize = 9;
    pub const USER_AGENT: usize = 10;
    pub const IP_ADDRESS: usize = 11;
    pub const FINGERPRINT_HASH: usize = 12;
    pub const CREATED_AT: usize = 13;
    pub const LAST_ACTIVE_AT: usize = 14;
    pub const EXPIRES_AT: usize = 15;
    pub const IDLE_TIMEOUT: usize = 16;
    pub const VALID_UNTIL: usize = 17;
    pub const REVOKED_AT: usize = 18;
    pub const REVOKE_REASON: usize = 19;
}

/// The columns of `session_ext.session_info`, in its order, as columns of the table.
pub const SESSION_INFO: [usize; 15] = [
    column::ID,
    column::SESSION_ID,
    column::USER_ID,
    column::SESSION_DATA,
    column::DATA_VERSION,
    column::DEVICE_INFO,
    column::USER_AGENT,
    column::IP_ADDRESS,
    column::CREATED_AT,
    column::LAST_ACTIVE_AT,
    column::EXPIRES_AT,
    column::IDLE_TIMEOUT,
    column::VALID_UNTIL,
    column::REVOKED_AT,
    column::REVOKE_REASON,
];

/// An active session found by its token.
pub struct Live {
    pub id: Uuid,
    pub user_id: Uuid,
    pub fingerprint_hash: Option<Vec<u8>>,
    /// Microseconds since 2000-01-01, as PostgreSQL keeps timestamps.
    pub last_active_at: i64,
    /// The `session_ext.session_info` of the session, ready to return.
    pub info: pg_sys::Datum,
}

/// What the lookup copies out of the row while its buffer is pinned: plain values and datums
/// allocated in the caller's memory context.
#[derive(Clone, Copy)]
struct Found {
    id: pg_sys::Datum,
    user_id: pg_sys::Datum,
    fingerprint_hash: Option<pg_sys::Datum>,
    last_active_at: i64,
    info: pg_sys::Datum,
}

/// The active session whose current token hashes to `hash`, as `now()` and the statement's
/// snapshot see it: not revoked, `valid_until` still ahead.
pub fn live_by_token(hash: &TokenHash) -> Option<Live> {
    let relations = crate::cache::relations();
    let key = hash.as_slice().into_datum().expect("a bytea datum");
    // SAFETY: an index scan inside a transaction, following the pattern of PostgreSQL's own
    // single-row lookups; every resource opened here is closed before returning, and the locks
    // are kept until the end of the transaction, as the executor keeps them. An error raised
    // inside jumps back to the trap and leaves only plain values on the abandoned frames.
    let found = unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| find(relations, key)) }?;
    // SAFETY: the datums were copied into the caller's memory context by `find`.
    unsafe {
        Some(Live {
            id: Uuid::from_datum(found.id, false)?,
            user_id: Uuid::from_datum(found.user_id, false)?,
            fingerprint_hash: found.fingerprint_hash.and_then(|d| Vec::<u8>::from_datum(d, false)),
            last_active_at: found.last_active_at,
            info: found.info,
        })
    }
}

/// The lookup itself, calling PostgreSQL only through `crate::untrapped`.
///
/// # Safety
/// Runs inside a transaction and inside an error trap; `relations` are session_ext's.
unsafe fn find(relations: crate::cache::Relations, key: pg_sys::Datum) -> Option<Found> {
    use crate::untrapped::*;
    // SAFETY: the caller's contract.
    unsafe {
        let table = table_open(relations.table, pg_sys::AccessShareLock as _);
        let index = index_open(relations.token_index, pg_sys::AccessShareLock as _);
        let mut scan_key = MaybeUninit::<pg_sys::ScanKeyData>::uninit();
        ScanKeyInit(
            scan_key.as_mut_ptr(),
            1,
            pg_sys::BTEqualStrategyNumber as _,
            pg_sys::Oid::from(pg_sys::F_BYTEAEQ),
            key,
        );
        let snapshot = if ActiveSnapshotSet() { GetActiveSnapshot() } else { GetTransactionSnapshot() };
        let scan = index_beginscan(table, index, snapshot, 1, 0);
        index_rescan(scan, scan_key.as_mut_ptr(), 1, std::ptr::null_mut(), 0);
        let slot = table_slot_create(table, std::ptr::null_mut());
        let found = if index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            let natts = (*(*slot).tts_tupleDescriptor).natts;
            slot_getsomeattrs_int(slot, natts);
            // Columns are never fewer (dropped ones still count); checked so nothing can panic.
            (natts as usize >= column::REVOKE_REASON).then(|| copy_out(slot, relations.info_type)).flatten()
        } else {
            None
        };
        ExecDropSingleTupleTableSlot(slot);
        index_endscan(scan);
        index_close(index, pg_sys::NoLock as _);
        table_close(table, pg_sys::NoLock as _);
        found
    }
}

/// The session in `slot` (all attributes deformed), if it is active, copied out of the slot.
///
/// # Safety
/// As `find`; `slot` holds a row of `session_ext.user_sessions`; `info_type` is
/// `session_ext.session_info`, with the fields of `SESSION_INFO` (checked by
/// `cache::relations`). Nothing here may panic: a panic cannot leave the trap.
unsafe fn copy_out(slot: *mut pg_sys::TupleTableSlot, info_type: pg_sys::Oid) -> Option<Found> {
    use crate::untrapped::*;
    // SAFETY: the caller's contract; values and nulls have one entry per attribute.
    unsafe {
        let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
        let values = std::slice::from_raw_parts((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
        let get = |column: usize| (!nulls[column - 1]).then(|| values[column - 1]);

        let valid_until = get(column::VALID_UNTIL).map_or(0, |d| d.value() as i64);
        if get(column::REVOKED_AT).is_some() || valid_until <= GetCurrentTransactionStartTimestamp() {
            return None;
        }
        let copy = |column: usize, length: i32| get(column).map(|d| datumCopy(d, false, length));
        let mut info_values = SESSION_INFO.map(|column| get(column).unwrap_or(pg_sys::Datum::from(0)));
        let mut info_nulls = SESSION_INFO.map(|column| nulls[column - 1]);
        let desc = lookup_rowtype_tupdesc(info_type, -1);
        let tuple = heap_form_tuple(desc, info_values.as_mut_ptr(), info_nulls.as_mut_ptr());
        DecrTupleDescRefCount(desc);
        Some(Found {
            id: copy(column::ID, UUID_LENGTH)?,
            user_id: copy(column::USER_ID, UUID_LENGTH)?,
            fingerprint_hash: copy(column::FINGERPRINT_HASH, VARLENA),
            last_active_at: get(column::LAST_ACTIVE_AT).map_or(0, |d| d.value() as i64),
            info: HeapTupleHeaderGetDatum((*tuple).t_data),
        })
    }
}

/// `typlen` of `uuid`, and of variable-length types.
const UUID_LENGTH: i32 = 16;
const VARLENA: i32 = -1;

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{column, SESSION_INFO};
    use pgrx::prelude::*;

    #[pg_test]
    fn column_numbers_match_the_table() {
        let named = [
            ("id", column::ID),
            ("user_id", column::USER_ID),
            ("session_id", column::SESSION_ID),
            ("session_data", column::SESSION_DATA),
            ("data_version", column::DATA_VERSION),
            ("device_info", column::DEVICE_INFO),
            ("user_agent", column::USER_AGENT),
            ("ip_address", column::IP_ADDRESS),
            ("fingerprint_hash", column::FINGERPRINT_HASH),
            ("created_at", column::CREATED_AT),
            ("last_active_at", column::LAST_ACTIVE_AT),
            ("expires_at", column::EXPIRES_AT),
            ("idle_timeout", column::IDLE_TIMEOUT),
            ("valid_until", column::VALID_UNTIL),
            ("revoked_at", column::REVOKED_AT),
            ("revoke_reason", column::REVOKE_REASON),
        ];
        for (name, number) in named {
            let attnum = Spi::get_one::<i16>(&format!(
                "SELECT attnum FROM pg_attribute WHERE attrelid = 'session_ext.user_sessions'::regclass AND attname = '{name}'"
            ))
            .unwrap();
            assert_eq!(attnum, Some(number as i16), "{name}");
        }
        // session_info lists the table's columns in its own order and with the same types.
        let mismatched = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM pg_attribute i
               JOIN unnest(ARRAY{:?}) WITH ORDINALITY AS m(table_attnum, info_attnum) ON m.info_attnum = i.attnum
               JOIN pg_attribute t ON t.attrelid = 'session_ext.user_sessions'::regclass AND t.attnum = m.table_attnum
              WHERE i.attrelid = 'session_ext.session_info'::regclass
                AND (i.attname <> t.attname OR i.atttypid <> t.atttypid)",
            SESSION_INFO
        ))
        .unwrap();
        assert_eq!(mismatched, Some(0));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM pg_attribute WHERE attrelid = 'session_ext.session_info'::regclass AND attnum > 0")
                .unwrap(),
            Some(SESSION_INFO.len() as i64)
        );
    }
}
