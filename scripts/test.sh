#!/usr/bin/env bash
# Sets up the machine and runs every test of session_ext on every supported PostgreSQL major
# (15, 16, 17, 18); exits non-zero on any failure. SESSION_EXT_PG_MAJORS="17" (or "15 18", ...)
# narrows a local run; CI runs all. Once: formatting, the module layering (no module imports one
# that imports it back) and the integration tests' lints. Then for each major:
#   1. lints: clippy -D warnings, built against that major
#   2. unit tests: cargo pgrx test (pure Rust #[test]s and in-database #[pg_test]s)
#   3. the release package (cargo pgrx package), installed; the SQL-level suite: pgTAP files in
#      pg_test/, run by pg_prove against it in a fresh cluster
#   4. the client examples in examples/ (Python and Node.js) against that cluster, and the web
#      example's browser tests (Debian's chromium, driven by playwright-core)
#   5. upgrades: each released version of the extension updated to this one
#   6. integration tests in tests/: Rust clients against real clusters
# Last, when 15 and a newer major are selected: pg_upgrade from 15 to each newer one.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PGTAP_PORT="${SESSION_EXT_PGTAP_PORT:-28816}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"

# The integration tests leave their clusters running; stopped after each major's tests, with that
# major's pg_ctl, and on exit.
stop_test_clusters() {
    cluster_stop pgtap
    local data
    for data in "$RUN_DIR"/it/*/data; do
        if [ -f "$data/postmaster.pid" ]; then
            as_pg "$PG_BIN/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
        fi
    done
}

# The files the package must hold, under the paths pg_config names: the library, the control
# file, this version's install script and the upgrade scripts.
expected_files() {
    local lib share upgrade
    lib="$("$PG_CONFIG" --pkglibdir)"
    share="$("$PG_CONFIG" --sharedir)/extension"
    printf '%s\n' ".$lib/session_ext.so" ".$share/session_ext--$VERSION.sql" ".$share/session_ext.control"
    for upgrade in "$ROOT"/sql/session_ext--*--*.sql; do
        echo ".$share/${upgrade##*/}"
    done
}

# schema_of DATABASE: its schema as pg_dump --binary-upgrade lists it, an extension's member
# objects one by one (a plain dump shows only CREATE EXTENSION). What differs between any two
# databases is masked: OIDs and transaction ids, the dump's random \restrict key, and the audit
# sequence's position (data, not schema).
schema_of() {
    as_pg "$PG_BIN/pg_dump" --schema-only --binary-upgrade -h "$(cluster_dir pgtap)/sock" -p "$PGTAP_PORT" \
        -U postgres -d "$1" |
        grep -v -e 'binary_upgrade_set_next_' -e '^\\\(un\)\?restrict ' -e "setval('session_ext\." |
        sed -E "s/'[0-9]+'/'N'/g; s/'\{[0-9,]+\}'/'{N}'/g"
}

# test_major MAJOR: the whole suite against one major.
test_major() {
    use_major "$1"
    say "PostgreSQL $PG_MAJOR: lints (clippy against this major's headers)"
    (cd "$ROOT" && cargo clippy --all-targets --no-default-features --features "pg$PG_MAJOR pg_test" -- -D warnings)

    say "PostgreSQL $PG_MAJOR: unit tests (cargo pgrx test)"
    rm -rf "$RUN_DIR/pgrx"
    mkdir -p "$RUN_DIR/pgrx"
    chown postgres:postgres "$RUN_DIR/pgrx"
    # One test at a time: several change the shared table's definition (an index, a trigger, a
    # publication, its owner) inside their transactions, and at once they can deadlock.
    (cd "$ROOT" && RUST_TEST_THREADS=1 cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$RUN_DIR/pgrx/data")

    # The unit tests installed a build with test-only functions. Everything from here on runs
    # against the release package, installed as a user would install it.
    local package
    package="$(install_package)"
    say "PostgreSQL $PG_MAJOR: the package holds the library, the control file and the SQL scripts"
    diff <(cd "$package" && find . -type f | sort) <(expected_files | sort)

    say "PostgreSQL $PG_MAJOR: pgTAP suite (pg_prove), in a fresh cluster"
    cluster_create pgtap "$PGTAP_PORT" "shared_preload_libraries = 'session_ext'" "fsync = off"
    cluster_start pgtap
    cluster_psql pgtap -f "$ROOT/pg_test/fixtures/supabase_roles.sql"
    local installed
    installed="$(cluster_psql pgtap -Atc "CREATE EXTENSION session_ext; SELECT extversion FROM pg_extension WHERE extname = 'session_ext'")"
    [ "$installed" = "$VERSION" ] || { echo "the package installs version $installed, not $VERSION" >&2; exit 1; }
    cluster_psql pgtap -c "DROP EXTENSION session_ext" -c "CREATE DATABASE session_ext_test"
    (cd "$ROOT/pg_test" && PATH="$PG_BIN:$PATH" PGHOST="$(cluster_dir pgtap)/sock" PGPORT="$PGTAP_PORT" \
        PGUSER=postgres PGDATABASE=session_ext_test pg_prove --failures ./*.sql)

    say "PostgreSQL $PG_MAJOR: client examples (examples/python, examples/node)"
    ensure_example_clients
    cluster_psql pgtap -c "CREATE DATABASE examples"
    cluster_psql pgtap -d examples -c "CREATE EXTENSION session_ext" -f "$ROOT/pg_test/fixtures/grant_api_roles.sql"
    local examples_url="postgresql://authenticator@/examples?host=$(cluster_dir pgtap)/sock&port=$PGTAP_PORT"
    DATABASE_URL="$examples_url" "$EXAMPLES_PYTHON" "$ROOT/examples/python/sessions.py"
    (cd "$ROOT/examples/node" && DATABASE_URL="$examples_url" node sessions.mjs)
    say "PostgreSQL $PG_MAJOR: the web example in Chromium (examples/web), screenshot in $RUN_DIR/screenshots/"
    (cd "$ROOT/examples/web" && DATABASE_URL="$examples_url" SCREENSHOT_DIR="$RUN_DIR/screenshots/pg$PG_MAJOR" npm test --silent)

    say "PostgreSQL $PG_MAJOR: each released version, updated to $VERSION, keeps its sessions and equals a fresh install"
    local extension_dir released old still_valid cleaned families mismatch remembered keyed key deadline previous_hash
    extension_dir="$("$PG_CONFIG" --sharedir)/extension"
    cluster_psql pgtap -c "CREATE DATABASE fresh_install"
    cluster_psql pgtap -d fresh_install -c "CREATE EXTENSION session_ext"
    for released in "$ROOT"/sql/released/session_ext--*.sql; do
        old="${released##*--}"
        old="${old%.sql}"
        as_root cp "$released" "$extension_dir/"
        cluster_psql pgtap -c "CREATE DATABASE upgraded"
        # Sessions as that version's library wrote them (this run has only the new library): five
        # live ones, and one rotated a minute ago, whose previous token that version remembered
        # (before 0.4.0 in previous_token_hash; from 0.4.0 on as a root of its token family, next
        # to the session's key).
        case "$old" in
            0.[123].0) remembered="previous_token_hash" keyed="" key="" ;;
            *) remembered="root_token_hashes" keyed=", token_key" key=", sha256(gen_random_uuid()::text::bytea)" ;;
        esac
        # From 0.6.0 on a row also has its cleanup deadline (at its valid_until).
        deadline=""
        case "$old" in 0.[1-5].0) ;; *) deadline=", cleanup_after" ;; esac
        previous_hash="sha256(convert_to(r.previous, 'UTF8'))"
        [ "$remembered" = root_token_hashes ] && previous_hash="ARRAY[$previous_hash]"
        cluster_psql pgtap -d upgraded -c "CREATE EXTENSION session_ext VERSION '$old'" -c "
            CREATE TABLE kept AS SELECT 'kept-' || i || '-' || md5(random()::text) AS token FROM generate_series(1, 5) i;
            CREATE TABLE rotated AS SELECT 'previous-' || md5(random()::text) AS previous, 'current-' || md5(random()::text) AS current;
            INSERT INTO session_ext.user_sessions (id, user_id, session_id, token_hash, expires_at, valid_until $keyed $deadline)
                SELECT k.id, gen_random_uuid(), k.id::text, sha256(convert_to(k.token, 'UTF8')), now() + '1 day', now() + '1 day' $key
                       ${deadline:+, now() + '1 day'}
                  FROM (SELECT gen_random_uuid() AS id, token FROM kept) k;
            INSERT INTO session_ext.user_sessions
                   (id, user_id, session_id, token_hash, $remembered, rotated_at, expires_at, valid_until $keyed $deadline)
                SELECT r.id, gen_random_uuid(), r.id::text, sha256(convert_to(r.current, 'UTF8')),
                       $previous_hash, now() - interval '1 minute', now() + '1 day', now() + '1 day' $key ${deadline:+, now() + '1 day'}
                  FROM (SELECT gen_random_uuid() AS id, * FROM rotated) r;
            INSERT INTO session_ext.user_sessions (id, user_id, session_id, token_hash, expires_at, valid_until $keyed $deadline)
                SELECT e.id, gen_random_uuid(), e.id::text, sha256(e.id::text::bytea), now() - interval '1 minute', now() - interval '1 minute' $key
                       ${deadline:+, now() - interval '1 minute'}
                  FROM (SELECT gen_random_uuid() AS id) e"
        # Until the update, the new library refuses objects whose tables differ from its own (those
        # before 0.6.0), and says what to do; objects of the same shape it serves as they are.
        mismatch="$(cluster_psql pgtap -d upgraded -Atc "SELECT count((session_ext.validate_session(token)).id) FROM kept" 2>&1 || true)"
        case "$old" in
            0.[1-5].0) grep -q "objects in this database are version $old, its library is $VERSION" <<<"$mismatch" ;;
            *) [ "$mismatch" = 5 ] ;;
        esac || { echo "before the update from $old, a call answered: $mismatch" >&2; exit 1; }
        cluster_psql pgtap -d upgraded -c "ALTER EXTENSION session_ext UPDATE"
        still_valid="$(cluster_psql pgtap -d upgraded -Atc "
            SELECT count(*) FILTER (WHERE (session_ext.validate_session(token)).id IS NOT NULL) || '/' || count(*) FROM kept;
            DROP TABLE kept")"
        [ "$still_valid" = "5/5" ] || { echo "after the update from $old, $still_valid sessions validate" >&2; exit 1; }
        # Every row has its cleanup deadline at its valid_until (0.6.0's cleanup_after; an update from before 0.6.0 sets it):
        # cleanup deletes the expired one and keeps the six live ones.
        cleaned="$(cluster_psql pgtap -d upgraded -At -c "SELECT session_ext.cleanup_expired_sessions()" \
            -c "SELECT count(*) FILTER (WHERE cleanup_after = valid_until) || '/' || count(*) FROM session_ext.user_sessions")"
        [ "$cleaned" = $'1\n6/6' ] || { echo "after the update from $old, cleanup answered: $cleaned" >&2; exit 1; }
        # The session rotated before the update joins a token family: its current token rotates,
        # a retry within the grace gets the same token, and the token it remembered from before
        # the update is still recognised as reused.
        families="$(cluster_psql pgtap -d upgraded -At \
            -c "CREATE TABLE next AS SELECT (session_ext.rotate_session_token(current)).token FROM rotated" \
            -c "SELECT (SELECT token FROM next) = (session_ext.rotate_session_token(current)).token FROM rotated" \
            -c "SELECT (session_ext.validate_session(previous)).id IS NULL FROM rotated" \
            -c "SELECT string_agg(revoke_reason, ',') FROM session_ext.user_sessions" \
            -c "DROP TABLE rotated, next")"
        [ "$families" = $'t\nt\ntoken_reuse' ] || { echo "after the update from $old, families answered: $families" >&2; exit 1; }
        diff -u <(schema_of fresh_install) <(schema_of upgraded)
        echo "$old -> $VERSION: 5/5 sessions validate, cleanup kept the 6 live ones, a rotated session joined its token family, schema equals a fresh install"
        as_root rm "$extension_dir/session_ext--$old.sql"
        cluster_psql pgtap -c "DROP DATABASE upgraded"
    done
    cluster_stop pgtap

    say "PostgreSQL $PG_MAJOR: integration tests (tests/)"
    (cd "$ROOT/tests" && cargo test)
    stop_test_clusters
}

setup
trap stop_test_clusters EXIT

say "formatting, module layering, the integration tests' lints"
(cd "$ROOT" && cargo fmt --all --check)
(cd "$ROOT/tests" && cargo fmt --all --check)
python3 "$ROOT/scripts/layers.py" "$ROOT/src"
(cd "$ROOT/tests" && cargo clippy --all-targets -- -D warnings)
python3 - "$ROOT/META.json" "$VERSION" <<'PY'
import json, sys
meta, version = json.load(open(sys.argv[1])), sys.argv[2]
assert meta["version"] == version, f"META.json version {meta['version']} is not Cargo's {version}"
assert meta["provides"]["session_ext"]["version"] == version, "META.json provides another version"
PY

for major in "${MAJORS[@]}"; do
    test_major "$major"
done

# pg_upgrade from 15 to each newer selected major.
if [[ " ${MAJORS[*]} " == *" 15 "* ]]; then
    for major in "${MAJORS[@]}"; do
        if [ "$major" -gt 15 ]; then
            say "pg_upgrade from PostgreSQL 15 to $major keeps every session"
            "$ROOT/scripts/pg_upgrade_test.sh" 15 "$major"
        fi
    done
fi

say "all tests passed on PostgreSQL ${MAJORS[*]}"
