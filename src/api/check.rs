//! Checking sessions (SPEC §4 "Checking"): `is_session_active`, `get_session`,
//! `touch_session` and the hot path, `validate_session`.

use super::activity::{self, Written};
use super::family::{self, Presented};
use super::lookup::{self, Key, Live};
use super::{active, args, on_own_session, on_session, reuse, session_info_row, Subject};
use crate::db::{Columns, Statement, INTERVAL, UUID};
use crate::definer;
use crate::events::{self, Event};
use crate::identity::{self, Scope};
use crate::settings;
use crate::token::{self, TokenHash};
use crate::types::SessionInfo;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use serde_json::json;

static ACTIVE_BY_ID: Statement = Statement::stable(
    concat!("SELECT s.user_id, ", active!(), " FROM session_ext.user_sessions s WHERE s.id = $1"),
    &[UUID],
);

/// True only for a session that exists, is not revoked, and has neither expired nor idled out.
/// Unknown ids, and for non-admins other users' sessions, are simply false.
#[pg_extern(stable, parallel_restricted)]
fn is_session_active(session_id: Option<Uuid>) -> bool {
    definer::as_owner(|| {
        on_session(session_id, "session_id", |client, id, scope| {
            let found =
                ACTIVE_BY_ID.one(client, &[id.into()]).map(|row| (row.col::<Uuid>(1), row.col::<bool>(2)));
            Ok(matches!(found, Some((Some(owner), Some(true))) if scope.covers(owner))
                && !lookup::revoked_meanwhile(id))
        })
    })
}

static INFO_BY_ID: Statement = Statement::stable(
    concat!("SELECT s.user_id, ", session_info_row!(), " FROM session_ext.user_sessions s WHERE s.id = $1"),
    &[UUID],
);

/// A session by id, whatever its state (revoked and expired ones show why), without secrets.
/// NULL for an unknown id.
#[pg_extern(stable, parallel_restricted)]
fn get_session(session_id: Option<Uuid>) -> Option<SessionInfo> {
    definer::as_owner(|| {
        on_session(session_id, "session_id", |client, id, scope| {
            let Some(row) = INFO_BY_ID.one(client, &[id.into()]) else { return Ok(None) };
            scope.authorize(row.col(1).expect("user_id is NOT NULL"))?;
            Ok(row.varlena(2).map(SessionInfo))
        })
    })
}

// Unlike the activity write, this one may move valid_until back (a transaction older than the
// last write); cleanup_after then follows it, never later than valid_until.
static TOUCH_NOW: Statement = Statement::new(
    concat!(
        "UPDATE session_ext.user_sessions s
            SET last_active_at = pg_catalog.now(),
                valid_until = LEAST(s.expires_at, pg_catalog.now() + s.idle_timeout),
                cleanup_after = LEAST(s.cleanup_after, s.expires_at, pg_catalog.now() + s.idle_timeout)
          WHERE s.id = $1 AND ",
        active!(),
        " RETURNING s.last_active_at"
    ),
    &[UUID],
);

/// Records activity on an active session now, whatever `touch_interval` says; returns the new
/// `last_active_at`, or NULL for a session that is unknown or no longer active.
#[pg_extern(volatile, parallel_unsafe)]
fn touch_session(session_id: Option<Uuid>) -> Option<TimestampWithTimeZone> {
    definer::as_owner(|| {
        on_own_session(session_id, "session_id", None, |client, id, _| {
            TOUCH_NOW.one(client, &[id.into()]).and_then(|row| row.col(1))
        })
    })
}

// Re-checks staleness so that concurrent validations of one session write once; a row another
// transaction holds is skipped, never waited for (the write is optional).
static TOUCH: Statement = Statement::new(
    concat!(
        "UPDATE session_ext.user_sessions s
            SET last_active_at = pg_catalog.now(),
                valid_until = LEAST(s.expires_at, pg_catalog.now() + s.idle_timeout)
          WHERE s.ctid = ANY (ARRAY(SELECT h.ctid FROM session_ext.user_sessions h WHERE h.id = $1
                                       FOR NO KEY UPDATE SKIP LOCKED))
            AND s.last_active_at < pg_catalog.now() - $2 AND ",
        active!(),
        " RETURNING ",
        session_info_row!()
    ),
    &[UUID, INTERVAL],
);

/// The session a bearer token belongs to, or NULL. Activity is recorded at most once per
/// `session_ext.touch_interval`. Within `session_ext.rotation_grace` after a rotation, the
/// token it replaced still validates; any other earlier token of the session revokes it
/// (`token_reuse`, committed even if the calling transaction rolls back). In a read-only
/// transaction (a PostgREST GET) no activity or audit row is written, and on a hot standby
/// nothing at all.
#[pg_extern(volatile, parallel_unsafe)]
fn validate_session(
    session_token: Option<&str>,
    fingerprint: default!(Option<&str>, "NULL"),
) -> Option<SessionInfo> {
    definer::as_owner(|| {
        let token = args::session_token(session_token, "session_token")?;
        let fingerprint = args::optional_text(fingerprint, "fingerprint")?;
        let scope = identity::scope()?;
        Ok(validate(token, fingerprint, scope))
    })
}

fn validate(token: &str, fingerprint: Option<&str>, scope: Scope) -> Option<SessionInfo> {
    let writable = writable();
    let (live, hash) = by_token(token, activity_due(writable))?;
    admitted(&live, scope, fingerprint, writable).then(|| record_activity(live, Key::Token(&hash)))?
}

/// Whether the caller may use the session `live` a token led to: its own (or the caller is an
/// admin), and, for a session bound to a fingerprint, with that fingerprint. A mismatch is
/// recorded as a `suspicious` event when the transaction may write.
pub(super) fn admitted(live: &Live, scope: Scope, fingerprint: Option<&str>, writable: bool) -> bool {
    if !scope.covers(live.user_id) {
        return false;
    }
    if fingerprint_matches(live.fingerprint_hash.as_deref(), fingerprint) {
        return true;
    }
    if writable {
        Spi::connect(|client| {
            let subject = Subject::of(client, live.id);
            events::record(
                client,
                Event::Suspicious,
                subject.as_ref(),
                json!({ "reason": "fingerprint_mismatch" }),
            );
        });
    }
    false
}

/// The active session `token` stands for, with the hash of its current token: the token itself,
/// or the token that replaced it within the rotation grace. An earlier token of a rotated session
/// revokes it (`token_reuse`) and finds nothing. `due_before` as for [`lookup::live`].
pub(super) fn by_token(token: &str, due_before: Option<pg_sys::TimestampTz>) -> Option<(Live, TokenHash)> {
    let hash = token::hash(token);
    if let Some(live) = lookup::live(Key::Token(&hash), due_before) {
        return Some((live, hash));
    }
    let hash = Spi::connect(|client| successor(client, token, &hash))?;
    Some((lookup::live(Key::Token(&hash), due_before)?, hash))
}

/// When the transaction may write, the moment before which a session's last activity is due to
/// be written again (`session_ext.touch_interval` ago), for `lookup::live`.
pub(super) fn activity_due(writable: bool) -> Option<pg_sys::TimestampTz> {
    let touch_after = i64::from(settings::TOUCH_INTERVAL.get()) * 1_000_000;
    // SAFETY: reads the transaction's start time, which is now().
    writable.then(|| unsafe { pg_sys::GetCurrentTransactionStartTimestamp() } - touch_after)
}

/// How often a write that lost its row to another transaction looks again before it gives up
/// the write (and returns the session as the last look found it).
const WRITE_ATTEMPTS: usize = 3;

/// The session `live`, found by `key`, with its activity recorded when it was due
/// ([`activity_due`]); None when it turns out to have ended meanwhile.
pub(super) fn record_activity(mut live: Live, key: Key<'_>) -> Option<SessionInfo> {
    for _ in 0..WRITE_ATTEMPTS {
        let Some(due) = live.due else { return Some(SessionInfo(live.info)) };
        match activity::write(due) {
            Written::Done(written) => return Some(SessionInfo(written.info)),
            // Another transaction changed the row first, as an UPDATE would find it: a
            // validation that recorded the activity (nothing is due now), a revocation (the
            // session is gone), or another write (cleanup moving cleanup_after, a data update:
            // the activity is still due). A fresh look tells which.
            Written::Raced => live = lookup::live(key, activity_due(true))?,
            Written::Skipped => return Some(SessionInfo(live.info)),
            Written::ByExecutor => return by_executor(live, key),
        }
    }
    Some(SessionInfo(live.info))
}

/// The activity write through SPI, for a table that needs the executor.
fn by_executor(live: Live, key: Key<'_>) -> Option<SessionInfo> {
    let touched = Spi::connect(|client| {
        TOUCH.one(client, &[live.id.into(), settings::touch_interval().into()]).and_then(|row| row.varlena(1))
    });
    // Matching nothing means another transaction wrote first (the executor's recheck found the
    // activity recorded, or the session ended), or holds the row. A fresh look tells which.
    match touched {
        Some(info) => Some(SessionInfo(info)),
        None => lookup::live(key, None).map(|live| SessionInfo(live.info)),
    }
}

/// Whether this transaction may write (not a read-only one, not on a standby).
pub(super) fn writable() -> bool {
    // SAFETY: reads a backend-global flag.
    !unsafe { pg_sys::XactReadOnly }
}

/// The hash of the token that a token which is no session's current one stands for: its
/// successor when it was replaced within the grace window. An earlier token revokes its session.
fn successor(client: &SpiClient<'_>, token: &str, hash: &TokenHash) -> Option<TokenHash> {
    match family::recognize(client, token, hash) {
        Presented::Replaced { current, .. } => Some(token::hash(&current)),
        Presented::Earlier(member) => {
            reuse::presented_again(client, &member);
            None
        }
        Presented::Unknown => None,
    }
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

    /// An activity write changes no indexed column, so PostgreSQL makes it a HOT update: no new
    /// entry in any index of the table.
    #[pg_test]
    fn an_activity_write_is_a_hot_update() {
        let (id, token) = create(ALICE, ", idle_timeout => '1h'");
        set(&id, "last_active_at = now() - interval '2 min'");
        let updates = "SELECT pg_stat_get_xact_tuples_updated(t.oid) * 1000 + pg_stat_get_xact_tuples_hot_updated(t.oid)
                         FROM pg_class t WHERE t.oid = 'session_ext.user_sessions'::regclass";
        let before = count(updates);
        assert!(validates(&token, "NULL"));
        assert_eq!(count(updates) - before, 1001, "one update, and it was HOT");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}' AND last_active_at = now()"
            )),
            1
        );
    }

    /// With an index on what it changes, the write is not HOT: the new version gets its entries
    /// in every index, so each lookup still finds the session.
    #[pg_test]
    fn an_activity_write_that_cannot_be_hot_indexes_the_new_version() {
        // Tests run at once: the change of definition comes before any write that could wait.
        Spi::run("CREATE INDEX active_idx ON session_ext.user_sessions (last_active_at)").unwrap();
        let (id, token) = create(ALICE, ", idle_timeout => '1h'");
        set(&id, "last_active_at = now() - interval '2 min'");
        let hot = "SELECT pg_stat_get_xact_tuples_hot_updated('session_ext.user_sessions'::regclass)";
        let before = count(hot);
        assert!(validates(&token, "NULL"));
        assert_eq!(count(hot), before, "not HOT");
        assert!(validates(&token, "NULL"), "by the token index");
        assert!(is_active(&id), "by the primary key");
        Spi::run("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off").unwrap();
        let by_new_index = "SELECT count(*) FROM session_ext.user_sessions WHERE last_active_at = now()";
        assert_eq!(count(by_new_index), 1, "by the index on the changed column");
    }

    /// A write that is not HOT tells each index whether the new version's key is unchanged, as
    /// `ExecUpdate` tells it from the columns the UPDATE sets: changed for an index on
    /// last_active_at, unchanged for one on user_id. The same UPDATE through the executor gives the
    /// same hints.
    #[pg_test]
    fn an_activity_write_that_is_not_hot_hints_each_index_as_exec_update_does() {
        crate::testing::hints::create_access_method();
        Spi::run(
            "CREATE INDEX hint_active ON session_ext.user_sessions USING hint_hash (last_active_at);
             CREATE INDEX hint_user ON session_ext.user_sessions USING hint_hash (user_id);",
        )
        .unwrap();
        let (id, token) = create(ALICE, ", idle_timeout => '1h'");
        let expected =
            vec![("session_ext.hint_active".to_string(), false), ("session_ext.hint_user".to_string(), true)];
        let sorted = |mut hints: Vec<(String, bool)>| {
            hints.sort();
            hints
        };
        set(&id, "last_active_at = now() - interval '2 min'");
        crate::testing::hints::take();
        assert!(validates(&token, "NULL"));
        assert_eq!(sorted(crate::testing::hints::take()), expected, "the direct write");
        set(&id, "last_active_at = now() - interval '3 min', valid_until = now() + interval '1h'");
        assert_eq!(sorted(crate::testing::hints::take()), expected, "ExecUpdate");
    }

    /// As the executor refuses an UPDATE of a table that publishes updates without a replica
    /// identity (subscribers could not apply it), the activity write refuses it.
    #[pg_test(
        error = "cannot update table \"user_sessions\" because it does not have a replica identity and publishes updates"
    )]
    fn an_activity_write_to_a_table_published_without_a_replica_identity_is_refused() {
        // Tests run at once; one that changes the table's definition takes its lock first.
        Spi::run("LOCK TABLE session_ext.user_sessions IN ACCESS EXCLUSIVE MODE").unwrap();
        let (id, token) = create(ALICE, "");
        set(&id, "last_active_at = now() - interval '2 min'");
        Spi::run(
            "CREATE PUBLICATION touched_sessions FOR TABLE session_ext.user_sessions;
             ALTER TABLE session_ext.user_sessions REPLICA IDENTITY NOTHING;",
        )
        .unwrap();
        validates(&token, "NULL");
    }

    /// A table someone gave a trigger gets its activity written by the executor, which fires it.
    #[pg_test]
    fn an_activity_write_to_a_table_with_a_trigger_fires_it() {
        // Tests run at once: the change of definition comes before any write that could wait.
        Spi::run(
            "CREATE TABLE public.touched (id uuid);
             CREATE FUNCTION public.remember_touch() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO public.touched VALUES (NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER remember_touch AFTER UPDATE ON session_ext.user_sessions
               FOR EACH ROW EXECUTE FUNCTION public.remember_touch();",
        )
        .unwrap();
        let (id, token) = create(ALICE, "");
        set(&id, "last_active_at = now() - interval '2 min'");
        Spi::run("TRUNCATE public.touched").unwrap();
        assert!(validates(&token, "NULL"));
        assert_eq!(count(&format!("SELECT count(*) FROM public.touched WHERE id = '{id}'")), 1);
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM session_ext.user_sessions WHERE id = '{id}' AND last_active_at = now()"
            )),
            1
        );
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

    /// validate_session reads as a statement of a VOLATILE function does: after the
    /// transaction's earlier commands, even those of the statement calling it.
    #[pg_test]
    fn a_session_revoked_earlier_in_the_same_statement_does_not_validate() {
        for last_active in ["now()", "now() - interval '10 min'"] {
            let (id, token) = create(ALICE, "");
            set(&id, &format!("last_active_at = {last_active}"));
            let sql = format!(
                "WITH r AS MATERIALIZED (SELECT session_ext.revoke_session('{id}'))
                 SELECT (session_ext.validate_session('{token}')).id IS NOT NULL FROM r"
            );
            assert_eq!(Spi::get_one::<bool>(&sql).unwrap(), Some(false), "last active {last_active}");
        }
    }

    #[pg_test]
    fn revoked_sessions_do_not_validate() {
        let (id, token) = create(ALICE, "");
        set(&id, "revoked_at = now(), revoke_reason = 'logout'");
        assert!(!is_active(&id));
        assert!(!validates(&token, "NULL"));
    }

    #[pg_test]
    fn from_clause_and_expression_calls_return_the_same_row() {
        let (_, token) = create(ALICE, ", device_info => 'phone', ip_address => '192.0.2.1'");
        let from =
            Spi::get_one::<String>(&format!("SELECT v::text FROM session_ext.validate_session('{token}') v"));
        let expression =
            Spi::get_one::<String>(&format!("SELECT session_ext.validate_session('{token}')::text"));
        assert_eq!(from.unwrap(), expression.unwrap());
        let columns =
            format!("SELECT device_info, host(ip_address) FROM session_ext.validate_session('{token}')");
        assert_eq!(
            Spi::get_two::<String, String>(&columns).unwrap(),
            (Some("phone".into()), Some("192.0.2.1".into()))
        );
        // Unknown: one row of NULLs in a FROM clause, NULL as an expression.
        let unknown = "x".repeat(43);
        let nulls =
            format!("SELECT count(*) FROM session_ext.validate_session('{unknown}') v WHERE v.id IS NULL");
        assert_eq!(count(&nulls), 1);
        assert!(!validates(&unknown, "NULL"));
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
