//! Who is calling (SPEC §3): the user id from the JWT claims PostgREST sets, and the role that
//! called the API function (`current_user` at the call, see `definer`), which decides admin
//! rights.

use crate::definer;
use crate::errors::{boundary, excerpt, ApiError, ApiResult};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode, Uuid};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::Value;
use std::ffi::CStr;

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    /// Supabase Auth's session claim (SPEC §4 "Sessions carried by JWTs").
    #[serde(default)]
    session_id: Option<Value>,
}

/// What the request's claims name: its user and, for a JWT that carries one, its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub user: Option<Uuid>,
    pub session: Option<Uuid>,
}

const CLAIMS: &CStr = c"request.jwt.claims";
const LEGACY_SUB: &CStr = c"request.jwt.claim.sub";
const ADMIN_ROLE: &CStr = c"session_ext_admin";

/// The caller's user id: `sub` of `request.jwt.claims`, else the legacy `request.jwt.claim.sub`.
#[pg_extern(stable, parallel_safe)]
fn current_user_id() -> Option<Uuid> {
    boundary(claimed_user_id)
}

fn claimed_user_id() -> ApiResult<Option<Uuid>> {
    Ok(claimed()?.user)
}

/// The `session_id` claim of `request.jwt.claims`: NULL when absent, null or empty; a claim
/// that is not a UUID is 22P02, as for `sub`.
#[pg_extern(stable, parallel_safe)]
fn current_session_id() -> Option<Uuid> {
    boundary(|| Ok(claimed()?.session))
}

/// The request's user and session, read from the settings once.
pub fn claimed() -> ApiResult<Claimed> {
    let claims = read_setting(CLAIMS);
    let legacy = read_setting(LEGACY_SUB);
    let (user, session) = from_settings(claims.as_deref(), legacy.as_deref())?;
    let pg = |id: uuid::Uuid| Uuid::from_bytes(id.into_bytes());
    Ok(Claimed { user: user.map(pg), session: session.map(pg) })
}

/// A setting's value, `None` when it is unset or empty (PostgREST leaves it empty between
/// requests on a pooled connection).
fn read_setting(name: &CStr) -> Option<String> {
    // SAFETY: a valid name; missing_ok returns NULL for an unknown setting instead of raising.
    let value = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    // SAFETY: GetConfigOption returns a NUL-terminated string owned by the GUC machinery.
    let value = unsafe { CStr::from_ptr(value) }.to_string_lossy();
    (!value.trim().is_empty()).then(|| value.into_owned())
}

/// The user (§3) and the session (§4) the settings name, by the pure rules: a `sub` in the claims
/// wins; without one the legacy setting is used; a `sub` that is present but not a UUID is an
/// error, never "no user". The session comes only from the claims: an empty `session_id` is
/// none, as an empty setting is.
fn from_settings(
    claims: Option<&str>,
    legacy_sub: Option<&str>,
) -> ApiResult<(Option<uuid::Uuid>, Option<uuid::Uuid>)> {
    let Claims { sub, session_id } = match claims {
        None => Claims { sub: None, session_id: None },
        Some(text) => parse_claims(text)?,
    };
    let user = match sub {
        None | Some(Value::Null) => legacy_sub.map(|s| parse_uuid(s, "request.jwt.claim.sub")).transpose()?,
        Some(Value::String(s)) => Some(parse_uuid(&s, "the \"sub\" claim")?),
        Some(other) => return Err(not_a_uuid("the \"sub\" claim", &other.to_string())),
    };
    let session = match session_id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(parse_uuid(&s, "the \"session_id\" claim")?),
        Some(other) => return Err(not_a_uuid("the \"session_id\" claim", &other.to_string())),
    };
    Ok((user, session))
}

fn parse_claims(text: &str) -> ApiResult<Claims> {
    // serde reads a struct from an array too (`["<uuid>"]` as {"sub": ...}): only an object is
    // claims. The struct keeps serde's refusal of a duplicate "sub" or "session_id".
    let parsed = match text.trim_start().starts_with('{') {
        true => serde_json::from_str::<Claims>(text),
        false => serde_json::from_str::<IgnoredAny>(text)
            .and_then(|_| Err(serde::de::Error::custom("not an object"))),
    };
    parsed.map_err(|e| {
        // Not serde's message: it may quote the offending text, which may be huge.
        let detail = match e.classify() {
            Category::Data => {
                "It is JSON, but not an object with at most one \"sub\" and one \"session_id\".".to_string()
            }
            _ => format!("It is not valid JSON (line {}, column {}).", e.line(), e.column()),
        };
        ApiError::new(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            "request.jwt.claims is not a JSON object",
        )
        .detail(detail)
    })
}

fn parse_uuid(text: &str, source: &str) -> ApiResult<uuid::Uuid> {
    uuid::Uuid::try_parse(text).map_err(|_| not_a_uuid(source, text))
}

fn not_a_uuid(source: &str, value: &str) -> ApiError {
    ApiError::new(PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION, format!("{source} is not a UUID"))
        .detail(format!("The value is {}.", excerpt(value)))
        .hint("session_ext identifies users by UUID, as Supabase Auth does.")
}

/// Whose sessions a caller may see and act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Admins: every user's sessions.
    All,
    /// Everyone else: only the sessions of this user.
    User(Uuid),
}

impl Scope {
    pub fn covers(self, owner: Uuid) -> bool {
        match self {
            Scope::All => true,
            Scope::User(me) => me == owner,
        }
    }

    /// 42501 unless the caller may act on sessions of `owner`.
    pub fn authorize(self, owner: Uuid) -> ApiResult<()> {
        if self.covers(owner) {
            return Ok(());
        }
        Err(ApiError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied for the sessions of another user",
        )
        .detail(format!(
            "Role \"{}\" may act only on the sessions of its own user id.",
            role_name(definer::caller())
        ))
        .hint("Members of session_ext_admin (and superusers and BYPASSRLS roles) may act for any user."))
    }
}

/// The caller's rights, decided once per call.
pub fn scope() -> ApiResult<Scope> {
    if is_admin(definer::caller()) {
        Ok(Scope::All)
    } else {
        require_user().map(Scope::User)
    }
}

/// 42501 unless the caller is an admin: for functions that act on every user at once.
pub fn require_admin(function: &str) -> ApiResult<()> {
    let role = definer::caller();
    if is_admin(role) {
        return Ok(());
    }
    Err(ApiError::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("permission denied for {function}"),
    )
    .detail(format!("Role \"{}\" is not an admin of session_ext.", role_name(role)))
    .hint("Grant session_ext_admin to the role."))
}

/// The calling user's id, or 28000 when the request carries none.
pub fn require_user() -> ApiResult<Uuid> {
    claimed_user_id()?.ok_or_else(|| {
        ApiError::new(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, "no authenticated user")
            .detail("Neither request.jwt.claims nor request.jwt.claim.sub holds a \"sub\".")
            .hint("Call it with a JWT that has a sub claim, or set request.jwt.claims for the transaction.")
    })
}

/// Who acts, for the audit log: the calling role's name and, when the request carries one
/// readable user id, that id.
pub fn actor() -> (String, Option<Uuid>) {
    (role_name(definer::caller()), claimed_user_id().ok().flatten())
}

/// Admin = superuser, BYPASSRLS, or a member (with inherited privileges) of session_ext_admin.
fn is_admin(role: pg_sys::Oid) -> bool {
    crate::cache::admin(role, |role| {
        // SAFETY: catalog lookups on a valid role oid, inside a transaction.
        unsafe {
            if pg_sys::superuser_arg(role) || pg_sys::has_bypassrls_privilege(role) {
                return true;
            }
            let admin = pg_sys::get_role_oid(ADMIN_ROLE.as_ptr(), true);
            admin != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, admin)
        }
    })
}

/// A role's name; its oid as text for a role dropped since.
pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: noerr lookup; returns NULL for a dropped role.
    let name = unsafe { pg_sys::GetUserNameFromId(role, true) };
    if name.is_null() {
        return role.to_u32().to_string();
    }
    // SAFETY: a palloc'd NUL-terminated name.
    unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{act_as_user, count, ALICE, BOB};
    use pgrx::prelude::*;

    fn current_user_id() -> Option<String> {
        Spi::get_one::<String>("SELECT session_ext.current_user_id()::text").unwrap()
    }

    #[pg_test]
    fn reads_sub_from_request_claims() {
        Spi::run(&format!("SELECT set_config('request.jwt.claims', '{{\"sub\":\"{ALICE}\"}}', true)"))
            .unwrap();
        assert_eq!(current_user_id().as_deref(), Some(ALICE));
    }

    #[pg_test]
    fn empty_settings_mean_no_user() {
        Spi::run("SELECT set_config('request.jwt.claims', '', true), set_config('request.jwt.claim.sub', '', true)")
            .unwrap();
        assert_eq!(current_user_id(), None);
        Spi::run(&format!("SELECT set_config('request.jwt.claim.sub', '{ALICE}', true)")).unwrap();
        assert_eq!(current_user_id().as_deref(), Some(ALICE));
    }

    #[pg_test(error = "the \"sub\" claim is not a UUID")]
    fn non_uuid_sub_is_an_error() {
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\":\"alice\"}', true)").unwrap();
        current_user_id();
    }

    #[pg_test]
    fn the_calling_role_decides_admin_rights() {
        // Superuser: admin.
        assert_eq!(count("SELECT session_ext.cleanup_expired_sessions()"), 0);
        Spi::run(
            "CREATE ROLE unit_test_admin NOLOGIN IN ROLE session_ext_admin;
             CREATE ROLE unit_test_bypass NOLOGIN BYPASSRLS;
             GRANT USAGE ON SCHEMA session_ext TO unit_test_bypass;
             GRANT EXECUTE ON FUNCTION session_ext.cleanup_expired_sessions(integer) TO unit_test_bypass;",
        )
        .unwrap();
        for role in ["unit_test_admin", "unit_test_bypass"] {
            Spi::run(&format!("SET LOCAL ROLE {role}")).unwrap();
            assert_eq!(count("SELECT session_ext.cleanup_expired_sessions()"), 0, "{role}");
            Spi::run("RESET ROLE").unwrap();
        }
    }

    /// An admin calling a non-admin's SECURITY DEFINER function lends it no rights: inside it,
    /// the caller is the function's owner (SPEC §3), who may act only for its own user.
    #[pg_test(error = "permission denied for the sessions of another user")]
    fn an_admin_calling_a_non_admins_definer_function_lends_it_nothing() {
        Spi::run(&format!(
            "CREATE ROLE mallory NOLOGIN IN ROLE session_ext_user;
             GRANT CREATE ON SCHEMA public TO mallory;
             SET LOCAL ROLE mallory;
             CREATE FUNCTION public.mint() RETURNS text LANGUAGE sql SECURITY DEFINER AS
               $$ SELECT (session_ext.create_user_session(user_id => '{BOB}', session_data => '{{}}')).token $$;
             RESET ROLE;
             SELECT set_config('request.jwt.claims', '{{\"sub\":\"{ALICE}\"}}', true);"
        ))
        .unwrap();
        // The superuser, an admin, calls it.
        Spi::run("SELECT public.mint()").unwrap();
    }

    #[pg_test(error = "permission denied for cleanup_expired_sessions")]
    fn a_user_granted_execute_is_still_not_an_admin() {
        Spi::run(
            "GRANT EXECUTE ON FUNCTION session_ext.cleanup_expired_sessions(integer) TO session_ext_user",
        )
        .unwrap();
        act_as_user(ALICE);
        count("SELECT session_ext.cleanup_expired_sessions()");
    }
}

#[cfg(test)]
mod unit_tests {
    use super::from_settings;
    use pgrx::PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION as BAD_TEXT;
    use proptest::strategy::Strategy;

    const ID: &str = "7f0c8a8e-3b7e-4c55-9d1a-2f6d4f1e9b10";

    fn sub_from_settings(
        claims: Option<&str>,
        legacy_sub: Option<&str>,
    ) -> crate::errors::ApiResult<Option<uuid::Uuid>> {
        from_settings(claims, legacy_sub).map(|(user, _)| user)
    }

    #[test]
    fn sub_claim_is_the_user() {
        let claims = format!(r#"{{"sub":"{ID}","role":"authenticated"}}"#);
        assert_eq!(sub_from_settings(Some(&claims), None).unwrap().unwrap().to_string(), ID);
    }

    #[test]
    fn claims_win_over_the_legacy_setting() {
        let claims = format!(r#"{{"sub":"{ID}"}}"#);
        let other = "00000000-0000-0000-0000-000000000001";
        assert_eq!(sub_from_settings(Some(&claims), Some(other)).unwrap().unwrap().to_string(), ID);
    }

    #[test]
    fn legacy_setting_is_the_fallback() {
        assert_eq!(sub_from_settings(None, Some(ID)).unwrap().unwrap().to_string(), ID);
        let anon = r#"{"role":"anon"}"#;
        assert_eq!(sub_from_settings(Some(anon), Some(ID)).unwrap().unwrap().to_string(), ID);
        assert_eq!(sub_from_settings(Some(r#"{"sub":null}"#), Some(ID)).unwrap().unwrap().to_string(), ID);
    }

    #[test]
    fn no_sub_anywhere_is_no_user() {
        assert_eq!(sub_from_settings(None, None).unwrap(), None);
        assert_eq!(sub_from_settings(Some(r#"{"role":"anon"}"#), None).unwrap(), None);
    }

    #[test]
    fn a_sub_that_is_not_a_uuid_is_an_error() {
        for claims in [r#"{"sub":"alice"}"#, r#"{"sub":""}"#, r#"{"sub":42}"#, r#"{"sub":{"id":1}}"#] {
            let err = sub_from_settings(Some(claims), None).unwrap_err();
            assert_eq!(err.code, BAD_TEXT, "{claims}");
        }
        assert_eq!(sub_from_settings(None, Some("alice")).unwrap_err().code, BAD_TEXT);
    }

    /// What an error may carry at most: a hostile claim is never echoed in full.
    const MAX_ERROR_TEXT: usize = 256;

    fn bounded(err: &crate::errors::ApiError) -> bool {
        [Some(&err.message), err.detail.as_ref(), err.hint.as_ref()]
            .into_iter()
            .flatten()
            .all(|text| text.chars().count() <= MAX_ERROR_TEXT)
    }

    proptest::proptest! {
        #[test]
        fn any_claims_text_is_a_user_no_user_or_a_22p02_of_bounded_size(claims in ".{0,2000}") {
            match sub_from_settings(Some(&claims), None) {
                Ok(_) => {}
                Err(err) => {
                    proptest::prop_assert_eq!(err.code, BAD_TEXT);
                    proptest::prop_assert!(bounded(&err), "{:?}", err);
                }
            }
        }

        #[test]
        fn a_uuid_sub_is_the_user_whatever_else_the_claims_hold(
            bytes in proptest::array::uniform16(proptest::num::u8::ANY),
            extra in proptest::collection::hash_map("[a-z_]{1,12}", ".{0,40}", 0..6),
        ) {
            let id = uuid::Uuid::from_bytes(bytes);
            let mut claims: serde_json::Map<String, serde_json::Value> =
                extra.into_iter().map(|(k, v)| (k, v.into())).collect();
            claims.insert("sub".into(), id.to_string().into());
            let text = serde_json::Value::Object(claims).to_string();
            proptest::prop_assert_eq!(sub_from_settings(Some(&text), None).unwrap(), Some(id));
        }

        #[test]
        fn a_sub_that_is_no_uuid_is_refused_with_an_excerpt(sub in "[^-0-9a-fA-F{}:]{1,5000}") {
            let claims = serde_json::json!({ "sub": sub }).to_string();
            let err = sub_from_settings(Some(&claims), None).unwrap_err();
            proptest::prop_assert_eq!(err.code, BAD_TEXT);
            proptest::prop_assert!(bounded(&err), "{:?}", err);
        }

        #[test]
        fn json_that_is_not_an_object_is_refused(value in proptest::prop_oneof![
            proptest::num::i64::ANY.prop_map(serde_json::Value::from),
            ".{0,3000}".prop_map(serde_json::Value::from),
            proptest::collection::vec(".{0,20}", 0..50).prop_map(serde_json::Value::from),
        ]) {
            let err = sub_from_settings(Some(&value.to_string()), None).unwrap_err();
            proptest::prop_assert_eq!(
                err.detail.as_deref(),
                Some("It is JSON, but not an object with at most one \"sub\" and one \"session_id\".")
            );
            proptest::prop_assert!(bounded(&err), "{:?}", err);
        }
    }

    #[test]
    fn the_session_id_claim_names_the_session() {
        let session = "0195f0a2-0000-7000-8000-000000000001";
        let claims = format!(r#"{{"sub":"{ID}","session_id":"{session}","aal":"aal1"}}"#);
        let (user, named) = from_settings(Some(&claims), None).unwrap();
        assert_eq!(
            (user.unwrap().to_string(), named.unwrap().to_string()),
            (ID.to_string(), session.to_string())
        );
        for absent in [r#"{"role":"anon"}"#, r#"{"session_id":null}"#, r#"{"session_id":""}"#] {
            assert_eq!(from_settings(Some(absent), None).unwrap().1, None, "{absent}");
        }
        for bad in [r#"{"session_id":"s1"}"#, r#"{"session_id":7}"#, r#"{"session_id":["x"]}"#] {
            let err = from_settings(Some(bad), None).unwrap_err();
            assert_eq!(
                (err.code, err.message.as_str()),
                (BAD_TEXT, "the \"session_id\" claim is not a UUID")
            );
        }
    }

    #[test]
    fn malformed_claims_are_an_error() {
        // An array is not claims, even one a lenient decoder would read as {"sub": ...}.
        let array = format!(r#"["{ID}"]"#);
        let two_subs = format!(r#"{{"sub":"{ID}","sub":"00000000-0000-0000-0000-000000000001"}}"#);
        for claims in ["{", "[1,2]", "[]", &array, &two_subs, "\"sub\"", "null"] {
            let err = sub_from_settings(Some(claims), None).unwrap_err();
            assert_eq!(err.code, BAD_TEXT, "{claims}");
            assert_eq!(err.message, "request.jwt.claims is not a JSON object");
        }
    }
}
