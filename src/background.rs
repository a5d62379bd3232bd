//! What session_ext's background processes share: connecting to one database as PostgreSQL's
//! own workers do, and running work in transactions of their own. The launcher and its
//! per-database worker (`worker`) use it, and `api::reuse` for the revocations that worker applies.

use crate::internals;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::{pg_sys, PgTryBuilder};
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;

/// Connects this worker to database `database` (by OID: a database renamed meanwhile is still
/// the right one) as the bootstrap superuser, named `application_name` in pg_stat_activity. Its
/// work on session_ext's tables runs as their owner (`definer::in_background`).
/// SIGTERM ends it at the next `CHECK_FOR_INTERRUPTS`, also inside lock waits; SIGHUP stays
/// ignored (a short run reads the configuration as it starts).
pub fn connect(database: pg_sys::Oid, application_name: &CStr) {
    // SAFETY: PostgreSQL's own handler, installed before signals are unblocked.
    unsafe {
        internals::set_signal_handler(pg_sys::SIGTERM, internals::die);
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    // It runs SQL as the bootstrap superuser: a database's `ALTER DATABASE ... SET search_path`
    // must not redirect its statements.
    set(c"search_path", c"pg_catalog, pg_temp");
    set(c"application_name", application_name);
}

/// Sets a setting of this process for its whole life, as only the server's own configuration
/// could.
pub fn set(name: &CStr, value: &CStr) {
    // SAFETY: settings of this process, set between transactions, from NUL-terminated strings.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// Runs `body`; an error it raises ends its transaction, as PostgreSQL's own error recovery
/// would, and comes back as "message (SQLSTATE)".
pub fn catching<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    PgTryBuilder::new(AssertUnwindSafe(|| Ok(body())))
        .catch_others(|error| {
            // SAFETY: the failed transaction is rolled back; nothing of it is used afterwards.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(error_message(&error))
        })
        .execute()
}

/// Runs `body` in a transaction of its own, committed when it returns.
pub fn in_transaction<R>(body: impl FnOnce() -> R) -> R {
    // SAFETY: a background worker with a connection (the launcher's to no database), between
    // transactions.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = body();
    // SAFETY: the transaction and snapshot started above.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    result
}

/// "message (SQLSTATE)" of a caught error.
fn error_message(error: &CaughtError) -> String {
    let report = match error {
        CaughtError::PostgresError(report)
        | CaughtError::ErrorReport(report)
        | CaughtError::RustPanic { ereport: report, .. } => report,
    };
    // A SQLSTATE is packed six bits per character.
    let packed = report.sql_error_code() as i32;
    let sqlstate: String = (0..5).map(|i| char::from(((packed >> (6 * i)) & 0x3F) as u8 + b'0')).collect();
    format!("{} ({sqlstate})", report.message())
}
