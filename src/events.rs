//! Session events (SPEC §6): one audit row per event while `session_ext.audit` is on, written
//! in the transaction of the change (so a failed call leaves none), and a NOTIFY for the
//! events an application pushes to its open tabs. Neither ever carries a token.

use crate::db::{Columns, Statement, UUID};
use crate::identity;
use crate::rows;
use crate::settings;
use crate::shmem::Refusal;
use crate::types::uuid_text;
use pgrx::datum::{Inet, JsonB, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Create,
    Rotate,
    TokenReuse,
    Revoke,
    DataUpdate,
    Suspicious,
    Cleanup,
    AalChange,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Create => "create",
            Event::Rotate => "rotate",
            Event::TokenReuse => "token_reuse",
            Event::Revoke => "revoke",
            Event::DataUpdate => "data_update",
            Event::Suspicious => "suspicious",
            Event::Cleanup => "cleanup",
            Event::AalChange => "aal_change",
        }
    }

    /// The changes an open tab must hear about: its session ended (a token reuse is followed by
    /// the revoke it causes), its token changed, or its data changed.
    fn notifies(self) -> bool {
        matches!(self, Event::Rotate | Event::Revoke | Event::DataUpdate)
    }
}

static SUBJECT_BY_ID: Statement = Statement::new(
    "SELECT s.id, s.user_id, s.ip_address FROM session_ext.user_sessions s WHERE s.id = $1",
    &[UUID],
);

/// The session an event is about.
#[derive(Debug, Clone)]
pub struct Subject {
    pub id: Uuid,
    pub user_id: Uuid,
    pub ip_address: Option<Inet>,
}

impl Subject {
    /// A subject from three columns of a row, starting at `first`: id, user_id, ip_address.
    pub fn from_row(row: &impl Columns, first: usize) -> Subject {
        Subject {
            id: row.col(first).expect("session id is NOT NULL"),
            user_id: row.col(first + 1).expect("user_id is NOT NULL"),
            ip_address: row.col(first + 2),
        }
    }

    /// The subject of session `id`, if it exists.
    pub fn of(client: &SpiClient<'_>, id: Uuid) -> Option<Subject> {
        SUBJECT_BY_ID.one(client, &[id.into()]).map(|row| Subject::from_row(&row, 1))
    }
}

/// Records `event` about `subject` (none for cleanup batches): an audit row while
/// `session_ext.audit` is on, and for the events that change what a client holds, a
/// notification. The caller of the API function in progress is the actor.
pub fn record(client: &SpiClient<'_>, event: Event, subject: Option<&Subject>, details: Value) {
    Recorder::current().record(client, event, subject, details);
}

/// Who caused events, and where they go: the actor of their audit rows, whether they are audited,
/// and the channel they are notified on.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub actor_role: String,
    pub actor_user_id: Option<Uuid>,
    pub audit: bool,
    /// None when notifications are off.
    pub channel: Option<String>,
}

impl Recorder {
    /// The API call in progress, under the settings in force.
    pub fn current() -> Recorder {
        let (actor_role, actor_user_id) = identity::actor();
        let channel = settings::notify_channel().map(|c| c.to_string_lossy().into_owned());
        Recorder { actor_role, actor_user_id, audit: settings::AUDIT.get(), channel }
    }

    /// Records `event` about `subject` for this actor (see [`record`]).
    pub fn record(&self, client: &SpiClient<'_>, event: Event, subject: Option<&Subject>, details: Value) {
        if let (Some(subject), Some(channel)) = (subject.filter(|_| event.notifies()), &self.channel) {
            notify(channel, event, subject, &details);
        }
        if !self.audit {
            return;
        }
        AuditRow {
            occurred_at: rows::now(),
            event: event.name(),
            session_id: subject.map(|s| s.id),
            user_id: subject.map(|s| s.user_id),
            actor_role: self.actor_role.clone(),
            actor_user_id: self.actor_user_id,
            ip_address: subject.and_then(|s| s.ip_address.clone()),
            details,
        }
        .write(client);
    }
}

/// The audit row of a creation refused by `max_creates_per_minute` (SPEC §6), written by the
/// worker because the refused call's own transaction was rolled back.
pub fn record_refusal(client: &SpiClient<'_>, refusal: &Refusal) {
    let user_id = Some(refusal.user_id());
    AuditRow {
        occurred_at: TimestampWithTimeZone::try_from(refusal.at)
            .expect("a timestamp from GetCurrentTimestamp"),
        event: "rate_limited",
        session_id: None,
        user_id,
        actor_role: identity::role_name(pg_sys::Oid::from(refusal.role)),
        actor_user_id: user_id,
        ip_address: None,
        details: json!({ "created_last_minute": refusal.created, "max_creates_per_minute": refusal.limit }),
    }
    .write(client);
}

/// One row of `session_ext.session_audit_log`, its id aside.
struct AuditRow {
    occurred_at: TimestampWithTimeZone,
    event: &'static str,
    session_id: Option<Uuid>,
    user_id: Option<Uuid>,
    actor_role: String,
    actor_user_id: Option<Uuid>,
    ip_address: Option<Inet>,
    details: Value,
}

impl AuditRow {
    /// Inserts the row, its id the next of the identity column's sequence.
    fn write(self, client: &SpiClient<'_>) {
        // The table first: the sequence is a fact about it (ALTER TABLE can replace it).
        let sequence =
            crate::cache::locked(|r| [(r.audit_table, pg_sys::RowExclusiveLock)]).audit_id_sequence;
        // SAFETY: nextval of an existing sequence, which the extension's owner may use.
        let id = unsafe {
            pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[Some(pg_sys::Datum::from(sequence))])
        }
        .expect("nextval returns a value");
        rows::AUDIT_LOG.insert(
            client,
            &[
                id.into(),
                self.occurred_at.into(),
                self.event.into(),
                self.session_id.into(),
                self.user_id.into(),
                self.actor_role.into(),
                self.actor_user_id.into(),
                self.ip_address.into(),
                JsonB(self.details).into(),
            ],
        );
    }
}

/// `pg_notify(channel, {"event", "session_id", "user_id", ...})`, delivered when the
/// transaction commits.
fn notify(channel: &str, event: Event, subject: &Subject, details: &Value) {
    let mut payload = json!({
        "event": event.name(),
        "session_id": uuid_text(&subject.id),
        "user_id": uuid_text(&subject.user_id),
    });
    if let Some(reason) = details.get("reason") {
        payload["reason"] = reason.clone();
    }
    // SAFETY: pg_notify takes two text arguments; errors (none expected for a checked channel
    // and a small payload) are raised as PostgreSQL errors.
    unsafe {
        pgrx::fcinfo::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[channel.into_datum(), payload.to_string().into_datum()],
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{record, Event, Subject};
    use crate::testing::count;
    use pgrx::prelude::*;

    const ALL: [Event; 7] = [
        Event::Create,
        Event::Rotate,
        Event::TokenReuse,
        Event::Revoke,
        Event::DataUpdate,
        Event::Suspicious,
        Event::Cleanup,
    ];

    #[pg_test]
    fn every_event_kind_is_recorded_under_its_documented_name() {
        let subject = Subject {
            id: pgrx::Uuid::from_bytes([1; 16]),
            user_id: pgrx::Uuid::from_bytes([2; 16]),
            ip_address: None,
        };
        Spi::connect(|client| {
            for event in ALL {
                record(client, event, Some(&subject), serde_json::json!({}));
            }
        });
        assert_eq!(
            count("SELECT count(DISTINCT event) FROM session_ext.session_audit_log"),
            ALL.len() as i64
        );
        assert_eq!(
            count("SELECT count(*) FROM session_ext.session_audit_log WHERE actor_role = current_user"),
            7
        );
    }

    #[pg_test]
    fn audit_off_records_nothing() {
        Spi::run("SET session_ext.audit = off").unwrap();
        Spi::connect(|client| record(client, Event::Cleanup, None, serde_json::json!({})));
        assert_eq!(count("SELECT count(*) FROM session_ext.session_audit_log"), 0);
    }
}
