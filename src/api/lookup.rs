//! The hot paths' lookups, made directly on the unique index on `token_hash` (a bearer token) or
//! on the primary key (a JWT's `session_id` claim) instead of through SPI: no second executor and
//! no plan — one index probe and one heap fetch, under the snapshot a statement of a VOLATILE
//! function would take. This is what lets `validate_session` and `current_session` keep up
//! with the same lookups written as raw queries (SPEC §9).
//!
//! A session whose revocation for a token reuse is not yet in its row (queued for a worker, or
//! parked while another transaction holds the row: `api::reuse`) is not active for any lookup.
//! Nearly always that costs two atomic reads.

use super::aal::Level;
use crate::schema::{column, SESSION_INFO};
use crate::shmem;
use crate::token::TokenHash;
use pgrx::{pg_sys, FromDatum, IntoDatum, Uuid};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

/// How a session is looked up: by its current token, or by its id.
#[derive(Clone, Copy)]
pub enum Key<'a> {
    Token(&'a TokenHash),
    Id(Uuid),
}

/// An active session found by its token or id.
pub struct Live {
    pub id: Uuid,
    pub user_id: Uuid,
    pub fingerprint_hash: Option<Vec<u8>>,
    /// The `session_ext.session_info` of the session, ready to return.
    pub info: pg_sys::Datum,
    pub token_generation: i64,
    /// The bytea datum of `token_key`, in the caller's memory context.
    token_key: pg_sys::Datum,
    /// The text datum of the assurance level in force, in the caller's memory context.
    aal: pg_sys::Datum,
    /// The row as found, when its activity is due to be written.
    pub due: Option<Due>,
}

/// A row whose activity is due: where it is, a copy of it (in the caller's memory context), and
/// what its new `valid_until` is computed from.
#[derive(Clone, Copy)]
pub struct Due {
    pub tid: pg_sys::ItemPointerData,
    pub row: pg_sys::HeapTuple,
    /// Microseconds since 2000-01-01.
    pub expires_at: i64,
    pub idle_timeout: Option<pg_sys::Interval>,
}

impl Live {
    /// The assurance level in force (read only by the functions that ask for one).
    pub fn aal(&self) -> Level {
        // SAFETY: a text datum `find` copied into the caller's memory context.
        let name = unsafe { String::from_datum(self.aal, false) };
        name.and_then(|name| Level::parse(&name)).unwrap_or(Level::Aal1)
    }

    /// The session's secret key (`token_key`).
    pub fn token_key(&self) -> Vec<u8> {
        // SAFETY: a bytea datum `find` copied into the caller's memory context.
        unsafe { Vec::<u8>::from_datum(self.token_key, false) }.expect("token_key is NOT NULL")
    }
}

/// What the lookup copies out of the row while its buffer is pinned: plain values and datums
/// allocated in the caller's memory context.
#[derive(Clone, Copy)]
pub(super) struct Found {
    id: [u8; 16],
    user_id: [u8; 16],
    fingerprint_hash: Option<pg_sys::Datum>,
    last_active_at: i64,
    info: pg_sys::Datum,
    token_generation: i64,
    token_key: pg_sys::Datum,
    /// The text datum of the level in force.
    aal: pg_sys::Datum,
    due: Option<Due>,
}

/// The active session whose current token hashes to `hash`, or whose id is `id`, as `now()`
/// and a fresh snapshot see it: not revoked, `valid_until` still ahead. The snapshot is taken
/// after the transaction's earlier commands, as SPI takes one for each statement of a VOLATILE
/// function: a session revoked earlier in the same statement (a CTE, a cursor, a loop) is seen
/// revoked. When its `last_active_at` is before `due_before`, the result carries the row for
/// `activity::write`.
pub fn live(key: Key<'_>, due_before: Option<pg_sys::TimestampTz>) -> Option<Live> {
    let lock = pg_sys::AccessShareLock;
    // The row type too: it is formed from the row, and ALTER TYPE locks it to change it.
    let relations = crate::cache::locked(|r| {
        let index = match key {
            Key::Token(_) => r.token_index,
            Key::Id(_) => r.id_index,
        };
        [(r.table, lock), (index, lock), (r.info_relation, lock)]
    });
    crate::rows::require_select(relations.table);
    let probe = match key {
        Key::Token(hash) => Probe {
            index: relations.token_index,
            equal: pg_sys::F_BYTEAEQ,
            value: hash.as_slice().into_datum().expect("a bytea datum"),
        },
        Key::Id(id) => Probe {
            index: relations.id_index,
            equal: pg_sys::F_UUID_EQ,
            value: id.into_datum().expect("a uuid datum"),
        },
    };
    // A lapsed raised level reads as this one.
    let lapsed = Level::Aal1.name().into_datum().expect("a text datum");
    // SAFETY: an index scan inside a transaction, following the pattern of PostgreSQL's own
    // single-row lookups; every resource opened here is closed before returning, and the locks
    // are kept until the end of the transaction, as the executor keeps them. An error raised
    // inside jumps back to the trap and leaves only plain values on the abandoned frames.
    let found = unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| find(relations, probe, lapsed, due_before)) }?;
    let live = found.into_live();
    (!revoked_meanwhile(live.id)).then_some(live)
}

/// How many sessions this backend remembers having queued for revocation.
const REMEMBERED: usize = 64;

thread_local! {
    /// Sessions this backend queued for revocation: the worker's revocation is committed after
    /// this transaction's snapshot, which a repeatable read transaction keeps.
    static QUEUED_HERE: RefCell<VecDeque<Uuid>> = const { RefCell::new(VecDeque::new()) };
    /// The generation of the tables of pending revocations this backend last looked at, and
    /// whether its database's table had rows then.
    static PARKED: Cell<Option<(u64, bool)>> = const { Cell::new(None) };
}

/// Records that this backend queued the revocation of session `id`.
pub fn remember_revoked(id: Uuid) {
    QUEUED_HERE.with_borrow_mut(|queued| {
        if queued.len() == REMEMBERED {
            queued.pop_front();
        }
        queued.push_back(id);
    });
}

/// Whether session `id` is revoked for a token reuse that its row does not show yet: queued
/// (here or in shared memory) or parked in `session_ext.pending_revocations`.
pub fn revoked_meanwhile(id: Uuid) -> bool {
    // SAFETY: a backend global, set once connected.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    QUEUED_HERE.with_borrow(|queued| queued.contains(&id))
        || shmem::revocation_queued(database, id)
        || parked(database, id)
}

/// Whether a revocation of `id` is parked. The table is looked at again only when its
/// generation changed (without preloading, nothing parks, and once per backend is enough).
fn parked(database: u32, id: Uuid) -> bool {
    let generation = shmem::pending_generation().unwrap_or(0);
    let rows = match PARKED.get() {
        Some((seen, rows)) if seen == generation => rows,
        _ => {
            let rows = pending_row(None);
            if rows {
                // Left from before the server started: the launcher retries them.
                shmem::parked_rows_found(database);
            }
            PARKED.set(Some((generation, rows)));
            rows
        }
    };
    rows && pending_row(Some(id))
}

/// Whether `session_ext.pending_revocations` has a row for session `id` (with `None`, any row),
/// as the latest snapshot shows it: a revocation parked after this transaction's snapshot counts.
fn pending_row(id: Option<Uuid>) -> bool {
    use crate::internals::untrapped::*;
    let Some((table, index)) = crate::cache::pending() else { return false };
    let mut key = [pg_sys::ScanKeyData::default()];
    let nkeys = i32::from(id.is_some());
    let value = id.map(|id| id.into_datum().expect("a uuid datum"));
    // SAFETY: an index scan inside a transaction, both relations locked by `cache::pending`; the
    // key's value outlives it.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            if let Some(value) = value {
                let equal = pg_sys::Oid::from(pg_sys::F_UUID_EQ);
                ScanKeyInit(&mut key[0], 1, pg_sys::BTEqualStrategyNumber as _, equal, value);
            }
            index_scan(table, index, &mut key, nkeys, ScanSnapshot::Latest, |scan, slot| {
                index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot)
            })
        })
    }
}

impl Found {
    pub(super) fn into_live(self) -> Live {
        // SAFETY: `copy_out` copied the datums into the caller's memory context.
        unsafe {
            Live {
                id: Uuid::from_bytes(self.id),
                user_id: Uuid::from_bytes(self.user_id),
                fingerprint_hash: self.fingerprint_hash.and_then(|d| Vec::<u8>::from_datum(d, false)),
                info: self.info,
                token_generation: self.token_generation,
                token_key: self.token_key,
                aal: self.aal,
                due: self.due,
            }
        }
    }
}

/// One equality probe of a unique index of the table.
#[derive(Clone, Copy)]
struct Probe {
    index: pg_sys::Oid,
    /// The equality function of the index's type.
    equal: u32,
    value: pg_sys::Datum,
}

/// The lookup itself, calling PostgreSQL only through `crate::internals::untrapped`.
///
/// # Safety
/// Runs inside a transaction and inside an error trap; `relations` are session_ext's.
unsafe fn find(
    relations: crate::cache::Relations,
    probe: Probe,
    lapsed: pg_sys::Datum,
    due_before: Option<pg_sys::TimestampTz>,
) -> Option<Found> {
    use crate::internals::untrapped::*;
    // SAFETY: the caller's contract; both relations are locked by `live`.
    unsafe {
        let mut key = [pg_sys::ScanKeyData::default()];
        let equal = pg_sys::Oid::from(probe.equal);
        ScanKeyInit(&mut key[0], 1, pg_sys::BTEqualStrategyNumber as _, equal, probe.value);
        index_scan(relations.table, probe.index, &mut key, 1, ScanSnapshot::Statement, |scan, slot| {
            if !index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
                return None;
            }
            let desc = (*slot).tts_tupleDescriptor;
            let natts = (*desc).natts;
            slot_getsomeattrs_int(slot, natts);
            let values = std::slice::from_raw_parts((*slot).tts_values, natts as usize);
            let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts as usize);
            copy_out(values, nulls, relations.info_type, lapsed).map(|mut found| {
                if due_before.is_some_and(|due| found.last_active_at < due) {
                    found.due = Some(due_row(desc, (*slot).tts_tid, values, nulls));
                }
                found
            })
        })
    }
}

/// The row `values` and `nulls` (one entry per attribute), if it is an active session, copied
/// out of them.
///
/// # Safety
/// As `find`; the values are of a row of `session_ext.user_sessions`; `info_type` is
/// `session_ext.session_info`, locked, with the fields of `SESSION_INFO` (checked by
/// `cache::locked`); `lapsed` is the text datum `aal1`. Nothing here may panic: a panic cannot
/// leave the trap.
pub(super) unsafe fn copy_out(
    values: &[pg_sys::Datum],
    nulls: &[bool],
    info_type: pg_sys::Oid,
    lapsed: pg_sys::Datum,
) -> Option<Found> {
    use crate::internals::untrapped::*;
    // Columns are never fewer (dropped ones still count); checked so that nothing can panic.
    if values.len() < column::AAL_EXPIRES_AT || nulls.len() != values.len() {
        return None;
    }
    // SAFETY: the caller's contract.
    unsafe {
        let get = |column: usize| (!nulls[column - 1]).then(|| values[column - 1]);

        let now = GetCurrentTransactionStartTimestamp();
        let valid_until = get(column::VALID_UNTIL).map_or(0, |d| d.value() as i64);
        if get(column::REVOKED_AT).is_some() || valid_until <= now {
            return None;
        }
        // A uuid datum points at its 16 bytes.
        let uuid = |column: usize| get(column).map(|d| *d.cast_mut_ptr::<[u8; 16]>());
        let mut info_values = SESSION_INFO.map(|column| get(column).unwrap_or(pg_sys::Datum::from(0)));
        let mut info_nulls = SESSION_INFO.map(|column| nulls[column - 1]);
        // As `session_info_row!`: a raised level past its expiry is aal1 with no expiry.
        let aal = SESSION_INFO.len() - 2;
        let stored =
            get(column::AAL).filter(|_| get(column::AAL_EXPIRES_AT).is_none_or(|d| d.value() as i64 > now));
        let level = match stored {
            Some(level) => pg_sys::Datum::from(pg_detoast_datum_copy(level.cast_mut_ptr())),
            None => {
                (info_values[aal], info_nulls[aal], info_nulls[aal + 1]) = (lapsed, false, true);
                lapsed
            }
        };
        let desc = lookup_rowtype_tupdesc(info_type, -1);
        let tuple = heap_form_tuple(desc, info_values.as_mut_ptr(), info_nulls.as_mut_ptr());
        DecrTupleDescRefCount(desc);
        Some(Found {
            id: uuid(column::ID)?,
            user_id: uuid(column::USER_ID)?,
            fingerprint_hash: get(column::FINGERPRINT_HASH)
                .map(|d| pg_sys::Datum::from(pg_detoast_datum_copy(d.cast_mut_ptr()))),
            last_active_at: get(column::LAST_ACTIVE_AT).map_or(0, |d| d.value() as i64),
            info: HeapTupleHeaderGetDatum((*tuple).t_data),
            token_generation: get(column::TOKEN_GENERATION).map_or(0, |d| d.value() as i64),
            token_key: pg_sys::Datum::from(pg_detoast_datum_copy(get(column::TOKEN_KEY)?.cast_mut_ptr())),
            aal: level,
            due: None,
        })
    }
}

/// The row (of descriptor `desc`, at `tid`) as `activity::write` needs it.
///
/// # Safety
/// As `copy_out`, the values those of an active session's row.
unsafe fn due_row(
    desc: pg_sys::TupleDesc,
    tid: pg_sys::ItemPointerData,
    values: &[pg_sys::Datum],
    nulls: &[bool],
) -> Due {
    use crate::internals::untrapped::*;
    // SAFETY: the caller's contract; the copy references nothing in the buffer.
    unsafe {
        let get = |column: usize| (!nulls[column - 1]).then(|| values[column - 1]);
        Due {
            tid,
            row: heap_form_tuple(desc, values.as_ptr().cast_mut(), nulls.as_ptr().cast_mut()),
            expires_at: get(column::EXPIRES_AT).map_or(0, |d| d.value() as i64),
            // An interval datum points at its 16 bytes.
            idle_timeout: get(column::IDLE_TIMEOUT).map(|d| *d.cast_mut_ptr::<pg_sys::Interval>()),
        }
    }
}
