//! session_ext: user sessions kept inside PostgreSQL.
//!
//! The SQL objects the functions rely on (roles, table, types) live in `sql/`; the Rust
//! modules hold the functions, split by concern.

use pgrx::prelude::*;

mod api;
mod background;
mod cache;
mod db;
mod definer;
mod errors;
mod events;
mod identity;
mod internals;
mod rows;
mod schema;
mod settings;
mod shmem;
mod token;
mod types;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod testing;

::pgrx::pg_module_magic!(name, version);

// Roles, tables, indexes and the composite types the functions return. `bootstrap` puts it
// ahead of every generated CREATE FUNCTION.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);

// Row-level security, grants and pg_dump registration; they name the functions, so they
// run after everything else.
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

// COMMENT ON every object, so that psql's \d+ and \df+ document the extension. 0.2.0 added
// nothing but these, so its upgrade script is also what a fresh install runs for them, once
// every function it comments on exists.
extension_sql_file!(
    "../sql/session_ext--0.1.0--0.2.0.sql",
    name = "comments",
    requires = [
        api::check::is_session_active,
        api::check::get_session,
        api::check::touch_session,
        api::check::validate_session,
        api::cleanup::cleanup_expired_sessions,
        api::create::create_user_session_with_token,
        api::create::create_user_session_with_data,
        api::create::create_user_session_with_id,
        api::data::update_session_data,
        api::devices::list_user_sessions,
        api::devices::count_user_sessions,
        api::revoke::revoke_session,
        api::revoke::revoke_other_sessions,
        api::revoke::revoke_all_user_sessions,
        api::rotate::rotate_session_token,
        api::stats::session_stats,
        identity::current_user_id,
    ]
);

// 0.4.0's token families: a fresh install changes the table as an update does, after the
// comments it changes, so that both end with the same columns in the same order.
extension_sql_file!("../sql/session_ext--0.3.0--0.4.0.sql", name = "families", requires = ["comments"]);

// 0.5.0's sessions carried by JWTs: the new columns, row type fields, privileges and comments,
// once the functions it declares exist (it re-declares them for an update).
extension_sql_file!(
    "../sql/session_ext--0.4.0--0.5.0.sql",
    name = "jwt_sessions",
    requires = [
        "families",
        api::aal::set_session_aal,
        api::create::import_session,
        api::current::current_session,
        api::current::require_session,
        api::users::end_user_sessions,
        identity::current_session_id,
    ]
);

// 0.6.0's cleanup deadline: the new column, its index in place of valid_until's, the fillfactor.
extension_sql_file!(
    "../sql/session_ext--0.5.0--0.6.0.sql",
    name = "hot_activity",
    requires = ["jwt_sessions"]
);

// 0.7.0's CSRF tokens: privileges and comments of its two functions, once they exist.
extension_sql_file!(
    "../sql/session_ext--0.6.0--0.7.0.sql",
    name = "csrf",
    requires = ["hot_activity", api::csrf::session_csrf_token, api::csrf::verify_csrf_token]
);

// 0.8.0's table of pending revocations, and comments that say what the functions now do.
extension_sql_file!(
    "../sql/session_ext--0.7.0--0.8.0.sql",
    name = "pending_revocations",
    requires = ["csrf"]
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: flags PostgreSQL sets before it loads libraries.
    let (preloading, binary_upgrade) =
        unsafe { (pg_sys::process_shared_preload_libraries_in_progress, pg_sys::IsBinaryUpgrade) };
    if preloading {
        settings::register_worker_settings();
    }
    settings::register();
    errors::hide_statements_of_own_reports();
    // pg_upgrade's servers (binary-upgrade mode) only restore the catalogs: no worker may start
    // there and write to a database whose files are being carried over, as pg_cron holds back.
    if preloading && !binary_upgrade {
        worker::register();
    }
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // Preloaded, as in production: settings are then checked when they are set.
        vec!["shared_preload_libraries = 'session_ext'"]
    }
}
