//! session_ext under pressure and around its edges (SPEC §1, §4, §7): many connections racing
//! for one session id, a storm of mixed calls, a dump restored on another server, and pgbouncer
//! in transaction mode between PostgREST-shaped clients and the database.

mod harness;

use harness::{
    as_postgres, begin_request, claims, eventually, free_port, fresh, pg_tool, request, shared_cluster,
    Cluster, GRANT_API_ROLES, SUPABASE_ROLES,
};
use postgres::types::Type;
use postgres::{Client, NoTls, Transaction};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

const CLUSTER: &str = "resilience";
const ADMIN_CLAIMS: &str = r#"{"role":"service_role"}"#;

/// The n-th user of a test, as a JWT `sub`.
fn user(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The SQLSTATE and message of a server error; a lost connection is a failure of its own.
fn server_error(e: &postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_string(), db.message().to_string()),
        None => ("client".to_string(), e.to_string()),
    }
}

#[test]
fn sixteen_connections_creating_one_custom_session_id_make_exactly_one_row() {
    const RACERS: usize = 16;
    let (_, mut admin, db) = fresh(CLUSTER);
    let barrier = &Barrier::new(RACERS);
    let db = db.as_str();
    let create =
        "SELECT id FROM session_ext.create_user_session(user_id => $1::text::uuid, session_id => 'same-id')";
    let results: Vec<(String, Result<Uuid, postgres::Error>)> = thread::scope(|scope| {
        let racers: Vec<_> = (0..RACERS)
            .map(|n| {
                scope.spawn(move || {
                    let user = user(n);
                    let mut api = shared_cluster(CLUSTER).connect("authenticator", db);
                    let mut tx = begin_request(&mut api, "authenticated", &claims(&user)).unwrap();
                    // Every request is open and has its role and claims; now all call at once.
                    barrier.wait();
                    let created = tx
                        .query_one(create, &[&user])
                        .map(|r| r.get::<_, Uuid>(0))
                        .and_then(|id| tx.commit().map(|()| id));
                    (user, created)
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });

    let winners: Vec<(&String, Uuid)> =
        results.iter().filter_map(|(user, r)| r.as_ref().ok().map(|id| (user, *id))).collect();
    assert_eq!(winners.len(), 1, "exactly one create succeeds: {results:?}");
    for (user, result) in &results {
        if let Err(e) = result {
            let (code, message) = server_error(e);
            assert_eq!(code, "23505", "{user}: {message}");
            assert!(message.contains("same-id"), "the error names the session id: {message}");
        }
    }
    let rows = admin
        .query("SELECT id, user_id::text FROM session_ext.user_sessions WHERE session_id = 'same-id'", &[])
        .unwrap();
    let rows: Vec<(Uuid, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, vec![(winners[0].1, winners[0].0.clone())], "one row, the winner's");
    let (sessions, creates): (i64, i64) = {
        let row = admin
            .query_one(
                "SELECT (SELECT count(*) FROM session_ext.user_sessions),
                        (SELECT count(*) FROM session_ext.session_audit_log WHERE event = 'create')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((sessions, creates), (1, 1), "the refused creates wrote no session and no audit row");
}

/// A small deterministic generator (xorshift64*): the storm's choices without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// A session one storm thread created, with its latest token. Only that thread presents the
/// token, so a rotated-away token is never presented by accident (that would be a reuse).
#[derive(Debug)]
struct Owned {
    id: Uuid,
    user: String,
    token: String,
}

/// What one storm thread did and saw.
#[derive(Default)]
struct Storm {
    live: Vec<Owned>,
    revoked: Vec<Owned>,
    calls: u64,
    /// 40001 from a stale `expected_version`: the one refusal a correct run may get.
    serialization_failures: u64,
    failures: Vec<String>,
}

impl Storm {
    /// The value of a call, or None after recording its error: 40001 is counted, anything else
    /// (a deadlock, an internal error, a refused legitimate call) is a failure.
    fn check<T>(&mut self, what: &str, result: Result<T, postgres::Error>) -> Option<T> {
        self.calls += 1;
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                let (code, message) = server_error(&e);
                if code == "40001" {
                    self.serialization_failures += 1;
                } else {
                    self.failures.push(format!("{what}: {code} {message}"));
                }
                None
            }
        }
    }
}

const STORM_THREADS: usize = 8;
const STORM_USERS: usize = 3;
const STORM_TIME: Duration = Duration::from_secs(10);

/// One storm thread: random calls until `until`. Calls on its own sessions assert their outcome
/// (nothing else may end them); calls by id go to any thread's session, to contend for its row.
fn storm(
    db: &str,
    thread_no: usize,
    seed: u64,
    sessions: &Mutex<Vec<(Uuid, String)>>,
    until: Instant,
) -> Storm {
    let mut api = shared_cluster(CLUSTER).connect("authenticator", db);
    let mut rng = Rng(seed);
    let mut out = Storm::default();
    let mut made = 0;
    while Instant::now() < until {
        let choice = rng.below(100);
        if choice < 15 || out.live.is_empty() {
            let user = user(rng.below(STORM_USERS));
            made += 1;
            let created = match rng.below(3) {
                0 => {
                    let token = format!("storm-{thread_no}-{made}-{seed:016x}-client-token");
                    request(&mut api, "authenticated", &claims(&user), |tx| {
                        tx.query_one("SELECT session_ext.create_user_session(session_token => $1)", &[&token])
                            .map(|r| (r.get(0), token.clone()))
                    })
                }
                kind => {
                    let sql = if kind == 1 {
                        "SELECT id, token FROM session_ext.create_user_session(user_id => $1::text::uuid, session_data => '{}')"
                    } else {
                        "SELECT id, token FROM session_ext.create_user_session(user_id => $1::text::uuid, session_id => $2)"
                    };
                    let session_id = format!("storm:{thread_no}:{made}");
                    request(&mut api, "authenticated", &claims(&user), |tx| {
                        let params: &[&(dyn postgres::types::ToSql + Sync)] =
                            if kind == 1 { &[&user] } else { &[&user, &session_id] };
                        tx.query_one(sql, params).map(|r| (r.get(0), r.get(1)))
                    })
                }
            };
            if let Some((id, token)) = out.check("create", created) {
                sessions.lock().unwrap().push((id, user.clone()));
                out.live.push(Owned { id, user, token });
            }
        } else if choice < 45 {
            let own = &out.live[rng.below(out.live.len())];
            let (id, token, user) = (own.id, own.token.clone(), own.user.clone());
            let validated = request(&mut api, "authenticated", &claims(&user), |tx| {
                tx.query_one("SELECT (session_ext.validate_session($1)).id", &[&token])
                    .map(|r| r.get::<_, Option<Uuid>>(0))
            });
            if let Some(validated) = out.check("validate", validated) {
                if validated != Some(id) {
                    out.failures.push(format!("live session {id} validated as {validated:?}"));
                }
            }
        } else if choice < 55 {
            let n = rng.below(out.live.len());
            let (id, token, user) = (out.live[n].id, out.live[n].token.clone(), out.live[n].user.clone());
            let rotated = request(&mut api, "authenticated", &claims(&user), |tx| {
                tx.query_one("SELECT (session_ext.rotate_session_token($1)).token", &[&token])
                    .map(|r| r.get::<_, Option<String>>(0))
            });
            match out.check("rotate", rotated) {
                Some(Some(new)) => out.live[n].token = new,
                Some(None) => out.failures.push(format!("live session {id} did not rotate")),
                None => {}
            }
        } else if choice < 62 {
            let n = rng.below(out.live.len());
            let (id, user) = (out.live[n].id, out.live[n].user.clone());
            let revoked = request(&mut api, "authenticated", &claims(&user), |tx| {
                tx.query_one("SELECT session_ext.revoke_session($1)", &[&id]).map(|r| r.get::<_, bool>(0))
            });
            match out.check("revoke", revoked) {
                Some(true) => {
                    let gone = out.live.swap_remove(n);
                    out.revoked.push(gone);
                }
                Some(false) => out.failures.push(format!("live session {id} did not revoke")),
                None => {}
            }
        } else if choice < 85 {
            // Any thread's session, live or not, as its owner; half the time one of the newest,
            // which their owners are most likely using: contention for the row.
            let picked = {
                let all = sessions.lock().unwrap();
                let n = match rng.below(2) {
                    0 => all.len() - 1 - rng.below(all.len().min(8)),
                    _ => rng.below(all.len()),
                };
                all[n].clone()
            };
            let (id, user) = picked;
            let call = rng.below(5);
            let result = request(&mut api, "authenticated", &claims(&user), |tx| match call {
                0 => tx.execute("SELECT session_ext.touch_session($1)", &[&id]),
                1 => tx.execute("SELECT session_ext.get_session($1)", &[&id]),
                2 => tx.execute("SELECT session_ext.is_session_active($1)", &[&id]),
                3 => tx.execute("SELECT session_ext.update_session_data($1, '{\"n\": 1}')", &[&id]),
                _ => {
                    // Read the version, then update at it: 40001 if another thread got there first.
                    let version: Option<i64> =
                        tx.query_one("SELECT data_version FROM session_ext.get_session($1)", &[&id])?.get(0);
                    tx.execute(
                        "SELECT session_ext.update_session_data($1, '{\"v\": true}', expected_version => $2)",
                        &[&id, &version.unwrap_or(1)],
                    )
                }
            });
            out.check(&format!("by-id call {call}"), result);
        } else if choice < 95 {
            let user = user(rng.below(STORM_USERS));
            let result = request(&mut api, "authenticated", &claims(&user), |tx| {
                tx.execute("SELECT count(*) FROM session_ext.list_user_sessions()", &[])?;
                tx.execute("SELECT session_ext.count_user_sessions()", &[])
            });
            out.check("list and count", result);
        } else {
            let result = request(&mut api, "service_role", ADMIN_CLAIMS, |tx| {
                tx.execute("SELECT session_ext.cleanup_expired_sessions()", &[])
            });
            out.check("cleanup", result);
        }
    }
    out
}

#[test]
fn a_storm_of_mixed_calls_leaves_no_deadlock_no_internal_error_and_live_sessions_valid() {
    let (_, mut admin, db) = fresh(CLUSTER);
    // Every validation writes activity, and cleanup deletes revocations at once: both contend
    // for the rows the other calls use. Sessions live a day, so none expires during the storm.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET session_ext.touch_interval = 0;
             ALTER DATABASE {db} SET session_ext.revoked_retention = 0;"
        ))
        .unwrap();
    let sessions = &Mutex::new(Vec::new());
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let until = Instant::now() + STORM_TIME;
    let db_ref = db.as_str();
    let storms: Vec<Storm> = thread::scope(|scope| {
        let threads: Vec<_> = (0..STORM_THREADS)
            .map(|n| {
                scope.spawn(move || storm(db_ref, n, seed.wrapping_mul(n as u64 + 1) | 1, sessions, until))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });

    let failures: Vec<&String> = storms.iter().flat_map(|s| &s.failures).collect();
    let calls: u64 = storms.iter().map(|s| s.calls).sum();
    let serialization_failures: u64 = storms.iter().map(|s| s.serialization_failures).sum();
    eprintln!("storm (seed {seed:#x}): {calls} calls, {serialization_failures} got 40001 (stale version)");
    assert!(
        failures.is_empty(),
        "{} failed calls of {calls} (seed {seed:#x}): {failures:#?}",
        failures.len()
    );

    // Afterwards each live session validates with its latest token, and only those do.
    let mut api = shared_cluster(CLUSTER).connect("authenticator", &db);
    let live: Vec<&Owned> = storms.iter().flat_map(|s| &s.live).collect();
    let revoked: Vec<&Owned> = storms.iter().flat_map(|s| &s.revoked).collect();
    assert!(!live.is_empty() && !revoked.is_empty(), "the storm created and revoked sessions");
    for (session, alive) in live.iter().map(|s| (s, true)).chain(revoked.iter().map(|s| (s, false))) {
        let (validated, active): (Option<Uuid>, bool) =
            request(&mut api, "authenticated", &claims(&session.user), |tx| {
                let v = tx.query_one("SELECT (session_ext.validate_session($1)).id", &[&session.token])?;
                let a = tx.query_one("SELECT session_ext.is_session_active($1)", &[&session.id])?;
                Ok((v.get(0), a.get(0)))
            })
            .unwrap();
        let expected = alive.then_some(session.id);
        assert_eq!((validated, active), (expected, alive), "{session:?}");
    }
    let unrevoked: BTreeSet<Uuid> = admin
        .query("SELECT id FROM session_ext.user_sessions WHERE revoked_at IS NULL", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(unrevoked, live.iter().map(|s| s.id).collect(), "exactly the live sessions are unrevoked");
    let reuses: i64 = admin
        .query_one("SELECT count(*) FROM session_ext.session_audit_log WHERE event = 'token_reuse'", &[])
        .unwrap()
        .get(0);
    assert_eq!(reuses, 0, "no token was ever taken for a reused one");
}

/// A table's rows, in order, as text: what a dump must carry across unchanged.
fn rows_of(client: &mut Client, table: &str) -> String {
    client
        .query_one(
            &format!("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY id), '') FROM {table} t"),
            &[],
        )
        .unwrap()
        .get(0)
}

fn validates(api: &mut Client, user: &str, token: &str, fingerprint: Option<&str>) -> Option<Uuid> {
    request(api, "authenticated", &claims(user), |tx| {
        tx.query_one("SELECT (session_ext.validate_session($1, $2)).id", &[&token, &fingerprint])
            .map(|r| r.get(0))
    })
    .unwrap()
}

#[test]
fn pg_dump_and_restore_keep_every_session_valid() {
    let (mut api, mut admin, db) = fresh(CLUSTER);
    let (alice, bob) = (user(1), user(2));
    let create = |api: &mut Client, user: &str, extra: &str| -> (Uuid, String) {
        let sql = format!(
            "SELECT id, token FROM session_ext.create_user_session(user_id => $1::text::uuid, session_data => '{{\"k\": 1}}'{extra})"
        );
        request(api, "authenticated", &claims(user), |tx| {
            tx.query_one(&sql, &[&user]).map(|r| (r.get(0), r.get(1)))
        })
        .unwrap()
    };
    // (user, id, token, fingerprint) of every session that must survive.
    let mut live: Vec<(String, Uuid, String, Option<&str>)> = Vec::new();
    for n in 0..20 {
        let user = if n % 2 == 0 { &alice } else { &bob };
        let (id, token) = create(&mut api, user, "");
        live.push((user.clone(), id, token, None));
    }
    let (printed, printed_token) = create(
        &mut api,
        &bob,
        ", fingerprint => 'fp-bob', idle_timeout => '2 hours', device_info => 'Firefox', ip_address => '203.0.113.7'",
    );
    live.push((bob.clone(), printed, printed_token, Some("fp-bob")));
    let client_token = "a-client-generated-token-that-is-long-enough";
    let keyed: Uuid = request(&mut api, "authenticated", &claims(&alice), |tx| {
        tx.query_one("SELECT session_ext.create_user_session(session_token => $1)", &[&client_token])
            .map(|r| r.get(0))
    })
    .unwrap();
    live.push((alice.clone(), keyed, client_token.to_string(), None));
    let (rotated, old_token) = create(&mut api, &alice, "");
    let (revoked, revoked_token) = create(&mut api, &alice, "");
    let rotate = |api: &mut Client, token: &str| -> String {
        request(api, "authenticated", &claims(&alice), |tx| {
            tx.query_one("SELECT (session_ext.rotate_session_token($1)).token", &[&token]).map(|r| r.get(0))
        })
        .unwrap()
    };
    // A token family: T0 (the root), T1 (derived), T2 (current), its grace long past.
    let derived_token = rotate(&mut api, &old_token);
    let new_token = rotate(&mut api, &derived_token);
    admin
        .execute(
            "UPDATE session_ext.user_sessions SET rotated_at = now() - interval '1 min' WHERE id = $1",
            &[&rotated],
        )
        .unwrap();
    live.push((alice.clone(), rotated, new_token.clone(), None));
    request(&mut api, "authenticated", &claims(&alice), |tx| {
        tx.execute("SELECT session_ext.update_session_data($1, '{\"cart\": 3}')", &[&live[0].1])?;
        tx.execute("SELECT session_ext.revoke_session($1)", &[&revoked])
    })
    .unwrap();
    let sessions = rows_of(&mut admin, "session_ext.user_sessions");
    let audit = rows_of(&mut admin, "session_ext.session_audit_log");

    // Restored on another server, as after losing the first: its roles are made the way the
    // project's were, and the extension is set up for Supabase again after the restore.
    let target = Cluster::start("resilience_restore", &["shared_preload_libraries = 'session_ext'"]);
    let dump = target.dir.join("sessions.dump");
    let dump = dump.to_str().unwrap();
    let source = shared_cluster(CLUSTER);
    let (source_sock, source_port) = (source.socket_dir(), source.port.to_string());
    as_postgres(
        &pg_tool("pg_dump"),
        &["-h", &source_sock, "-p", &source_port, "-U", "postgres", "-Fc", "-f", dump, &db],
    );
    let mut target_admin = target.connect("postgres", "postgres");
    target_admin.batch_execute(SUPABASE_ROLES).unwrap();
    target_admin.batch_execute("CREATE DATABASE restored").unwrap();
    let (target_sock, target_port) = (target.socket_dir(), target.port.to_string());
    as_postgres(
        &pg_tool("pg_restore"),
        &[
            "-h",
            &target_sock,
            "-p",
            &target_port,
            "-U",
            "postgres",
            "-d",
            "restored",
            "--exit-on-error",
            dump,
        ],
    );
    let mut restored_admin = target.connect("postgres", "restored");
    restored_admin.batch_execute(GRANT_API_ROLES).unwrap();
    assert_eq!(
        rows_of(&mut restored_admin, "session_ext.user_sessions"),
        sessions,
        "every session row, unchanged"
    );
    assert_eq!(
        rows_of(&mut restored_admin, "session_ext.session_audit_log"),
        audit,
        "every audit row, unchanged"
    );

    let mut restored = target.connect("authenticator", "restored");
    for (user, id, token, fingerprint) in &live {
        assert_eq!(validates(&mut restored, user, token, *fingerprint), Some(*id), "session {id} validates");
    }
    assert_eq!(validates(&mut restored, &alice, &revoked_token, None), None, "the revoked one stays revoked");
    let data: String = restored_admin
        .query_one(
            "SELECT session_data::text || ' v' || data_version FROM session_ext.user_sessions WHERE id = $1",
            &[&live[0].1],
        )
        .unwrap()
        .get(0);
    assert_eq!(data, r#"{"k": 1, "cart": 3} v2"#);

    // The restored database keeps working: new sessions and audit rows (the audit id sequence
    // came along), and the token family too: the restored key derives the same next token for
    // every retry within the grace, and still recognises an earlier token as reused.
    let (fresh_id, fresh_token) = create(&mut restored, &bob, "");
    assert_eq!(validates(&mut restored, &bob, &fresh_token, None), Some(fresh_id));
    let next = rotate(&mut restored, &new_token);
    assert_eq!(rotate(&mut restored, &new_token), next, "a retry within the grace gets the same token");
    assert_eq!(validates(&mut restored, &alice, &derived_token, None), None);
    let reason: Option<String> = restored_admin
        .query_one("SELECT revoke_reason FROM session_ext.user_sessions WHERE id = $1", &[&rotated])
        .unwrap()
        .get(0);
    assert_eq!(reason.as_deref(), Some("token_reuse"));
}

/// pgbouncer in front of a cluster, run as the postgres user; stopped when dropped, so also
/// when a test panics.
struct Pgbouncer {
    pidfile: PathBuf,
    port: u16,
}

impl Pgbouncer {
    /// pgbouncer in transaction pooling mode, at most `pool_size` server connections per
    /// database and user, trusting every client (loopback only), listening on a free port.
    fn start(cluster: &Cluster, pool_size: usize) -> Pgbouncer {
        let dir = cluster.dir.with_file_name("pgbouncer");
        let pidfile = dir.join("pgbouncer.pid");
        stop_pgbouncer(&pidfile); // left by an interrupted run
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let config = format!(
            "[databases]\n* = host={sock} port={server_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n\
             logfile = {dir}/pgbouncer.log\npidfile = {pidfile}\n",
            sock = cluster.socket_dir(),
            server_port = cluster.port,
            dir = dir.display(),
            pidfile = pidfile.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).unwrap();
        // With auth_type = trust the user name must still be listed.
        std::fs::write(dir.join("userlist.txt"), "\"authenticator\" \"\"\n\"postgres\" \"\"\n").unwrap();
        let status = Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir).status();
        assert!(status.is_ok_and(|s| s.success()), "chown of {}", dir.display());
        let pgbouncer = Pgbouncer { pidfile, port };
        as_postgres("/usr/sbin/pgbouncer", &["-d", dir.join("pgbouncer.ini").to_str().unwrap()]);
        let ready = eventually(Duration::from_secs(10), || {
            pgbouncer.try_connect("authenticator", "postgres").is_ok()
        });
        assert!(ready, "pgbouncer accepts connections on port {port}");
        pgbouncer
    }

    fn try_connect(&self, user: &str, database: &str) -> Result<Client, postgres::Error> {
        postgres::Config::new().host("127.0.0.1").port(self.port).user(user).dbname(database).connect(NoTls)
    }

    fn connect(&self, user: &str, database: &str) -> Client {
        self.try_connect(user, database).unwrap_or_else(|e| panic!("connecting through pgbouncer: {e}"))
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        stop_pgbouncer(&self.pidfile);
    }
}

/// Stops the pgbouncer of `pidfile`, if that process is still a pgbouncer.
fn stop_pgbouncer(pidfile: &std::path::Path) {
    let Ok(pid) = std::fs::read_to_string(pidfile) else { return };
    let pid = pid.trim();
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if command.trim() == "pgbouncer" {
        let _ = Command::new("kill").args(["-TERM", pid]).status();
    }
}

/// One PostgREST request through pgbouncer. Only unnamed statements (`query_typed`): a named
/// one would outlive the transaction on a server connection that pgbouncer hands to others.
fn pooled_request<T>(
    client: &mut Client,
    claims: Option<&str>,
    call: impl FnOnce(&mut Transaction<'_>) -> Result<T, postgres::Error>,
) -> Result<T, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.query_typed("SELECT set_config('role', 'authenticated', true)", &[])?;
    if let Some(claims) = claims {
        tx.query_typed("SELECT set_config('request.jwt.claims', $1, true)", &[(&claims, Type::TEXT)])?;
    }
    let out = call(&mut tx)?;
    tx.commit()?;
    Ok(out)
}

/// What one pooled client saw in a request that should be its own user's.
#[derive(Debug, PartialEq)]
struct Seen {
    current_user_id: Option<String>,
    validated: (Option<Uuid>, Option<String>, Option<String>),
    listed: Vec<(Uuid, String)>,
    count: i64,
}

/// A pooled client: one session of its own, then rounds of requests that must each see only its
/// own user, with requests without claims (and failing ones) in between that must see no user.
fn pooled_client(pgbouncer: &Pgbouncer, db: &str, n: usize, rounds: usize, barrier: &Barrier) -> Vec<String> {
    let me = user(100 + n);
    let mine = claims(&me);
    let mut client = pgbouncer.connect("authenticator", db);
    let (id, token): (Uuid, String) = pooled_request(&mut client, Some(&mine), |tx| {
        let row = tx.query_typed_one(
            "SELECT id, token FROM session_ext.create_user_session(user_id => $1::uuid, session_data => json_build_object('owner', $1))",
            &[(&me, Type::TEXT)],
        )?;
        Ok((row.get(0), row.get(1)))
    })
    .unwrap();
    let expected = Seen {
        current_user_id: Some(me.clone()),
        validated: (Some(id), Some(me.clone()), Some(me.clone())),
        listed: vec![(id, me.clone())],
        count: 1,
    };
    let mut wrong = Vec::new();
    barrier.wait();
    for round in 0..rounds {
        let seen = pooled_request(&mut client, Some(&mine), |tx| {
            let current_user_id =
                tx.query_typed_one("SELECT session_ext.current_user_id()::text", &[])?.get(0);
            let v = tx.query_typed_one(
                "SELECT s.id, s.user_id::text, s.session_data->>'owner' FROM session_ext.validate_session($1) s",
                &[(&token, Type::TEXT)],
            )?;
            let listed = tx
                .query_typed("SELECT id, user_id::text FROM session_ext.list_user_sessions()", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let count = tx.query_typed_one("SELECT session_ext.count_user_sessions()", &[])?.get(0);
            Ok(Seen { current_user_id, validated: (v.get(0), v.get(1), v.get(2)), listed, count })
        })
        .unwrap();
        if seen != expected {
            wrong.push(format!("{me} round {round}: {seen:?}"));
        }
        if round % 3 == 0 {
            // A request that fails after taking on the claims: its rollback must not leak them.
            let refused = pooled_request(&mut client, Some(&mine), |tx| {
                tx.query_typed(
                    "SELECT id FROM session_ext.create_user_session(user_id => $1::uuid, session_data => '{}')",
                    &[(&user(999), Type::TEXT)],
                )
            });
            let code = refused.as_ref().err().map(server_error).map(|(code, _)| code);
            if code.as_deref() != Some("42501") {
                wrong.push(format!("{me} round {round}: creating for another user gave {refused:?}"));
            }
        }
        if round % 2 == 0 {
            let anonymous: (Option<String>, Option<String>) = pooled_request(&mut client, None, |tx| {
                let row = tx.query_typed_one(
                    "SELECT session_ext.current_user_id()::text, nullif(current_setting('request.jwt.claims', true), '')",
                    &[],
                )?;
                Ok((row.get(0), row.get(1)))
            })
            .unwrap();
            if anonymous != (None, None) {
                wrong.push(format!("{me} round {round}: a request without claims saw {anonymous:?}"));
            }
        }
        if round % 5 == 0 {
            // Outside any transaction, on whichever server connection pgbouncer picks.
            let rows = client
                .query_typed(
                    "SELECT current_user::text, current_setting('role'), nullif(current_setting('request.jwt.claims', true), '')",
                    &[],
                )
                .unwrap();
            let outside: (String, String, Option<String>) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
            if outside != ("authenticator".to_string(), "none".to_string(), None) {
                wrong.push(format!("{me} round {round}: between transactions: {outside:?}"));
            }
        }
    }
    wrong
}

#[test]
fn pgbouncer_transaction_pooling_never_mixes_users() {
    const CLIENTS: usize = 12;
    const POOL: usize = 2;
    let (_, mut admin, db) = fresh(CLUSTER);
    let pgbouncer = Pgbouncer::start(shared_cluster(CLUSTER), POOL);
    let barrier = Barrier::new(CLIENTS);
    let (pgbouncer_ref, db_ref, barrier) = (&pgbouncer, db.as_str(), &barrier);
    let wrong: Vec<String> = thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| scope.spawn(move || pooled_client(pgbouncer_ref, db_ref, n, 60, barrier)))
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    });
    assert!(wrong.is_empty(), "{} requests saw another user or leaked settings: {wrong:#?}", wrong.len());

    // Twelve clients really did share two server connections.
    let backends: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = 'authenticator'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!((1..=POOL as i64).contains(&backends), "{backends} server connections for {CLIENTS} clients");

    // Each client's session is its own user's, and so is every audit row of it.
    let owners: HashMap<String, i64> = admin
        .query("SELECT user_id::text, count(*) FROM session_ext.user_sessions GROUP BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(owners, (0..CLIENTS).map(|n| (user(100 + n), 1)).collect());
    let mixed: i64 = admin
        .query_one(
            "SELECT count(*) FROM session_ext.session_audit_log WHERE actor_user_id IS DISTINCT FROM user_id",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mixed, 0, "every audit row names the session's own user as its actor");
}
