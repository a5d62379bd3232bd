//! Catalog facts the hot path needs on every call, kept per backend and dropped as soon as
//! PostgreSQL reports a change to the catalogs they come from (the same invalidation callbacks
//! PostgreSQL's own caches use).
//!
//! A backend hears of other backends' changes only when it processes invalidation messages,
//! which taking a lock does. So a cached fact is used only through [`locked`], which takes the
//! locks first and looks again when they brought news, as `RangeVarGetRelidExtended` does for a
//! name: facts read before the lock could name an index `REINDEX CONCURRENTLY` has since
//! replaced, or a row type `ALTER TYPE` has since widened.

use crate::errors::ApiError;
use crate::internals;
use crate::schema::{column, AUDIT_TYPES, NEW_SESSION_TYPES, SESSION_INFO, SESSION_TYPES};
use pgrx::pg_sys::{self, PgOid};
use pgrx::{pg_guard, PgSqlErrorCode, Spi};
use std::cell::Cell;
use std::ffi::CStr;

/// The relations the API reads and writes directly, not through SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relations {
    pub table: pg_sys::Oid,
    pub audit_table: pg_sys::Oid,
    pub token_index: pg_sys::Oid,
    /// The primary key, by which `current_session` finds the session a JWT names.
    pub id_index: pg_sys::Oid,
    /// The (moment, id) indexes cleanup walks: sessions by cleanup_after and by revoked_at,
    /// audit rows by occurred_at.
    pub cleanup_index: pg_sys::Oid,
    pub revoked_index: pg_sys::Oid,
    pub audit_occurred_index: pg_sys::Oid,
    /// The sequence of the audit log's identity column.
    pub audit_id_sequence: pg_sys::Oid,
    pub info_type: pg_sys::Oid,
    pub new_session_type: pg_sys::Oid,
    /// The relations behind the two row types, which `ALTER TYPE` locks.
    pub info_relation: pg_sys::Oid,
    pub new_session_relation: pg_sys::Oid,
    /// The extension's owner (the owner of its table), as whom the API does its work.
    pub owner: pg_sys::Oid,
}

thread_local! {
    static RELATIONS: Cell<Option<Relations>> = const { Cell::new(None) };
    static ADMIN: Cell<Option<(pg_sys::Oid, bool)>> = const { Cell::new(None) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// session_ext's relations, with the locks `locks` names taken (kept to the end of the
/// transaction, as the executor keeps them): the facts returned are those of the locked
/// relations. Raises 55000 when the objects no longer have the shape the code relies on.
pub fn locked<const N: usize>(locks: impl Fn(&Relations) -> [(pg_sys::Oid, u32); N]) -> Relations {
    loop {
        // SAFETY: a backend-global counter of processed invalidation messages.
        let before = unsafe { pg_sys::SharedInvalidMessageCounter };
        let relations = relations();
        for (relation, mode) in locks(&relations) {
            // SAFETY: inside a transaction; locking an oid whose relation was dropped since is
            // harmless (the lock is released at the end of the transaction, the loop looks again).
            unsafe { pg_sys::LockRelationOid(relation, mode as _) };
        }
        // SAFETY: as above.
        let after = unsafe { pg_sys::SharedInvalidMessageCounter };
        if after == before || RELATIONS.get() == Some(relations) {
            return relations;
        }
    }
}

/// session_ext's tables, indexes and result types, looked up once per backend (and again after
/// a change), with their shape checked. Use [`locked`] before relying on them.
fn relations() -> Relations {
    watch();
    if let Some(relations) = RELATIONS.get() {
        return relations;
    }
    // SAFETY: catalog lookups by name inside a transaction.
    let relations = unsafe {
        let namespace = pg_sys::get_namespace_oid(c"session_ext".as_ptr(), false);
        let relid = |name: &CStr| {
            let oid = pg_sys::get_relname_relid(name.as_ptr(), namespace);
            if oid == pg_sys::InvalidOid {
                altered(format!("session_ext.{} does not exist.", name.to_string_lossy()));
            }
            oid
        };
        let table = relid(c"user_sessions");
        let audit_table = relid(c"session_audit_log");
        let info_relation = relid(c"session_info");
        let new_session_relation = relid(c"new_session");
        let session_info_types = SESSION_INFO.map(|column| SESSION_TYPES[column - 1]);
        check_shape(table, "the table session_ext.user_sessions", &SESSION_TYPES, false);
        check_shape(audit_table, "the table session_ext.session_audit_log", &AUDIT_TYPES, false);
        check_shape(info_relation, "the type session_ext.session_info", &session_info_types, true);
        check_shape(new_session_relation, "the type session_ext.new_session", &NEW_SESSION_TYPES, true);
        let token_index = relid(c"user_sessions_token_hash_key");
        let id_index = relid(c"user_sessions_pkey");
        check_probe_index(token_index, table, column::TOKEN_HASH, "session_ext.user_sessions_token_hash_key");
        check_probe_index(id_index, table, column::ID, "session_ext.user_sessions_pkey");
        Relations {
            table,
            audit_table,
            token_index,
            id_index,
            cleanup_index: relid(c"user_sessions_cleanup_idx"),
            revoked_index: relid(c"user_sessions_revoked_idx"),
            audit_occurred_index: relid(c"session_audit_log_occurred_idx"),
            audit_id_sequence: internals::identity_sequence(audit_table, 1),
            info_type: pg_sys::get_rel_type_id(info_relation),
            new_session_type: pg_sys::get_rel_type_id(new_session_relation),
            info_relation,
            new_session_relation,
            owner: owner_and_attributes(table).0,
        }
    };
    RELATIONS.set(Some(relations));
    relations
}

/// `session_ext.pending_revocations` and its primary key, locked as a scan locks them (to the end
/// of the transaction), or none in objects older than 0.8.0 (before `ALTER EXTENSION ...
/// UPDATE`), which serve without it. Looked up by name at each call, never kept: it is read only
/// when a revocation may be parked there.
pub fn pending() -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    // SAFETY: catalog lookups by name inside a transaction; the names are looked up again after
    // the locks, as RangeVarGetRelidExtended does, in case they now name other relations.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"session_ext".as_ptr(), true);
        let find = || {
            let table = pg_sys::get_relname_relid(c"pending_revocations".as_ptr(), namespace);
            let index = pg_sys::get_relname_relid(c"pending_revocations_pkey".as_ptr(), namespace);
            (table != pg_sys::InvalidOid && index != pg_sys::InvalidOid).then_some((table, index))
        };
        loop {
            let found = find()?;
            pg_sys::LockRelationOid(found.0, pg_sys::AccessShareLock as _);
            pg_sys::LockRelationOid(found.1, pg_sys::AccessShareLock as _);
            if find() == Some(found) {
                return Some(found);
            }
        }
    }
}

/// Raises 55000 unless the first attributes of `relation` have exactly `types` (a table may
/// have more columns after them; a row type, which the code forms whole, may not).
///
/// # Safety
/// Inside a transaction; `relation` exists.
unsafe fn check_shape(relation: pg_sys::Oid, what: &str, types: &[PgOid], exact: bool) {
    let changed = types.iter().enumerate().find_map(|(i, expected)| {
        // SAFETY: the caller's contract; a dropped attribute has no type (InvalidOid).
        let found = unsafe { pg_sys::get_atttype(relation, (i + 1) as _) };
        (found != expected.value()).then_some(i + 1)
    });
    // SAFETY: the caller's contract.
    let (_, attributes) = unsafe { owner_and_attributes(relation) };
    let problem = match changed {
        Some(attnum) => format!("Attribute {attnum} of {what} was dropped or changed its type."),
        None if exact && attributes != types.len() => {
            format!("{what} has {attributes} attributes (dropped ones included), not {}.", types.len())
        }
        None => return,
    };
    altered(problem)
}

/// Raises 55000 unless `index` is what `api::lookup` probes by equality on its one key: a valid,
/// unique, non-partial index of `table` on exactly `column`. Anyone who owns the objects could
/// drop the constraint and create another index under its name.
///
/// # Safety
/// Inside a transaction; `index` exists.
unsafe fn check_probe_index(index: pg_sys::Oid, table: pg_sys::Oid, column: usize, what: &str) {
    // SAFETY: the caller's contract; the tuple is released before any error is raised.
    let fits = unsafe {
        let tuple =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::INDEXRELID as _, pg_sys::Datum::from(index));
        if tuple.is_null() {
            false
        } else {
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_index>(tuple);
            let fits = form.indrelid == table
                && form.indnatts == 1
                && form.indisunique
                && form.indisvalid
                && form.indkey.values.as_slice(1)[0] as usize == column
                && pg_sys::heap_attisnull(tuple, pg_sys::Anum_pg_index_indpred as _, std::ptr::null_mut());
            pg_sys::ReleaseSysCache(tuple);
            fits
        }
    };
    if !fits {
        altered(format!("{what} is no longer a unique index on that column alone."));
    }
}

/// 55000: the code reads and writes these objects below SQL, by their declared shape. Objects of
/// another version than the library's (a new package installed, `ALTER EXTENSION ... UPDATE`
/// not yet run) are said to be that.
fn altered(detail: String) -> ! {
    let library = env!("CARGO_PKG_VERSION");
    let installed = Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'session_ext'",
    );
    let error = match installed {
        Ok(Some(version)) if version != library => ApiError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("session_ext's objects in this database are version {version}, its library is {library}"),
        )
        .detail("The library was updated; this database's objects were not.")
        .hint("Run ALTER EXTENSION session_ext UPDATE in this database."),
        _ => ApiError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "session_ext's objects were altered",
        )
        .detail(detail)
        .hint("Undo the change. Columns may be added to session_ext's tables; nothing else of theirs may change."),
    };
    error.raise()
}

/// A relation's owner and its number of attributes (dropped ones included), from pg_class.
///
/// # Safety
/// Inside a transaction; `relation` exists.
unsafe fn owner_and_attributes(relation: pg_sys::Oid) -> (pg_sys::Oid, usize) {
    // SAFETY: the caller's contract; the tuple is released before returning.
    unsafe {
        let tuple =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as _, pg_sys::Datum::from(relation));
        assert!(!tuple.is_null(), "relation {relation:?} exists");
        let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple);
        let found = (form.relowner, form.relnatts as usize);
        pg_sys::ReleaseSysCache(tuple);
        found
    }
}

/// Whether `role` is an admin, decided by `decide` once until roles or memberships change.
pub fn admin(role: pg_sys::Oid, decide: impl FnOnce(pg_sys::Oid) -> bool) -> bool {
    watch();
    match ADMIN.get() {
        Some((cached, admin)) if cached == role => admin,
        _ => {
            let admin = decide(role);
            ADMIN.set(Some((role, admin)));
            admin
        }
    }
}

fn watch() {
    if WATCHING.replace(true) {
        return;
    }
    // SAFETY: registers callbacks for the life of the backend, as PostgreSQL's caches do.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0));
        for cache in [pg_sys::SysCacheIdentifier::AUTHOID, pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM] {
            pg_sys::CacheRegisterSyscacheCallback(cache as i32, Some(roles_changed), pg_sys::Datum::from(0));
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let ours = RELATIONS.get().is_some_and(|r| {
        relid == pg_sys::InvalidOid
            || [
                r.table,
                r.audit_table,
                r.token_index,
                r.id_index,
                r.cleanup_index,
                r.revoked_index,
                r.audit_occurred_index,
                r.info_relation,
                r.new_session_relation,
            ]
            .contains(&relid)
    });
    if ours {
        RELATIONS.set(None);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn roles_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    ADMIN.set(None);
}
