//! State shared between the cleanup workers and every backend, in shared memory (allocated only
//! when session_ext is preloaded): each worker's progress, for `session_stats()`, and the
//! creations refused by the rate limit, which the worker writes to the audit log because the
//! refused call's own transaction is rolled back.

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

/// One worker's progress. Times are PostgreSQL timestamps (microseconds since 2000), 0 = never.
#[derive(Debug, Clone, Copy)]
pub struct WorkerState {
    database: [u8; NAME_BYTES],
    database_oid: u32,
    /// The worker's latch (an address in shared memory), set to wake it; 0 when it is not running.
    latch: usize,
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
            latch: 0,
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

    pub fn started(&mut self, pid: i32, database_oid: u32, latch: usize) {
        self.pid = pid;
        self.database_oid = database_oid;
        self.latch = latch;
    }

    pub fn stopped(&mut self) {
        self.pid = 0;
        self.latch = 0;
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
/// the workers' slots are named after the databases they serve.
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

/// Changes worker `slot`'s state.
pub fn update_worker(slot: usize, change: impl FnOnce(&mut WorkerState)) {
    change(&mut SHARED.exclusive().workers[slot]);
}

/// Queues a refusal for the worker of its database and wakes that worker; without shared
/// memory there is no worker, and the caller's log line is the only record.
pub fn push_refusal(refusal: Refusal) {
    if !attached() {
        return;
    }
    let mut shared = SHARED.exclusive();
    let latch =
        shared.workers.iter().find(|w| w.database_oid == refusal.database && w.latch != 0).map(|w| w.latch);
    if let Some(latch) = latch {
        // SAFETY: a running worker's latch, in shared memory; setting it only wakes the worker.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
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
