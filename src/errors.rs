//! Errors are part of the API (SPEC §7): each one carries its SQLSTATE, a message that says
//! what is wrong, a DETAIL naming the argument or value, and a HINT where one helps.
//!
//! Validation code returns `ApiError`; the SQL-callable boundary raises it. Raising aborts the
//! statement, so nothing a failed call wrote survives.
//!
//! Every report session_ext makes (errors, warnings, log lines) is in its own message domain, and
//! the server log shows none of them with the statement that caused it: with the default
//! `log_min_error_statement` PostgreSQL would log that statement's text next to an error or a
//! LOG line, and a simple-query call carries its token in that text.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{pg_guard, pg_sys, PgLogLevel, PgSqlErrorCode};
use std::ffi::CStr;
use std::fmt::Display;
use std::sync::OnceLock;

/// The message domain of session_ext's reports (`errstart`'s domain, as `ereport_domain` sets it).
const DOMAIN: &str = "session_ext";

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), detail: None, hint: None }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// 22023: a bad argument. The message names the argument; `detail` says what was wrong.
    pub fn invalid_argument(argument: &str, problem: impl Display) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid value for argument \"{argument}\""),
        )
        .detail(format!("{argument} {problem}."))
    }

    /// 22023 for a NULL passed where a value is required.
    pub fn null_argument(argument: &str) -> Self {
        Self::invalid_argument(argument, "must not be NULL")
    }

    /// Raises the error as a PostgreSQL ERROR; never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "session_ext").set_domain(DOMAIN);
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report returns control to PostgreSQL")
    }
}

/// Writes `message` to the server log (LOG), in session_ext's domain: never with the statement.
pub fn log(message: impl Into<String>) {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message.into(), "session_ext")
        .set_domain(DOMAIN)
        .report(PgLogLevel::LOG);
}

/// Sends a WARNING to the client and the server log, in session_ext's domain.
pub fn warn(code: PgSqlErrorCode, message: impl Into<String>, detail: &str, hint: &str) {
    ErrorReport::new(code, message.into(), "session_ext")
        .set_domain(DOMAIN)
        .set_detail(detail)
        .set_hint(hint)
        .report(PgLogLevel::WARNING);
}

static PREVIOUS_EMIT_LOG_HOOK: OnceLock<pg_sys::emit_log_hook_type> = OnceLock::new();

/// Installs the log hook that keeps statements out of session_ext's reports; once per process,
/// from `_PG_init` (a preloading postmaster installs it for every backend it forks).
pub fn hide_statements_of_own_reports() {
    // SAFETY: _PG_init runs in the process's one thread; the previous hook is kept and called.
    unsafe {
        PREVIOUS_EMIT_LOG_HOOK.get_or_init(|| pg_sys::emit_log_hook);
        pg_sys::emit_log_hook = Some(hide_statement);
    }
}

/// `emit_log_hook`: a report in session_ext's domain goes to the server log without the
/// statement (`errhidestmt`), as PostgreSQL hides it for its own statement-duration lines.
#[pg_guard]
unsafe extern "C-unwind" fn hide_statement(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes the report being emitted; its domain is NULL or a C string.
    unsafe {
        let domain = (*edata).domain;
        if !domain.is_null() && CStr::from_ptr(domain).to_bytes() == DOMAIN.as_bytes() {
            (*edata).hide_stmt = true;
        }
        if let Some(Some(previous)) = PREVIOUS_EMIT_LOG_HOOK.get() {
            previous(edata);
        }
    }
}

/// Runs an API function body and raises its error, if any, at the SQL boundary.
pub fn boundary<T>(body: impl FnOnce() -> ApiResult<T>) -> T {
    body().unwrap_or_else(|err| err.raise())
}

/// Shortens a caller-supplied value for an error message: a 1 MB argument must not become a
/// 1 MB log line.
pub fn excerpt(value: &str) -> String {
    const LIMIT: usize = 64;
    match value.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("\"{}…\" ({} characters)", &value[..cut], value.chars().count()),
        None => format!("\"{value}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_short_values_whole() {
        assert_eq!(excerpt("abc"), "\"abc\"");
    }

    #[test]
    fn excerpt_cuts_long_values_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = excerpt(&long);
        assert!(cut.starts_with(&format!("\"{}…\"", "é".repeat(64))));
        assert!(cut.ends_with("(100 characters)"));
    }

    #[test]
    fn invalid_argument_names_the_argument() {
        let err = ApiError::invalid_argument("ttl", "must be positive");
        assert_eq!(err.code, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE);
        assert_eq!(err.message, "invalid value for argument \"ttl\"");
        assert_eq!(err.detail.as_deref(), Some("ttl must be positive."));
    }
}
