//! Checking sessions (SPEC §4 "Checking"): `is_session_active` and the hot path,
//! `validate_session`.

use super::{args, session_info_row};
use crate::db::{self, Statement, BYTEA, INTERVAL, UUID};
use crate::errors::boundary;
use crate::identity::{self, Scope};
use crate::settings;
use crate::token;
use crate::types::SessionInfo;
use pgrx::prelude::*;
use pgrx::Uuid;

static ACTIVE_BY_ID: Statement = Statement::read(
    "SELECT s.user_id, s.revoked_at IS NULL AND s.valid_until > pg_catalog.now()
       FROM session_ext.user_sessions s
      WHERE s.id = $1",
    &[UUID],
);

/// True only for a session that exists, is not revoked, and has neither expired nor idled out.
/// Unknown ids, and for non-admins other users' sessions, are simply false.
#[pg_extern(stable, parallel_restricted, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn is_session_active(session_id: Option<Uuid>) -> bool {
    boundary(|| {
        let id = args::required(session_id, "session_id")?;
        let scope = identity::scope()?;
        let found = Spi::connect(|client| {
            let table = ACTIVE_BY_ID.run(client, &[id.into()]);
            (!table.is_empty()).then(|| (db::get::<Uuid>(&table, 1), db::get::<bool>(&table, 2)))
        });
        Ok(matches!(found, Some((Some(owner), Some(true))) if scope.covers(owner)))
    })
}

static LIVE_BY_TOKEN: Statement = Statement::read(
    concat!(
        "SELECT s.id, s.user_id, s.fingerprint_hash, s.last_active_at < pg_catalog.now() - $2, ",
        session_info_row!(),
        " FROM session_ext.user_sessions s
         WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.valid_until > pg_catalog.now()"
    ),
    &[BYTEA, INTERVAL],
);

// Re-checks staleness so that concurrent validations of one session write once.
static TOUCH: Statement = Statement::write(
    concat!(
        "UPDATE session_ext.user_sessions s
            SET last_active_at = pg_catalog.now(),
                valid_until = LEAST(s.expires_at, pg_catalog.now() + s.idle_timeout)
          WHERE s.id = $1 AND s.last_active_at < pg_catalog.now() - $2
            AND s.revoked_at IS NULL AND s.valid_until > pg_catalog.now()
      RETURNING ",
        session_info_row!()
    ),
    &[UUID, INTERVAL],
);

/// The session a bearer token belongs to, or NULL. Activity is recorded at most once per
/// `session_ext.touch_interval`, and never in a read-only transaction (hot standby, or a
/// PostgREST GET).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn validate_session(
    session_token: Option<&str>,
    fingerprint: default!(Option<&str>, "NULL"),
) -> Option<SessionInfo> {
    boundary(|| {
        let token = args::session_token(session_token, "session_token")?;
        let fingerprint = args::optional_text(fingerprint, "fingerprint")?;
        let scope = identity::scope()?;
        Ok(validate(token, fingerprint, scope))
    })
}

fn validate(token: &str, fingerprint: Option<&str>, scope: Scope) -> Option<SessionInfo> {
    let hash = token::hash(token);
    let touch_interval = settings::touch_interval();
    Spi::connect(|client| {
        let found = LIVE_BY_TOKEN.run(client, &[hash.as_slice().into(), touch_interval.into()]);
        if found.is_empty() {
            return None;
        }
        let id = db::get::<Uuid>(&found, 1)?;
        let owner = db::get::<Uuid>(&found, 2)?;
        let bound_to = db::get::<Vec<u8>>(&found, 3);
        if !scope.covers(owner) || !fingerprint_matches(bound_to.as_deref(), fingerprint) {
            return None;
        }
        let stale = db::get::<bool>(&found, 4) == Some(true);
        // SAFETY: reads a backend-global flag.
        if stale && !unsafe { pg_sys::XactReadOnly } {
            let touched = TOUCH.run(client, &[id.into(), touch_interval.into()]);
            if !touched.is_empty() {
                return db::get_varlena(&touched, 1).map(SessionInfo);
            }
        }
        db::get_varlena(&found, 5).map(SessionInfo)
    })
}

/// A session bound to a fingerprint validates only with that fingerprint; an unbound session
/// ignores one.
fn fingerprint_matches(bound_to: Option<&[u8]>, presented: Option<&str>) -> bool {
    match (bound_to, presented) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(hash), Some(value)) => hash == token::hash(value),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{act_as_user, count, create, ALICE, BOB};
    use pgrx::prelude::*;

    fn validates(token: &str, fingerprint: &str) -> bool {
        // Not `IS NOT NULL`: that is false for a row with any NULL field.
        let sql = format!("SELECT (session_ext.validate_session('{token}', {fingerprint})).id IS NOT NULL");
        Spi::get_one::<bool>(&sql).unwrap().unwrap()
    }

    fn is_active(id: &pgrx::Uuid) -> bool {
        Spi::get_one::<bool>(&format!("SELECT session_ext.is_session_active('{id}')")).unwrap().unwrap()
    }

    fn set(id: &pgrx::Uuid, assignments: &str) {
        Spi::run(&format!("UPDATE session_ext.user_sessions SET {assignments} WHERE id = '{id}'")).unwrap();
    }

    #[pg_test]
    fn activity_is_written_at_most_once_per_touch_interval() {
        let (id, token) = create(ALICE, ", idle_timeout => '1h'");
        let last_active =
            format!("SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}' AND last_active_at = ");

        set(&id, "last_active_at = now() - interval '30s'");
        assert!(validates(&token, "NULL"));
        assert_eq!(
            count(&format!("{last_active} now() - interval '30s'")),
            1,
            "within the interval: no write"
        );

        set(&id, "last_active_at = now() - interval '61s', valid_until = now() + interval '59 min'");
        assert!(validates(&token, "NULL"));
        assert_eq!(count(&format!("{last_active} now() AND valid_until = now() + interval '1h'")), 1);
    }

    #[pg_test]
    fn a_read_only_transaction_validates_without_writing() {
        let (id, token) = create(ALICE, "");
        set(&id, "last_active_at = now() - interval '10 min'");
        Spi::run("SET LOCAL transaction_read_only = on").unwrap();
        assert!(validates(&token, "NULL"));
        let unchanged = format!(
            "SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}' AND last_active_at = now() - interval '10 min'"
        );
        assert_eq!(count(&unchanged), 1);
    }

    #[pg_test]
    fn expiry_absolute_and_idle() {
        let (absolute, absolute_token) = create(ALICE, "");
        let (idle, idle_token) = create(ALICE, "");
        let (live, live_token) = create(ALICE, "");
        set(&absolute, "created_at = now() - interval '2 days', expires_at = now() - interval '1s', valid_until = now() - interval '1s'");
        set(&idle, "last_active_at = now() - interval '2h', valid_until = now() - interval '1h'");
        assert!(!is_active(&absolute) && !validates(&absolute_token, "NULL"));
        assert!(!is_active(&idle) && !validates(&idle_token, "NULL"));
        assert!(is_active(&live) && validates(&live_token, "NULL"));
    }

    #[pg_test]
    fn revoked_sessions_do_not_validate() {
        let (id, token) = create(ALICE, "");
        set(&id, "revoked_at = now(), revoke_reason = 'logout'");
        assert!(!is_active(&id));
        assert!(!validates(&token, "NULL"));
    }

    #[pg_test]
    fn a_bound_fingerprint_must_match() {
        let (_, token) = create(ALICE, ", fingerprint => 'device-a'");
        assert!(validates(&token, "'device-a'"));
        assert!(!validates(&token, "'device-b'"));
        assert!(!validates(&token, "NULL"));
        let (_, unbound) = create(ALICE, "");
        assert!(validates(&unbound, "'anything'"));
    }

    #[pg_test]
    fn unknown_sessions_are_inactive() {
        assert!(!is_active(&pgrx::Uuid::from_bytes([7; 16])));
        assert!(!validates(&"x".repeat(43), "NULL"));
    }

    #[pg_test]
    fn users_see_only_their_own_sessions() {
        let (bobs, bobs_token) = create(BOB, "");
        let (alices, alices_token) = create(ALICE, "");
        act_as_user(ALICE);
        assert!(is_active(&alices) && validates(&alices_token, "NULL"));
        assert!(!is_active(&bobs), "another user's session reads as inactive");
        assert!(!validates(&bobs_token, "NULL"), "another user's token does not validate");
    }
}

#[cfg(test)]
mod unit_tests {
    use super::fingerprint_matches;
    use crate::token::hash;

    #[test]
    fn fingerprint_binding() {
        let bound = hash("device-a");
        assert!(fingerprint_matches(None, None));
        assert!(fingerprint_matches(None, Some("anything")));
        assert!(fingerprint_matches(Some(&bound), Some("device-a")));
        assert!(!fingerprint_matches(Some(&bound), Some("device-b")));
        assert!(!fingerprint_matches(Some(&bound), None));
    }
}
