//! `update_session_data` (SPEC §4 "Changing"): versioned session data, merged or replaced, with
//! optimistic concurrency for "platform switch" style updates.

use super::{active, args, on_session, Subject};
use crate::db::{self, Columns, Statement, BOOL, JSONB, UUID};
use crate::definer;
use crate::errors::ApiError;
use crate::events::{self, Event};
use crate::types::JsonbDatum;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};
use serde_json::json;

// Locks the row, so that concurrent updates take turns and each sees the version before it.
static LOCK_AND_MEASURE: Statement = Statement::new(
    concat!(
        "SELECT s.id, s.user_id, s.ip_address, s.data_version, ",
        active!(),
        ", pg_catalog.pg_column_size(CASE WHEN $3 THEN s.session_data || $2 ELSE $2 END)
           FROM session_ext.user_sessions s
          WHERE s.id = $1
            FOR UPDATE"
    ),
    &[UUID, JSONB, BOOL],
);

// A data update is a use of the session, as a rotation is: it records activity, never moving it
// back (so valid_until only grows, and cleanup_after stays at or before it). A validation that
// finds the row held by this update leaves its own activity write to it.
static UPDATE: Statement = Statement::new(
    "UPDATE session_ext.user_sessions s
        SET session_data = CASE WHEN $3 THEN s.session_data || $2 ELSE $2 END,
            data_version = s.data_version + 1,
            last_active_at = GREATEST(s.last_active_at, pg_catalog.now()),
            valid_until = LEAST(s.expires_at, GREATEST(s.last_active_at, pg_catalog.now()) + s.idle_timeout)
      WHERE s.id = $1
  RETURNING s.data_version",
    &[UUID, JSONB, BOOL],
);

/// Merges `session_data` into the session's data (top-level keys; `merge => false` replaces it)
/// and returns the new version. With `expected_version`, a session at any other version is
/// refused with 40001. NULL for a session that does not exist or is no longer active. Counts as
/// activity: `last_active_at` moves to now, as a rotation moves it.
#[pg_extern(volatile, parallel_unsafe)]
fn update_session_data(
    session_id: Option<Uuid>,
    session_data: Option<JsonbDatum>,
    expected_version: default!(Option<i64>, "NULL"),
    merge: default!(Option<bool>, "true"),
) -> Option<i64> {
    definer::as_owner(|| {
        let data = args::session_data_object(session_data)?;
        if let Some(version) = expected_version.filter(|v| *v < 1) {
            return Err(ApiError::invalid_argument(
                "expected_version",
                format!("is {version}; versions start at 1"),
            ));
        }
        let merge = args::required(merge, "merge")?;
        on_session(session_id, "session_id", |client, id, scope| {
            let arguments = [id.into(), db::arg_as(data, JSONB), merge.into()];
            let Some(row) = LOCK_AND_MEASURE.one(client, &arguments) else { return Ok(None) };
            let subject = Subject::from_row(&row, 1);
            scope.authorize(subject.user_id)?;
            let current: i64 = row.col(4).expect("data_version is NOT NULL");
            if row.col::<bool>(5) != Some(true) {
                return Ok(None);
            }
            if let Some(expected) = expected_version.filter(|v| *v != current) {
                return Err(ApiError::new(
                    PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                    "session data was changed by someone else",
                )
                .detail(format!("expected_version is {expected}, but the session is at version {current}."))
                .hint("Read the session again, then retry with its current data_version."));
            }
            args::check_data_size(row.col::<i32>(6).unwrap_or(0) as usize)?;
            let version: i64 =
                UPDATE.one(client, &arguments).and_then(|r| r.col(1)).expect("the locked row updates");
            events::record(
                client,
                Event::DataUpdate,
                Some(&subject),
                json!({ "version": version, "merge": merge }),
            );
            Ok(Some(version))
        })
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{count, create, ALICE};
    use pgrx::prelude::*;

    fn update(id: &pgrx::Uuid, data: &str, rest: &str) -> Option<i64> {
        Spi::get_one::<i64>(&format!("SELECT session_ext.update_session_data('{id}', '{data}'{rest})"))
            .unwrap()
    }

    fn data_of(id: &pgrx::Uuid) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT session_data::text FROM session_ext.user_sessions WHERE id = '{id}'"
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn merge_adds_top_level_keys_and_replace_swaps_the_object() {
        let (id, _) = create(ALICE, "");
        assert_eq!(update(&id, r#"{"a": 1, "b": {"x": 1}}"#, ""), Some(2));
        assert_eq!(update(&id, r#"{"b": {"y": 2}, "c": 3}"#, ""), Some(3));
        assert_eq!(data_of(&id), r#"{"a": 1, "b": {"y": 2}, "c": 3}"#, "merge is shallow: b is replaced");
        assert_eq!(update(&id, r#"{"only": true}"#, ", merge => false"), Some(4));
        assert_eq!(data_of(&id), r#"{"only": true}"#);
        assert_eq!(update(&id, "{}", ", expected_version => 4"), Some(5), "a matching version passes");
    }

    #[pg_test]
    fn unknown_and_inactive_sessions_are_null() {
        assert_eq!(update(&pgrx::Uuid::from_bytes([9; 16]), "{}", ""), None);
        let (id, _) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET revoked_at = now(), revoke_reason = 'x' WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(update(&id, r#"{"a": 1}"#, ""), None);
        assert_eq!(data_of(&id), "{}", "nothing changed");
    }

    #[pg_test(error = "invalid value for argument \"session_data\"")]
    fn the_merged_data_must_fit_the_limit() {
        let (id, _) = create(ALICE, "");
        Spi::run("SET session_ext.max_session_data_bytes = 64").unwrap();
        update(&id, r#"{"a": "0123456789012345678901234567890"}"#, "");
        update(&id, r#"{"b": "0123456789012345678901234567890"}"#, "");
    }

    #[pg_test(error = "session data was changed by someone else")]
    fn a_stale_version_is_refused() {
        let (id, _) = create(ALICE, "");
        update(&id, r#"{"a": 1}"#, "");
        update(&id, r#"{"a": 2}"#, ", expected_version => 1");
    }

    #[pg_test]
    fn versions_count_from_one() {
        let (id, _) = create(ALICE, "");
        assert_eq!(
            count(&format!("SELECT data_version FROM session_ext.user_sessions WHERE id = '{id}'")),
            1
        );
    }
}
