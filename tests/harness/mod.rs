//! Throwaway PostgreSQL clusters for the integration tests.
//!
//! Servers run as the `postgres` OS user (PostgreSQL refuses root) under the run directory the
//! test script exports as SESSION_EXT_RUN_DIR, each on a free port with its own socket
//! directory. A test binary shares one cluster and gives each test a fresh database cloned
//! from a template that already has session_ext and the Supabase roles set up.

#![allow(dead_code)] // each test binary uses a different part of the harness

use postgres::{Client, NoTls};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

const TEMPLATE: &str = "session_ext_template";
pub const SUPABASE_ROLES: &str = include_str!("../../pg_test/fixtures/supabase_roles.sql");
pub const GRANT_API_ROLES: &str = include_str!("../../pg_test/fixtures/grant_api_roles.sql");

pub const ALICE: &str = "a11ce000-0000-4000-8000-000000000001";
pub const BOB: &str = "b0b00000-0000-4000-8000-000000000002";

/// A program of the PostgreSQL under test: the major scripts/test.sh runs (SESSION_EXT_PG_BIN),
/// by default Debian's 15.
pub fn pg_tool(name: &str) -> String {
    let bin =
        std::env::var("SESSION_EXT_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
    format!("{bin}/{name}")
}

/// Whether the PostgreSQL under test has `extension` available (pg_cron is packaged for some
/// majors only).
pub fn extension_available(extension: &str) -> bool {
    let output = Command::new(pg_tool("pg_config")).arg("--sharedir").output().expect("running pg_config");
    let share = String::from_utf8_lossy(&output.stdout).trim().to_string();
    Path::new(&share).join("extension").join(format!("{extension}.control")).exists()
}

fn run_dir() -> PathBuf {
    std::env::var_os("SESSION_EXT_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/session_ext"))
}

/// Runs a command as the postgres OS user and fails the test with its output if it fails.
pub fn as_postgres(program: &str, args: &[&str]) -> Output {
    let mut command = if running_as("postgres") {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-u", "postgres", program]);
        sudo
    };
    let output = command.args(args).current_dir("/").output().expect("running a PostgreSQL tool");
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn running_as(user: &str) -> bool {
    std::env::var("USER").is_ok_and(|u| u == user)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free local port").port()
}

pub struct Cluster {
    pub dir: PathBuf,
    pub data: String,
    pub port: u16,
}

impl Cluster {
    /// A new cluster named `name` (an old one of that name is removed), with `conf` appended to
    /// postgresql.conf, started and ready.
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
        let cluster = Cluster::empty(name);
        as_postgres(
            &pg_tool("initdb"),
            &[
                "-D",
                &cluster.data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        cluster.configure(&[&["fsync = off"], conf].concat());
        cluster.pg_ctl(&["start", "-w", "-t", "60", "-l", cluster.dir.join("server.log").to_str().unwrap()]);
        cluster
    }

    /// A hot standby of this cluster, made with pg_basebackup and streaming from it.
    pub fn replica(&self, name: &str) -> Cluster {
        let replica = Cluster::empty(name);
        as_postgres(
            &pg_tool("pg_basebackup"),
            &[
                "-h",
                &self.socket_dir(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &replica.data,
                "-R",
                "-X",
                "stream",
            ],
        );
        replica.configure(&["hot_standby = on"]);
        replica.pg_ctl(&["start", "-w", "-t", "60", "-l", replica.dir.join("server.log").to_str().unwrap()]);
        replica
    }

    /// A directory for a cluster named `name`, emptied, with a free port; nothing runs yet.
    fn empty(name: &str) -> Cluster {
        let dir = run_dir().join("it").join(name);
        if dir.join("data/postmaster.pid").exists() {
            // Left running by an earlier, interrupted run.
            let data = dir.join("data").to_string_lossy().into_owned();
            let _ = Command::new("sudo")
                .args(["-u", "postgres", &pg_tool("pg_ctl"), "-D", &data, "-m", "immediate", "stop"])
                .current_dir("/")
                .output();
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).expect("creating the cluster directory");
        // Only this cluster's tree: the other tests' clusters run (and drop files) alongside.
        for (recursive, path) in [(false, run_dir().join("it")), (true, dir.clone())] {
            let mut chown = Command::new("chown");
            if recursive {
                chown.arg("-R");
            }
            let status = chown.arg("postgres:postgres").arg(&path).status();
            assert!(status.is_ok_and(|s| s.success()), "chown of {}", path.display());
        }
        let data = dir.join("data").to_string_lossy().into_owned();
        Cluster { dir, data, port: free_port() }
    }

    /// Appends this cluster's port and socket directory, then `conf`, to postgresql.conf; later
    /// lines win, so a copied configuration is overridden.
    fn configure(&self, conf: &[&str]) {
        let mut settings = vec![
            format!("port = {}", self.port),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", self.socket_dir()),
        ];
        settings.extend(conf.iter().map(|s| s.to_string()));
        let conf_file = self.dir.join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_file).expect("reading postgresql.conf");
        text.push_str(&settings.join("\n"));
        text.push('\n');
        std::fs::write(&conf_file, text).expect("writing postgresql.conf");
    }

    pub fn socket_dir(&self) -> String {
        self.dir.join("sock").to_string_lossy().into_owned()
    }

    pub fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["-D", self.data.as_str()];
        all.extend_from_slice(args);
        as_postgres(&pg_tool("pg_ctl"), &all)
    }

    pub fn connect(&self, user: &str, database: &str) -> Client {
        postgres::Config::new()
            .host(&self.socket_dir())
            .port(self.port)
            .user(user)
            .dbname(database)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connecting as {user} to {database}: {e}"))
    }

    /// [`Cluster::start`], with the template database ready.
    fn prepared(name: &str, conf: &[&str]) -> Cluster {
        let cluster = Cluster::start(name, conf);
        cluster.prepare_template();
        cluster
    }

    /// Creates the template database: session_ext installed and set up as the README's
    /// Supabase recipe says, with the Supabase roles.
    fn prepare_template(&self) {
        let mut admin = self.connect("postgres", "postgres");
        admin.batch_execute(SUPABASE_ROLES).expect("creating the Supabase roles");
        admin.batch_execute(&format!("CREATE DATABASE {TEMPLATE}")).expect("creating the template");
        let mut template = self.connect("postgres", TEMPLATE);
        template.batch_execute("CREATE EXTENSION session_ext").expect("CREATE EXTENSION session_ext");
        template.batch_execute(GRANT_API_ROLES).expect("granting the API roles");
    }

    /// A new database with session_ext ready, private to the calling test.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // CREATE DATABASE copies the template only while nobody else is copying it.
        static CLONING: Mutex<()> = Mutex::new(());
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let _guard = CLONING.lock().unwrap_or_else(|e| e.into_inner());
        self.connect("postgres", "postgres")
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .expect("cloning the template database");
        name
    }
}

/// The cluster shared by the tests of one test binary, with session_ext preloaded.
pub fn shared_cluster(name: &str) -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::prepared(name, &["shared_preload_libraries = 'session_ext'"]))
}

/// A second cluster shared by the tests of one test binary, where session_ext is not preloaded:
/// no worker and no shared memory of its own, as after a plain CREATE EXTENSION.
pub fn unpreloaded_cluster(name: &str) -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::prepared(name, &[]))
}

/// The SQLSTATE of a failed call, for assertions.
pub fn sqlstate(result: Result<impl std::fmt::Debug, postgres::Error>) -> String {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_else(|| panic!("not a server error: {e}")),
    }
}

/// JWT claims as PostgREST puts them in `request.jwt.claims`.
pub fn claims(user: &str) -> String {
    format!(r#"{{"sub":"{user}","role":"authenticated"}}"#)
}

/// The start of a PostgREST request: a transaction that takes on `role` and `claims` with
/// `set_config(..., true)`.
pub fn begin_request<'c>(
    client: &'c mut Client,
    role: &str,
    claims: &str,
) -> Result<postgres::Transaction<'c>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
        &[&role, &claims],
    )?;
    Ok(tx)
}

/// One PostgREST request: [`begin_request`], then `call`, then commit.
pub fn request<T>(
    client: &mut Client,
    role: &str,
    claims: &str,
    call: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, postgres::Error>,
) -> Result<T, postgres::Error> {
    let mut tx = begin_request(client, role, claims)?;
    let out = call(&mut tx)?;
    tx.commit()?;
    Ok(out)
}

/// A fresh database on the shared cluster: PostgREST's connection to it (as `authenticator`),
/// a superuser's, and the database's name (to open more connections).
pub fn fresh(cluster_name: &str) -> (Client, Client, String) {
    let cluster = shared_cluster(cluster_name);
    let db = cluster.fresh_database();
    (cluster.connect("authenticator", &db), cluster.connect("postgres", &db), db)
}

/// A session of `user` made by the superuser: its id and token.
pub fn session_of(admin: &mut Client, user: &str) -> (uuid::Uuid, String) {
    let row = admin
        .query_one(
            "SELECT id, token FROM session_ext.create_user_session(user_id => $1::text::uuid, session_data => '{}')",
            &[&user],
        )
        .expect("creating a session");
    (row.get(0), row.get(1))
}

/// The first column of every row a query returns.
pub fn column<T: postgres::types::FromSqlOwned>(client: &mut Client, sql: &str) -> Vec<T> {
    client.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect()
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
