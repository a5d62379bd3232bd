//! The cleanup worker (SPEC §8), modelled on autovacuum's launcher and pg_cron: one launcher,
//! registered only when session_ext is preloaded and connected to no database, starts a
//! short-lived worker in a database when something is due there: its cleanup (every
//! `session_ext.cleanup_interval`, for the databases of `session_ext.database`), refused
//! creations to audit, or revocations of reused tokens' sessions to apply (`api::reuse`, in any
//! database: at once when queued, every second while some wait for a row another transaction
//! holds). That worker connects to the database, does that work in short transactions as the
//! owner of session_ext's table, then exits. The launcher runs one worker at a time and waits for
//! it, so the extension's processes are the launcher and at most one worker, whatever callers do;
//! neither waits for anything a caller holds. Between runs no process is connected to a
//! database, so it can be dropped, renamed or copied as a template.
//!
//! The launcher reloads settings on SIGHUP; both die promptly on SIGTERM (even while waiting for
//! a lock). An error in a run is logged and counted in `session_stats()`, and the next run comes
//! at the next interval. The postmaster restarts the launcher after a crash. It starts only once
//! recovery has finished, so a hot standby runs none.

use crate::api::{cleanup, reuse};
use crate::background::{self, catching, in_transaction};
use crate::definer;
use crate::events;
use crate::internals;
use crate::settings::{self, CLEANUP_BATCH_SIZE, CLEANUP_INTERVAL};
use crate::shmem::{self, MAX_DATABASES};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgMemoryContexts};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

/// The postmaster waits this long before starting a launcher that exited with an error again.
const RESTART_AFTER: Duration = Duration::from_secs(10);

/// Least time between two worker starts for one database when only refusals are due, so that
/// refusals a worker could not take (its database vanished as it connected, or no worker slot
/// was free) do not start workers in a tight loop; also how often revocations parked behind a
/// held row are retried.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Least time between two worker starts for one database when revocations are queued: a run
/// takes every one queued when it starts.
const REVOCATION_GAP: Duration = Duration::from_millis(50);

/// Registers the launcher; called from _PG_init while preloading. It runs even when
/// `session_ext.database` names no database: revocations of reused tokens need it anywhere.
pub fn register() {
    let named = settings::databases().len();
    if named > MAX_DATABASES {
        warning!("session_ext.database names {named} databases; the cleanup worker serves the first {MAX_DATABASES}");
    }
    shmem::request();
    BackgroundWorkerBuilder::new("session_ext launcher")
        .set_type("session_ext launcher")
        .set_library("session_ext")
        .set_function("session_ext_launcher")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn session_ext_launcher(_argument: pg_sys::Datum) {
    // SAFETY: PostgreSQL's own handlers: SIGHUP marks the configuration for reloading, and SIGTERM
    // makes the next CHECK_FOR_INTERRUPTS (also while waiting for a worker) end the process.
    unsafe {
        internals::set_signal_handler(pg_sys::SIGHUP, internals::SignalHandlerForConfigReload);
        internals::set_signal_handler(pg_sys::SIGTERM, internals::die);
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    // No database, like autovacuum's launcher: it reads only the shared catalog pg_database.
    BackgroundWorker::connect_worker_to_spi(None, None);
    // SAFETY: backend globals of this process, and an exit callback without an argument.
    unsafe {
        shmem::set_launcher(pg_sys::MyProcPid, pg_sys::MyLatch);
        pg_sys::before_shmem_exit(Some(launcher_exit), pg_sys::Datum::from(0usize));
    }
    let mut served: Vec<Served> = shmem::served().into_iter().enumerate().map(Served::new).collect();
    let names: Vec<&str> = served.iter().map(|s| s.name.as_str()).collect();
    log!("session_ext cleanup launcher started for database(s) {}", names.join(", "));
    for database in &served {
        database.look_up();
    }
    let mut others = Others::default();
    // The workers' handles, allocated here and freed after each run: nothing else frees them.
    let mut handles =
        Launched { context: PgMemoryContexts::new("session_ext worker handles"), short_of_slots: false };

    loop {
        // SAFETY: set by the SIGHUP handler; reading the file is what the handler asks for.
        unsafe {
            if pg_sys::ConfigReloadPending != 0 {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
        let interval = Duration::from_secs(CLEANUP_INTERVAL.get() as u64);
        let revocations = Revocations::now();
        let mut ran = false;
        for database in &mut served {
            ran |= database.serve(interval, &revocations, &mut handles);
        }
        let served_oids: Vec<u32> = served.iter().filter_map(Served::oid).collect();
        ran |= others.serve(&served_oids, &revocations, &mut handles);
        // A run's wait resets the latch: look again before sleeping, or a refusal or revocation
        // queued meanwhile would wait for the next timeout.
        if !ran {
            let now = Instant::now();
            let next = served
                .iter()
                .filter_map(|s| s.next_due(interval, &revocations, now))
                .chain(others.next_due(&served_oids, &revocations, now))
                .min();
            let timeout =
                next.map_or(-1, |at| at.saturating_duration_since(Instant::now()).as_millis() as i64);
            wait(timeout);
        }
    }
}

/// The databases with revocations to apply, as the launcher saw them at the top of its loop:
/// queued ones (and whether any is new), and those parked in a table.
struct Revocations {
    queued: Vec<(u32, bool)>,
    parked: Vec<u32>,
}

impl Revocations {
    fn now() -> Self {
        Self { queued: shmem::databases_with_revocations(), parked: shmem::parked_databases() }
    }

    /// When revocations are next due in database `oid`, whose worker last started at
    /// `last_start` (`now` if it never did).
    fn due(&self, oid: u32, last_start: Option<Instant>, now: Instant) -> Option<Instant> {
        let at = |gap: Duration| last_start.map_or(now, |last| last + gap);
        // Those a worker tried and left (it failed) are retried as parked ones are.
        let queued = self.queued.iter().find(|(queued, _)| *queued == oid).map(|(_, new)| match new {
            true => at(REVOCATION_GAP),
            false => at(RETRY_AFTER),
        });
        let parked = self.parked.contains(&oid).then(|| at(RETRY_AFTER));
        queued.into_iter().chain(parked).min()
    }

    fn databases(&self) -> impl Iterator<Item = u32> + '_ {
        self.queued.iter().map(|(oid, _)| *oid).chain(self.parked.iter().copied())
    }
}

/// The workers the launcher starts: their handles' memory, and whether the last start found no
/// free slot (warned once, until one starts again).
struct Launched {
    context: PgMemoryContexts,
    short_of_slots: bool,
}

impl Launched {
    /// Starts a worker for `task`, named after database `name`, and waits until it exits;
    /// returns whether one ran. Without a free slot, it warns (once until a start succeeds).
    fn run(&mut self, task: Task, name: &str) -> bool {
        // SAFETY: the context lives as long as the launcher; the handle is used only below.
        let started = unsafe { self.context.switch_to(|_| task.builder(name).load_dynamic()) };
        let Ok(worker) = started else {
            if !self.short_of_slots {
                ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                    format!("session_ext could not start a worker for database \"{name}\": no background worker slot is free"),
                    "session_ext launcher",
                )
                .set_detail("It tries again when the next run is due; revocations of reused tokens wait, and are honoured, meanwhile.")
                .set_hint("Raise max_worker_processes (it takes a restart); the launcher, each running worker, parallel queries and other extensions share its slots.")
                .report(PgLogLevel::WARNING);
            }
            self.short_of_slots = true;
            return false;
        };
        self.short_of_slots = false;
        // Returns on SIGTERM through CHECK_FOR_INTERRUPTS, which ends the launcher.
        let shutdown = worker.wait_for_shutdown();
        // SAFETY: the handle was consumed by the wait; nothing else lives in the context.
        unsafe { self.context.reset() };
        if let Err(BackgroundWorkerStatus::PostmasterDied) = shutdown {
            // SAFETY: what WL_EXIT_ON_PM_DEATH would do at the next wait.
            unsafe { pg_sys::proc_exit(1) };
        }
        true
    }
}

/// Databases outside `session_ext.database` with revocations to apply, and when the launcher
/// last started a worker in each.
#[derive(Default)]
struct Others {
    last_start: HashMap<u32, Instant>,
}

impl Others {
    /// Runs a worker in each database whose revocations are due; returns whether one ran.
    fn serve(&mut self, served: &[u32], revocations: &Revocations, launched: &mut Launched) -> bool {
        let now = Instant::now();
        let mut ran = false;
        for oid in revocations.databases().filter(|oid| !served.contains(oid)).collect::<Vec<_>>() {
            let last_start = self.last_start.get(&oid).copied();
            if revocations.due(oid, last_start, now).is_none_or(|at| at > now) {
                continue;
            }
            self.last_start.insert(oid, now);
            match database_by_oid(pg_sys::Oid::from(oid)) {
                // Gone: nobody can revoke, nor log in, there.
                None => {
                    shmem::discard_revocations(oid);
                    shmem::parked_rows_changed(oid, false);
                }
                Some((name, true)) => {
                    let task = Task { slot: None, database: pg_sys::Oid::from(oid), clean: false };
                    let started = launched.run(task, &name);
                    if !started {
                        shmem::settle_revocations(oid, &[]);
                    }
                    ran |= started;
                }
                // Closed to connections: tried again later.
                Some((_, false)) => shmem::settle_revocations(oid, &[]),
            }
        }
        self.last_start.retain(|oid, _| revocations.databases().any(|d| d == *oid));
        ran
    }

    fn next_due(&self, served: &[u32], revocations: &Revocations, now: Instant) -> Option<Instant> {
        revocations
            .databases()
            .filter(|oid| !served.contains(oid))
            .filter_map(|oid| revocations.due(oid, self.last_start.get(&oid).copied(), now))
            .min()
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn launcher_exit(_code: i32, _argument: pg_sys::Datum) {
    shmem::set_launcher(0, std::ptr::null_mut());
}

/// The launcher's view of one database of `session_ext.database`.
struct Served {
    /// Its index in shared memory's state.
    slot: usize,
    name: String,
    /// When its last cleanup was due (and run, or skipped because the database is missing).
    last_cleanup: Option<Instant>,
    /// When a worker was last started, or failed to start, for it.
    last_start: Option<Instant>,
}

impl Served {
    fn new((slot, name): (usize, String)) -> Self {
        Self { slot, name, last_cleanup: None, last_start: None }
    }

    /// Its OID, once looked up and while it exists.
    fn oid(&self) -> Option<u32> {
        let oid =
            shmem::snapshot().expect("the launcher runs only when preloaded").workers[self.slot].database_oid;
        (oid != 0).then_some(oid)
    }

    /// The database's OID, or none when it does not exist or does not allow connections
    /// (`ALLOW_CONNECTIONS false`, as before a planned drop): looked up in pg_database, recorded
    /// in shared memory, and its disappearance and return logged once each.
    fn look_up(&self) -> Option<pg_sys::Oid> {
        let name = CString::new(self.name.as_str()).expect("a GUC value has no NUL byte");
        let found = database(&name);
        let oid = found.map_or(pg_sys::InvalidOid, |(oid, _)| oid);
        let servable = matches!(found, Some((_, true)));
        let (was_missing, old_oid) = shmem::update_worker(self.slot, |w| {
            let before = (w.missing, w.database_oid);
            w.missing = !servable;
            w.database_oid = oid.to_u32();
            before
        });
        match (servable, was_missing, found) {
            (false, false, None) => log!(
                "session_ext: database \"{}\" does not exist; its cleanup is skipped until it is created (check session_ext.database)",
                self.name
            ),
            (false, false, Some(_)) => log!(
                "session_ext: database \"{}\" does not allow connections; its cleanup is skipped until it does (check session_ext.database)",
                self.name
            ),
            (true, true, _) => log!("session_ext: database \"{}\" can be cleaned again", self.name),
            _ => {}
        }
        if old_oid != 0 && old_oid != oid.to_u32() {
            // Refusals in a database that is gone: nobody can write them.
            shmem::discard_refusals(old_oid);
        }
        servable.then_some(oid)
    }

    /// When something is next due here (`now` for what is due already): its cleanup, refusals
    /// (not before [`RETRY_AFTER`]), or revocations.
    fn next_due(&self, interval: Duration, revocations: &Revocations, now: Instant) -> Option<Instant> {
        let cleanup = (!interval.is_zero()).then(|| self.last_cleanup.map_or(now, |last| last + interval));
        let oid = self.oid();
        let refusals = oid
            .filter(|oid| shmem::has_refusals(*oid))
            .map(|_| self.last_start.map_or(now, |last| last + RETRY_AFTER));
        let revoking = oid.and_then(|oid| revocations.due(oid, self.last_start, now));
        cleanup.into_iter().chain(refusals).chain(revoking).min()
    }

    /// Runs a worker in this database if something is due, and waits until it exits; returns
    /// whether one ran.
    fn serve(&mut self, interval: Duration, revocations: &Revocations, launched: &mut Launched) -> bool {
        let now = Instant::now();
        let clean = !interval.is_zero() && self.last_cleanup.is_none_or(|last| now >= last + interval);
        if !clean && self.next_due(interval, revocations, now).is_none_or(|at| at > now) {
            return false;
        }
        if clean {
            self.last_cleanup = Some(now);
        }
        let Some(database) = self.look_up() else {
            return false;
        };
        self.last_start = Some(now);
        let started = launched.run(Task { slot: Some(self.slot), database, clean }, &self.name);
        if !started {
            shmem::settle_revocations(database.to_u32(), &[]);
        }
        started
    }
}

/// The OID of database `name` and whether it allows connections, if there is one.
fn database(name: &CStr) -> Option<(pg_sys::Oid, bool)> {
    let (attribute, equal) = (pg_sys::Anum_pg_database_datname, pg_sys::F_NAMEEQ);
    // SAFETY: `name` outlives the scan.
    let key = pg_sys::Datum::from(name.as_ptr());
    find_database(attribute, equal, pg_sys::DatabaseNameIndexId, key).map(|(oid, _, allowed)| (oid, allowed))
}

/// The name of database `oid` and whether it allows connections, if there is one.
fn database_by_oid(oid: pg_sys::Oid) -> Option<(String, bool)> {
    let (attribute, equal) = (pg_sys::Anum_pg_database_oid, pg_sys::F_OIDEQ);
    find_database(attribute, equal, pg_sys::DatabaseOidIndexId, pg_sys::Datum::from(oid))
        .map(|(_, name, allowed)| (name, allowed))
}

/// The database whose `attribute` equals `key` (compared by `equal`, as the catalog's own lookups
/// compare it): its OID, name and whether it allows connections. It scans pg_database's heap, as
/// autovacuum's launcher does: a process connected to no database cannot open the shared
/// catalogs' indexes (`get_database_oid` fails there with "cannot read pg_class without having
/// selected a database").
fn find_database(
    attribute: u32,
    equal: u32,
    index: u32,
    key: pg_sys::Datum,
) -> Option<(pg_sys::Oid, String, bool)> {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: a catalog scan in a transaction of its own, with a key of the attribute's type.
    in_transaction(|| unsafe {
        let catalog = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let mut scan_key = pg_sys::ScanKeyData::default();
        let strategy = pg_sys::BTEqualStrategyNumber as _;
        pg_sys::ScanKeyInit(&mut scan_key, attribute as _, strategy, pg_sys::Oid::from(equal), key);
        let index = pg_sys::Oid::from(index);
        let scan = pg_sys::systable_beginscan(catalog, index, false, std::ptr::null_mut(), 1, &mut scan_key);
        let tuple = pg_sys::systable_getnext(scan);
        let found = (!tuple.is_null()).then(|| {
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            let name = CStr::from_ptr(form.datname.data.as_ptr()).to_string_lossy().into_owned();
            (form.oid, name, form.datallowconn)
        });
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(catalog, lock);
        found
    })
}

/// What the launcher asks of one worker, passed to it as its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Task {
    /// The database's index in shared memory's state, for a database of `session_ext.database`.
    slot: Option<usize>,
    database: pg_sys::Oid,
    /// Run the cleanup, not only write the refusals and apply the revocations.
    clean: bool,
}

/// The slot number of a task without one.
const NO_SLOT: usize = (1 << 31) - 1;

impl Task {
    /// The OID in the high 32 bits, the slot in bits 1 to 31, `clean` in bit 0.
    fn into_datum(self) -> pg_sys::Datum {
        let slot = self.slot.unwrap_or(NO_SLOT);
        let packed = (self.database.to_u32() as usize) << 32 | slot << 1 | usize::from(self.clean);
        pg_sys::Datum::from(packed)
    }

    fn from_datum(datum: pg_sys::Datum) -> Self {
        let packed = datum.value();
        let slot = (packed & 0xFFFF_FFFF) >> 1;
        Task {
            slot: (slot != NO_SLOT).then_some(slot),
            database: pg_sys::Oid::from((packed >> 32) as u32),
            clean: packed & 1 == 1,
        }
    }

    /// A dynamic worker for this task, which the launcher (this process) waits for.
    fn builder(self, name: &str) -> BackgroundWorkerBuilder {
        BackgroundWorkerBuilder::new(&format!("session_ext cleanup {name}"))
            .set_type("session_ext cleanup")
            .set_library("session_ext")
            .set_function("session_ext_cleanup_worker")
            .set_argument(Some(self.into_datum()))
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(None)
            // SAFETY: reads a backend global.
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
    }
}

/// One run in one database, started by the launcher: writes the queued refusals, applies the
/// revocations, cleans when asked to, and exits.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn session_ext_cleanup_worker(argument: pg_sys::Datum) {
    let task = Task::from_datum(argument);
    background::connect(task.database, c"session_ext cleanup");
    let database = match task.slot {
        Some(slot) => {
            // SAFETY: backend globals, and an exit callback taking a plain integer.
            unsafe {
                let pid = pg_sys::MyProcPid;
                shmem::update_worker(slot, |w| w.pid = pid);
                pg_sys::before_shmem_exit(Some(worker_exit), pg_sys::Datum::from(slot));
            }
            shmem::snapshot().expect("workers run only when preloaded").workers[slot].database()
        }
        None => task.database.to_u32().to_string(),
    };
    let worker = Worker { slot: task.slot, database };
    if !worker.installed() {
        // Revocations of a database whose extension was dropped since: nothing left to revoke.
        shmem::discard_revocations(task.database.to_u32());
        return;
    }
    // Refusals are audited where the worker cleans (their queue keeps the others' until it drops them).
    if task.slot.is_some() {
        worker.write_refusals(task.database);
    }
    reuse::apply_in_background(task.database.to_u32());
    if task.clean {
        worker.run();
        // Those queued while it cleaned.
        reuse::apply_in_background(task.database.to_u32());
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

/// A worker connected to one database: of `session_ext.database` (its `slot`), or one where only
/// revocations are due.
struct Worker {
    slot: Option<usize>,
    database: String,
}

impl Worker {
    /// Whether session_ext is installed here; a served database without it is reported once (in
    /// shared memory: each run is a new process).
    fn installed(&self) -> bool {
        let installed = in_transaction(|| {
            Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'session_ext')",
            )
            .ok()
            .flatten()
                == Some(true)
        });
        if let Some(slot) = self.slot {
            let reported =
                shmem::update_worker(slot, |w| std::mem::replace(&mut w.not_installed, !installed));
            if !installed && !reported {
                log!(
                    "session_ext is not installed in database \"{}\"; its cleanup worker waits for CREATE EXTENSION session_ext",
                    self.database
                );
            }
        }
        installed
    }

    /// One cleanup run. An error ends the run, not the launcher: the transaction is rolled back,
    /// the error logged and counted, and the next interval brings the next run.
    fn run(&self) {
        let Some(slot) = self.slot else { return };
        let started = now();
        shmem::update_worker(slot, |w| w.run_started(started));
        report_activity(pg_sys::BackendState::STATE_RUNNING, Some(c"session_ext cleanup"));
        let batch = CLEANUP_BATCH_SIZE.get();
        let deleted = catching(|| {
            cleanup::run_passes(batch, |pass, cursor| {
                in_transaction(|| {
                    definer::in_background(|| Spi::connect(|client| pass.run_batch(client, batch, cursor)))
                })
            })
        });
        match deleted {
            Ok(deleted) => shmem::update_worker(slot, |w| w.run_succeeded(now(), deleted)),
            Err(message) => {
                log!("session_ext cleanup of database \"{}\" failed: {message}", self.database);
                shmem::update_worker(slot, |w| w.run_failed(now(), &message));
            }
        }
        report_activity(pg_sys::BackendState::STATE_IDLE, None);
    }

    /// Writes the audit rows of creations refused in this database (OID `database`) since the
    /// last time.
    fn write_refusals(&self, database: pg_sys::Oid) {
        let refusals = shmem::take_refusals(database.to_u32());
        if refusals.is_empty() || !settings::AUDIT.get() {
            return;
        }
        let written = catching(|| {
            in_transaction(|| {
                definer::in_background(|| {
                    Spi::connect(|client| refusals.iter().for_each(|r| events::record_refusal(client, r)))
                })
            })
        });
        if let Err(message) = written {
            log!("session_ext could not record {} refused creations: {message}", refusals.len());
        }
    }
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// What pg_stat_activity shows for the worker.
fn report_activity(state: pg_sys::BackendState::Type, query: Option<&CStr>) {
    // SAFETY: a static string or none.
    unsafe { pg_sys::pgstat_report_activity(state, query.map_or(std::ptr::null(), |q| q.as_ptr())) };
}

#[cfg(test)]
mod unit_tests {
    use super::Task;
    use pgrx::pg_sys::Oid;

    #[test]
    fn a_task_survives_its_datum() {
        for task in [
            Task { slot: Some(0), database: Oid::from(5), clean: true },
            Task { slot: Some(15), database: Oid::from(u32::MAX), clean: false },
            Task { slot: None, database: Oid::from(16_384), clean: false },
        ] {
            assert_eq!(Task::from_datum(task.into_datum()), task);
        }
    }
}
