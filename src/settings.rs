//! Every `session_ext.*` setting (SPEC §5), registered in one place.
//!
//! Time settings are integer seconds with PostgreSQL's unit parser, so `90s`, `15min`,
//! `12h` and `7d` all work and a malformed or out-of-range value is refused when it is set.
//! All are `SUSET`: they are security policy, so only superusers (or roles granted
//! `SET ON PARAMETER`) may change them, never the API's callers.

use pgrx::datum::Interval;
use pgrx::{pg_guard, pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::{CStr, CString};

const DAY: i32 = 86_400;

pub static SESSION_LIFETIME: GucSetting<i32> = GucSetting::<i32>::new(DAY);
pub static IDLE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(3_600);
pub static TOUCH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static ROTATION_GRACE: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static MAX_SESSION_DATA_BYTES: GucSetting<i32> = GucSetting::<i32>::new(65_536);
pub static CLEANUP_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1_000);
pub static REVOKED_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(3_600);
pub static MAX_SESSIONS_PER_USER: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static MAX_CREATES_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static AUDIT_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(30 * DAY);
pub static AUDIT: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static NOTIFY_CHANNEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"session_ext"));
pub static CLEANUP_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// Upper bound of the per-user limits; beyond it a limit means nothing.
const MAX_LIMIT: i32 = 1_000_000;
/// Largest `session_data` accepted by the limit itself: the biggest varlena PostgreSQL stores.
const MAX_DATA_LIMIT: i32 = 0x3FFF_FFFF;
/// Upper bound of a cleanup batch, for the setting and the function argument alike.
pub const MAX_BATCH_SIZE: i32 = 1_000_000;

struct IntSetting {
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<i32>,
    min: i32,
    max: i32,
    seconds: bool,
}

const INT_SETTINGS: &[IntSetting] = &[
    IntSetting {
        name: c"session_ext.session_lifetime",
        short: c"Absolute lifetime of a new session.",
        long: c"Used when create_user_session is called without ttl.",
        setting: &SESSION_LIFETIME,
        min: 1,
        max: i32::MAX,
        seconds: true,
    },
    IntSetting {
        name: c"session_ext.idle_timeout",
        short: c"Default idle timeout of a new session (0 = none).",
        long: c"Used when create_user_session is called without idle_timeout.",
        setting: &IDLE_TIMEOUT,
        min: 0,
        max: i32::MAX,
        seconds: true,
    },
    IntSetting {
        name: c"session_ext.touch_interval",
        short: c"Minimum gap between two activity writes of one session.",
        long: c"validate_session records activity only when last_active_at is older than this.",
        setting: &TOUCH_INTERVAL,
        min: 0,
        max: i32::MAX,
        seconds: true,
    },
    IntSetting {
        name: c"session_ext.rotation_grace",
        short: c"How long after a rotation the replaced token still works (0 = not at all).",
        long: c"Within it the replaced token validates and rotates again to the same new token; after it, presenting the replaced token revokes the session (token_reuse).",
        setting: &ROTATION_GRACE,
        min: 0,
        max: i32::MAX,
        seconds: true,
    },
    IntSetting {
        name: c"session_ext.max_session_data_bytes",
        short: c"Largest session_data accepted, in bytes of stored jsonb.",
        long: c"Measured as pg_column_size of the uncompressed jsonb value.",
        setting: &MAX_SESSION_DATA_BYTES,
        min: 1,
        max: MAX_DATA_LIMIT,
        seconds: false,
    },
    IntSetting {
        name: c"session_ext.cleanup_batch_size",
        short: c"Rows deleted per cleanup statement.",
        long: c"cleanup_expired_sessions deletes in statements of at most this many rows.",
        setting: &CLEANUP_BATCH_SIZE,
        min: 1,
        max: MAX_BATCH_SIZE,
        seconds: false,
    },
    IntSetting {
        name: c"session_ext.revoked_retention",
        short: c"How long revoked sessions are kept before cleanup deletes them.",
        long: c"Revoked rows stay for audit and token-replay detection.",
        setting: &REVOKED_RETENTION,
        min: 0,
        max: i32::MAX,
        seconds: true,
    },
    IntSetting {
        name: c"session_ext.max_sessions_per_user",
        short: c"Most active sessions one user may have (0 = no limit).",
        long: c"Creating one more revokes the user's oldest sessions with reason session_limit.",
        setting: &MAX_SESSIONS_PER_USER,
        min: 0,
        max: MAX_LIMIT,
        seconds: false,
    },
    IntSetting {
        name: c"session_ext.max_creates_per_minute",
        short: c"Most sessions one user may create per minute (0 = no limit).",
        long: c"create_user_session past it fails with SQLSTATE 53400.",
        setting: &MAX_CREATES_PER_MINUTE,
        min: 0,
        max: MAX_LIMIT,
        seconds: false,
    },
    IntSetting {
        name: c"session_ext.cleanup_interval",
        short: c"Period of the cleanup worker (0 = the worker idles).",
        long: c"Read again on SIGHUP (pg_reload_conf()).",
        setting: &CLEANUP_INTERVAL,
        min: 0,
        max: i32::MAX,
        seconds: true,
    },
    IntSetting {
        name: c"session_ext.audit_retention",
        short: c"How long audit rows are kept before cleanup prunes them.",
        long: c"cleanup_expired_sessions deletes session_audit_log rows older than this.",
        setting: &AUDIT_RETENTION,
        min: 0,
        max: i32::MAX,
        seconds: true,
    },
];

pub fn register() {
    for s in INT_SETTINGS {
        let flags = if s.seconds { GucFlags::UNIT_S } else { GucFlags::default() };
        GucRegistry::define_int_guc(
            s.name,
            s.short,
            s.long,
            s.setting,
            s.min,
            s.max,
            GucContext::Suset,
            flags,
        );
    }
    GucRegistry::define_bool_guc(
        c"session_ext.audit",
        c"Write session events to session_ext.session_audit_log.",
        c"One row per create, rotate, token reuse, revoke, data update, suspicious validation and cleanup batch.",
        &AUDIT,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: the check hook is #[pg_guard]ed and only reads the proposed value.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"session_ext.notify_channel",
            c"NOTIFY channel for session events ('' = off).",
            c"Revoke, rotate and data update send pg_notify(channel, json) with event, session id and user id.",
            &NOTIFY_CHANNEL,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_channel),
            None,
            None,
        );
    }
    reserve_prefix();
}

/// `session_ext.database`, which only exists when session_ext is preloaded: it fixes the set of
/// workers at server start, and PostgreSQL allows such settings only then.
pub fn register_worker_settings() {
    GucRegistry::define_string_guc(
        c"session_ext.database",
        c"Databases the cleanup worker cleans, comma-separated.",
        c"With session_ext preloaded, a launcher started with the server runs a short-lived worker in each of them every cleanup_interval; nothing stays connected between runs.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// The databases the worker cleans: `session_ext.database` split at commas, trimmed, without
/// empty names or repeats.
pub fn databases() -> Vec<String> {
    let list = DATABASE.get().map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// A NOTIFY channel is an identifier: refuse one PostgreSQL would reject at every event.
#[pg_guard]
unsafe extern "C-unwind" fn check_channel(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value, which may be NULL.
    let value = unsafe { (*newval).as_ref().map(|v| CStr::from_ptr(v)) };
    let too_long = value.is_some_and(|v| v.to_bytes().len() >= pg_sys::NAMEDATALEN as usize);
    if too_long {
        // SAFETY: the GUC machinery reads (and frees) this palloc'd detail after we return false.
        unsafe {
            pg_sys::GUC_check_errdetail_string =
                pg_sys::pstrdup(c"A channel name has at most 63 bytes.".as_ptr());
        }
    }
    !too_long
}

/// Refuses unknown `session_ext.*` names, so a typo is an error instead of a silent placeholder.
#[cfg(any(feature = "pg13", feature = "pg14"))]
fn reserve_prefix() {
    // SAFETY: called from _PG_init with a static NUL-terminated prefix.
    unsafe { pg_sys::EmitWarningsOnPlaceholders(c"session_ext".as_ptr()) }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
fn reserve_prefix() {
    // SAFETY: called from _PG_init with a static NUL-terminated prefix.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"session_ext".as_ptr()) }
}

/// An interval of whole seconds, built without a round trip through PostgreSQL.
pub fn seconds(secs: i32) -> Interval {
    Interval::new(0, 0, i64::from(secs) * 1_000_000).expect("a single-unit interval has one sign")
}

pub fn session_lifetime() -> Interval {
    seconds(SESSION_LIFETIME.get())
}

/// The default idle timeout, `None` when it is switched off.
pub fn idle_timeout() -> Option<Interval> {
    match IDLE_TIMEOUT.get() {
        0 => None,
        secs => Some(seconds(secs)),
    }
}

pub fn touch_interval() -> Interval {
    seconds(TOUCH_INTERVAL.get())
}

pub fn rotation_grace() -> Interval {
    seconds(ROTATION_GRACE.get())
}

pub fn revoked_retention() -> Interval {
    seconds(REVOKED_RETENTION.get())
}

pub fn audit_retention() -> Interval {
    seconds(AUDIT_RETENTION.get())
}

/// The NOTIFY channel, `None` when notifications are off.
pub fn notify_channel() -> Option<CString> {
    NOTIFY_CHANNEL.get().filter(|c| !c.is_empty())
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn time_settings_take_postgres_units() {
        Spi::run("SET session_ext.session_lifetime = '7d'; SET session_ext.touch_interval = '90s'").unwrap();
        assert_eq!(super::session_lifetime().as_micros(), 7 * 86_400 * 1_000_000);
        assert_eq!(super::touch_interval().as_micros(), 90 * 1_000_000);
        assert_eq!(Spi::get_one::<String>("SHOW session_ext.touch_interval").unwrap().unwrap(), "90s");
    }

    #[pg_test]
    fn zero_idle_timeout_means_none() {
        Spi::run("SET session_ext.idle_timeout = 0").unwrap();
        assert!(super::idle_timeout().is_none());
        Spi::run("SET session_ext.idle_timeout = '15min'").unwrap();
        assert_eq!(super::idle_timeout().map(|i| i.as_micros()), Some(15 * 60 * 1_000_000));
    }

    #[pg_test(error = "invalid value for parameter \"session_ext.touch_interval\": \"banana\"")]
    fn malformed_value_is_refused() {
        Spi::run("SET session_ext.touch_interval = 'banana'").unwrap();
    }

    // PostgreSQL's own message; 17 added the unit to the range.
    #[cfg_attr(
        any(feature = "pg15", feature = "pg16"),
        pg_test(
            error = "-5 s is outside the valid range for parameter \"session_ext.idle_timeout\" (0 .. 2147483647)"
        )
    )]
    #[cfg_attr(
        any(feature = "pg17", feature = "pg18"),
        pg_test(
            error = "-5 s is outside the valid range for parameter \"session_ext.idle_timeout\" (0 s .. 2147483647 s)"
        )
    )]
    fn negative_value_is_refused() {
        Spi::run("SET session_ext.idle_timeout = '-5s'").unwrap();
    }

    #[pg_test(
        error = "0 is outside the valid range for parameter \"session_ext.cleanup_batch_size\" (1 .. 1000000)"
    )]
    fn zero_batch_is_refused() {
        Spi::run("SET session_ext.cleanup_batch_size = 0").unwrap();
    }

    #[pg_test(error = "invalid configuration parameter name \"session_ext.sesion_lifetime\"")]
    fn misspelt_name_is_refused() {
        Spi::run("SET session_ext.sesion_lifetime = '1h'").unwrap();
    }

    #[pg_test(error = "permission denied to set parameter \"session_ext.session_lifetime\"")]
    fn callers_cannot_change_policy() {
        crate::testing::act_as_user(crate::testing::ALICE);
        Spi::run("SET session_ext.session_lifetime = '100d'").unwrap();
    }
}
