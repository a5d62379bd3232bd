//! The cleanup worker and the operations around it (SPEC §8, issues 4 and 19), each on a cluster
//! of its own with session_ext preloaded: cleanup on its own, errors survived, crashes restarted,
//! settings reloaded, fast shutdown, a streaming replica, pg_cron without the worker, and a
//! served database dropped, renamed or copied between runs.

mod harness;

use harness::{eventually, Cluster};
use postgres::Client;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

const USER: &str = "a11ce000-0000-4000-8000-000000000001";

/// A cluster whose worker cleans the `postgres` database every `interval`, with the extension
/// installed there, and a superuser's connection to it.
fn preloaded(name: &str, interval: &str, extra: &[&str]) -> (Cluster, Client) {
    let cluster = serving(name, "postgres", interval, extra);
    let mut client = cluster.connect("postgres", "postgres");
    client.batch_execute("CREATE EXTENSION session_ext").unwrap();
    (cluster, client)
}

/// A cluster whose worker cleans `database` (which initdb may not have made) every `interval`.
fn serving(name: &str, database: &str, interval: &str, extra: &[&str]) -> Cluster {
    let served = format!("session_ext.database = '{database}'");
    let every = format!("session_ext.cleanup_interval = '{interval}'");
    let conf: Vec<&str> = ["shared_preload_libraries = 'session_ext'", served.as_str(), every.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    Cluster::start(name, &conf)
}

/// Creates `database` with the extension, and waits until the worker cleaned an expired
/// session there; the connection is closed after.
fn create_served(cluster: &Cluster, database: &str) {
    cluster.connect("postgres", "postgres").batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    let mut client = cluster.connect("postgres", database);
    client.batch_execute("CREATE EXTENSION session_ext").unwrap();
    let (expired, _) = session(&mut client, true);
    assert!(
        eventually(Duration::from_secs(15), || !exists(&mut client, expired)),
        "the worker cleans {database}"
    );
}

fn server_log(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.dir.join("server.log")).unwrap()
}

/// A new session; `expired` ones are moved past their end, as if time had passed.
fn session(client: &mut Client, expired: bool) -> (Uuid, String) {
    let row = client
        .query_one(
            "SELECT id, token FROM session_ext.create_user_session(user_id => $1::text::uuid, session_data => '{}')",
            &[&USER],
        )
        .unwrap();
    let id: Uuid = row.get(0);
    if expired {
        client
            .execute(
                "UPDATE session_ext.user_sessions SET valid_until = now() - interval '1s', cleanup_after = now() - interval '1s' WHERE id = $1",
                &[&id],
            )
            .unwrap();
    }
    (id, row.get(1))
}

fn exists(client: &mut Client, id: Uuid) -> bool {
    client
        .query_one("SELECT count(*) FROM session_ext.user_sessions WHERE id = $1", &[&id])
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

fn validates(client: &mut Client, token: &str) -> bool {
    client.query_one("SELECT (session_ext.validate_session($1)).id IS NOT NULL", &[&token]).unwrap().get(0)
}

/// The worker's entry in session_stats().
fn worker_stats(client: &mut Client) -> Value {
    let stats: String = client.query_one("SELECT session_ext.session_stats()::text", &[]).unwrap().get(0);
    let stats: Value = serde_json::from_str(&stats).unwrap();
    stats["worker"]["databases"][0].clone()
}

const LAUNCHER_PID: &str = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'session_ext launcher'";

fn launcher_pid(client: &mut Client) -> Option<i32> {
    client.query_opt(LAUNCHER_PID, &[]).unwrap().map(|r| r.get(0))
}

#[test]
fn expired_rows_disappear_within_two_intervals_and_live_rows_stay() {
    let (_cluster, mut client) = preloaded("worker_cleans", "1s", &[]);
    let (live, token) = session(&mut client, false);
    let expired: Vec<Uuid> = (0..3).map(|_| session(&mut client, true).0).collect();
    assert!(eventually(Duration::from_secs(4), || expired.iter().all(|id| !exists(&mut client, *id))));
    assert!(exists(&mut client, live) && validates(&mut client, &token));
    let stats = worker_stats(&mut client);
    assert_eq!(stats["running"], true);
    assert!(stats["total_deleted"].as_i64().unwrap() >= 3, "{stats}");
    assert!(launcher_pid(&mut client).is_some(), "pg_stat_activity shows the launcher");
}

#[test]
fn a_failed_run_is_logged_and_counted_and_the_next_run_cleans() {
    let (cluster, mut client) = preloaded("worker_survives", "1s", &["lock_timeout = '200ms'"]);
    let (expired, _) = session(&mut client, true);
    let mut holder = cluster.connect("postgres", "postgres");
    let mut lock = holder.transaction().unwrap();
    lock.batch_execute("LOCK TABLE session_ext.user_sessions IN ACCESS EXCLUSIVE MODE").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    lock.commit().unwrap();

    let stats = worker_stats(&mut client);
    assert!(stats["errors"].as_i64().unwrap() >= 1, "{stats}");
    assert!(stats["last_error"].as_str().unwrap().contains("lock timeout"), "{stats}");
    assert!(eventually(Duration::from_secs(4), || !exists(&mut client, expired)), "a later run cleaned");
    assert_eq!(worker_stats(&mut client)["running"], true);
    let log = std::fs::read_to_string(cluster.dir.join("server.log")).unwrap();
    assert!(log.contains("session_ext cleanup of database \"postgres\" failed"), "the error is logged");
}

#[test]
fn a_killed_worker_is_restarted_and_cleanup_resumes_without_losing_live_sessions() {
    let (cluster, mut client) = preloaded("worker_restarts", "1s", &[]);
    let (live, token) = session(&mut client, false);
    let first = launcher_pid(&mut client).expect("the launcher runs");
    let killed = Command::new("kill").args(["-9", &first.to_string()]).status().unwrap();
    assert!(killed.success());

    // The postmaster treats it as a crash: every backend restarts, so connect again until a
    // connection made after the restart sees the new launcher. (A connection can be accepted just
    // before the restart and then dropped by it.)
    let mut client = None;
    assert!(eventually(Duration::from_secs(30), || {
        let Ok(mut fresh) = std::panic::catch_unwind(|| cluster.connect("postgres", "postgres")) else {
            return false;
        };
        let restarted = fresh
            .query_opt(LAUNCHER_PID, &[])
            .is_ok_and(|row| row.is_some_and(|r| r.get::<_, i32>(0) != first));
        client = restarted.then_some(fresh);
        restarted
    }));
    let mut client = client.unwrap();
    let (expired, _) = session(&mut client, true);
    assert!(eventually(Duration::from_secs(5), || !exists(&mut client, expired)), "cleanup resumed");
    assert!(exists(&mut client, live) && validates(&mut client, &token), "the live session survived");
}

#[test]
fn a_sighup_applies_a_new_interval() {
    let (_cluster, mut client) = preloaded("worker_reloads", "1h", &[]);
    let (expired, _) = session(&mut client, true);
    std::thread::sleep(Duration::from_secs(2));
    assert!(exists(&mut client, expired), "the next run is an hour away");
    client.batch_execute("ALTER SYSTEM SET session_ext.cleanup_interval = '1s'").unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(eventually(Duration::from_secs(5), || !exists(&mut client, expired)));
}

#[test]
fn fast_shutdown_is_not_delayed_even_while_the_worker_waits_for_a_lock() {
    let (cluster, mut client) = preloaded("worker_stops", "1s", &[]);
    session(&mut client, true);
    let mut holder = cluster.connect("postgres", "postgres");
    let mut lock = holder.transaction().unwrap();
    lock.batch_execute("LOCK TABLE session_ext.user_sessions IN ACCESS EXCLUSIVE MODE").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE backend_type = 'session_ext cleanup' AND application_name = 'session_ext cleanup'
                    AND datname = 'postgres' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 1
    }));
    let started = Instant::now();
    cluster.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "pg_ctl stop -m fast took {took:?}");
    drop(lock);
}

#[test]
fn a_streaming_replica_validates_read_only_and_runs_no_worker() {
    let (primary, mut client) = preloaded("worker_primary", "1s", &[]);
    let (live, token) = session(&mut client, false);
    let (_, stale_token) = session(&mut client, false);
    client
        .execute(
            "UPDATE session_ext.user_sessions SET last_active_at = now() - interval '10 minutes' WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
            &[&stale_token],
        )
        .unwrap();
    let bound: String = client
        .query_one(
            "SELECT token FROM session_ext.create_user_session(user_id => $1::text::uuid, session_data => '{}', fingerprint => 'fp')",
            &[&USER],
        )
        .unwrap()
        .get(0);
    let replica = primary.replica("worker_replica");
    let mut standby = replica.connect("postgres", "postgres");
    assert!(eventually(Duration::from_secs(10), || exists(&mut standby, live)));

    assert!(validates(&mut standby, &token));
    assert!(validates(&mut standby, &stale_token), "a stale session validates without a write");
    let active: bool =
        standby.query_one("SELECT session_ext.is_session_active($1)", &[&live]).unwrap().get(0);
    assert!(active);
    let mismatch: bool = standby
        .query_one("SELECT session_ext.validate_session($1, 'other') IS NULL", &[&bound])
        .unwrap()
        .get(0);
    assert!(mismatch, "a fingerprint mismatch is refused without an audit write");
    assert_eq!(launcher_pid(&mut standby), None, "no worker on a standby");
    let log = std::fs::read_to_string(replica.dir.join("server.log")).unwrap();
    assert!(!log.contains("ERROR"), "nothing errors on the replica:\n{log}");
    let recovering: bool = standby.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(recovering);
}

#[test]
fn pg_cron_runs_the_cleanup_where_the_worker_is_not_preloaded() {
    // pg_cron is a Debian package for 15 only; the other majors' trees do not carry it.
    if !harness::extension_available("pg_cron") {
        eprintln!("skipped: pg_cron is not installed for {}", harness::pg_tool("postgres"));
        return;
    }
    let cluster = Cluster::start(
        "worker_pg_cron",
        &[
            "shared_preload_libraries = 'pg_cron'",
            "cron.database_name = 'postgres'",
            "cron.use_background_workers = on",
            "max_worker_processes = 16",
        ],
    );
    let mut client = cluster.connect("postgres", "postgres");
    client.batch_execute("CREATE EXTENSION pg_cron; CREATE EXTENSION session_ext").unwrap();
    let stats: String = client.query_one("SELECT session_ext.session_stats()::text", &[]).unwrap().get(0);
    assert!(stats.contains(r#""preloaded": false"#), "{stats}");
    let (live, _) = session(&mut client, false);
    let (expired, _) = session(&mut client, true);
    client
        .batch_execute("SELECT cron.schedule('session_ext cleanup', '* * * * *', 'SELECT session_ext.cleanup_expired_sessions()')")
        .unwrap();
    // pg_cron's finest schedule is a minute.
    assert!(eventually(Duration::from_secs(75), || !exists(&mut client, expired)));
    assert!(exists(&mut client, live));
    let succeeded: i64 = client
        .query_one("SELECT count(*) FROM cron.job_run_details WHERE status = 'succeeded'", &[])
        .unwrap()
        .get(0);
    assert!(succeeded >= 1);
}

#[test]
fn a_refused_creation_is_audited_by_the_worker() {
    let (cluster, mut client) = preloaded("worker_refusals", "1h", &[]);
    client.batch_execute("ALTER DATABASE postgres SET session_ext.max_creates_per_minute = 1").unwrap();
    let mut client = cluster.connect("postgres", "postgres");
    session(&mut client, false);
    let refused = client.query_one(
        "SELECT session_ext.create_user_session(user_id => $1::text::uuid, session_data => '{}')",
        &[&USER],
    );
    assert_eq!(refused.unwrap_err().code().map(|c| c.code().to_string()).as_deref(), Some("53400"));
    let audited = |client: &mut Client| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM session_ext.session_audit_log
                  WHERE event = 'rate_limited' AND user_id = $1::text::uuid AND actor_role = 'postgres'",
                &[&USER],
            )
            .unwrap()
            .get(0)
    };
    assert!(eventually(Duration::from_secs(5), || audited(&mut client) == 1), "the worker wrote the refusal");
}

#[test]
fn a_served_database_can_be_copied_renamed_and_dropped_between_runs() {
    let cluster = serving("worker_lets_go", "served", "1s", &[]);
    create_served(&cluster, "served");
    let mut admin = cluster.connect("postgres", "postgres");
    admin.batch_execute("CREATE DATABASE copy TEMPLATE served").unwrap();
    admin.batch_execute("ALTER DATABASE served RENAME TO renamed").unwrap();
    admin.batch_execute("ALTER DATABASE renamed RENAME TO served").unwrap();
    // Served under its name again: a run may be under way, which DROP waits for.
    std::thread::sleep(Duration::from_secs(2));
    admin.batch_execute("DROP DATABASE served").unwrap();
}

#[test]
fn a_dropped_database_is_reported_once_and_served_again_when_it_returns() {
    let cluster = serving("worker_dropped", "gone", "1s", &[]);
    create_served(&cluster, "gone");
    let dropped_at = server_log(&cluster).len();
    cluster.connect("postgres", "postgres").batch_execute("DROP DATABASE gone WITH (FORCE)").unwrap();
    let since_drop = || server_log(&cluster)[dropped_at..].to_string();
    let reported = |log: &str| {
        log.lines()
            .filter(|l| l.contains("\"gone\" does not exist") && l.contains("session_ext.database"))
            .count()
    };
    assert!(eventually(Duration::from_secs(5), || reported(&since_drop()) == 1), "{}", since_drop());
    let fatal = since_drop().matches("FATAL").count();
    std::thread::sleep(Duration::from_secs(4));
    let log = since_drop();
    assert_eq!(reported(&log), 1, "said once, not at every interval:\n{log}");
    assert_eq!(log.matches("FATAL").count(), fatal, "no FATAL at every interval:\n{log}");

    create_served(&cluster, "gone");
}

/// A database closed to connections (as before a planned drop) is skipped with one line, not a
/// worker's FATAL at every interval, and cleaned again once it is open.
#[test]
fn a_database_closed_to_connections_is_reported_once_and_cleaned_again_when_opened() {
    let cluster = serving("worker_closed", "closed", "1s", &[]);
    create_served(&cluster, "closed");
    let mut admin = cluster.connect("postgres", "postgres");
    let closed_at = server_log(&cluster).len();
    admin.batch_execute("ALTER DATABASE closed ALLOW_CONNECTIONS false").unwrap();
    let since = || server_log(&cluster)[closed_at..].to_string();
    let reported =
        |log: &str| log.lines().filter(|l| l.contains("\"closed\" does not allow connections")).count();
    assert!(eventually(Duration::from_secs(5), || reported(&since()) == 1), "{}", since());
    std::thread::sleep(Duration::from_secs(4));
    let log = since();
    assert_eq!(reported(&log), 1, "said once, not at every interval:\n{log}");
    assert_eq!(log.matches("FATAL").count(), 0, "no worker tried to connect:\n{log}");

    admin.batch_execute("ALTER DATABASE closed ALLOW_CONNECTIONS true").unwrap();
    let mut client = cluster.connect("postgres", "closed");
    let (expired, _) = session(&mut client, true);
    assert!(eventually(Duration::from_secs(15), || !exists(&mut client, expired)), "cleaned again");
    assert!(since().contains("\"closed\" can be cleaned again"), "{}", since());
}

/// A project handed session_ext's tables to an app owner, which added a delete trigger: the
/// worker's cleanup fires it as that owner (as autovacuum runs table-owner code as the owner), so
/// the owner cannot borrow the worker's superuser rights.
#[test]
fn the_worker_runs_a_table_owners_trigger_as_that_owner() {
    let (cluster, mut client) = preloaded("worker_owner", "1s", &[]);
    client
        .batch_execute(
            "CREATE ROLE app_owner LOGIN BYPASSRLS;
             GRANT USAGE ON SCHEMA session_ext TO app_owner;
             GRANT CREATE ON SCHEMA public TO app_owner;
             GRANT ALL ON session_ext.session_audit_log, session_ext.session_audit_log_id_seq TO app_owner;
             ALTER TABLE session_ext.user_sessions OWNER TO app_owner;",
        )
        .unwrap();
    let mut owner = cluster.connect("app_owner", "postgres");
    owner
        .batch_execute(
            "CREATE TABLE public.fired (who text);
             CREATE FUNCTION public.on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.fired VALUES (current_user);
                 BEGIN
                     ALTER ROLE app_owner SUPERUSER;
                 EXCEPTION WHEN insufficient_privilege THEN NULL;
                 END;
                 RETURN OLD;
             END $$;
             CREATE TRIGGER on_delete AFTER DELETE ON session_ext.user_sessions
                 FOR EACH ROW EXECUTE FUNCTION public.on_delete();",
        )
        .unwrap();
    let (expired, _) = session(&mut client, true);
    assert!(eventually(Duration::from_secs(5), || !exists(&mut client, expired)), "the worker cleaned");
    let fired: Vec<String> =
        client.query("SELECT who FROM public.fired", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(fired, ["app_owner"], "the trigger ran as the table's owner");
    let superuser: bool =
        client.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'app_owner'", &[]).unwrap().get(0);
    assert!(!superuser, "the owner stays unprivileged");
}

#[test]
fn no_free_worker_slot_is_one_warning_with_a_hint() {
    // The launcher takes the only slot (logical replication's launcher, registered first, is
    // off): no worker can start beside it.
    let (cluster, _client) = preloaded(
        "worker_no_slot",
        "1s",
        &["max_worker_processes = 1", "max_logical_replication_workers = 0"],
    );
    let warned = || {
        server_log(&cluster)
            .lines()
            .filter(|l| l.contains("WARNING") && l.contains("no background worker slot is free"))
            .count()
    };
    assert!(eventually(Duration::from_secs(5), || warned() == 1));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(warned(), 1, "once, not at every interval");
    assert!(server_log(&cluster).contains("HINT:  Raise max_worker_processes"));
}
