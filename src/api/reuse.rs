//! A detected token reuse outlives the request that found it (SPEC §4 `rotate_session_token`,
//! §8), with no process of its own and no wait.
//!
//! The call that finds an earlier token of an active session queues the session's revocation in
//! shared memory, revokes the session in its own transaction too unless another transaction holds
//! the row, and returns: it waits for nothing. From then on every lookup, in every backend, treats
//! the session as revoked (`lookup::revoked_meanwhile`).
//! The launcher wakes and runs its worker in that database (the worker that also cleans: the
//! extension's processes are the launcher and at most one worker, whatever callers do), which
//! revokes the session in a transaction of its own as the table's owner, with the caller as the
//! events' actor: whatever the presenting transaction does afterwards (commits, rolls back, is
//! cancelled, stays open for an hour) the revocation stands; when the presenting transaction
//! committed its own first, the worker finds nothing left to do. A row another transaction holds
//! (a request writing to the session, a data update left open, the presenting transaction itself)
//! or that the presenting transaction created and has not committed is never waited for: the
//! revocation is parked in `session_ext.pending_revocations`, which lookups honour too, and a
//! later run (every second while any is parked) applies it once the row is free.
//!
//! A server crash loses the revocations still queued: those found in the milliseconds before the
//! worker took them (or while no worker could start); parked ones are in a table. Without
//! session_ext preloaded there is no queue and no worker: the presenting call revokes in its own
//! transaction (waiting for the row as an UPDATE does), which keeps the revocation only if it
//! commits, and a read-only transaction cannot revoke. A hot standby never writes.

use super::family::Member;
use super::{active, lookup, revoke};
use crate::background::{catching, in_transaction};
use crate::db::{Columns, Statement, BOOL, INT8, TEXT, TIMESTAMPTZ, UUID};
use crate::definer;
use crate::errors;
use crate::events::{self, Event, Recorder};
use crate::shmem::{self, Queued, Revocation};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, PgSqlErrorCode, Uuid};
use serde_json::json;

/// An earlier token of `member`'s session was presented: an active session's revocation (reason
/// `token_reuse`, a `token_reuse` and a `revoke` audit row, a notification) is queued for the
/// worker; for a session that already ended, the `token_reuse` event is recorded in the caller's
/// transaction.
pub fn presented_again(client: &SpiClient<'_>, member: &Member) {
    let id = member.subject.id;
    // SAFETY: reads shared recovery state and a backend-global flag.
    let (standby, read_only) = unsafe { (pg_sys::RecoveryInProgress(), pg_sys::XactReadOnly) };
    if !member.active {
        if !read_only {
            events::record(client, Event::TokenReuse, Some(&member.subject), json!({ "active": false }));
        }
        return;
    }
    errors::log(format!("session_ext: an earlier token of session {id} was presented again"));
    if standby {
        return;
    }
    let recorder = Recorder::current();
    match shmem::push_revocation(detected(id, &recorder)) {
        // This transaction revokes it too, unless another one holds the row, so that it sees the
        // session revoked in the row itself: if it commits, the worker finds nothing left to do.
        Queued::Yes => {
            lookup::remember_revoked(id);
            if !read_only {
                revoke::token_reused(client, id, &recorder, true);
            }
        }
        queued => {
            if queued == Queued::Full {
                errors::warn(
                    PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                    "session_ext could not queue the revocation of a session whose token was reused: the queue is full",
                    "The session is revoked in the calling transaction, and stays active if that transaction rolls back.",
                    "The launcher's worker empties the queue; check in session_stats() that the launcher runs and its runs succeed.",
                );
            }
            if !read_only {
                revoke::token_reused(client, id, &recorder, false);
            }
        }
    }
}

/// The revocation of session `id`, found now by the call in progress.
fn detected(id: Uuid, recorder: &Recorder) -> Revocation {
    // SAFETY: backend globals, the clock, and this backend's transaction state.
    let (database, detected_at, detected_by) = unsafe {
        (
            pg_sys::MyDatabaseId.to_u32(),
            pg_sys::GetCurrentTimestamp(),
            pg_sys::GetTopFullTransactionIdIfAny().value,
        )
    };
    let channel = recorder.channel.as_deref().unwrap_or_default();
    let mut revocation = Revocation::new(database, id, &recorder.actor_role, channel);
    revocation.actor_user = recorder.actor_user_id.map(|user| *user.as_bytes());
    revocation.audit = recorder.audit;
    revocation.detected_at = detected_at;
    revocation.detected_by = detected_by;
    revocation
}

impl Revocation {
    /// Who the revocation's events are recorded for, as the presenting call recorded its own.
    fn recorder(&self) -> Recorder {
        let channel = self.channel();
        Recorder {
            actor_role: self.actor_role(),
            actor_user_id: self.actor_user.map(Uuid::from_bytes),
            audit: self.audit,
            channel: (!channel.is_empty()).then_some(channel),
        }
    }
}

/// Most parked revocations one run retries.
const RETRIES_PER_RUN: i64 = 1_000;

static STATE: Statement = Statement::new(
    concat!("SELECT ", active!(), " FROM session_ext.user_sessions s WHERE s.id = $1"),
    &[UUID],
);

static PARK: Statement = Statement::new(
    "INSERT INTO session_ext.pending_revocations
          (id, detected_at, detected_by, actor_role, actor_user_id, audit, notify_channel)
     VALUES ($1, $2, $3::pg_catalog.xid8, $4, $5, $6, $7)
         ON CONFLICT (id) DO NOTHING",
    &[UUID, TIMESTAMPTZ, TEXT, TEXT, UUID, BOOL, TEXT],
);

static PARKED: Statement = Statement::new(
    "SELECT p.id, p.detected_at, p.detected_by::text, p.actor_role, p.actor_user_id, p.audit, p.notify_channel
       FROM session_ext.pending_revocations p ORDER BY p.detected_at LIMIT $1",
    &[INT8],
);

// Another run that retries the same row has it, or it is gone.
static CLAIM: Statement = Statement::new(
    "SELECT FROM session_ext.pending_revocations p WHERE p.id = $1 FOR UPDATE SKIP LOCKED",
    &[UUID],
);

static UNPARK: Statement =
    Statement::new("DELETE FROM session_ext.pending_revocations p WHERE p.id = $1", &[UUID]);

static ANY_PARKED: Statement =
    Statement::new("SELECT EXISTS (SELECT FROM session_ext.pending_revocations)", &[]);

/// What applying a revocation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The session is revoked now.
    Revoked,
    /// Nothing to do: the session ended meanwhile, or never existed for anyone else.
    Moot,
    /// Not yet: another transaction holds the row, or the presenting one, still open, may have
    /// created it.
    Held,
}

/// Revokes the session of `revocation` unless its row is held: never waits for a row lock.
fn apply(client: &SpiClient<'_>, revocation: &Revocation) -> Outcome {
    let id = revocation.session();
    if revoke::token_reused(client, id, &revocation.recorder(), true) {
        return Outcome::Revoked;
    }
    match STATE.one(client, &[id.into()]).map(|row| row.col::<bool>(1)) {
        // Still active, so another transaction held the row.
        Some(Some(true)) => Outcome::Held,
        Some(_) => Outcome::Moot,
        None if presenter_in_progress(revocation.detected_by) => Outcome::Held,
        None => Outcome::Moot,
    }
}

/// Whether the transaction that found the reuse (full transaction id `xid`, 0 for none) is still
/// in progress, as PostgreSQL's own commit-status checks tell.
fn presenter_in_progress(xid: u64) -> bool {
    // SAFETY: asks the procarray about a transaction id; a full id's low 32 bits are the id.
    xid != 0 && unsafe { pg_sys::TransactionIdIsInProgress(pg_sys::TransactionId::from_inner(xid as u32)) }
}

/// Parks `revocation` in the table of pending revocations; false when the objects predate it
/// (before `ALTER EXTENSION ... UPDATE`), when it stays queued instead.
fn park(client: &SpiClient<'_>, revocation: &Revocation) -> bool {
    if crate::cache::pending().is_none() {
        return false;
    }
    let detected_at = TimestampWithTimeZone::try_from(revocation.detected_at)
        .expect("a timestamp from GetCurrentTimestamp");
    let detected_by = (revocation.detected_by != 0).then(|| revocation.detected_by.to_string());
    let recorder = revocation.recorder();
    PARK.count(
        client,
        &[
            revocation.session().into(),
            detected_at.into(),
            detected_by.into(),
            recorder.actor_role.into(),
            recorder.actor_user_id.into(),
            recorder.audit.into(),
            recorder.channel.unwrap_or_default().into(),
        ],
    );
    true
}

/// Applies the revocations queued for `database`, this worker's, each in a transaction of its own
/// as the table's owner, then retries those parked in its table. Run by the worker.
pub fn apply_in_background(database: u32) {
    let queued = shmem::revocations_of(database);
    let mut settled = Vec::with_capacity(queued.len());
    let mut parked = false;
    for revocation in &queued {
        let outcome = in_background(|client| match apply(client, revocation) {
            Outcome::Held => park(client, revocation).then_some(true),
            _ => Some(false),
        });
        match outcome {
            Ok(Some(now_parked)) => {
                parked |= now_parked;
                settled.push(revocation.session());
            }
            Ok(None) => {}
            Err(message) => log!("session_ext could not revoke session {}: {message}", revocation.session()),
        }
    }
    // Lookups find a parked revocation once the generation changed; only then it leaves the queue.
    if parked {
        shmem::parked_rows_changed(database, true);
    }
    shmem::settle_revocations(database, &settled);
    retry_parked(database);
}

/// Retries the revocations parked in this database's table: each applied or moot one leaves it.
fn retry_parked(database: u32) {
    let listed = in_background(|client| {
        if crate::cache::pending().is_none() {
            return Vec::new();
        }
        let mut parked = Vec::new();
        PARKED.each(client, &[RETRIES_PER_RUN.into()], |row| parked.push(parked_row(row, database)));
        parked
    });
    let listed = match listed {
        Ok(listed) if !listed.is_empty() => listed,
        Ok(_) => return,
        Err(message) => return log!("session_ext could not read its pending revocations: {message}"),
    };
    for revocation in &listed {
        let retried = in_background(|client| {
            if CLAIM.one(client, &[revocation.session().into()]).is_some()
                && apply(client, revocation) != Outcome::Held
            {
                UNPARK.count(client, &[revocation.session().into()]);
            }
        });
        if let Err(message) = retried {
            log!("session_ext could not revoke session {}: {message}", revocation.session());
        }
    }
    let empty =
        in_background(|client| ANY_PARKED.one(client, &[]).and_then(|row| row.col::<bool>(1)) == Some(false));
    if empty == Ok(true) {
        shmem::parked_rows_changed(database, false);
    }
}

/// A revocation as its parked row keeps it.
fn parked_row(row: &impl Columns, database: u32) -> Revocation {
    let id: Uuid = row.col(1).expect("id is NOT NULL");
    let actor_role: String = row.col(4).expect("actor_role is NOT NULL");
    let channel: String = row.col(7).unwrap_or_default();
    let mut revocation = Revocation::new(database, id, &actor_role, &channel);
    revocation.detected_at = row.col::<TimestampWithTimeZone>(2).map_or(0, |t| t.into_inner());
    revocation.detected_by = row.col::<String>(3).and_then(|xid| xid.parse().ok()).unwrap_or(0);
    revocation.actor_user = row.col::<Uuid>(5).map(|user| *user.as_bytes());
    revocation.audit = row.col::<bool>(6).unwrap_or(true);
    revocation
}

/// Runs `body` in a transaction of its own, as the table's owner (`definer::in_background`), with
/// SPI connected; an error rolls the transaction back and comes back as its message.
fn in_background<R>(body: impl FnOnce(&SpiClient<'_>) -> R) -> Result<R, String> {
    catching(|| in_transaction(|| definer::in_background(|| Spi::connect(|client| body(client)))))
}
