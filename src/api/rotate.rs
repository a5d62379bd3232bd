//! `rotate_session_token` (SPEC §4 "Changing"): a new token for a session, the old one dead.
//! A rotated-away token presented again is evidence of theft: the session is revoked with
//! reason `token_reuse`.

use super::{active, args, replayed, revoke, Subject};
use crate::db::{Columns, Statement, BYTEA, UUID};
use crate::definer;
use crate::errors::ApiResult;
use crate::events::{self, Event};
use crate::identity::{self, Scope};
use crate::token;
use crate::types::NewSession;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::json;

// Rotating counts as activity. rotated_at is the wall-clock moment, not the transaction's
// start, so that a request which began before it can be told apart from a later replay.
static ROTATE: Statement = Statement::new(
    concat!(
        "UPDATE session_ext.user_sessions s
            SET token_hash = $2, previous_token_hash = s.token_hash,
                rotated_at = pg_catalog.clock_timestamp(), last_active_at = pg_catalog.now(),
                valid_until = LEAST(s.expires_at, pg_catalog.now() + s.idle_timeout)
          WHERE s.token_hash = $1 AND ",
        active!(),
        " AND ($3::uuid IS NULL OR s.user_id = $3)
      RETURNING s.id, s.user_id, s.ip_address, s.session_id, s.expires_at"
    ),
    &[BYTEA, BYTEA, UUID],
);

// What a token that did not rotate is: some session's current or previous token, or nothing.
static PRESENTED: Statement = Statement::new(
    concat!(
        "SELECT s.id, s.user_id, s.ip_address, s.token_hash = $1, ",
        active!(),
        ", ",
        replayed!(),
        " FROM session_ext.user_sessions s
         WHERE s.token_hash = $1 OR s.previous_token_hash = $1"
    ),
    &[BYTEA],
);

/// A new token for the session of `session_token`; the old token stops working. NULL when the
/// token belongs to no active session, or was already rotated away (which revokes the session).
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_session_token(session_token: Option<&str>) -> Option<NewSession> {
    definer::as_owner(|| {
        let presented = token::hash(args::session_token(session_token, "session_token")?);
        let scope = identity::scope()?;
        let token = args::new_token()?;
        let only_user = match scope {
            Scope::All => None,
            Scope::User(user) => Some(user),
        };
        Spi::connect(|client| {
            let rotated = ROTATE.one(
                client,
                &[presented.as_slice().into(), token::hash(&token).as_slice().into(), only_user.into()],
            );
            let Some(row) = rotated else {
                return not_rotated(client, &presented, scope).map(|()| None);
            };
            let subject = Subject::from_row(&row, 1);
            events::record(client, Event::Rotate, Some(&subject), json!({}));
            Ok(Some(NewSession::new(
                subject.id,
                row.col(4).expect("session_id is NOT NULL"),
                token,
                row.col(5).expect("expires_at is NOT NULL"),
            )))
        })
    })
}

/// Why a presented token did not rotate: unknown or dead (NULL), another user's (42501), or a
/// rotated-away token presented again (the session is revoked, then NULL). A request that was
/// already under way when the token rotated (two tabs refreshing at once) revokes nothing.
fn not_rotated(client: &SpiClient<'_>, presented: &[u8], scope: Scope) -> ApiResult<()> {
    let Some(row) = PRESENTED.one(client, &[presented.into()]) else {
        return Ok(());
    };
    let subject = Subject::from_row(&row, 1);
    let is_current = row.col::<bool>(4) == Some(true);
    let is_active = row.col::<bool>(5) == Some(true);
    if is_current {
        return if is_active { scope.authorize(subject.user_id) } else { Ok(()) };
    }
    if row.col::<bool>(6) == Some(true) {
        revoke::token_reused(client, &subject, is_active);
    }
    Ok(())
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{count, create, ALICE};
    use pgrx::prelude::*;

    fn rotate(token: &str) -> Option<String> {
        Spi::get_one::<String>(&format!("SELECT (session_ext.rotate_session_token('{token}')).token"))
            .unwrap()
    }

    fn validates(token: &str) -> bool {
        Spi::get_one::<bool>(&format!("SELECT (session_ext.validate_session('{token}')).id IS NOT NULL"))
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn the_new_token_replaces_the_old_one() {
        let (id, old) = create(ALICE, ", session_id => 'web:1'");
        let new = rotate(&old).expect("an active session rotates");
        assert_ne!(new, old);
        assert!(validates(&new));
        assert!(!validates(&old));
        let row = format!(
            "SELECT count(*) FROM session_ext.user_sessions
              WHERE id = '{id}' AND session_id = 'web:1' AND token_hash = sha256('{new}'::bytea)
                AND previous_token_hash = sha256('{old}'::bytea) AND revoked_at IS NULL"
        );
        assert_eq!(count(&row), 1);
    }

    #[pg_test]
    fn a_replay_within_the_rotating_transaction_is_a_race_not_a_reuse() {
        let (id, old) = create(ALICE, "");
        rotate(&old).unwrap();
        // rotated_at is later than this transaction's start, as for any request in flight.
        assert_eq!(rotate(&old), None);
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}' AND revoked_at IS NULL"
            )),
            1
        );
    }

    #[pg_test]
    fn a_replay_after_the_rotation_revokes() {
        let (id, old) = create(ALICE, "");
        let new = rotate(&old).unwrap();
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET rotated_at = now() - interval '1s' WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(rotate(&old), None);
        assert!(!validates(&new));
        let revoked = format!("SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}' AND revoke_reason = 'token_reuse'");
        assert_eq!(count(&revoked), 1);
    }

    #[pg_test]
    fn unknown_and_revoked_tokens_do_not_rotate() {
        assert_eq!(rotate(&"u".repeat(43)), None);
        let (id, token) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET revoked_at = now(), revoke_reason = 'x' WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(rotate(&token), None);
    }
}
