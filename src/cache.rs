//! Catalog facts the hot path needs on every call, kept per backend and dropped as soon as
//! PostgreSQL reports a change to the catalogs they come from (the same invalidation callbacks
//! PostgreSQL's own caches use), so they are never stale.

use crate::internals;
use crate::schema::SESSION_INFO;
use pgrx::{pg_guard, pg_sys};
use std::cell::Cell;
use std::ffi::CStr;

/// The relations the API reads and writes directly, not through SQL.
#[derive(Debug, Clone, Copy)]
pub struct Relations {
    pub table: pg_sys::Oid,
    pub audit_table: pg_sys::Oid,
    pub token_index: pg_sys::Oid,
    /// The (moment, id) indexes cleanup walks: sessions by valid_until and by revoked_at,
    /// audit rows by occurred_at.
    pub valid_until_index: pg_sys::Oid,
    pub revoked_index: pg_sys::Oid,
    pub audit_occurred_index: pg_sys::Oid,
    /// The sequence of the audit log's identity column.
    pub audit_id_sequence: pg_sys::Oid,
    pub info_type: pg_sys::Oid,
    pub new_session_type: pg_sys::Oid,
    info_relation: pg_sys::Oid,
    new_session_relation: pg_sys::Oid,
}

thread_local! {
    static RELATIONS: Cell<Option<Relations>> = const { Cell::new(None) };
    static ADMIN: Cell<Option<(pg_sys::Oid, bool)>> = const { Cell::new(None) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// session_ext's tables, indexes and result types, looked up once per backend.
pub fn relations() -> Relations {
    watch();
    if let Some(relations) = RELATIONS.get() {
        return relations;
    }
    // SAFETY: catalog lookups by name inside a transaction; the extension's objects exist while
    // its functions do.
    let relations = unsafe {
        let namespace = pg_sys::get_namespace_oid(c"session_ext".as_ptr(), false);
        let relid = |name: &CStr| pg_sys::get_relname_relid(name.as_ptr(), namespace);
        let info_relation = relid(c"session_info");
        let new_session_relation = relid(c"new_session");
        let info_type = pg_sys::get_rel_type_id(info_relation);
        // heap_form_tuple takes one value per field (dropped ones included): the lookup fills
        // exactly the fields it knows.
        let info_desc = pg_sys::lookup_rowtype_tupdesc(info_type, -1);
        let info_fields = (*info_desc).natts as usize;
        pg_sys::DecrTupleDescRefCount(info_desc);
        assert_eq!(
            info_fields,
            SESSION_INFO.len(),
            "session_ext.session_info has the fields of SESSION_INFO"
        );
        let audit_table = relid(c"session_audit_log");
        Relations {
            table: relid(c"user_sessions"),
            audit_table,
            token_index: relid(c"user_sessions_token_hash_key"),
            valid_until_index: relid(c"user_sessions_valid_until_idx"),
            revoked_index: relid(c"user_sessions_revoked_idx"),
            audit_occurred_index: relid(c"session_audit_log_occurred_idx"),
            audit_id_sequence: internals::identity_sequence(audit_table, 1),
            info_type,
            new_session_type: pg_sys::get_rel_type_id(new_session_relation),
            info_relation,
            new_session_relation,
        }
    };
    RELATIONS.set(Some(relations));
    relations
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
                r.valid_until_index,
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
