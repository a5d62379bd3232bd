//! How every API function runs (SPEC §2, §3): the functions are `SECURITY INVOKER`, so at the
//! call the current user is the role that called them — whatever `SET ROLE` chose, or the owner
//! of a `SECURITY DEFINER` function making the call. That role decides the caller's rights.
//! Then the function switches to the extension's owner for its work, as
//! `fmgr_security_definer` switches to a definer function's owner, and runs under
//! `search_path = pg_catalog, pg_temp` whatever can resolve a name: each SQL statement of its
//! own, and each write below the executor that runs code someone attached to the table
//! (`rows::evaluates_attached_code`). The path is pinned at the first of those; the hot path of
//! `validate_session`, which reads an index and writes a row that has none, pays nothing for it.
//!
//! A `SECURITY DEFINER` function in between therefore lends its owner's rights, never its
//! caller's: an admin calling a non-admin's wrapper acts with the non-admin's rights.

use crate::cache;
use crate::errors::{boundary, ApiResult};
use pgrx::pg_sys;
use std::cell::RefCell;

/// An API call in progress in this backend.
struct Frame {
    caller: pg_sys::Oid,
    /// The GUC nest level the call's search_path was pinned at, once it was.
    pinned: Option<i32>,
}

thread_local! {
    /// The API calls in progress, innermost last (an API call may run SQL that calls another).
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// Runs an API function's `body` as the extension's owner, with the caller recorded for
/// [`caller`], and raises its error, if any, at the SQL boundary. The user and settings are
/// restored when `body` returns; after an error, PostgreSQL's transaction or subtransaction
/// abort restores them, as it does after an error in a definer function.
pub fn as_owner<T>(body: impl FnOnce() -> ApiResult<T>) -> T {
    // As fmgr_security_definer: the local flag keeps SET ROLE and SET SESSION AUTHORIZATION from
    // running inside, so nothing but this frame changes the user.
    boundary(|| as_table_owner(pg_sys::SECURITY_LOCAL_USERID_CHANGE, body))
}

/// Runs `body`, the work of one of session_ext's background processes (cleanup, the audit rows of
/// refused creations, the revocation of a reused token's session), as the owner of
/// `session_ext.user_sessions`, as autovacuum runs code on a table as its owner: with SET ROLE
/// locked out, as a security-restricted operation (no temporary objects, nothing that outlives
/// it), and under `search_path = pg_catalog, pg_temp` from its start (SPEC §8). A trigger or
/// expression someone attached to the tables runs with no rights but the owner's. The process's
/// own role is the recorded caller. Errors propagate (the process's transaction handling
/// restores the user).
pub fn in_background<T>(body: impl FnOnce() -> T) -> T {
    let restricted = pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION;
    as_table_owner(restricted, || {
        pin_search_path();
        body()
    })
}

/// Runs `body` as the owner of session_ext's table, with `flags` added to the security context.
fn as_table_owner<T>(flags: u32, body: impl FnOnce() -> T) -> T {
    let (mut caller, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads backend globals into the two locals.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut caller, &mut context) };
    let owner = cache::locked(|r| [(r.table, pg_sys::AccessShareLock)]).owner;
    FRAMES.with_borrow_mut(|frames| frames.push(Frame { caller, pinned: None }));
    let _restore = Restore { caller, context };
    // SAFETY: the frame pushed above restores the caller and its context.
    unsafe { pg_sys::SetUserIdAndSecContext(owner, context | flags as i32) };
    body()
}

/// Restores the caller's user and settings at the end of an API call.
struct Restore {
    caller: pg_sys::Oid,
    context: i32,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let frame = FRAMES.with_borrow_mut(Vec::pop);
        // While an error unwinds, nothing may call PostgreSQL: its abort restores both.
        if std::thread::panicking() {
            return;
        }
        // SAFETY: the nest level this call opened, and the user and context it saved.
        unsafe {
            if let Some(level) = frame.and_then(|f| f.pinned) {
                pg_sys::AtEOXact_GUC(true, level);
            }
            pg_sys::SetUserIdAndSecContext(self.caller, self.context);
        }
    }
}

/// The role that called the API function in progress (`current_user` at the call); outside
/// one, the current user.
pub fn caller() -> pg_sys::Oid {
    FRAMES
        .with_borrow(|frames| frames.last().map(|f| f.caller))
        // SAFETY: reads a backend global, always set in a transaction.
        .unwrap_or_else(|| unsafe { pg_sys::GetUserId() })
}

/// Pins `search_path = pg_catalog, pg_temp` for the rest of the API call in progress, as a
/// function's `SET search_path` clause would (a saved, session-level setting at a new nest
/// level): plans are made and revalidated under it, never under the caller's path. Called
/// before every SQL statement the API runs and every direct write that runs attached code;
/// outside an API call it does nothing (the background processes pin their path for good).
pub fn pin_search_path() {
    FRAMES.with_borrow_mut(|frames| {
        let Some(frame) = frames.last_mut().filter(|f| f.pinned.is_none()) else { return };
        // SAFETY: a valid value for a built-in setting; the level is closed by `Restore`, or by
        // the abort after an error.
        unsafe {
            let level = pg_sys::NewGUCNestLevel();
            pg_sys::set_config_option(
                c"search_path".as_ptr(),
                c"pg_catalog, pg_temp".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
            frame.pinned = Some(level);
        }
    });
}
