#!/usr/bin/env bash
# Sets up the machine and runs every test of session_ext; exits non-zero on any failure.
#   1. formatting and lints (rustfmt, clippy -D warnings)
#   2. unit tests: cargo pgrx test (pure Rust #[test]s and in-database #[pg_test]s)
#   3. the release package (cargo pgrx package), installed; the SQL-level suite: pgTAP files in
#      pg_test/, run by pg_prove against it in a fresh cluster
#   4. the client examples in examples/ (Python and Node.js) against that cluster
#   5. integration tests in tests/: Rust clients against real clusters
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

# The unit tests installed a build with test-only functions. Everything from here on runs
# against the release package, installed as a user would install it.
package="$(install_package)"

say "the package holds the library, the control file and the install script of this version"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
(cd "$package" && find . -type f | sort) | diff - <(printf '%s\n' \
    "./usr/lib/postgresql/$PG_MAJOR/lib/session_ext.so" \
    "./usr/share/postgresql/$PG_MAJOR/extension/session_ext--$version.sql" \
    "./usr/share/postgresql/$PG_MAJOR/extension/session_ext.control")
python3 - "$ROOT/META.json" "$version" <<'PY'
import json, sys
meta, version = json.load(open(sys.argv[1])), sys.argv[2]
assert meta["version"] == version, f"META.json version {meta['version']} is not Cargo's {version}"
assert meta["provides"]["session_ext"]["version"] == version, "META.json provides another version"
PY

say "pgTAP suite (pg_prove), in a fresh cluster"
cluster_create pgtap "$PGTAP_PORT" "shared_preload_libraries = 'session_ext'" "fsync = off"
cluster_start pgtap
cluster_psql pgtap -f "$ROOT/pg_test/fixtures/supabase_roles.sql"
installed="$(cluster_psql pgtap -Atc "CREATE EXTENSION session_ext; SELECT extversion FROM pg_extension WHERE extname = 'session_ext'")"
[ "$installed" = "$version" ] || { echo "the package installs version $installed, not $version" >&2; exit 1; }
cluster_psql pgtap -c "DROP EXTENSION session_ext" -c "CREATE DATABASE session_ext_test"
(cd "$ROOT/pg_test" && PGHOST="$(cluster_dir pgtap)/sock" PGPORT="$PGTAP_PORT" PGUSER=postgres \
    PGDATABASE=session_ext_test pg_prove --failures ./*.sql)

say "client examples (examples/python, examples/node)"
ensure_example_clients
cluster_psql pgtap -c "CREATE DATABASE examples"
cluster_psql pgtap -d examples -c "CREATE EXTENSION session_ext" -f "$ROOT/pg_test/fixtures/grant_api_roles.sql"
examples_url="postgresql://authenticator@/examples?host=$(cluster_dir pgtap)/sock&port=$PGTAP_PORT"
DATABASE_URL="$examples_url" "$EXAMPLES_PYTHON" "$ROOT/examples/python/sessions.py"
(cd "$ROOT/examples/node" && DATABASE_URL="$examples_url" node sessions.mjs)
cluster_stop pgtap

say "integration tests (tests/)"
(cd "$ROOT/tests" && cargo test)

say "all tests passed"
