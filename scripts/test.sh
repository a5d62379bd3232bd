#!/usr/bin/env bash
# Sets up the machine and runs every test of session_ext; exits non-zero on any failure.
#   1. formatting and lints (rustfmt, clippy -D warnings)
#   2. unit tests: cargo pgrx test (pure Rust #[test]s and in-database #[pg_test]s)
#   3. the SQL-level suite: pgTAP files in pg_test/, run by pg_prove against a real cluster
#   4. integration tests in tests/: Rust clients against real clusters
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PGTAP_PORT="${SESSION_EXT_PGTAP_PORT:-28816}"

stop_test_clusters() {
    cluster_stop pgtap
    local data
    for data in "$RUN_DIR"/it/*/data; do
        [ -f "$data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1
    done
    return 0
}

setup
trap stop_test_clusters EXIT

say "formatting and lints"
(cd "$ROOT" && cargo fmt --all --check)
(cd "$ROOT/tests" && cargo fmt --all --check)
(cd "$ROOT" && cargo clippy --all-targets --features "pg$PG_MAJOR pg_test" -- -D warnings)
(cd "$ROOT/tests" && cargo clippy --all-targets -- -D warnings)

say "unit tests (cargo pgrx test)"
rm -rf "$RUN_DIR/pgrx"
mkdir -p "$RUN_DIR/pgrx"
chown postgres:postgres "$RUN_DIR/pgrx"
(cd "$ROOT" && cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$RUN_DIR/pgrx/data")

# The unit tests installed a build with test-only functions; put the real one in place.
install_extension

say "pgTAP suite (pg_prove)"
cluster_create pgtap "$PGTAP_PORT" "shared_preload_libraries = 'session_ext'" "fsync = off"
cluster_start pgtap
cluster_psql pgtap -f "$ROOT/pg_test/fixtures/supabase_roles.sql"
cluster_psql pgtap -c "CREATE DATABASE session_ext_test"
(cd "$ROOT/pg_test" && PGHOST="$(cluster_dir pgtap)/sock" PGPORT="$PGTAP_PORT" PGUSER=postgres \
    PGDATABASE=session_ext_test pg_prove --failures ./*.sql)
cluster_stop pgtap

say "integration tests (tests/)"
(cd "$ROOT/tests" && cargo test)

say "all tests passed"
