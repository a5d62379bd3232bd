//! The hot path's token lookup, made directly on the unique index on `token_hash` instead of
//! through SPI: no second executor, no plan, no snapshot of its own — the statement's snapshot,
//! one index probe, one heap fetch. This is what lets `validate_session` keep up with the same
//! lookup written as a raw query (SPEC §9).

use crate::token::TokenHash;
use crate::types::form_composite;
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
const SESSION_INFO: [usize; 15] = [
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

/// The active session whose current token hashes to `hash`, as `now()` and the statement's
/// snapshot see it: not revoked, `valid_until` still ahead.
pub fn live_by_token(hash: &TokenHash) -> Option<Live> {
    let relations = crate::cache::relations();
    // SAFETY: an index scan inside a transaction, following the pattern of PostgreSQL's own
    // single-row lookups; every resource opened here is closed before returning, and the locks
    // are kept until the end of the transaction, as the executor keeps them.
    unsafe {
        let table = pg_sys::table_open(relations.table, pg_sys::AccessShareLock as _);
        let index = pg_sys::index_open(relations.token_index, pg_sys::AccessShareLock as _);

        let mut key = MaybeUninit::<pg_sys::ScanKeyData>::uninit();
        pg_sys::ScanKeyInit(
            key.as_mut_ptr(),
            1,
            pg_sys::BTEqualStrategyNumber as _,
            pg_sys::Oid::from(pg_sys::F_BYTEAEQ),
            hash.as_slice().into_datum().expect("a bytea datum"),
        );
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
        let scan = pg_sys::index_beginscan(table, index, snapshot, 1, 0);
        pg_sys::index_rescan(scan, key.as_mut_ptr(), 1, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(table, std::ptr::null_mut());
        let found = if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            pg_sys::slot_getallattrs(slot);
            live_from(slot, relations.info_type)
        } else {
            None
        };
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::index_close(index, pg_sys::NoLock as _);
        pg_sys::table_close(table, pg_sys::NoLock as _);
        found
    }
}

/// The session in `slot` (all attributes deformed), if it is active.
///
/// # Safety
/// `slot` holds a row of `session_ext.user_sessions`; `info_type` is `session_ext.session_info`.
unsafe fn live_from(slot: *mut pg_sys::TupleTableSlot, info_type: pg_sys::Oid) -> Option<Live> {
    // SAFETY: the caller's contract; values and nulls have one entry per attribute.
    unsafe {
        let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
        let values = std::slice::from_raw_parts((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
        let get = |column: usize| (!nulls[column - 1]).then(|| values[column - 1]);

        let now = pg_sys::GetCurrentTransactionStartTimestamp();
        let valid_until = get(column::VALID_UNTIL).map_or(0, |d| d.value() as i64);
        if get(column::REVOKED_AT).is_some() || valid_until <= now {
            return None;
        }
        let uuid = |column| Uuid::from_datum(get(column)?, false);
        let bytes = |column| Vec::<u8>::from_datum(get(column)?, false);

        Some(Live {
            id: uuid(column::ID)?,
            user_id: uuid(column::USER_ID)?,
            fingerprint_hash: bytes(column::FINGERPRINT_HASH),
            last_active_at: get(column::LAST_ACTIVE_AT).map_or(0, |d| d.value() as i64),
            info: form_composite(info_type, SESSION_INFO.map(get)),
        })
    }
}

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
