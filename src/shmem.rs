//! State shared between the cleanup launcher, its per-database workers and every backend, in
//! shared memory (allocated only when session_ext is preloaded): each served database's
//! progress, for `session_stats()`, and the creations refused by the rate limit, which a worker
//! writes to the audit log because the refused call's own transaction is rolled back.

use crate::settings;
use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_guard, pg_shmem_init, pg_sys, Uuid};
use std::sync::atomic::{AtomicBool, Ordering};

/// Most databases the worker cleans; more in `session_ext.database` are ignored with a warning.
pub const MAX_DATABASES: usize = 16;
const NAME_BYTES: usize = pg_sys::NAMEDATALEN as usize;
const ERROR_BYTES: usize = 256;
/// Refusals waiting for the worker; when full, the oldest is dropped (and counted).
const QUEUE: usize = 128;

/// One served database's progress. Times are PostgreSQL timestamps (microseconds since 2000),
/// 0 = never.
#[derive(Debug, Clone, Copy)]
pub struct WorkerState {
    database: [u8; NAME_BYTES],
    /// The database's OID when the launcher last looked it up; 0 before that, or when missing.
    pub database_oid: u32,
    /// The launcher found no database of this name (it said so once in the log).
    pub missing: bool,
    /// A worker found the extension not installed there (it said so once in the log).
    pub not_installed: bool,
    /// The worker connected to the database now, 0 between runs.
    pub pid: i32,
    pub in_run: bool,
    pub runs: i64,
    pub errors: i64,
    pub last_start: i64,
    pub last_end: i64,
    pub last_deleted: i64,
    pub total_deleted: i64,
    pub last_error_at: i64,
    last_error: [u8; ERROR_BYTES],
}

impl Default for WorkerState {
    fn default() -> Self {
        Self {
            database: [0; NAME_BYTES],
            database_oid: 0,
            missing: false,
            not_installed: false,
            pid: 0,
            in_run: false,
            runs: 0,
            errors: 0,
            last_start: 0,
            last_end: 0,
            last_deleted: 0,
            total_deleted: 0,
            last_error_at: 0,
            last_error: [0; ERROR_BYTES],
        }
    }
}

impl WorkerState {
    pub fn database(&self) -> String {
        from_fixed(&self.database)
    }

    pub fn last_error(&self) -> Option<String> {
        Some(from_fixed(&self.last_error)).filter(|e| !e.is_empty())
    }

    pub fn stopped(&mut self) {
        self.pid = 0;
        self.in_run = false;
    }

    pub fn run_started(&mut self, at: i64) {
        self.in_run = true;
        self.last_start = at;
    }

    pub fn run_succeeded(&mut self, at: i64, deleted: i64) {
        self.finish_run(at);
        self.last_deleted = deleted;
        self.total_deleted += deleted;
    }

    pub fn run_failed(&mut self, at: i64, message: &str) {
        self.finish_run(at);
        self.last_deleted = 0;
        self.errors += 1;
        self.last_error_at = at;
        to_fixed(&mut self.last_error, message);
    }

    fn finish_run(&mut self, at: i64) {
        self.in_run = false;
        self.last_end = at;
        self.runs += 1;
    }
}

/// A creation refused by `max_creates_per_minute`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refusal {
    pub database: u32,
    pub role: u32,
    pub user_id: [u8; 16],
    pub at: i64,
    pub created: i64,
    pub limit: i32,
}

#[derive(Debug, Clone, Copy)]
pub struct Shared {
    pub workers: [WorkerState; MAX_DATABASES],
    pub databases: usize,
    /// The launcher's process, 0 when it is not running.
    pub launcher_pid: i32,
    /// The launcher's latch (an address in shared memory), set to wake it; 0 when it is not
    /// running.
    launcher_latch: usize,
    refusals: [Refusal; QUEUE],
    refusal_count: usize,
    refusal_next: usize,
    pub refusals_dropped: i64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            workers: [WorkerState::default(); MAX_DATABASES],
            databases: 0,
            launcher_pid: 0,
            launcher_latch: 0,
            refusals: [Refusal::default(); QUEUE],
            refusal_count: 0,
            refusal_next: 0,
            refusals_dropped: 0,
        }
    }
}

// SAFETY: plain data without pointers, the same in every process.
unsafe impl PGRXSharedMemory for Shared {}

// SAFETY: the name is unique to session_ext.
static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"session_ext") };

/// Set when the library was loaded by shared_preload_libraries; forked backends inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Whether this process has the shared state (session_ext was preloaded).
fn attached() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// The databases served: those of `session_ext.database`, up to [`MAX_DATABASES`].
pub fn served() -> Vec<String> {
    let mut databases = settings::databases();
    databases.truncate(MAX_DATABASES);
    databases
}

/// Asks for the shared memory; called from _PG_init while preloading. As the server starts,
/// the slots are named after the databases served.
pub fn request() {
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(
        SHARED = {
            let databases = served();
            let mut shared = Shared { databases: databases.len(), ..Default::default() };
            for (slot, name) in shared.workers.iter_mut().zip(&databases) {
                to_fixed(&mut slot.database, name);
            }
            shared
        }
    );
}

/// A copy of the shared state, or `None` when session_ext is not preloaded.
pub fn snapshot() -> Option<Shared> {
    attached().then(|| *SHARED.share())
}

/// Changes database `slot`'s state, returning what `change` returns.
pub fn update_worker<R>(slot: usize, change: impl FnOnce(&mut WorkerState) -> R) -> R {
    change(&mut SHARED.exclusive().workers[slot])
}

/// Records the launcher's process and latch (`pid` 0 and a null latch when it exits).
pub fn set_launcher(pid: i32, latch: *mut pg_sys::Latch) {
    let mut shared = SHARED.exclusive();
    shared.launcher_pid = pid;
    shared.launcher_latch = latch as usize;
}

/// Queues a refusal for a worker in its database and wakes the launcher, which starts one;
/// without shared memory there is no worker, and the caller's log line is the only record.
pub fn push_refusal(refusal: Refusal) {
    if !attached() {
        return;
    }
    let mut shared = SHARED.exclusive();
    if shared.launcher_latch != 0 {
        // SAFETY: the running launcher's latch, in shared memory; setting it only wakes it.
        unsafe { pg_sys::SetLatch(shared.launcher_latch as *mut pg_sys::Latch) };
    }
    let next = shared.refusal_next;
    shared.refusals[next] = refusal;
    shared.refusal_next = (next + 1) % QUEUE;
    if shared.refusal_count == QUEUE {
        shared.refusals_dropped += 1;
    } else {
        shared.refusal_count += 1;
    }
}

/// Whether refusals of `database` are queued.
pub fn has_refusals(database: u32) -> bool {
    let shared = SHARED.share();
    let oldest = (shared.refusal_next + QUEUE - shared.refusal_count) % QUEUE;
    (0..shared.refusal_count).any(|i| shared.refusals[(oldest + i) % QUEUE].database == database)
}

/// Drops the queued refusals of `database`, which no longer exists, counting them as dropped.
pub fn discard_refusals(database: u32) {
    let discarded = take_refusals(database).len() as i64;
    SHARED.exclusive().refusals_dropped += discarded;
}

/// Takes the queued refusals of `database`, oldest first.
pub fn take_refusals(database: u32) -> Vec<Refusal> {
    let mut shared = SHARED.exclusive();
    let count = shared.refusal_count;
    let oldest = (shared.refusal_next + QUEUE - count) % QUEUE;
    let queued: Vec<Refusal> = (0..count).map(|i| shared.refusals[(oldest + i) % QUEUE]).collect();
    let (mine, others): (Vec<Refusal>, Vec<Refusal>) =
        queued.into_iter().partition(|r| r.database == database);
    for (i, refusal) in others.iter().enumerate() {
        shared.refusals[(oldest + i) % QUEUE] = *refusal;
    }
    shared.refusal_count = others.len();
    shared.refusal_next = (oldest + others.len()) % QUEUE;
    mine
}

impl Refusal {
    pub fn user_id(&self) -> Uuid {
        Uuid::from_bytes(self.user_id)
    }
}

fn to_fixed<const N: usize>(buffer: &mut [u8; N], text: &str) {
    *buffer = [0; N];
    // Cut at a character boundary, leaving room for the terminating zero.
    let mut end = text.len().min(N - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    buffer[..end].copy_from_slice(&text.as_bytes()[..end]);
}

fn from_fixed(buffer: &[u8]) -> String {
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod unit_tests {
    use super::{from_fixed, to_fixed};

    #[test]
    fn fixed_buffers_keep_whole_characters() {
        let mut buffer = [0u8; 7];
        to_fixed(&mut buffer, "abcdeé");
        assert_eq!(from_fixed(&buffer), "abcde", "é would need bytes 5 and 6, and 6 is the terminator");
        to_fixed(&mut buffer, "ab");
        assert_eq!(from_fixed(&buffer), "ab");
    }
}
