//! A detected token reuse outlives the request that found it (SPEC §4 `rotate_session_token`).
//!
//! PostgreSQL has no autonomous transactions, so the revocation, its audit rows and its
//! notification are committed by a short-lived background worker in a transaction of its own,
//! while the caller waits for it: when the call returns, the session is revoked for every
//! connection, whatever becomes of the caller's transaction, and a crash afterwards loses
//! nothing. The worker is registered on demand, so this needs no preloading. Its request travels
//! in its registration (so it acts even if the caller is cancelled before it starts); its answer
//! comes back through a dynamic shared memory segment, as parallel query's workers answer.
//!
//! When the caller cannot wait for it — its own transaction has written or locked the session's
//! row, so the worker would wait for the caller that waits for it; the row stayed locked by
//! another transaction past the worker's 1 s `lock_timeout` — the caller revokes in its own
//! transaction, and a second worker, which the caller does not wait for, waits for the end of that
//! transaction (up to 10 minutes, before it takes any lock) and revokes again if it rolled back.
//! Only without a free worker slot (a WARNING says so) does the revocation live or die with the
//! caller's transaction. A hot standby writes nothing.

use super::family::Member;
use super::revoke;
use crate::background;
use crate::definer;
use crate::events::{self, Event};
use crate::settings;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, PgSqlErrorCode, Uuid};
use serde_json::json;
use std::ffi::CString;
use std::sync::atomic::{AtomicU8, Ordering};

/// An earlier token of `member`'s session was presented: an active session is revoked (reason
/// `token_reuse`, a `token_reuse` and a `revoke` audit row, a notification); for a session that
/// already ended, the `token_reuse` event is recorded in the caller's transaction.
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
    pgrx::log!("session_ext: an earlier token of session {id} was presented again");
    if standby {
        return;
    }
    let request = Request::of(id);
    if !member.written_here {
        match request.run_and_wait() {
            Ok(()) => return,
            Err(Failure::NoSlot) => {
                warn_no_slot();
                if !read_only {
                    revoke::token_reused(client, id);
                }
                return;
            }
            Err(Failure::NotCommitted) => {}
        }
    }
    if !read_only {
        revoke::token_reused(client, id);
    }
    // If this transaction rolls back, the revocation it made goes with it: a worker waits for
    // the transaction's end and makes it again. (Revoking, or having written the row, gave the
    // transaction an id.)
    // SAFETY: reads this backend's transaction state.
    let caller = unsafe { pg_sys::GetTopTransactionIdIfAny() };
    if caller != pg_sys::InvalidTransactionId
        && (Request { after_caller: caller, ..request }).start(None).is_err()
    {
        warn_no_slot();
    }
}

fn warn_no_slot() {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        "session_ext could not start a worker to revoke a session whose token was reused: no background worker slot is free",
        "session_ext reuse detection",
    )
    .set_detail("The session is revoked in the calling transaction, and stays active if that transaction rolls back.")
    .set_hint("Raise max_worker_processes (it takes a restart); parallel queries and other extensions share its slots.")
    .report(PgLogLevel::WARNING);
}

/// Why a worker did not revoke for the caller.
enum Failure {
    NoSlot,
    NotCommitted,
}

/// What the worker is asked to do. The two OIDs travel in its argument, the rest in its
/// `bgw_extra` (at most 127 bytes): the session and actor ids in base64, flags, the reply
/// segment in hex, and the notification channel, which a NAMEDATALEN name keeps under 64 bytes.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    database: pg_sys::Oid,
    /// The role that called the API function, recorded as the events' actor.
    role: pg_sys::Oid,
    session: Uuid,
    /// The caller's user id from its JWT claims, recorded as the events' actor user.
    actor: Option<Uuid>,
    /// The caller's `session_ext.audit` and `session_ext.notify_channel`.
    audit: bool,
    channel: String,
    /// The caller does not wait for the worker: the worker waits for the end of the caller's
    /// transaction (this id), before it takes any lock of its own. Invalid when the caller waits.
    after_caller: pg_sys::TransactionId,
}

const UUID_CHARS: usize = 22;
const NO_ACTOR: &str = "----------------------";

impl Request {
    fn of(session: Uuid) -> Request {
        Request {
            // SAFETY: a backend global, set once connected.
            database: unsafe { pg_sys::MyDatabaseId },
            role: definer::caller(),
            session,
            actor: crate::identity::actor().1,
            audit: settings::AUDIT.get(),
            channel: settings::notify_channel().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default(),
            after_caller: pg_sys::InvalidTransactionId,
        }
    }

    fn argument(&self) -> pg_sys::Datum {
        pg_sys::Datum::from((self.database.to_u32() as usize) << 32 | self.role.to_u32() as usize)
    }

    fn extra(&self, reply: pg_sys::dsm_handle) -> String {
        let actor = self.actor.map_or_else(|| NO_ACTOR.to_string(), |a| URL_SAFE_NO_PAD.encode(a.as_bytes()));
        let session = URL_SAFE_NO_PAD.encode(self.session.as_bytes());
        let (audit, caller) = (u8::from(self.audit), self.after_caller.into_inner());
        format!("{session}{actor}{audit}{reply:08x}{caller:08x}{}", self.channel)
    }

    fn parse(argument: pg_sys::Datum, extra: &str) -> Option<(Request, pg_sys::dsm_handle)> {
        let uuid = |text: &str| {
            let bytes: [u8; 16] = URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()?;
            Some(Uuid::from_bytes(bytes))
        };
        let packed = argument.value();
        let hex = |at: usize| u32::from_str_radix(extra.get(at..at + 8)?, 16).ok();
        let audit = extra.get(2 * UUID_CHARS..2 * UUID_CHARS + 1)? == "1";
        let (reply_at, caller_at) = (2 * UUID_CHARS + 1, 2 * UUID_CHARS + 9);
        let actor = extra.get(UUID_CHARS..2 * UUID_CHARS)?;
        let request = Request {
            database: pg_sys::Oid::from((packed >> 32) as u32),
            role: pg_sys::Oid::from(packed as u32),
            session: uuid(extra.get(..UUID_CHARS)?)?,
            actor: if actor == NO_ACTOR { None } else { Some(uuid(actor)?) },
            audit,
            after_caller: pg_sys::TransactionId::from_inner(hex(caller_at)?),
            channel: extra.get(caller_at + 8..)?.to_string(),
        };
        let reply = hex(reply_at)?;
        Some((request, reply))
    }

    /// Registers a worker for this request, with `reply` to answer in.
    fn start(
        &self,
        reply: Option<pg_sys::dsm_handle>,
    ) -> Result<pgrx::bgworkers::DynamicBackgroundWorker, Failure> {
        BackgroundWorkerBuilder::new("session_ext revoke")
            .set_type("session_ext revoke")
            .set_library("session_ext")
            .set_function("session_ext_reuse_worker")
            .set_argument(Some(self.argument()))
            .set_extra(&self.extra(reply.unwrap_or(0)))
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(None)
            // SAFETY: reads a backend global.
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic()
            .map_err(|_| Failure::NoSlot)
    }

    /// Has a worker revoke the session and commit, and waits for it.
    fn run_and_wait(&self) -> Result<(), Failure> {
        // SAFETY: a segment for the answer, mapped until it is detached below (or, after an error,
        // at the end of the transaction).
        let segment =
            unsafe { pg_sys::dsm_create(size_of::<AtomicU8>(), pg_sys::DSM_CREATE_NULL_IF_MAXSEGMENTS as _) };
        if segment.is_null() {
            return Err(Failure::NotCommitted);
        }
        // SAFETY: the segment just created, large enough for the answer.
        let (answer, handle) = unsafe {
            let answer = pg_sys::dsm_segment_address(segment).cast::<AtomicU8>();
            answer.write(AtomicU8::new(PENDING));
            (&*answer, pg_sys::dsm_segment_handle(segment))
        };
        let outcome = self.start(Some(handle)).map(|worker| {
            // Interruptible: a cancelled caller leaves the worker to finish on its own.
            let _ = worker.wait_for_shutdown();
            answer.load(Ordering::Acquire)
        });
        // SAFETY: the segment created above; `answer` is not used after this.
        unsafe { pg_sys::dsm_detach(segment) };
        match outcome? {
            COMMITTED => Ok(()),
            _ => Err(Failure::NotCommitted),
        }
    }
}

const PENDING: u8 = 0;
const COMMITTED: u8 = 1;
const FAILED: u8 = 2;

/// The worker: revokes the session of its request in a transaction of its own, as the role that
/// called the API function, and answers whether it committed.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn session_ext_reuse_worker(argument: pg_sys::Datum) {
    let Some((request, reply)) = Request::parse(argument, BackgroundWorker::get_extra()) else {
        log!("session_ext revoke worker: a malformed request");
        return;
    };
    background::connect(request.database, c"session_ext revoke");
    let after_caller = request.after_caller != pg_sys::InvalidTransactionId;
    // A caller that waits must not wait long: a row another transaction holds is revoked by
    // the caller instead (and by a worker that waits for it).
    background::set(c"lock_timeout", if after_caller { c"10min" } else { c"1s" });
    background::set(c"session_ext.audit", if request.audit { c"on" } else { c"off" });
    background::set(
        c"session_ext.notify_channel",
        &CString::new(request.channel.clone()).unwrap_or_default(),
    );
    if let Some(user) = request.actor {
        let claims = format!("{{\"sub\": \"{user}\"}}");
        background::set(c"request.jwt.claims", &CString::new(claims).expect("no NUL in JSON"));
    }
    let committed = background::catching(|| {
        background::in_transaction(|| {
            // SAFETY: waits on a transaction id, holding no relation lock: waiting for the row
            // with the table locked could close a deadlock through a third transaction that wants
            // the table exclusively while the caller wants something of that transaction's. Then,
            // as the caller ran: its role is the actor `definer` records.
            unsafe {
                if after_caller {
                    pg_sys::XactLockTableWait(
                        request.after_caller,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        pg_sys::XLTW_Oper::XLTW_None,
                    );
                }
                pg_sys::SetUserIdAndSecContext(request.role, 0);
            }
            definer::as_owner(|| Ok(Spi::connect(|client| revoke::token_reused(client, request.session))))
        })
    });
    let answer = match committed {
        Ok(_) => COMMITTED,
        Err(message) => {
            log!("session_ext could not revoke session {} for a token reuse: {message}", request.session);
            FAILED
        }
    };
    if reply == 0 {
        return;
    }
    // SAFETY: the caller's answer segment; NULL once the caller has stopped waiting.
    unsafe {
        let segment = pg_sys::dsm_attach(reply);
        if !segment.is_null() {
            (*pg_sys::dsm_segment_address(segment).cast::<AtomicU8>()).store(answer, Ordering::Release);
            pg_sys::dsm_detach(segment);
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::Request;
    use pgrx::pg_sys::{self, Oid};
    use pgrx::Uuid;

    #[test]
    fn a_request_survives_its_registration_and_fits_bgw_extra() {
        for (actor, channel) in [(Some(Uuid::from_bytes([7; 16])), "c".repeat(63)), (None, String::new())] {
            let request = Request {
                database: Oid::from(u32::MAX),
                role: Oid::from(10),
                session: Uuid::from_bytes([1; 16]),
                actor,
                audit: true,
                channel,
                after_caller: pg_sys::TransactionId::from_inner(u32::MAX),
            };
            let extra = request.extra(0xdead_beef);
            assert!(extra.len() <= 127, "{} bytes", extra.len());
            assert_eq!(Request::parse(request.argument(), &extra), Some((request, 0xdead_beef)));
        }
    }
}
