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

say "the package holds the library, the control file, this version's install script and the upgrade scripts"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
expected_files() {
    printf '%s\n' "./usr/lib/postgresql/$PG_MAJOR/lib/session_ext.so" \
        "./usr/share/postgresql/$PG_MAJOR/extension/session_ext--$version.sql" \
        "./usr/share/postgresql/$PG_MAJOR/extension/session_ext.control"
    local upgrade
    for upgrade in "$ROOT"/sql/session_ext--*--*.sql; do
        echo "./usr/share/postgresql/$PG_MAJOR/extension/${upgrade##*/}"
    done
}
diff <(cd "$package" && find . -type f | sort) <(expected_files | sort)
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
say "upgrades: each released version, updated to $version, keeps its sessions and equals a fresh install"
extension_dir="$("$PG_CONFIG" --sharedir)/extension"
# pg_dump --binary-upgrade lists an extension's member objects one by one (a plain dump shows only
# CREATE EXTENSION). What differs between any two databases is masked: OIDs and transaction ids,
# the dump's random \restrict key, and the audit sequence's position (data, not schema).
schema_of() {
    as_pg "$PG_BIN/pg_dump" --schema-only --binary-upgrade -h "$(cluster_dir pgtap)/sock" -p "$PGTAP_PORT" \
        -U postgres -d "$1" |
        grep -v -e 'binary_upgrade_set_next_' -e '^\\\(un\)\?restrict ' -e "setval('session_ext\." |
        sed -E "s/'[0-9]+'/'N'/g; s/'\{[0-9,]+\}'/'{N}'/g"
}
cluster_psql pgtap -c "CREATE DATABASE fresh_install"
cluster_psql pgtap -d fresh_install -c "CREATE EXTENSION session_ext"
for released in "$ROOT"/sql/released/session_ext--*.sql; do
    old="${released##*--}"
    old="${old%.sql}"
    as_root cp "$released" "$extension_dir/"
    cluster_psql pgtap -c "CREATE DATABASE upgraded"
    cluster_psql pgtap -d upgraded -c "CREATE EXTENSION session_ext VERSION '$old'" -c "
        CREATE TABLE kept AS SELECT s.token FROM generate_series(1, 5),
            LATERAL session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}') s"
    cluster_psql pgtap -d upgraded -c "ALTER EXTENSION session_ext UPDATE"
    still_valid="$(cluster_psql pgtap -d upgraded -Atc "
        SELECT count(*) FILTER (WHERE (session_ext.validate_session(token)).id IS NOT NULL) || '/' || count(*) FROM kept;
        DROP TABLE kept")"
    [ "$still_valid" = "5/5" ] || { echo "after the update from $old, $still_valid sessions validate" >&2; exit 1; }
    diff -u <(schema_of fresh_install) <(schema_of upgraded)
    echo "$old -> $version: 5/5 sessions validate, schema equals a fresh install"
    as_root rm "$extension_dir/session_ext--$old.sql"
    cluster_psql pgtap -c "DROP DATABASE upgraded"
done

cluster_stop pgtap

say "integration tests (tests/)"
(cd "$ROOT/tests" && cargo test)

say "all tests passed"
