#!/usr/bin/env bash
# The benchmark of SPEC §9, in one go: builds session_ext in release mode, starts a throwaway
# cluster with fixed settings, loads sessions, measures session_ext against its peers (raw SQL,
# PL/pgSQL, plain INSERT and DELETE) in the same run, and prints and writes a table of ratios.
# Every figure is the median of several rounds; peers alternate within each round.
#
#   BENCH_SECONDS  seconds per pgbench round       (default 10)
#   BENCH_ROUNDS   rounds per comparison           (default 3)
#   BENCH_CLIENTS  pgbench clients                 (default 2, one per core here)
#   BENCH_MEDIUM   sessions of the main comparisons (default 1000000)
#   BENCH_LARGE    sessions of the largest scale   (default 10000000)
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

SECONDS_PER_ROUND="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
CLIENTS="${BENCH_CLIENTS:-2}"
LARGE="${BENCH_LARGE:-10000000}"
SMALL=10000
MEDIUM="${BENCH_MEDIUM:-1000000}"
PORT="${SESSION_EXT_BENCH_PORT:-28817}"
# A third of the RAM: the largest scale's sessions and indexes then stay in PostgreSQL's cache.
SHARED_BUFFERS="${BENCH_SHARED_BUFFERS:-$(awk '/MemTotal/ { printf "%dMB", $2 / 1024 / 3 }' /proc/meminfo)}"
BENCH="$ROOT/bench"
RESULTS="$BENCH/results.md"

setup
install_extension --release
say "starting the benchmark cluster on port $PORT"
cluster_create bench "$PORT" \
    "shared_preload_libraries = 'session_ext'" \
    "session_ext.cleanup_interval = 0" \
    "session_ext.touch_interval = '1h'" \
    "shared_buffers = '$SHARED_BUFFERS'" "max_wal_size = '16GB'" "checkpoint_timeout = '30min'" \
    "autovacuum = off" "jit = off" "max_connections = 20"
cluster_start bench
WORK="$(cluster_dir bench)/work"
mkdir -p "$WORK"
sql() { cluster_psql bench -At "$@"; }
sql -c "CREATE EXTENSION session_ext" -c "CREATE EXTENSION pg_prewarm" -f "$BENCH/peers.sql" >/dev/null
# A second superuser whose sessions write no audit rows: session_ext doing exactly what a plain
# INSERT of a session does.
sql -c "CREATE ROLE bench_unaudited LOGIN SUPERUSER" -c "ALTER ROLE bench_unaudited SET session_ext.audit = off" >/dev/null

# load FIRST LAST [expired]: sessions FIRST..LAST, then VACUUM ANALYZE, and the table and its
# token index read into the cache, so that every scale is measured warm.
load() {
    local started=$SECONDS
    sql -c "CALL bench.load($1, $2, ${3:-false})" -c "VACUUM ANALYZE session_ext.user_sessions" \
        -c "SELECT pg_prewarm('session_ext.user_sessions'), pg_prewarm('session_ext.user_sessions_token_hash_key')" >/dev/null
    echo "  loaded sessions $1..$2 in $((SECONDS - started)) s"
}

# tps SCRIPT[:USER] SESSIONS: transactions per second of one pgbench round (as USER, by default
# postgres); a failed transaction fails the benchmark.
tps() {
    local out script=${1%%:*} user=postgres
    [[ $1 == *:* ]] && user=${1#*:}
    out=$("$PG_BIN/pgbench" -n -M prepared -c "$CLIENTS" -j 1 -T "$SECONDS_PER_ROUND" -D sessions="$2" \
        -h "$(cluster_dir bench)/sock" -p "$PORT" -U "$user" -f "$BENCH/scripts/$script.sql" postgres 2>&1)
    if ! grep -q '^number of failed transactions: 0 ' <<<"$out"; then
        echo "pgbench $1 failed:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk '/^tps/ { print $3; exit }' <<<"$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# compare SESSIONS SCRIPT...: ROUNDS rounds of each script in turn; sets MEDIAN[script].
declare -A MEDIAN
compare() {
    local sessions=$1 round script
    shift
    declare -A runs
    for round in $(seq "$ROUNDS"); do
        for script in "$@"; do
            runs[$script]+="$(tps "$script" "$sessions") "
        done
    done
    for script in "$@"; do
        MEDIAN[$script]=$(printf '%s\n' ${runs[$script]} | median | awk '{ printf "%.0f", $1 }')
        printf '  %-30s %10s tps  (rounds: %s)\n' "$script" "${MEDIAN[$script]}" "${runs[$script]% }"
    done
}

# latency SECONDS RATE LOG: a rate-limited validation load; prints "p50 p99" in milliseconds.
latency() {
    rm -f "$WORK"/pgbench_log.*
    (cd "$WORK" && "$PG_BIN/pgbench" -n -M prepared -c 1 -j 1 -T "$1" -R "$2" -D sessions=$MEDIUM -l \
        -h "$(cluster_dir bench)/sock" -p "$PORT" -U postgres -f "$BENCH/scripts/validate_ext.sql" postgres >/dev/null 2>&1)
    cat "$WORK"/pgbench_log.* | awk '{ print $3 / 1000 }' | sort -g |
        awk '{ v[NR] = $1 } END { printf "%.3f %.3f\n", v[int(NR * 0.5)], v[int(NR * 0.99)] }'
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

say "scale $SMALL"
load 1 $SMALL
compare $SMALL validate_ext
small_tps=${MEDIAN[validate_ext]}

say "scale $MEDIUM: validation, creation and memory"
load $((SMALL + 1)) $MEDIUM
compare $MEDIUM validate_ext validate_raw validate_plpgsql
row "validate_session vs raw SQL query (tps)" "${MEDIAN[validate_ext]}" "${MEDIAN[validate_raw]}" \
    "$(ratio "${MEDIAN[validate_ext]}" "${MEDIAN[validate_raw]}")" ">=1.00"
row "validate_session vs PL/pgSQL peer (tps)" "${MEDIAN[validate_ext]}" "${MEDIAN[validate_plpgsql]}" \
    "$(ratio "${MEDIAN[validate_ext]}" "${MEDIAN[validate_plpgsql]}")" ">=1.30"
medium_tps=${MEDIAN[validate_ext]}
compare $MEDIUM create_ext:bench_unaudited create_raw create_ext create_raw_audited create_plpgsql
row "create_user_session, audit off, vs plain INSERT of the session (tps)" "${MEDIAN[create_ext:bench_unaudited]}" \
    "${MEDIAN[create_raw]}" "$(ratio "${MEDIAN[create_ext:bench_unaudited]}" "${MEDIAN[create_raw]}")" ">=0.95"
row "create_user_session, audit on, vs plain INSERT of the session and its audit row (tps)" "${MEDIAN[create_ext]}" \
    "${MEDIAN[create_raw_audited]}" "$(ratio "${MEDIAN[create_ext]}" "${MEDIAN[create_raw_audited]}")" ">=0.95"
row "create_user_session, audit on, vs PL/pgSQL peer (tps)" "${MEDIAN[create_ext]}" "${MEDIAN[create_plpgsql]}" \
    "$(ratio "${MEDIAN[create_ext]}" "${MEDIAN[create_plpgsql]}")" ">=1.00"
# Memory of one backend before and after 100,000 validations (after a warm-up).
memory=$(sql <<'SQL'
SELECT count(*) FROM generate_series(1, 1000) g, LATERAL session_ext.validate_session(bench.token(g)) v;
SELECT sum(total_bytes) FROM pg_backend_memory_contexts \gset before_
SELECT count(*) FROM generate_series(1, 100000) g, LATERAL session_ext.validate_session(bench.token(g)) v;
SELECT sum(total_bytes) - :before_sum FROM pg_backend_memory_contexts;
SQL
)
growth=$(echo "$memory" | tail -1)
echo "  backend memory growth over 100,000 validations: $growth bytes"
ROWS+=("| backend memory growth over 100,000 validations (bytes) | $growth | - | - | <= 65536 | $([ "$growth" -le 65536 ] && echo yes || echo NO) |")

say "cleanup of $MEDIUM expired sessions"
load 20000001 $((20000000 + MEDIUM)) true
started=$(date +%s.%N)
sql -c "DELETE FROM session_ext.user_sessions WHERE valid_until <= now()" >/dev/null
delete_rate=$(awk -v t="$(elapsed "$started")" -v n="$MEDIUM" 'BEGIN { printf "%.0f", n / t }')
echo "  plain DELETE: $delete_rate rows/s"
sql -c "VACUUM session_ext.user_sessions" >/dev/null
load 30000001 $((30000000 + MEDIUM)) true
read -r idle_p50 idle_p99 < <(latency 10 500)
echo "  validation latency, idle: p50 $idle_p50 ms, p99 $idle_p99 ms"
latency 20 500 > "$WORK/busy" &
sleep 2
started=$(date +%s.%N)
deleted=$(sql -c "SELECT session_ext.cleanup_expired_sessions()")
cleanup_seconds=$(elapsed "$started")
wait
read -r busy_p50 busy_p99 < "$WORK/busy"
cleanup_rate=$(awk -v t="$cleanup_seconds" -v n="$deleted" 'BEGIN { printf "%.0f", n / t }')
echo "  cleanup_expired_sessions: $deleted rows in $cleanup_seconds s, $cleanup_rate rows/s"
echo "  validation latency during cleanup: p50 $busy_p50 ms, p99 $busy_p99 ms"
row "cleanup_expired_sessions vs one plain DELETE (rows/s)" "$cleanup_rate" "$delete_rate" \
    "$(ratio "$cleanup_rate" "$delete_rate")" ">=0.80"
row "validation p99 during cleanup vs idle (ms)" "$busy_p99" "$idle_p99" "$(ratio "$busy_p99" "$idle_p99")" "<=2.00"
sql -c "VACUUM ANALYZE session_ext.user_sessions" >/dev/null

say "scale $LARGE"
load $((MEDIUM + 1)) "$LARGE"
compare "$LARGE" validate_ext
row "validate_session at $LARGE vs $SMALL sessions (tps)" "${MEDIAN[validate_ext]}" "$small_tps" \
    "$(ratio "${MEDIAN[validate_ext]}" "$small_tps")" ">=0.80"
row "validate_session at $MEDIUM vs $SMALL sessions (tps)" "$medium_tps" "$small_tps" \
    "$(ratio "$medium_tps" "$small_tps")" ">=0.80"
cluster_stop bench

cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
{
    echo "# session_ext benchmark"
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM,"
    echo "$("$PG_BIN/postgres" --version), shared_buffers $SHARED_BUFFERS, pgbench -M prepared -c $CLIENTS -j 1,"
    echo "$ROUNDS rounds of ${SECONDS_PER_ROUND}s per peer, interleaved; medians."
    echo
    echo "| measure | session_ext | baseline | ratio | target | met |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} > "$RESULTS"
say "results (also in bench/results.md)"
cat "$RESULTS"
