//! Authenticator assurance levels (SPEC §4 "Sessions carried by JWTs"), as Supabase Auth's
//! `aal` claim, NIST SP 800-63B and Kratos's AAL name them: `aal1` (one factor), `aal2` (two),
//! `aal3` (hardware-bound). A session starts at `aal1`; the auth server raises it after a second
//! factor with `set_session_aal`, optionally for a while only (Kratos's privileged session age),
//! after which it reads as `aal1` again.

use super::{active, args, Subject};
use crate::db::{Columns, Statement, INTERVAL, TEXT, UUID};
use crate::definer;
use crate::errors::{excerpt, ApiError, ApiResult};
use crate::events::{self, Event};
use crate::identity;
use pgrx::datum::{Interval, JsonB};
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{json, Value};

/// An assurance level; higher is stronger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Aal1,
    Aal2,
    Aal3,
}

impl Level {
    const ALL: [Level; 3] = [Level::Aal1, Level::Aal2, Level::Aal3];

    pub fn name(self) -> &'static str {
        match self {
            Level::Aal1 => "aal1",
            Level::Aal2 => "aal2",
            Level::Aal3 => "aal3",
        }
    }

    pub fn parse(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|level| level.name() == name)
    }

    /// A level given as argument `argument`: one of the names, 22023 otherwise.
    pub fn argument(value: &str, argument: &str) -> ApiResult<Level> {
        Level::parse(value).ok_or_else(|| {
            ApiError::invalid_argument(
                argument,
                format!("is {}, not one of aal1, aal2, aal3", excerpt(value)),
            )
            .hint("Levels are named as in Supabase Auth's aal claim.")
        })
    }
}

// The row is locked first, so that the event records the level it replaced.
static LEVEL_BY_ID: Statement = Statement::new(
    concat!(
        "SELECT s.id, s.user_id, s.ip_address,
                CASE WHEN s.aal_expires_at <= pg_catalog.now() THEN 'aal1' ELSE s.aal END
           FROM session_ext.user_sessions s
          WHERE s.id = $1 AND ",
        active!(),
        " FOR NO KEY UPDATE"
    ),
    &[UUID],
);

static SET_LEVEL: Statement = Statement::new(
    "UPDATE session_ext.user_sessions s
        SET aal = $2, aal_expires_at = pg_catalog.now() + $3
      WHERE s.id = $1
  RETURNING pg_catalog.to_jsonb(s.aal_expires_at)",
    &[UUID, TEXT, INTERVAL],
);

/// Sets the assurance level of an active session (admins only: the auth server, once the user
/// passed a second factor). With `valid_for` the level holds that long and then reads as `aal1`;
/// NULL keeps it for the rest of the session. `aal1` ends a raised level at once. True when the
/// session is active (and now has the level), false when it is unknown, revoked or expired.
/// Writes an `aal_change` audit event. 22023 for an unknown level or a `valid_for` that is not
/// positive, 42501 for a caller that is not an admin.
#[pg_extern(volatile, parallel_unsafe)]
fn set_session_aal(
    session_id: Option<Uuid>,
    aal: Option<&str>,
    valid_for: default!(Option<Interval>, "NULL"),
) -> bool {
    definer::as_owner(|| {
        let id = args::required(session_id, "session_id")?;
        let level = Level::argument(args::required(aal, "aal")?, "aal")?;
        let valid_for = args::valid_for(valid_for)?.filter(|_| level != Level::Aal1);
        identity::require_admin("set_session_aal")?;
        Ok(Spi::connect(|client| {
            let Some(row) = LEVEL_BY_ID.one(client, &[id.into()]) else { return false };
            let subject = Subject::from_row(&row, 1);
            let from: Option<String> = row.col(4);
            let until = SET_LEVEL
                .one(client, &[id.into(), level.name().into(), valid_for.into()])
                .and_then(|row| row.col::<JsonB>(1))
                .map_or(Value::Null, |JsonB(until)| until);
            let details = json!({ "from": from, "to": level.name(), "valid_until": until });
            events::record(client, Event::AalChange, Some(&subject), details);
            true
        }))
    })
}

#[cfg(test)]
mod unit_tests {
    use super::Level;

    #[test]
    fn levels_are_ordered_and_named() {
        assert!(Level::Aal1 < Level::Aal2 && Level::Aal2 < Level::Aal3);
        for level in Level::ALL {
            assert_eq!(Level::parse(level.name()), Some(level));
        }
        for bad in ["", "AAL2", "aal4", "aal2 ", "2"] {
            assert_eq!(Level::parse(bad), None, "{bad:?}");
            assert!(Level::argument(bad, "aal").is_err());
        }
    }
}
