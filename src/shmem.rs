//! State shared between the cleanup launcher, its per-database workers and every backend, in
//! shared memory (allocated only when session_ext is preloaded): each served database's
//! progress, for `session_stats()`; the creations refused by the rate limit, which a worker
//! writes to the audit log because the refused call's own transaction is rolled back; and the
//! revocations of sessions whose earlier token came back (SPEC §8), which a worker applies
//! whatever becomes of the transaction that found them, and which every lookup honours meanwhile.

use crate::settings;
use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_guard, pg_shmem_init, pg_sys, PgAtomic, Uuid};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Most databases the worker cleans; more in `session_ext.database` are ignored with a warning.
pub const MAX_DATABASES: usize = 16;
const NAME_BYTES: usize = pg_sys::NAMEDATALEN as usize;
const ERROR_BYTES: usize = 256;
/// Refusals waiting for the worker; when full, the oldest is dropped (and counted).
const QUEUE: usize = 128;
/// Revocations waiting for a worker. A worker takes them within milliseconds and parks those it
/// cannot apply yet in a table, so this fills only while no worker can run.
pub const REVOCATIONS: usize = 512;
/// Databases whose table of pending revocations the launcher retries.
const PARKED: usize = 64;

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

/// The revocation of a session whose earlier token was presented again (SPEC §4 "reuse
/// detection"), as the presenting call found it. Names are NUL-padded bytes.
#[derive(Debug, Clone, Copy)]
pub struct Revocation {
    pub database: u32,
    pub session: [u8; 16],
    /// The role that called the API function, and its JWT user: the actor of the events.
    pub actor_role: [u8; NAME_BYTES],
    pub actor_user: Option<[u8; 16]>,
    /// The caller's `session_ext.audit` and `session_ext.notify_channel`.
    pub audit: bool,
    pub channel: [u8; NAME_BYTES],
    /// When the reuse was found (a PostgreSQL timestamp).
    pub detected_at: i64,
    /// The presenting transaction (a full transaction id), 0 when it had none: a session it
    /// created is not visible until it ends.
    pub detected_by: u64,
    /// A worker tried it and left it queued (it found no table to park it in, or failed).
    pub tried: bool,
}

impl Default for Revocation {
    fn default() -> Self {
        Self {
            database: 0,
            session: [0; 16],
            actor_role: [0; NAME_BYTES],
            actor_user: None,
            audit: false,
            channel: [0; NAME_BYTES],
            detected_at: 0,
            detected_by: 0,
            tried: false,
        }
    }
}

impl Revocation {
    pub fn new(database: u32, session: Uuid, actor_role: &str, channel: &str) -> Self {
        let mut revocation = Revocation { database, session: *session.as_bytes(), ..Default::default() };
        to_fixed(&mut revocation.actor_role, actor_role);
        to_fixed(&mut revocation.channel, channel);
        revocation
    }

    pub fn session(&self) -> Uuid {
        Uuid::from_bytes(self.session)
    }

    pub fn actor_role(&self) -> String {
        from_fixed(&self.actor_role)
    }

    pub fn channel(&self) -> String {
        from_fixed(&self.channel)
    }
}

/// What became of a revocation offered to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued (or queued already): a worker applies it.
    Yes,
    /// The queue is full: no worker has run for a while.
    Full,
    /// session_ext is not preloaded: there is no queue and no worker.
    NotPreloaded,
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
    /// Queued revocations, unordered, in the first `revocation_count` entries.
    revocations: [Revocation; REVOCATIONS],
    revocation_count: usize,
    /// Databases with revocations parked in their table, in the first `parked_count` entries.
    parked: [u32; PARKED],
    parked_count: usize,
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
            revocations: [Revocation::default(); REVOCATIONS],
            revocation_count: 0,
            parked: [0; PARKED],
            parked_count: 0,
        }
    }
}

// SAFETY: plain data without pointers, the same in every process.
unsafe impl PGRXSharedMemory for Shared {}

// SAFETY: the name is unique to session_ext.
static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"session_ext") };

/// What the hot path reads without a lock.
#[derive(Debug, Default)]
pub struct Counters {
    /// How many revocations are queued: while 0, no lookup takes the lock.
    revocations: AtomicU32,
    /// Changes whenever a table of pending revocations may have gained its first row or lost its
    /// last, so that a backend knows when to look at that table again.
    pending_generation: AtomicU64,
}

// SAFETY: atomics only, the same in every process.
unsafe impl PGRXSharedMemory for Counters {}

// SAFETY: the name is unique to session_ext.
static COUNTERS: PgAtomic<Counters> = unsafe { PgAtomic::new(c"session_ext counters") };

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
    pg_shmem_init!(COUNTERS);
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

/// Wakes the launcher, if it runs.
fn wake_launcher(shared: &Shared) {
    if shared.launcher_latch != 0 {
        // SAFETY: the running launcher's latch, in shared memory; setting it only wakes it.
        unsafe { pg_sys::SetLatch(shared.launcher_latch as *mut pg_sys::Latch) };
    }
}

/// Queues `revocation` for a worker in its database and wakes the launcher; a revocation of the
/// same session queued already stands for it.
pub fn push_revocation(revocation: Revocation) -> Queued {
    if !attached() {
        return Queued::NotPreloaded;
    }
    let mut shared = SHARED.exclusive();
    wake_launcher(&shared);
    let count = shared.revocation_count;
    let same = |r: &Revocation| r.database == revocation.database && r.session == revocation.session;
    if shared.revocations[..count].iter().any(same) {
        return Queued::Yes;
    }
    if count == REVOCATIONS {
        return Queued::Full;
    }
    shared.revocations[count] = revocation;
    shared.revocation_count = count + 1;
    COUNTERS.get().revocations.store((count + 1) as u32, Ordering::Release);
    Queued::Yes
}

/// Whether a revocation of `session` in `database` waits in the queue. Without one queued
/// anywhere (nearly always), one atomic read.
pub fn revocation_queued(database: u32, session: Uuid) -> bool {
    if !attached() || COUNTERS.get().revocations.load(Ordering::Acquire) == 0 {
        return false;
    }
    let shared = SHARED.share();
    shared.revocations[..shared.revocation_count]
        .iter()
        .any(|r| r.database == database && r.session == *session.as_bytes())
}

/// The revocations queued for `database` (they stay queued until [`settle_revocations`]).
pub fn revocations_of(database: u32) -> Vec<Revocation> {
    let shared = SHARED.share();
    shared.revocations[..shared.revocation_count].iter().filter(|r| r.database == database).copied().collect()
}

/// The databases revocations are queued for, each with whether one of them is new (no worker
/// tried it yet).
pub fn databases_with_revocations() -> Vec<(u32, bool)> {
    let shared = SHARED.share();
    let mut databases: Vec<(u32, bool)> = Vec::new();
    for revocation in &shared.revocations[..shared.revocation_count] {
        match databases.iter_mut().find(|(database, _)| *database == revocation.database) {
            Some((_, new)) => *new |= !revocation.tried,
            None => databases.push((revocation.database, !revocation.tried)),
        }
    }
    databases
}

/// How many revocations are queued, in every database.
pub fn revocations_queued() -> u32 {
    if attached() {
        COUNTERS.get().revocations.load(Ordering::Acquire)
    } else {
        0
    }
}

/// Settles a run in `database`: the revocations of `sessions` leave the queue (applied, parked,
/// or moot), and the others of that database stay, marked as tried (a worker that failed, or none
/// could start), so that the launcher retries them after a pause instead of at once.
pub fn settle_revocations(database: u32, sessions: &[Uuid]) {
    retain_revocations(|r| !(r.database == database && sessions.contains(&r.session())));
    let mut shared = SHARED.exclusive();
    let count = shared.revocation_count;
    shared.revocations[..count].iter_mut().filter(|r| r.database == database).for_each(|r| r.tried = true);
}

/// Drops every queued revocation of `database`, which no longer exists.
pub fn discard_revocations(database: u32) {
    retain_revocations(|r| r.database != database);
}

fn retain_revocations(keep: impl Fn(&Revocation) -> bool) {
    let mut shared = SHARED.exclusive();
    let kept: Vec<Revocation> =
        shared.revocations[..shared.revocation_count].iter().copied().filter(keep).collect();
    shared.revocations[..kept.len()].copy_from_slice(&kept);
    shared.revocation_count = kept.len();
    COUNTERS.get().revocations.store(kept.len() as u32, Ordering::Release);
}

/// The generation of the tables of pending revocations (see [`Counters`]); None when not
/// preloaded.
pub fn pending_generation() -> Option<u64> {
    attached().then(|| COUNTERS.get().pending_generation.load(Ordering::Acquire))
}

/// Records, from the worker that wrote it, that `database`'s table of pending revocations now has
/// rows (`parked`) or none: the launcher retries the database, or stops, and every backend looks
/// at the table again.
pub fn parked_rows_changed(database: u32, parked: bool) {
    if !attached() {
        return;
    }
    list_parked(database, parked);
    COUNTERS.get().pending_generation.fetch_add(1, Ordering::AcqRel);
}

/// Records, from a backend that found rows in `database`'s table of pending revocations (left
/// from before the server started), that the launcher is to retry them.
pub fn parked_rows_found(database: u32) {
    if attached() {
        list_parked(database, true);
    }
}

fn list_parked(database: u32, parked: bool) {
    let mut shared = SHARED.exclusive();
    let count = shared.parked_count;
    match (parked, shared.parked[..count].iter().position(|d| *d == database)) {
        (true, None) if count < PARKED => {
            shared.parked[count] = database;
            shared.parked_count = count + 1;
            wake_launcher(&shared);
        }
        (false, Some(at)) => {
            shared.parked[at] = shared.parked[count - 1];
            shared.parked_count = count - 1;
        }
        _ => {}
    }
}

/// The databases whose table of pending revocations the launcher retries.
pub fn parked_databases() -> Vec<u32> {
    let shared = SHARED.share();
    shared.parked[..shared.parked_count].to_vec()
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
    wake_launcher(&shared);
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
