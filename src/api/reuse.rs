//! A detected token reuse outlives the request that found it (SPEC §4 `rotate_session_token`).
//!
//! PostgreSQL has no autonomous transactions, so the revocation, its audit rows and its
//! notification are committed by a short-lived background worker in a transaction of its own,
//! while the caller waits for it: when the call returns, the session is revoked for every
//! connection, whatever becomes of the caller's transaction, and a crash afterwards loses
//! nothing. The worker is registered on demand, so this needs no preloading, and hands its
//! outcome back through a dynamic shared memory segment, as parallel query's workers do.
//!
//! Where no worker can do it, the revocation is made in the caller's transaction (as before
//! 0.4.0) and is undone if that transaction rolls back: when no worker slot is free (a WARNING
//! says so), when the caller's transaction has itself written or locked the session's row (the
//! worker would wait for the caller, which waits for the worker), or when another transaction
//! holds the row for longer than the worker's `lock_timeout` of 1 s. On a hot standby nothing
//! can be written at all.

use super::family::Member;
use super::revoke;
use crate::background;
use crate::definer;
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, PgSqlErrorCode, Uuid};
use std::ffi::CString;
use std::sync::atomic::{AtomicU8, Ordering};

/// What the caller hands the worker, and the worker's answer, in shared memory.
#[repr(C)]
struct Request {
    database: pg_sys::Oid,
    /// The role that called the API function, recorded as the events' actor.
    role: pg_sys::Oid,
    session: [u8; 16],
    /// The caller's user id from its JWT claims, recorded as the events' actor user.
    actor_user: Option<[u8; 16]>,
    outcome: AtomicU8,
}

const PENDING: u8 = 0;
/// The worker committed: the session is revoked, or was no longer active.
const DONE: u8 = 1;
const FAILED: u8 = 2;

/// Revokes `member`'s session for the reuse of one of its earlier tokens: reason
/// `token_reuse`, a `token_reuse` and a `revoke` audit row, a notification.
pub fn revoke_session(client: &SpiClient<'_>, member: &Member) {
    let id = member.subject.id;
    pgrx::log!("session_ext: an earlier token of session {id} was presented again");
    // SAFETY: reads shared recovery state and a backend-global flag.
    let (standby, read_only) = unsafe { (pg_sys::RecoveryInProgress(), pg_sys::XactReadOnly) };
    if standby {
        return;
    }
    if !member.written_here {
        match detached(id) {
            Ok(()) => return,
            Err(why) => pgrx::log!("session_ext revokes session {id} in the caller's transaction: {why}"),
        }
    }
    if !read_only {
        revoke::token_reused(client, id);
    }
}

/// Has a worker revoke session `id` and commit, and waits for it.
fn detached(id: Uuid) -> Result<(), String> {
    // SAFETY: a segment of the request's size, mapped until it is detached below (or, after an
    // error, at the end of the transaction); the request is written before any worker can see it.
    let (segment, request) = unsafe {
        let segment = pg_sys::dsm_create(size_of::<Request>(), pg_sys::DSM_CREATE_NULL_IF_MAXSEGMENTS as _);
        if segment.is_null() {
            return Err("no dynamic shared memory segment was free".to_string());
        }
        let request = pg_sys::dsm_segment_address(segment).cast::<Request>();
        request.write(Request {
            database: pg_sys::MyDatabaseId,
            role: definer::caller(),
            session: *id.as_bytes(),
            actor_user: crate::identity::actor().1.map(|user| *user.as_bytes()),
            outcome: AtomicU8::new(PENDING),
        });
        (segment, &*request)
    };
    // SAFETY: reads the segment's handle and this process's id.
    let (handle, pid) = unsafe { (pg_sys::dsm_segment_handle(segment), pg_sys::MyProcPid) };
    let started = BackgroundWorkerBuilder::new("session_ext revoke")
        .set_type("session_ext revoke")
        .set_library("session_ext")
        .set_function("session_ext_reuse_worker")
        .set_argument(Some(pg_sys::Datum::from(handle as usize)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(pid)
        .load_dynamic();
    let outcome = match started {
        Ok(worker) => {
            // Interruptible: a cancelled caller leaves the worker to finish on its own.
            let _ = worker.wait_for_shutdown();
            match request.outcome.load(Ordering::Acquire) {
                DONE => Ok(()),
                _ => Err("the revoking worker did not commit (see its log line)".to_string()),
            }
        }
        Err(_) => {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                "session_ext could not start a worker to revoke a session whose token was reused: no background worker slot is free",
                "session_ext reuse detection",
            )
            .set_detail("The session is revoked in the calling transaction, and stays active if that transaction rolls back.")
            .set_hint("Raise max_worker_processes (it takes a restart); parallel queries and other extensions share its slots.")
            .report(PgLogLevel::WARNING);
            Err("no background worker slot was free".to_string())
        }
    };
    // SAFETY: the segment created above; `request` is not used after this.
    unsafe { pg_sys::dsm_detach(segment) };
    outcome
}

/// The worker: revokes the session of its request in a transaction of its own, as the role
/// that called the API function, and reports whether it committed.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn session_ext_reuse_worker(argument: pg_sys::Datum) {
    // SAFETY: the caller's segment; NULL when the caller is gone (nothing to report to, and
    // its transaction's fate decides the revocation).
    let segment = unsafe { pg_sys::dsm_attach(argument.value() as pg_sys::dsm_handle) };
    if segment.is_null() {
        return;
    }
    // SAFETY: the caller wrote the request before registering this worker.
    let request = unsafe { &*pg_sys::dsm_segment_address(segment).cast::<Request>() };
    background::connect(request.database, c"session_ext revoke");
    // Another transaction may hold the row, and the caller waits: a long wait is worse than the
    // caller revoking in its own transaction.
    background::set(c"lock_timeout", c"1s");
    if let Some(user) = request.actor_user {
        let claims = format!("{{\"sub\": \"{}\"}}", Uuid::from_bytes(user));
        background::set(c"request.jwt.claims", &CString::new(claims).expect("no NUL in JSON"));
    }
    let id = Uuid::from_bytes(request.session);
    let committed = background::catching(|| {
        background::in_transaction(|| {
            // SAFETY: as the caller ran: its role decides the actor `definer` records.
            unsafe { pg_sys::SetUserIdAndSecContext(request.role, 0) };
            definer::as_owner(|| Ok(Spi::connect(|client| revoke::token_reused(client, id))))
        })
    });
    let outcome = match committed {
        Ok(_) => DONE,
        Err(message) => {
            log!("session_ext could not revoke session {id} for a token reuse: {message}");
            FAILED
        }
    };
    request.outcome.store(outcome, Ordering::Release);
    // SAFETY: the segment attached above.
    unsafe { pg_sys::dsm_detach(segment) };
}
