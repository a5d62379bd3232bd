//! `rotate_session_token` (SPEC §4 "Changing"): a new token for a session, the old one dead.
//! The new token is derived from the old one (`crate::token`), so rotating the same token again
//! within `session_ext.rotation_grace` returns the same new token; after the grace, or for any
//! earlier token, the presentation is reuse and revokes the session (`family`, `reuse`).

use super::family::{self, Presented};
use super::{active, args, lookup, reuse, Subject};
use crate::db::{Columns, Statement, BYTEA, UUID};
use crate::definer;
use crate::events::{self, Event};
use crate::identity;
use crate::token;
use crate::types::NewSession;
use pgrx::prelude::*;
use serde_json::json;

// Rotating counts as activity. rotated_at is the wall-clock moment, not the transaction's
// start: the grace window starts when the new token exists. A transaction older than the last
// activity write moves valid_until back, so cleanup_after follows it down (never later than
// valid_until; a rotation is never a HOT update anyway). A session's first rotation
// remembers its first token, the family's root, by hash.
static ROTATE: Statement = Statement::new(
    concat!(
        "UPDATE session_ext.user_sessions s
            SET token_hash = $3, token_generation = s.token_generation + 1,
                root_token_hashes = CASE WHEN s.token_generation = 0
                    THEN pg_catalog.array_append(s.root_token_hashes, s.token_hash)
                    ELSE s.root_token_hashes END,
                rotated_at = pg_catalog.clock_timestamp(), last_active_at = pg_catalog.now(),
                valid_until = LEAST(s.expires_at, pg_catalog.now() + s.idle_timeout),
                cleanup_after = LEAST(s.cleanup_after, s.expires_at, pg_catalog.now() + s.idle_timeout)
          WHERE s.id = $1 AND s.token_hash = $2 AND ",
        active!(),
        " RETURNING s.id, s.user_id, s.ip_address, s.session_id, s.expires_at"
    ),
    &[UUID, BYTEA, BYTEA],
);

/// A new token for the session of `session_token`; the old token stops working once
/// `session_ext.rotation_grace` has passed. Within the grace, rotating the old token again
/// returns the same new token. NULL when the token belongs to no active session, or is an earlier
/// token of its session (which revokes the session: reason `token_reuse`). 42501 for another
/// user's current token.
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_session_token(session_token: Option<&str>) -> Option<NewSession> {
    definer::as_owner(|| {
        let presented = args::session_token(session_token, "session_token")?;
        let hash = token::hash(presented);
        let scope = identity::scope()?;
        let live = lookup::live(lookup::Key::Token(&hash), None);
        Spi::connect(|client| {
            if let Some(live) = live {
                scope.authorize(live.user_id)?;
                let generation = live.token_generation as u64 + 1;
                let next = token::derive(&live.token_key(), live.id.as_bytes(), generation, presented);
                let args = [live.id.into(), hash.as_slice().into(), token::hash(&next).as_slice().into()];
                // Nothing when a concurrent call rotated or revoked it first: then it is known below.
                if let Some(row) = ROTATE.one(client, &args) {
                    let subject = Subject::from_row(&row, 1);
                    events::record(
                        client,
                        Event::Rotate,
                        Some(&subject),
                        json!({ "generation": generation }),
                    );
                    let session_id = row.col(4).expect("session_id is NOT NULL");
                    let expires_at = row.col(5).expect("expires_at is NOT NULL");
                    return Ok(Some(NewSession::new(subject.id, session_id, next, expires_at)));
                }
            }
            Ok(match family::recognize(client, presented, &hash) {
                Presented::Replaced { member, current } => {
                    scope.authorize(member.subject.user_id)?;
                    Some(NewSession::new(member.subject.id, member.session_id, current, member.expires_at))
                }
                Presented::Earlier(member) => {
                    reuse::presented_again(client, &member);
                    None
                }
                Presented::Unknown => None,
            })
        })
    })
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

    /// The session's state: "generation/revoke_reason", and its audit rows' events in order.
    fn state(id: &pgrx::Uuid) -> (String, String) {
        let row = format!(
            "SELECT token_generation || '/' || coalesce(revoke_reason, '-') FROM session_ext.user_sessions WHERE id = '{id}'"
        );
        let events = format!(
            "SELECT coalesce(string_agg(event, ',' ORDER BY id), '') FROM session_ext.session_audit_log WHERE session_id = '{id}'"
        );
        (Spi::get_one::<String>(&row).unwrap().unwrap(), Spi::get_one::<String>(&events).unwrap().unwrap())
    }

    /// Moves the session's last rotation `seconds` into the past.
    fn age_rotation(id: &pgrx::Uuid, seconds: u32) {
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET rotated_at = now() - interval '{seconds}s' WHERE id = '{id}'"
        ))
        .unwrap();
    }

    #[pg_test]
    fn the_new_token_is_derived_and_the_first_one_becomes_the_root() {
        let (id, t0) = create(ALICE, ", session_id => 'web:1'");
        let t1 = rotate(&t0).expect("an active session rotates");
        assert_eq!(t1.len(), 98, "a derived token");
        assert!(validates(&t1));
        let row = format!(
            "SELECT count(*) FROM session_ext.user_sessions
              WHERE id = '{id}' AND session_id = 'web:1' AND token_hash = sha256('{t1}'::bytea)
                AND root_token_hashes = ARRAY[sha256('{t0}'::bytea)] AND token_generation = 1
                AND length(token_key) = 32 AND revoked_at IS NULL"
        );
        assert_eq!(count(&row), 1);
        let t2 = rotate(&t1).unwrap();
        assert_eq!(count(&format!("SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}' AND cardinality(root_token_hashes) = 1 AND token_generation = 2 AND token_hash = sha256('{t2}'::bytea)")), 1, "only roots are remembered");
        assert_eq!(state(&id), ("2/-".into(), "create,rotate,rotate".into()));
    }

    #[pg_test]
    fn within_the_grace_the_replaced_token_validates_and_rotates_to_the_same_token() {
        let (id, t0) = create(ALICE, "");
        let t1 = rotate(&t0).unwrap();
        assert!(validates(&t0), "the replaced token still validates");
        assert_eq!(rotate(&t0).as_deref(), Some(t1.as_str()), "a retry converges on the same token");
        age_rotation(&id, 9);
        assert_eq!(rotate(&t0).as_deref(), Some(t1.as_str()));
        assert!(validates(&t1));
        assert_eq!(state(&id), ("1/-".into(), "create,rotate".into()), "a retry writes nothing");
    }

    #[pg_test]
    fn after_the_grace_the_replaced_token_revokes() {
        let (id, t0) = create(ALICE, "");
        let t1 = rotate(&t0).unwrap();
        age_rotation(&id, 11);
        assert_eq!(rotate(&t0), None);
        assert!(!validates(&t1), "the thief's token is dead");
        assert_eq!(state(&id), ("1/token_reuse".into(), "create,rotate,token_reuse,revoke".into()));
    }

    #[pg_test]
    fn every_earlier_token_of_the_family_revokes_and_the_current_one_does_not() {
        for earlier in 0..3 {
            let (id, t0) = create(ALICE, "");
            let mut tokens = vec![t0];
            for _ in 0..3 {
                tokens.push(rotate(tokens.last().unwrap()).unwrap());
            }
            assert!(validates(&tokens[3]), "presenting the current token revokes nothing");
            assert_eq!(state(&id).0, "3/-");
            // Earlier than the parent: reuse even within the grace.
            if earlier == 2 {
                age_rotation(&id, 11);
            }
            assert!(!validates(&tokens[earlier]), "T{earlier}");
            assert_eq!(
                state(&id),
                ("3/token_reuse".into(), "create,rotate,rotate,rotate,token_reuse,revoke".into()),
                "T{earlier}"
            );
            assert!(!validates(&tokens[3]));
        }
    }

    #[pg_test]
    fn with_no_grace_the_replaced_token_is_reuse_at_once() {
        Spi::run("SET session_ext.rotation_grace = 0").unwrap();
        let (id, t0) = create(ALICE, "");
        let t1 = rotate(&t0).unwrap();
        assert!(!validates(&t0));
        assert!(!validates(&t1));
        assert_eq!(state(&id).0, "1/token_reuse");
    }

    #[pg_test]
    fn a_forged_token_of_the_rotated_shape_revokes_nothing() {
        let (id, t0) = create(ALICE, "");
        let t1 = rotate(&t0).unwrap();
        let t2 = rotate(&t1).unwrap();
        // Generation 1 with a guessed MAC: the shape of T1, not its key's work.
        let forged = format!("{}{}", &t1[..40], if &t1[40..41] == "A" { "B" } else { "A" }) + &t1[41..];
        assert!(!validates(&forged));
        assert_eq!(rotate(&forged), None);
        assert!(validates(&t2));
        assert_eq!(state(&id).0, "2/-");
    }

    #[pg_test]
    fn a_reused_token_of_a_dead_session_is_recorded_and_revokes_nothing_more() {
        let (id, t0) = create(ALICE, "");
        rotate(&t0).unwrap();
        Spi::run(&format!("SELECT session_ext.revoke_session('{id}')")).unwrap();
        age_rotation(&id, 11);
        assert_eq!(rotate(&t0), None);
        assert_eq!(state(&id), ("1/logout".into(), "create,rotate,revoke,token_reuse".into()));
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
