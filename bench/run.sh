#!/usr/bin/env bash
# The benchmark of SPEC §9, in one go: builds session_ext in release mode, starts a throwaway
# cluster with fixed settings, loads sessions (each scale in a database of its own), measures
# session_ext against its peers (raw SQL, PL/pgSQL, plain INSERT and DELETE) in the same run,
# and prints and writes a table of ratios. Every figure is the median of several rounds; peers
# take turns within each round, in an order that rotates from round to round, and every pgbench
# run starts right after a checkpoint. `bench/run.sh 17` measures on PostgreSQL 17 (default 15;
# supported: 15, 16, 17, 18), with results in bench/results-pg17.md.
#
#   BENCH_SECONDS  seconds per pgbench round       (default 10)
#   BENCH_ROUNDS   rounds per comparison           (default 7)
#   BENCH_CLIENTS  pgbench clients                 (default 2, one per core here)
#   BENCH_MEDIUM   sessions of the main comparisons (default 1000000)
#   BENCH_LARGE    sessions of the largest scale   (default 10000000)
#   BENCH_CLEANUP_ROUNDS  rounds of the cleanup comparison (default 3)
SESSION_EXT_PG_MAJORS="${1:-15}"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

SECONDS_PER_ROUND="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-7}"
CLIENTS="${BENCH_CLIENTS:-2}"
LARGE="${BENCH_LARGE:-10000000}"
CLEANUP_ROUNDS="${BENCH_CLEANUP_ROUNDS:-3}"
SMALL=10000
MEDIUM="${BENCH_MEDIUM:-1000000}"
PORT="${SESSION_EXT_BENCH_PORT:-28817}"
# A third of the RAM: the largest scale's sessions and indexes then stay in PostgreSQL's cache.
SHARED_BUFFERS="${BENCH_SHARED_BUFFERS:-$(awk '/MemTotal/ { printf "%dMB", $2 / 1024 / 3 }' /proc/meminfo)}"
BENCH="$ROOT/bench"

setup
RESULTS="$BENCH/results-pg$PG_MAJOR.md"
install_extension --release
say "starting the benchmark cluster on port $PORT"
# touch_interval 1h: each random session is validated once or twice per run, where an
# application validates one many times a minute; at the default every validation here would
# write activity, which the raw query does not.
cluster_create bench "$PORT" \
    "shared_preload_libraries = 'session_ext'" \
    "session_ext.cleanup_interval = 0" \
    "session_ext.touch_interval = '1h'" \
    "shared_buffers = '$SHARED_BUFFERS'" "max_wal_size = '16GB'" "checkpoint_timeout = '30min'" \
    "autovacuum = off" "jit = off" "max_connections = 20"
cluster_start bench
WORK="$(cluster_dir bench)/work"
mkdir -p "$WORK"
# Each scale in a database of its own, so that the scales can be measured in the same rounds.
declare -A SIZE=([small]=$SMALL [medium]=$MEDIUM [large]=$LARGE [activity]=$MEDIUM)
sql() { cluster_psql bench -At -d "bench_$1" "${@:2}"; }
for scale in small medium large activity; do
    cluster_psql bench -c "CREATE DATABASE bench_$scale" >/dev/null
    sql "$scale" -c "CREATE EXTENSION session_ext" -c "CREATE EXTENSION pg_prewarm" -f "$BENCH/peers.sql" >/dev/null
done
# A second superuser whose sessions write no audit rows: session_ext doing exactly what a plain
# INSERT of a session does.
sql medium -c "CREATE ROLE bench_unaudited LOGIN SUPERUSER" -c "ALTER ROLE bench_unaudited SET session_ext.audit = off" >/dev/null
# Activity writes: there every validation writes, as one does when its touch_interval is due.
sql activity -c "ALTER DATABASE bench_activity SET session_ext.touch_interval = 0" >/dev/null

# load SCALE FIRST LAST [expired [idle_timeout]]: sessions FIRST..LAST, then VACUUM ANALYZE, the
# table and its token index read into the cache, and a checkpoint, so that every scale is measured
# warm and no measurement shares the machine with the checkpoint of a load.
load() {
    local started=$SECONDS
    sql "$1" -c "CALL bench.load($2, $3, ${4:-false}, '${5:-1 day}')" -c "VACUUM ANALYZE session_ext.user_sessions" \
        -c "SELECT pg_prewarm('session_ext.user_sessions'), pg_prewarm('session_ext.user_sessions_token_hash_key'), pg_prewarm('session_ext.user_sessions_pkey')" \
        -c "CHECKPOINT" >/dev/null
    echo "  loaded sessions $2..$3 into bench_$1 in $((SECONDS - started)) s"
}

# tps SCRIPT:USER:SCALE: transactions per second of one pgbench round of SCRIPT, as USER (by
# default postgres), in the database of SCALE; a failed transaction fails the benchmark. Every
# round starts right after a checkpoint, so that no peer pays for the full-page images of the
# pages another peer's round dirtied.
tps() {
    local out script user scale
    IFS=: read -r script user scale <<<"$1"
    sql "$scale" -c "CHECKPOINT" >/dev/null
    out=$("$PG_BIN/pgbench" -n -M prepared -c "$CLIENTS" -j 1 -T "$SECONDS_PER_ROUND" -D sessions="${SIZE[$scale]}" \
        -h "$(cluster_dir bench)/sock" -p "$PORT" -U "${user:-postgres}" -f "$BENCH/scripts/$script.sql" "bench_$scale" 2>&1)
    if ! grep -q '^number of failed transactions: 0 ' <<<"$out"; then
        echo "pgbench $1 failed:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk '/^tps/ { print $3; exit }' <<<"$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# compare PEER...: ROUNDS rounds of each peer (SCRIPT:USER:SCALE, as tps takes it) in turn;
# sets MEDIAN[peer]. Each round starts one peer further along the list, so that no peer always
# runs first (after the previous comparison's writes, or after the last peer of the round before).
declare -A MEDIAN
compare() {
    local round i peer peers=("$@")
    declare -A runs
    for round in $(seq 0 $((ROUNDS - 1))); do
        for i in $(seq 0 $(($# - 1))); do
            peer=${peers[(round + i) % $#]}
            runs[$peer]+="$(tps "$peer") "
        done
    done
    for peer in "$@"; do
        MEDIAN[$peer]=$(printf '%s\n' ${runs[$peer]} | median | awk '{ printf "%.0f", $1 }')
        printf '  %-34s %10s tps  (rounds: %s)\n' "$peer" "${MEDIAN[$peer]}" "${runs[$peer]% }"
    done
}

# latency SECONDS RATE: a rate-limited validation load on the medium scale; prints "p50 p99" in
# milliseconds.
latency() {
    rm -f "$WORK"/pgbench_log.*
    (cd "$WORK" && "$PG_BIN/pgbench" -n -M prepared -c 1 -j 1 -T "$1" -R "$2" -D sessions=$MEDIUM -l \
        -h "$(cluster_dir bench)/sock" -p "$PORT" -U postgres -f "$BENCH/scripts/validate_ext.sql" bench_medium >/dev/null 2>&1)
    cat "$WORK"/pgbench_log.* | awk '{ print $3 / 1000 }' | sort -g |
        awk '{ v[NR] = $1 } END { printf "%.3f %.3f\n", v[int(NR * 0.5)], v[int(NR * 0.99)] }'
}

# under_load SQL: runs SQL on the medium scale, 2 s into 20 s of the latency load of `latency`,
# and prints "rows/s p50 p99", rows being the expired sessions there were when it started.
under_load() {
    local started seconds rows p50 p99
    rows=$(sql medium -c "SELECT count(*) FROM session_ext.user_sessions WHERE valid_until <= now()")
    latency 20 500 >"$WORK/busy" &
    sleep 2
    started=$(date +%s.%N)
    sql medium -c "$1" >/dev/null
    seconds=$(elapsed "$started")
    wait
    read -r p50 p99 <"$WORK/busy"
    echo "$(awk -v t="$seconds" -v n="$rows" 'BEGIN { printf "%.0f", n / t }') $p50 $p99"
}

elapsed() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
ROWS=()
# row MEASURE EXT BASE RATIO TARGET(>=x or <=x)
row() {
    local verdict
    verdict=$(awk -v r="$4" -v t="$5" 'BEGIN { op = substr(t, 1, 2); v = substr(t, 3) + 0; print ((op == ">=" && r >= v) || (op == "<=" && r <= v)) ? "yes" : "NO" }')
    ROWS+=("| $1 | $2 | $3 | $4 | $5 | $verdict |")
}
# compared MEASURE EXT_PEER BASE_PEER TARGET: a row of two medians.
compared() {
    row "$1" "${MEDIAN[$2]}" "${MEDIAN[$3]}" "$(ratio "${MEDIAN[$2]}" "${MEDIAN[$3]}")" "$4"
}

say "loading $SMALL, $MEDIUM and $LARGE sessions"
load small 1 $SMALL
load medium 1 $MEDIUM
load large 1 "$LARGE"

say "scale $MEDIUM: validation, creation and memory"
compare validate_ext::medium validate_raw::medium validate_plpgsql::medium
compared "validate_session vs raw SQL query (tps)" validate_ext::medium validate_raw::medium ">=0.97"
compared "validate_session vs PL/pgSQL peer (tps)" validate_ext::medium validate_plpgsql::medium ">=1.30"
# PostgREST's request shape, for both: BEGIN, the JWT claims set for the transaction, the call, COMMIT.
compare current_ext::medium current_raw::medium
compared "current_session vs raw primary-key query, one request each (tps)" current_ext::medium current_raw::medium ">=0.97"
compare create_ext:bench_unaudited:medium create_raw::medium create_ext::medium create_raw_audited::medium \
    create_plpgsql::medium
compared "create_user_session, audit off, vs plain INSERT of the session (tps)" \
    create_ext:bench_unaudited:medium create_raw::medium ">=0.95"
compared "create_user_session, audit on, vs plain INSERT of the session and its audit row (tps)" \
    create_ext::medium create_raw_audited::medium ">=0.95"
compared "create_user_session, audit on, vs PL/pgSQL peer (tps)" create_ext::medium create_plpgsql::medium ">=1.00"
# Memory of one backend before and after 100,000 validations (after a warm-up), read by the same
# query both times: a different second query would fill catalog caches of its own, and on 17
# that alone grows CacheMemoryContext by a 512 KB block.
memory=$(sql medium <<'SQL'
SELECT count(*) FROM generate_series(1, 1000) g, LATERAL session_ext.validate_session(bench.token(g)) v;
SELECT sum(total_bytes) FROM pg_backend_memory_contexts;
SELECT count(*) FROM generate_series(1, 100000) g, LATERAL session_ext.validate_session(bench.token(g)) v;
SELECT sum(total_bytes) FROM pg_backend_memory_contexts;
SQL
)
growth=$(echo "$memory" | awk 'NR == 2 { before = $1 } NR == 4 { print $1 - before }')
echo "  backend memory growth over 100,000 validations: $growth bytes"
ROWS+=("| backend memory growth over 100,000 validations (bytes) | $growth | - | - | <= 65536 | $([ "$growth" -le 65536 ] && echo yes || echo NO) |")

say "activity writes: $MEDIUM sessions with the default idle timeout, every validation writing"
# A copy of the same sessions in a plain table with the indexes a user would give it: primary key,
# token hash, user, expiry. Its activity write is one UPDATE ... RETURNING (bench/scripts/touch_raw.sql).
load activity 1 $MEDIUM false '1 hour'
sql activity -c "CREATE TABLE bench.plain_sessions AS SELECT * FROM session_ext.user_sessions" \
    -c "ALTER TABLE bench.plain_sessions ADD PRIMARY KEY (id), ADD UNIQUE (token_hash)" \
    -c "CREATE INDEX ON bench.plain_sessions (user_id, created_at)" \
    -c "CREATE INDEX ON bench.plain_sessions (expires_at)" \
    -c "VACUUM ANALYZE bench.plain_sessions" -c "SELECT pg_prewarm('bench.plain_sessions')" -c "CHECKPOINT" >/dev/null
# activity_round PEER TABLE: one round of PEER (as tps takes it) writing to TABLE; prints its tps,
# WAL bytes per write (from pg_current_wal_lsn) and the percentage of its writes that were HOT
# updates (from pg_stat_user_tables). Each call writes one row.
activity_round() {
    local lsn updated hot rate
    read -r lsn updated hot < <(sql activity -F ' ' -c "SELECT pg_current_wal_lsn(), n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = '$2'::regclass")
    rate=$(tps "$1")
    # A backend sends its statistics as it exits, before it leaves pg_stat_activity.
    until [ "$(sql activity -c "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")" = 0 ]; do
        sleep 0.1
    done
    sql activity -F ' ' -c "SELECT round($rate), round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn') / (n_tup_upd - $updated)),
                                  round(100.0 * (n_tup_hot_upd - $hot) / (n_tup_upd - $updated), 1)
                             FROM pg_stat_user_tables WHERE relid = '$2'::regclass"
}
# Both return the session's id (bench/scripts/touch_ext.sql, touch_raw.sql). A first round of
# each, not counted, brings both tables to their steady state: the plain table's pages are full
# after its load, so its first writes to each page cannot be HOT.
declare -A ACTIVITY
activity_round touch_ext::activity session_ext.user_sessions >/dev/null
activity_round touch_raw::activity bench.plain_sessions >/dev/null
for round in $(seq 0 $((ROUNDS - 1))); do
    for i in 0 1; do
        if [ $(((round + i) % 2)) = 0 ]; then
            ACTIVITY[ext]+="$(activity_round touch_ext::activity session_ext.user_sessions)"$'\n'
        else
            ACTIVITY[raw]+="$(activity_round touch_raw::activity bench.plain_sessions)"$'\n'
        fi
    done
done
# activity PEER FIELD: the median of one field (1 tps, 2 WAL bytes per write, 3 HOT %) over the rounds.
activity() { awk -v f="$2" 'NF { print $f }' <<<"${ACTIVITY[$1]}" | median; }
for peer in ext raw; do
    printf '  %-4s tps, WAL bytes per write, HOT %% by round: %s\n' "$peer" "$(tr '\n' ';' <<<"${ACTIVITY[$peer]}")"
done
row "activity write: validate_session, touch due, vs plain UPDATE ... RETURNING (tps)" \
    "$(activity ext 1)" "$(activity raw 1)" "$(ratio "$(activity ext 1)" "$(activity raw 1)")" ">=1.00"
row "activity write: WAL bytes per write, vs plain UPDATE" \
    "$(activity ext 2)" "$(activity raw 2)" "$(ratio "$(activity ext 2)" "$(activity raw 2)")" "<=1.30"
ROWS+=("| activity writes that are HOT updates (%), vs plain UPDATE | $(activity ext 3) | $(activity raw 3) | - | >= 90 | $(awk -v h="$(activity ext 3)" 'BEGIN { print (h >= 90) ? "yes" : "NO" }') |")

say "cleanup of $MEDIUM expired sessions, each way under the same validation load"
# One p99 of one window scatters by several times on a shared VM: each figure is the median of
# CLEANUP_ROUNDS rounds, each measuring idle latency, then a DELETE and the cleanup each under load,
# on a backlog of its own.
declare -A CLEANUP
for round in $(seq 0 $((CLEANUP_ROUNDS - 1))); do
    first=$((20000001 + 2 * round * MEDIUM))
    load medium "$first" $((first + MEDIUM - 1)) true
    read -r idle_p50 idle_p99 < <(latency 10 500)
    echo "  validation latency, idle: p50 $idle_p50 ms, p99 $idle_p99 ms"
    read -r delete_rate delete_p50 delete_p99 < <(under_load "DELETE FROM session_ext.user_sessions WHERE cleanup_after <= now() AND valid_until <= now()")
    echo "  plain DELETE: $delete_rate rows/s; validation latency meanwhile: p50 $delete_p50 ms, p99 $delete_p99 ms"
    sql medium -c "VACUUM session_ext.user_sessions" >/dev/null
    load medium $((first + MEDIUM)) $((first + 2 * MEDIUM - 1)) true
    read -r cleanup_rate busy_p50 busy_p99 < <(under_load "SELECT session_ext.cleanup_expired_sessions()")
    echo "  cleanup_expired_sessions: $cleanup_rate rows/s; validation latency meanwhile: p50 $busy_p50 ms, p99 $busy_p99 ms"
    sql medium -c "VACUUM session_ext.user_sessions" >/dev/null
    CLEANUP[idle_p99]+="$idle_p99 "
    CLEANUP[delete_rate]+="$delete_rate "
    CLEANUP[cleanup_rate]+="$cleanup_rate "
    CLEANUP[busy_p99]+="$busy_p99 "
done
cleanup_median() { printf '%s\n' ${CLEANUP[$1]} | median; }
row "cleanup_expired_sessions vs one plain DELETE (rows/s)" "$(cleanup_median cleanup_rate)" "$(cleanup_median delete_rate)" \
    "$(ratio "$(cleanup_median cleanup_rate)" "$(cleanup_median delete_rate)")" ">=0.80"
row "validation p99 during cleanup vs idle (ms)" "$(cleanup_median busy_p99)" "$(cleanup_median idle_p99)" \
    "$(ratio "$(cleanup_median busy_p99)" "$(cleanup_median idle_p99)")" "<=2.00"
sql medium -c "VACUUM ANALYZE session_ext.user_sessions" >/dev/null

say "validation at $SMALL, $MEDIUM and $LARGE sessions"
compare validate_ext::small validate_ext::medium validate_ext::large
compared "validate_session at $LARGE vs $SMALL sessions (tps)" validate_ext::large validate_ext::small ">=0.80"
compared "validate_session at $MEDIUM vs $SMALL sessions (tps)" validate_ext::medium validate_ext::small ">=0.80"
cluster_stop bench

cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
{
    echo "# session_ext benchmark"
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM,"
    echo "$("$PG_BIN/postgres" --version), shared_buffers $SHARED_BUFFERS, pgbench -M prepared -c $CLIENTS -j 1,"
    echo "$ROUNDS rounds of ${SECONDS_PER_ROUND}s per peer, taking turns in an order that rotates each round; medians."
    echo
    echo "| measure | session_ext | baseline | ratio | target | met |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} > "$RESULTS"
say "results (also in ${RESULTS#"$ROOT"/})"
cat "$RESULTS"
