//! Argument checks shared by the API functions. Each returns a 22023 naming the argument,
//! before anything is read or written.

use crate::errors::{excerpt, ApiError, ApiResult};
use crate::settings;
use crate::token;
use crate::types::{JsonText, JsonbDatum};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys;
use std::ffi::CString;

/// Free-text arguments (device_info, user_agent, fingerprint) are capped so that one call
/// cannot bloat a row or the audit log.
pub const MAX_TEXT_CHARS: usize = 1024;
pub const MAX_SESSION_ID_CHARS: usize = 128;
pub const MAX_REASON_CHARS: usize = 128;
/// Lifetimes and idle timeouts beyond `interval '100 years'` (compared as PostgreSQL compares
/// intervals: a month is 30 days) are refused rather than overflowing a timestamp.
const MAX_INTERVAL_MICROS: i128 = 1_200 * 30 * 86_400 * 1_000_000;

pub fn required<T>(value: Option<T>, name: &str) -> ApiResult<T> {
    value.ok_or_else(|| ApiError::null_argument(name))
}

/// Optional free text: absent is fine, but blank or over-long text is a caller bug.
pub fn optional_text<'a>(value: Option<&'a str>, name: &str) -> ApiResult<Option<&'a str>> {
    value.map(|v| text(v, name, MAX_TEXT_CHARS)).transpose()
}

fn text<'a>(value: &'a str, name: &str, max_chars: usize) -> ApiResult<&'a str> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid_argument(name, "must not be empty or only whitespace"));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(ApiError::invalid_argument(
            name,
            format!("has {chars} characters, more than the maximum of {max_chars}"),
        ));
    }
    Ok(value)
}

/// A bearer token supplied by the client (for create or validate).
pub fn session_token<'a>(value: Option<&'a str>, name: &str) -> ApiResult<&'a str> {
    let value = required(value, name)?;
    token::check(value).map_err(|problem| {
        ApiError::invalid_argument(name, problem)
            .hint("Tokens are 32 to 1024 visible ASCII characters, sent without any \"Bearer \" prefix.")
    })?;
    Ok(value)
}

/// The SHA-256 of a token, as another store kept it: 32 bytes.
pub fn token_sha256(value: &[u8]) -> ApiResult<token::TokenHash> {
    token::TokenHash::try_from(value).map_err(|_| {
        ApiError::invalid_argument(
            "token_sha256",
            format!("has {} bytes, not the 32 of a SHA-256", value.len()),
        )
        .hint("A hash kept as hex text becomes bytes with decode(column, 'hex').")
    })
}

/// A point in time given as argument `name`: finite, and at most 100 years ahead.
pub fn moment(value: TimestampWithTimeZone, name: &str) -> ApiResult<TimestampWithTimeZone> {
    let micros = i128::from(value.into_inner());
    if micros == i128::from(i64::MAX) || micros == i128::from(i64::MIN) {
        return Err(ApiError::invalid_argument(name, "must be a finite time"));
    }
    if micros - i128::from(crate::rows::now().into_inner()) > MAX_INTERVAL_MICROS {
        return Err(ApiError::invalid_argument(name, "must not be more than 100 years ahead"));
    }
    Ok(value)
}

/// 22023 unless `earlier` (argument `name`) is at or before `later` (`limit`).
pub fn not_later(
    earlier: TimestampWithTimeZone,
    later: TimestampWithTimeZone,
    name: &str,
    limit: &str,
) -> ApiResult<()> {
    if earlier.into_inner() > later.into_inner() {
        return Err(ApiError::invalid_argument(name, format!("is later than {limit}")));
    }
    Ok(())
}

/// A caller-chosen session id: a short handle made of URL-safe characters.
pub fn custom_session_id(value: Option<&str>) -> ApiResult<&str> {
    let value = text(required(value, "session_id")?, "session_id", MAX_SESSION_ID_CHARS)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.~:@+=/".contains(c);
    if !value.chars().all(allowed) {
        return Err(ApiError::invalid_argument(
            "session_id",
            format!("{} may contain only letters, digits and - _ . ~ : @ + = /", excerpt(value)),
        )
        .hint("To pass session data, name the argument: session_data => '{...}'."));
    }
    Ok(value)
}

/// `ttl`: NULL means session_ext.session_lifetime; otherwise positive and at most 100 years.
pub fn ttl(value: Option<Interval>) -> ApiResult<Interval> {
    match value {
        None => Ok(settings::session_lifetime()),
        Some(v) if v.as_micros() <= 0 => {
            Err(ApiError::invalid_argument("ttl", "must be a positive interval")
                .hint("Pass NULL to use session_ext.session_lifetime."))
        }
        Some(v) => within_bounds(v, "ttl"),
    }
}

/// `idle_timeout`: NULL means session_ext.idle_timeout; zero means none; never negative.
pub fn idle_timeout(value: Option<Interval>) -> ApiResult<Option<Interval>> {
    match value {
        None => Ok(settings::idle_timeout()),
        Some(v) if v.as_micros() < 0 => {
            Err(ApiError::invalid_argument("idle_timeout", "must not be negative")
                .hint("Use '0' for a session without an idle timeout."))
        }
        Some(v) if v.as_micros() == 0 => Ok(None),
        Some(v) => within_bounds(v, "idle_timeout").map(Some),
    }
}

/// `valid_for` of a raised assurance level: NULL means the rest of the session; otherwise
/// positive and at most 100 years.
pub fn valid_for(value: Option<Interval>) -> ApiResult<Option<Interval>> {
    match value {
        None => Ok(None),
        Some(v) if v.as_micros() <= 0 => {
            Err(ApiError::invalid_argument("valid_for", "must be a positive interval")
                .hint("Pass NULL to keep the level for the rest of the session."))
        }
        Some(v) => within_bounds(v, "valid_for").map(Some),
    }
}

fn within_bounds(value: Interval, name: &str) -> ApiResult<Interval> {
    if value.as_micros() > MAX_INTERVAL_MICROS {
        return Err(ApiError::invalid_argument(name, "must not exceed 100 years"));
    }
    Ok(value)
}

/// `session_data` as a `json` argument: a JSON object within session_ext.max_session_data_bytes,
/// converted to the jsonb datum that is stored.
pub fn session_data(value: Option<JsonText<'_>>) -> ApiResult<pg_sys::Datum> {
    let JsonText(text) = required(value, "session_data")?;
    // PostgreSQL has already parsed it, so the first significant character tells the kind.
    let kind = match text.trim_start_matches([' ', '\t', '\n', '\r']).bytes().next() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    };
    if kind != "object" {
        return Err(not_an_object(kind));
    }
    // PostgreSQL text never holds a NUL byte.
    let cstring = CString::new(text).expect("json text contains no NUL byte");
    // SAFETY: jsonb_in reads a NUL-terminated string and returns a palloc'd jsonb; any error it
    // raises (such as an unsupported \u0000) carries its own SQLSTATE.
    let jsonb = unsafe {
        pgrx::direct_function_call::<pg_sys::Datum>(
            pg_sys::jsonb_in,
            &[Some(pg_sys::Datum::from(cstring.as_ptr()))],
        )
    }
    .expect("jsonb_in returns a value");
    // SAFETY: jsonb_in returned a valid, non-null varlena datum.
    check_data_size(unsafe { pgrx::varsize_any(jsonb.cast_mut_ptr()) })?;
    Ok(jsonb)
}

/// `session_data` as a `jsonb` argument: a JSON object. Its size is checked once it is merged.
pub fn session_data_object(value: Option<JsonbDatum>) -> ApiResult<pg_sys::Datum> {
    let JsonbDatum(jsonb) = required(value, "session_data")?;
    // SAFETY: jsonb_typeof reads one jsonb datum and returns text.
    let kind = unsafe { pgrx::direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(jsonb)]) };
    match kind.as_deref() {
        Some("object") => Ok(jsonb),
        other => Err(not_an_object(other.unwrap_or("null"))),
    }
}

fn not_an_object(kind: &str) -> ApiError {
    ApiError::invalid_argument("session_data", format!("must be a JSON object, not {kind}"))
        .hint("Wrap the value in an object, e.g. {\"value\": ...}.")
}

/// A fresh bearer token from the operating system's generator.
pub fn new_token() -> ApiResult<String> {
    token::generate().map_err(no_randomness)
}

/// A fresh session key from the operating system's generator.
pub fn new_key() -> ApiResult<[u8; 32]> {
    token::new_key().map_err(no_randomness)
}

fn no_randomness(error: rand::rand_core::OsError) -> ApiError {
    ApiError::new(
        pgrx::PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
        "could not read the operating system's random generator",
    )
    .detail(error.to_string())
}

/// A revocation reason: a short label such as 'logout' or 'password_changed'.
pub fn reason(value: Option<&str>) -> ApiResult<&str> {
    text(required(value, "reason")?, "reason", MAX_REASON_CHARS)
}

/// Session data of `size` bytes (stored jsonb) must stay within
/// session_ext.max_session_data_bytes.
pub fn check_data_size(size: usize) -> ApiResult<()> {
    let limit = settings::MAX_SESSION_DATA_BYTES.get();
    if size > limit as usize {
        return Err(ApiError::invalid_argument(
            "session_data",
            format!("is {size} bytes as jsonb, more than session_ext.max_session_data_bytes ({limit})"),
        )
        .hint("Keep large data in your own tables and store a reference in the session."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_and_long_text_are_refused() {
        assert!(optional_text(Some(""), "device_info").is_err());
        assert!(optional_text(Some(" \t\n"), "device_info").is_err());
        assert!(optional_text(Some(&"x".repeat(MAX_TEXT_CHARS + 1)), "device_info").is_err());
        assert_eq!(optional_text(Some(&"x".repeat(MAX_TEXT_CHARS)), "d").unwrap().map(str::len), Some(1024));
        assert_eq!(optional_text(None, "device_info").unwrap(), None);
    }

    #[test]
    fn custom_session_ids_are_url_safe_handles() {
        assert_eq!(custom_session_id(Some("web:alice@laptop-1")).unwrap(), "web:alice@laptop-1");
        for bad in ["", " ", "{\"a\":1}", "has space", "tab\tbed", "semi;colon", "quote'"] {
            assert!(custom_session_id(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(custom_session_id(Some(&"a".repeat(MAX_SESSION_ID_CHARS + 1))).is_err());
        assert!(custom_session_id(None).is_err());
    }

    #[test]
    fn interval_bounds() {
        let day = Interval::new(0, 1, 0).unwrap();
        assert!(ttl(Some(day)).is_ok());
        assert!(ttl(Some(Interval::new(0, 0, 0).unwrap())).is_err());
        assert!(ttl(Some(Interval::new(0, 0, -1).unwrap())).is_err());
        assert!(ttl(Some(Interval::new(12 * 101, 0, 0).unwrap())).is_err());
        assert!(ttl(Some(Interval::new(12 * 99, 0, 0).unwrap())).is_ok());
        assert_eq!(idle_timeout(Some(Interval::new(0, 0, 0).unwrap())).unwrap().map(|i| i.as_micros()), None);
        assert!(idle_timeout(Some(Interval::new(0, -1, 0).unwrap())).is_err());
        assert!(idle_timeout(Some(Interval::new(0, 36_001, 0).unwrap())).is_err());
        assert!(idle_timeout(Some(Interval::new(1_200, 0, 0).unwrap())).is_ok());
    }
}
