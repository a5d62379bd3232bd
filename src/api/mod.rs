//! The SQL API (SPEC §4). Every function runs through `definer::as_owner`: it checks its
//! arguments, then its caller's rights (SPEC §3), then reads or writes as the extension's owner.

mod aal;
mod activity;
mod args;
mod check;
pub(crate) mod cleanup;
mod create;
mod csrf;
mod current;
mod data;
mod devices;
mod family;
mod limits;
mod lookup;
pub(crate) mod reuse;
mod revoke;
mod rotate;
mod stats;
mod users;

use crate::db::{Columns, Statement, UUID};
use crate::errors::ApiResult;
use crate::identity::{self, Scope};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

pub use crate::events::Subject;

/// The columns of `session_ext.session_info`, built from `session_ext.user_sessions s`, with the
/// assurance level in force (`aal1` once a raised level has lapsed).
macro_rules! session_info_row {
    () => {
        "ROW(s.id, s.session_id, s.user_id, s.session_data, s.data_version, s.device_info, \
         s.user_agent, s.ip_address, s.created_at, s.last_active_at, s.expires_at, \
         s.idle_timeout, s.valid_until, s.revoked_at, s.revoke_reason, \
         CASE WHEN s.aal_expires_at <= pg_catalog.now() THEN 'aal1' ELSE s.aal END, \
         CASE WHEN s.aal_expires_at > pg_catalog.now() THEN s.aal_expires_at END)::session_ext.session_info"
    };
}
pub(crate) use session_info_row;

/// The condition for a session that can still be used.
macro_rules! active {
    () => {
        "s.revoked_at IS NULL AND s.valid_until > pg_catalog.now()"
    };
}
pub(crate) use active;

static OWNER: Statement =
    Statement::new("SELECT s.user_id FROM session_ext.user_sessions s WHERE s.id = $1", &[UUID]);

/// The frame of a function that acts on one session by id: the id is required, the caller's
/// rights are read, and `body` runs with SPI connected. Check the other arguments first.
fn on_session<T>(
    session_id: Option<Uuid>,
    argument: &str,
    body: impl FnOnce(&SpiClient<'_>, Uuid, Scope) -> ApiResult<T>,
) -> ApiResult<T> {
    let id = args::required(session_id, argument)?;
    let scope = identity::scope()?;
    Spi::connect(|client| body(client, id, scope))
}

/// [`on_session`] for a function that changes the session: `body` runs with the session's
/// owner once the caller is known to be allowed to act on it; an unknown id yields `unknown`.
fn on_own_session<T>(
    session_id: Option<Uuid>,
    argument: &str,
    unknown: T,
    body: impl FnOnce(&SpiClient<'_>, Uuid, Uuid) -> T,
) -> ApiResult<T> {
    on_session(session_id, argument, |client, id, scope| {
        let Some(owner) = OWNER.one(client, &[id.into()]).and_then(|row| row.col(1)) else {
            return Ok(unknown);
        };
        scope.authorize(owner)?;
        Ok(body(client, id, owner))
    })
}

/// The user a per-user function acts on: `user_id` if the caller may act for it, else the
/// caller's own user when `user_id` is NULL.
fn target_user(user_id: Option<Uuid>) -> ApiResult<Uuid> {
    let scope = identity::scope()?;
    match user_id {
        None => identity::require_user(),
        Some(user) => scope.authorize(user).map(|()| user),
    }
}
