//! The cleanup worker (SPEC §8): one background worker per database in
//! `session_ext.database`, registered only when session_ext is preloaded.
//!
//! Every `session_ext.cleanup_interval` it deletes what expired in short transactions of
//! `session_ext.cleanup_batch_size` rows, and writes the audit rows of refused creations. It
//! reloads settings on SIGHUP, dies promptly on SIGTERM (even while waiting for a lock), survives
//! an error in a run (logged, counted in `session_stats()`), and is restarted by the postmaster
//! after a crash. It starts only once recovery has finished, so a hot standby runs none.

use crate::api::cleanup;
use crate::events;
use crate::internals;
use crate::settings::{self, CLEANUP_BATCH_SIZE, CLEANUP_INTERVAL};
use crate::shmem::{self, MAX_DATABASES};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgTryBuilder};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// The postmaster waits this long before starting a worker that exited with an error again.
const RESTART_AFTER: Duration = Duration::from_secs(10);

/// Registers the workers; called from _PG_init while preloading.
pub fn register() {
    let named = settings::databases().len();
    if named > MAX_DATABASES {
        warning!("session_ext.database names {named} databases; the cleanup worker serves the first {MAX_DATABASES}");
    }
    shmem::request();
    for (slot, database) in shmem::served().iter().enumerate() {
        BackgroundWorkerBuilder::new(&format!("session_ext cleanup {database}"))
            .set_type("session_ext cleanup")
            .set_library("session_ext")
            .set_function("session_ext_cleanup_worker")
            .set_argument((slot as i32).into_datum())
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(RESTART_AFTER))
            .load();
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn session_ext_cleanup_worker(argument: pg_sys::Datum) {
    let slot = argument.value();
    // SAFETY: PostgreSQL's own handlers: SIGHUP marks the configuration for reloading, and SIGTERM
    // makes the next CHECK_FOR_INTERRUPTS (also inside lock waits) end the process.
    unsafe {
        internals::set_signal_handler(pg_sys::SIGHUP, internals::SignalHandlerForConfigReload);
        internals::set_signal_handler(pg_sys::SIGTERM, internals::die);
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let database = shmem::snapshot().expect("workers run only when preloaded").workers[slot].database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // SAFETY: backend globals of this process, and an exit callback taking a plain integer.
    unsafe {
        let latch = pg_sys::MyLatch as usize;
        let (pid, oid) = (pg_sys::MyProcPid, pg_sys::MyDatabaseId.to_u32());
        shmem::update_worker(slot, |w| w.started(pid, oid, latch));
        pg_sys::before_shmem_exit(Some(worker_exit), pg_sys::Datum::from(slot));
    }
    log!("session_ext cleanup worker started for database \"{database}\"");

    let mut worker = Worker { slot, database, last_run: None, reported_missing: false };
    loop {
        // SAFETY: set by the SIGHUP handler; reading the file is what the handler asks for.
        unsafe {
            if pg_sys::ConfigReloadPending != 0 {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
        let interval = Duration::from_secs(CLEANUP_INTERVAL.get() as u64);
        let due = worker.last_run.map(|last| last + interval);
        if !interval.is_zero() && due.is_none_or(|due| Instant::now() >= due) {
            worker.last_run = Some(Instant::now());
            worker.run();
        }
        worker.write_refusals();
        let timeout = match (interval.is_zero(), worker.last_run) {
            (true, _) | (_, None) => -1,
            (false, Some(last)) => {
                (last + interval).saturating_duration_since(Instant::now()).as_millis() as i64
            }
        };
        wait(timeout);
    }
}

/// Sleeps until the latch is set or `timeout_ms` passes (-1: no timeout); exits with the
/// postmaster, and on SIGTERM.
fn wait(timeout_ms: i64) {
    let events = pg_sys::WL_LATCH_SET
        | pg_sys::WL_EXIT_ON_PM_DEATH
        | if timeout_ms >= 0 { pg_sys::WL_TIMEOUT } else { 0 };
    // SAFETY: this process's latch, waited on as PostgreSQL's own workers do.
    unsafe {
        pg_sys::WaitLatch(pg_sys::MyLatch, events as i32, timeout_ms.max(0) as _, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    check_for_interrupts!();
}

#[pg_guard]
unsafe extern "C-unwind" fn worker_exit(_code: i32, slot: pg_sys::Datum) {
    shmem::update_worker(slot.value(), |w| w.stopped());
}

struct Worker {
    slot: usize,
    database: String,
    last_run: Option<Instant>,
    /// A database without the extension is reported once, not at every interval.
    reported_missing: bool,
}

impl Worker {
    /// One cleanup run. An error ends the run, not the worker: the transaction is rolled back,
    /// the error logged and counted, and the next interval brings the next run.
    fn run(&mut self) {
        // SAFETY: reads the shared recovery state.
        if unsafe { pg_sys::RecoveryInProgress() } {
            return;
        }
        let started = now();
        shmem::update_worker(self.slot, |w| w.run_started(started));
        report_activity(pg_sys::BackendState::STATE_RUNNING, Some(c"session_ext cleanup"));
        match catching(|| self.delete_expired()) {
            Ok(deleted) => shmem::update_worker(self.slot, |w| w.run_succeeded(now(), deleted)),
            Err(message) => {
                log!("session_ext cleanup of database \"{}\" failed: {message}", self.database);
                shmem::update_worker(self.slot, |w| w.run_failed(now(), &message));
            }
        }
        report_activity(pg_sys::BackendState::STATE_IDLE, None);
    }

    fn delete_expired(&mut self) -> i64 {
        let installed = in_transaction(|| {
            Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'session_ext')",
            )
            .ok()
            .flatten()
                == Some(true)
        });
        if !installed {
            if !self.reported_missing {
                log!(
                    "session_ext is not installed in database \"{}\"; its cleanup worker waits for CREATE EXTENSION session_ext",
                    self.database
                );
                self.reported_missing = true;
            }
            return 0;
        }
        self.reported_missing = false;
        let batch = CLEANUP_BATCH_SIZE.get();
        cleanup::run_passes(batch, |pass, cursor| {
            in_transaction(|| Spi::connect(|client| pass.run_batch(client, batch, cursor)))
        })
    }

    /// Writes the audit rows of creations refused in this database since the last time.
    fn write_refusals(&self) {
        // SAFETY: reads a backend global set by the connection.
        let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
        let refusals = shmem::take_refusals(database);
        if refusals.is_empty() || !settings::AUDIT.get() {
            return;
        }
        let written = catching(|| {
            in_transaction(|| {
                Spi::connect(|client| refusals.iter().for_each(|r| events::record_refusal(client, r)))
            })
        });
        if let Err(message) = written {
            log!("session_ext could not record {} refused creations: {message}", refusals.len());
        }
    }
}

/// Runs `body`; an error it raises ends its transaction, as PostgreSQL's own error recovery
/// would, and comes back as "message (SQLSTATE)".
fn catching<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    PgTryBuilder::new(AssertUnwindSafe(|| Ok(body())))
        .catch_others(|error| {
            // SAFETY: the failed transaction is rolled back; nothing of it is used afterwards.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Err(error_message(&error))
        })
        .execute()
}

/// Runs `body` in a transaction of its own, committed when it returns.
fn in_transaction<R>(body: impl FnOnce() -> R) -> R {
    // SAFETY: a worker connected to its database, between transactions.
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

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// What pg_stat_activity shows for the worker.
fn report_activity(state: pg_sys::BackendState::Type, query: Option<&std::ffi::CStr>) {
    // SAFETY: a static string or none.
    unsafe { pg_sys::pgstat_report_activity(state, query.map_or(std::ptr::null(), |q| q.as_ptr())) };
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
