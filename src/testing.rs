//! Helpers for the `#[pg_test]`s: they run inside one transaction as a superuser, which is
//! rolled back afterwards, so they may create roles and rewrite rows freely.

use pgrx::prelude::*;
use pgrx::Uuid;

pub const ALICE: &str = "a11ce000-0000-4000-8000-000000000001";
pub const BOB: &str = "b0b00000-0000-4000-8000-000000000002";

/// Creates a session through the generating overload; `extra` is appended to the named
/// arguments. Returns the id and the token.
pub fn create(user: &str, extra: &str) -> (Uuid, String) {
    let sql = format!(
        "SELECT id, token FROM session_ext.create_user_session(user_id => '{user}', session_data => '{{}}'{extra})"
    );
    match Spi::get_two::<Uuid, String>(&sql) {
        Ok((Some(id), Some(token))) => (id, token),
        other => panic!("{sql}: {other:?}"),
    }
}

/// Runs the rest of the transaction as a fresh non-admin role acting for `user`, the way
/// PostgREST sets up a request.
pub fn act_as_user(user: &str) {
    Spi::run(&format!(
        "CREATE ROLE unit_test_user NOLOGIN IN ROLE session_ext_user;
         SET LOCAL ROLE unit_test_user;
         SELECT set_config('request.jwt.claims', '{{\"sub\":\"{user}\"}}', true);"
    ))
    .expect("switching to a user role");
}

pub fn count(sql: &str) -> i64 {
    Spi::get_one::<i64>(sql).expect(sql).expect(sql)
}

/// A hash index access method that records, for each entry inserted, the index and the hint the
/// executor gave it that the entry's key is unchanged by an update (`aminsert`'s
/// `indexUnchanged`, which btree uses to delete older duplicates bottom-up), so that tests can
/// compare the hint of a write below the executor with `ExecUpdate`'s. (Hash, not btree: btree's
/// build sorts with support only its own access method may ask for.) Set up by
/// [`hints::create_access_method`].
pub mod hints {
    use pgrx::{pg_guard, pg_sys};
    use std::cell::RefCell;
    use std::sync::OnceLock;

    thread_local! {
        static RECORDED: RefCell<Vec<(pg_sys::Oid, bool)>> = const { RefCell::new(Vec::new()) };
    }

    static HASH_INSERT: OnceLock<pg_sys::aminsert_function> = OnceLock::new();

    #[unsafe(no_mangle)]
    pub extern "C" fn pg_finfo_session_ext_hint_recording_hash() -> &'static pg_sys::Pg_finfo_record {
        static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
        &V1
    }

    /// The `index_am_handler`: hash's routine, with an `aminsert` that records, then inserts.
    #[pg_guard]
    #[unsafe(no_mangle)]
    pub extern "C-unwind" fn session_ext_hint_recording_hash(
        fcinfo: pg_sys::FunctionCallInfo,
    ) -> pg_sys::Datum {
        // SAFETY: hashhandler returns a palloc'd routine, which the caller owns.
        unsafe {
            let routine = pg_sys::hashhandler(fcinfo).cast_mut_ptr::<pg_sys::IndexAmRoutine>();
            HASH_INSERT.get_or_init(|| (*routine).aminsert);
            (*routine).aminsert = Some(recording_insert);
            pg_sys::Datum::from(routine)
        }
    }

    #[pg_guard]
    #[allow(clippy::too_many_arguments)] // aminsert's signature
    unsafe extern "C-unwind" fn recording_insert(
        index: pg_sys::Relation,
        values: *mut pg_sys::Datum,
        isnull: *mut bool,
        tid: pg_sys::ItemPointer,
        heap: pg_sys::Relation,
        check: pg_sys::IndexUniqueCheck::Type,
        unchanged: bool,
        info: *mut pg_sys::IndexInfo,
    ) -> bool {
        // SAFETY: the executor's arguments, passed on to hash's own insert.
        unsafe {
            RECORDED.with_borrow_mut(|hints| hints.push(((*(*index).rd_rel).oid, unchanged)));
            let insert = HASH_INSERT.get().copied().flatten().expect("the handler ran first");
            insert(index, values, isnull, tid, heap, check, unchanged, info)
        }
    }

    /// Creates the access method `hint_hash` with default operator classes for uuid and
    /// timestamptz (hash's equality operators and hash functions).
    pub fn create_access_method() {
        pgrx::Spi::run(
            "CREATE FUNCTION public.hint_hash_handler(internal) RETURNS index_am_handler
                 LANGUAGE c AS 'session_ext', 'session_ext_hint_recording_hash';
             CREATE ACCESS METHOD hint_hash TYPE INDEX HANDLER public.hint_hash_handler;
             CREATE OPERATOR CLASS public.hint_uuid_ops DEFAULT FOR TYPE uuid USING hint_hash AS
                 OPERATOR 1 =, FUNCTION 1 uuid_hash(uuid);
             CREATE OPERATOR CLASS public.hint_timestamptz_ops DEFAULT FOR TYPE timestamptz USING hint_hash AS
                 OPERATOR 1 =, FUNCTION 1 (timestamptz) timestamp_hash(timestamp);",
        )
        .unwrap();
    }

    /// The hints recorded since the last call, by index name, in the order of the inserts.
    pub fn take() -> Vec<(String, bool)> {
        RECORDED
            .with_borrow_mut(std::mem::take)
            .into_iter()
            .map(|(index, unchanged)| {
                let name =
                    pgrx::Spi::get_one::<String>(&format!("SELECT {}::regclass::text", index.to_u32()))
                        .unwrap()
                        .unwrap();
                (name, unchanged)
            })
            .collect()
    }
}
