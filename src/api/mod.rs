//! The SQL API (SPEC §4). Every function is `SECURITY DEFINER` with a pinned search_path; each
//! checks its arguments, then the caller's rights (SPEC §3), then reads or writes.

mod args;
mod check;
mod cleanup;
mod create;

/// The columns of `session_ext.session_info`, built from `session_ext.user_sessions s`.
macro_rules! session_info_row {
    () => {
        "ROW(s.id, s.session_id, s.user_id, s.session_data, s.data_version, s.device_info, \
         s.user_agent, s.ip_address, s.created_at, s.last_active_at, s.expires_at, \
         s.idle_timeout, s.valid_until, s.revoked_at, s.revoke_reason)::session_ext.session_info"
    };
}
pub(crate) use session_info_row;
