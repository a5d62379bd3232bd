//! CSRF protection (SPEC §4 "CSRF"): the synchronizer token pattern, with the token derived from
//! the session's secret key (`token::csrf`) instead of stored. A page gets the token of its
//! session from `session_csrf_token` and sends it with every state-changing request; the
//! application server checks it with `verify_csrf_token` before acting.

use super::check::{admitted, by_token, writable};
use super::{args, lookup::Live};
use crate::definer;
use crate::errors::ApiResult;
use crate::identity::{self, Scope};
use crate::token;
use pgrx::prelude::*;

/// The CSRF token of the session `session_token` belongs to (43 characters of URL-safe base64),
/// or NULL when it names no active session (or, for a non-admin, another user's). The session
/// is resolved as `validate_session` resolves it: a session bound to a fingerprint needs that
/// `fingerprint` (a mismatch is NULL and a `suspicious` event), and an earlier token of a rotated
/// session revokes it (`token_reuse`). The same for every token the session has (rotation does not
/// change it); it stops verifying when the session ends. Records no activity. `22023` for a
/// missing or malformed `session_token`, or an empty `fingerprint`.
#[pg_extern(volatile, parallel_unsafe)]
fn session_csrf_token(
    session_token: Option<&str>,
    fingerprint: default!(Option<&str>, "NULL"),
) -> Option<String> {
    definer::as_owner(|| {
        let (token, fingerprint, scope) = arguments(session_token, fingerprint)?;
        Ok(session_of(token, fingerprint, scope)
            .map(|live| token::csrf(&live.token_key(), live.id.as_bytes())))
    })
}

/// Whether `csrf_token` is the CSRF token of the active session `session_token` belongs to,
/// compared in constant time; the session resolved as for `session_csrf_token`. A wrong, NULL or
/// empty `csrf_token`, or a session that has ended, is `false`, never an error; `22023` for a
/// missing or malformed `session_token`, or an empty `fingerprint`.
#[pg_extern(volatile, parallel_unsafe)]
fn verify_csrf_token(
    session_token: Option<&str>,
    csrf_token: Option<&str>,
    fingerprint: default!(Option<&str>, "NULL"),
) -> bool {
    definer::as_owner(|| {
        let (token, fingerprint, scope) = arguments(session_token, fingerprint)?;
        // The session is looked up even without a CSRF token: a presented earlier token is
        // detected as reused here too.
        let session = session_of(token, fingerprint, scope);
        Ok(session.zip(csrf_token).is_some_and(|(live, presented)| {
            token::csrf_matches(&live.token_key(), live.id.as_bytes(), presented)
        }))
    })
}

fn arguments<'a>(
    session_token: Option<&'a str>,
    fingerprint: Option<&'a str>,
) -> ApiResult<(&'a str, Option<&'a str>, Scope)> {
    let token = args::session_token(session_token, "session_token")?;
    let fingerprint = args::optional_text(fingerprint, "fingerprint")?;
    Ok((token, fingerprint, identity::scope()?))
}

/// The active session a token stands for, if the caller may use it; no activity is recorded.
fn session_of(token: &str, fingerprint: Option<&str>, scope: Scope) -> Option<Live> {
    let (live, _) = by_token(token, None)?;
    admitted(&live, scope, fingerprint, writable()).then_some(live)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{act_as_user, create, ALICE, BOB};
    use pgrx::prelude::*;

    fn csrf_of(token: &str) -> Option<String> {
        Spi::get_one(&format!("SELECT session_ext.session_csrf_token('{token}')")).unwrap()
    }

    fn verifies(token: &str, csrf_token: Option<&str>) -> bool {
        let csrf_token = csrf_token.map_or("NULL".into(), |value| format!("'{}'", value.replace('\'', "''")));
        Spi::get_one(&format!("SELECT session_ext.verify_csrf_token('{token}', {csrf_token})"))
            .unwrap()
            .unwrap()
    }

    /// Everything stored about sessions, row versions included, to show that a call wrote nothing.
    fn stored() -> Option<String> {
        Spi::get_one(
            "SELECT md5((SELECT string_agg(s::text || s.ctid::text, ',' ORDER BY s.id) FROM session_ext.user_sessions s)
                     || (SELECT count(*) FROM session_ext.session_audit_log))",
        )
        .unwrap()
    }

    #[pg_test]
    fn a_sessions_csrf_token_verifies_and_nothing_else_does() {
        let (_, token) = create(ALICE, "");
        let (_, other) = create(ALICE, "");
        let before = stored();
        let csrf = csrf_of(&token).expect("an active session has a CSRF token");
        let others = csrf_of(&other).unwrap();
        assert_eq!(csrf.len(), 43);
        assert_eq!(csrf_of(&token).as_deref(), Some(csrf.as_str()), "stable");
        assert_ne!(csrf, others, "each session has its own");
        assert!(verifies(&token, Some(&csrf)));
        for wrong in
            [None, Some(""), Some(others.as_str()), Some(&csrf[..42]), Some(token.as_str()), Some("'; --")]
        {
            assert!(!verifies(&token, wrong), "{wrong:?} verified");
        }
        assert_eq!(stored(), before, "asking for and checking CSRF tokens writes nothing");
    }

    #[pg_test]
    fn the_csrf_token_survives_rotation_and_dies_with_the_session() {
        let (id, token) = create(ALICE, "");
        let csrf = csrf_of(&token).unwrap();
        let rotated =
            Spi::get_one::<String>(&format!("SELECT token FROM session_ext.rotate_session_token('{token}')"))
                .unwrap()
                .unwrap();
        assert_eq!(csrf_of(&rotated).as_deref(), Some(csrf.as_str()));
        assert!(verifies(&rotated, Some(&csrf)));
        // Within the grace the replaced token stands for the session, as in validate_session.
        assert!(verifies(&token, Some(&csrf)));
        Spi::run(&format!("SELECT session_ext.revoke_session('{id}')")).unwrap();
        assert_eq!(csrf_of(&rotated), None);
        assert!(!verifies(&rotated, Some(&csrf)));
    }

    #[pg_test]
    fn presenting_an_earlier_token_for_a_csrf_check_is_a_reuse() {
        let (id, token) = create(ALICE, "");
        let csrf = csrf_of(&token).unwrap();
        Spi::run(&format!("SELECT session_ext.rotate_session_token('{token}')")).unwrap();
        Spi::run("SET LOCAL session_ext.rotation_grace = 0").unwrap();
        assert!(!verifies(&token, Some(&csrf)));
        let reason = Spi::get_one::<String>(&format!(
            "SELECT revoke_reason FROM session_ext.user_sessions WHERE id = '{id}'"
        ));
        assert_eq!(reason.unwrap().as_deref(), Some("token_reuse"));
    }

    #[pg_test]
    fn an_expired_or_idle_session_has_no_csrf_token() {
        let (expired, expired_token) = create(ALICE, "");
        let (idle, idle_token) = create(ALICE, ", idle_timeout => '1 minute'");
        let csrf = [csrf_of(&expired_token).unwrap(), csrf_of(&idle_token).unwrap()];
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET expires_at = now() - interval '1 second', valid_until = now() - interval '1 second' WHERE id = '{expired}';
             UPDATE session_ext.user_sessions SET last_active_at = now() - interval '2 minutes', valid_until = now() - interval '1 minute' WHERE id = '{idle}'"
        ))
        .unwrap();
        for (token, csrf) in [(&expired_token, &csrf[0]), (&idle_token, &csrf[1])] {
            assert_eq!(csrf_of(token), None);
            assert!(!verifies(token, Some(csrf)));
        }
    }

    #[pg_test]
    fn a_session_bound_to_a_fingerprint_needs_it_as_validate_session_does() {
        let (id, token) = create(ALICE, ", fingerprint => 'laptop'");
        let csrf =
            Spi::get_one::<String>(&format!("SELECT session_ext.session_csrf_token('{token}', 'laptop')"))
                .unwrap()
                .expect("with its fingerprint");
        let with = |fingerprint: &str| {
            Spi::get_one::<bool>(&format!(
                "SELECT session_ext.verify_csrf_token('{token}', '{csrf}', {fingerprint})"
            ))
            .unwrap()
            .unwrap()
        };
        assert!(with("'laptop'"));
        let suspicious = || {
            crate::testing::count(&format!(
                "SELECT count(*) FROM session_ext.session_audit_log WHERE session_id = '{id}' AND event = 'suspicious'"
            ))
        };
        assert_eq!(suspicious(), 0);
        assert!(!with("NULL"));
        assert!(!with("'phone'"));
        assert_eq!(csrf_of(&token), None);
        assert_eq!(suspicious(), 3, "each mismatch is recorded, as validate_session records it");
    }

    #[pg_test]
    fn csrf_tokens_work_in_a_read_only_transaction() {
        let (_, token) = create(ALICE, "");
        let csrf = csrf_of(&token).unwrap();
        Spi::run("SET LOCAL transaction_read_only = on").unwrap();
        assert_eq!(csrf_of(&token).as_deref(), Some(csrf.as_str()));
        assert!(verifies(&token, Some(&csrf)));
    }

    #[pg_test]
    fn a_non_admin_gets_no_csrf_token_for_another_users_session() {
        let (_, bobs) = create(BOB, "");
        let csrf = csrf_of(&bobs).unwrap();
        act_as_user(ALICE);
        assert_eq!(csrf_of(&bobs), None);
        assert!(!verifies(&bobs, Some(&csrf)));
    }
}
