//! `session_stats()` (SPEC §4 "Maintenance"): how many sessions are in each state, what the
//! cleanup workers are doing, and the settings in effect — one jsonb for a DBA or a scraper.

use crate::db::{Columns, Statement};
use crate::definer;
use crate::identity;
use crate::shmem::{self, WorkerState};
use pgrx::datum::{JsonB, TimestampWithTimeZone};
use pgrx::prelude::*;
use serde_json::{json, Value};

static COUNTS: Statement = Statement::new(
    "SELECT count(*) FILTER (WHERE s.revoked_at IS NULL AND s.valid_until > pg_catalog.now()),
            count(*) FILTER (WHERE s.valid_until <= pg_catalog.now()),
            count(*) FILTER (WHERE s.revoked_at IS NOT NULL AND s.valid_until > pg_catalog.now())
       FROM session_ext.user_sessions s",
    &[],
);

static PENDING: Statement = Statement::new("SELECT count(*) FROM session_ext.pending_revocations", &[]);

static SETTINGS: Statement = Statement::new(
    "SELECT pg_catalog.jsonb_object_agg(pg_catalog.substr(name, 13), pg_catalog.current_setting(name) ORDER BY name)
       FROM pg_catalog.pg_settings WHERE name LIKE 'session\\_ext.%'",
    &[],
);

/// Sessions by state, the cleanup workers' state, and the effective settings. Admins only.
#[pg_extern(volatile, parallel_restricted)]
fn session_stats() -> JsonB {
    definer::as_owner(|| {
        identity::require_admin("session_stats")?;
        let (counts, revocations, settings) = Spi::connect(|client| {
            let counts = COUNTS.one(client, &[]).expect("an aggregate returns a row");
            let count = |n| counts.col::<i64>(n).unwrap_or(0);
            let sessions = json!({ "active": count(1), "expired": count(2), "revoked": count(3) });
            // Token reuses whose revocation a worker has not applied yet: queued (in every
            // database), and parked here while another transaction holds the row.
            let parked = crate::cache::pending()
                .and_then(|_| PENDING.one(client, &[]))
                .and_then(|row| row.col::<i64>(1))
                .unwrap_or(0);
            let revocations = json!({ "queued": shmem::revocations_queued(), "parked": parked });
            let settings =
                SETTINGS.one(client, &[]).and_then(|row| row.col::<JsonB>(1)).map_or(Value::Null, |j| j.0);
            (sessions, revocations, settings)
        });
        Ok(JsonB(json!({
            "sessions": counts,
            "reuse_revocations": revocations,
            "worker": workers(),
            "settings": settings,
        })))
    })
}

/// The workers' state from shared memory; without preloading there are none.
fn workers() -> Value {
    let Some(shared) = shmem::snapshot() else {
        return json!({ "preloaded": false, "databases": [] });
    };
    let launcher = shared.launcher_pid != 0;
    let databases: Vec<Value> =
        shared.workers[..shared.databases].iter().map(|state| worker(state, launcher)).collect();
    json!({
        "preloaded": true,
        "launcher_pid": launcher.then_some(shared.launcher_pid),
        "databases": databases,
        "refusals_dropped": shared.refusals_dropped,
    })
}

/// One served database. `running`: the launcher is up and the database exists; `pid`: the
/// worker connected to it during a run, null between runs.
fn worker(state: &WorkerState, launcher: bool) -> Value {
    json!({
        "database": state.database(),
        "running": launcher && !state.missing,
        "pid": (state.pid != 0).then_some(state.pid),
        "in_run": state.in_run,
        "runs": state.runs,
        "errors": state.errors,
        "last_run_started": timestamp(state.last_start),
        "last_run_finished": timestamp(state.last_end),
        "last_run_deleted": state.last_deleted,
        "total_deleted": state.total_deleted,
        "last_error": state.last_error(),
        "last_error_at": timestamp(state.last_error_at),
    })
}

/// A PostgreSQL timestamp as ISO 8601 text; 0 means never.
fn timestamp(at: i64) -> Value {
    match (at, TimestampWithTimeZone::try_from(at)) {
        (0, _) | (_, Err(_)) => Value::Null,
        (_, Ok(ts)) => json!(ts.to_iso_string()),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::{act_as_user, create, ALICE};
    use pgrx::prelude::*;

    fn stats() -> serde_json::Value {
        Spi::get_one::<pgrx::JsonB>("SELECT session_ext.session_stats()").unwrap().unwrap().0
    }

    #[pg_test]
    fn sessions_are_counted_by_state() {
        create(ALICE, "");
        let (revoked, _) = create(ALICE, "");
        let (expired, _) = create(ALICE, "");
        Spi::run(&format!(
            "UPDATE session_ext.user_sessions SET revoked_at = now(), revoke_reason = 'x' WHERE id = '{revoked}';
             UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s' WHERE id = '{expired}';"
        ))
        .unwrap();
        let stats = stats();
        assert_eq!(stats["sessions"], serde_json::json!({ "active": 1, "expired": 1, "revoked": 1 }));
        assert_eq!(stats["settings"]["touch_interval"], "1min");
        assert_eq!(stats["worker"]["preloaded"], true, "the test cluster preloads session_ext");
    }

    #[pg_test(error = "permission denied for session_stats")]
    fn users_may_not_read_stats() {
        Spi::run("GRANT EXECUTE ON FUNCTION session_ext.session_stats() TO session_ext_user").unwrap();
        act_as_user(ALICE);
        stats();
    }
}
