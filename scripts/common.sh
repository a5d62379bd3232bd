# Shared by scripts/demo.sh, scripts/test.sh and bench/run.sh: machine setup and throwaway
# clusters. Source it; it defines functions and changes nothing by itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PG_CONFIG="$PG_BIN/pg_config"
PGRX_VERSION=0.18.1
APT_PACKAGES=(
    postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo
    postgresql-$PG_MAJOR-pgtap libtap-parser-sourcehandler-pgtap-perl postgresql-$PG_MAJOR-cron pgbouncer
)

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# PostgreSQL refuses to run as root: servers and their tools run as the postgres user, from a
# directory that user can enter.
as_pg() { (cd / && sudo -u postgres "$@"); }

ensure_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_pgrx() {
    if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
        say "installing cargo-pgrx $PGRX_VERSION (about 7 minutes, once per machine)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! grep -qs "^pg$PG_MAJOR = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        say "cargo pgrx init --pg$PG_MAJOR"
        cargo pgrx init "--pg$PG_MAJOR" "$PG_CONFIG"
    fi
}

# Where throwaway clusters live: the repository's ignored build area, unless the postgres
# user cannot reach it (a checkout under /root), then a directory under /tmp.
init_run_dir() {
    RUN_DIR="$ROOT/target/session_ext"
    mkdir -p "$RUN_DIR"
    if ! as_pg test -x "$RUN_DIR"; then
        RUN_DIR="/tmp/session_ext-$(printf '%s' "$ROOT" | md5sum | cut -c1-8)"
        mkdir -p "$RUN_DIR"
    fi
    chmod 755 "$RUN_DIR"
    export SESSION_EXT_RUN_DIR="$RUN_DIR"
}

setup() {
    ensure_packages
    ensure_pgrx
    init_run_dir
}

install_extension() {
    say "building and installing session_ext into PostgreSQL $PG_MAJOR"
    (cd "$ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" "$@")
}

# install_package: `cargo pgrx package` (a release build), and its files copied into the
# system's PostgreSQL, the way a distribution package would install them. Prints the package's
# directory.
install_package() {
    say "packaging session_ext (cargo pgrx package) and installing the package" >&2
    local package="$ROOT/target/release/session_ext-pg$PG_MAJOR"
    rm -rf "$package"
    (cd "$ROOT" && cargo pgrx package --pg-config "$PG_CONFIG" >&2)
    as_root cp -r "$package/." /
    echo "$package"
}

# The client libraries of examples/: psycopg in a virtualenv of the build area, pg from npm.
ensure_example_clients() {
    if ! command -v npm >/dev/null; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    if [ ! -d "$ROOT/examples/node/node_modules/pg" ]; then
        (cd "$ROOT/examples/node" && npm ci --no-audit --no-fund --silent)
    fi
    EXAMPLES_PYTHON="$RUN_DIR/venv/bin/python"
    if ! "$EXAMPLES_PYTHON" -c 'import psycopg' 2>/dev/null; then
        python3 -m venv "$RUN_DIR/venv"
        "$RUN_DIR/venv/bin/pip" install -q -r "$ROOT/examples/python/requirements.txt"
    fi
}

cluster_dir() { echo "$RUN_DIR/$1"; }
cluster_port() { cat "$(cluster_dir "$1")/port"; }

# cluster_create NAME PORT [postgresql.conf line...]: a new, empty cluster (an old one of the
# same name is stopped and removed first).
cluster_create() {
    local name=$1 port=$2 dir
    shift 2
    dir="$(cluster_dir "$name")"
    cluster_stop "$name"
    rm -rf "$dir"
    mkdir -p "$dir/sock"
    echo "$port" >"$dir/port"
    chown -R postgres:postgres "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log"
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir/sock'"
        printf '%s\n' "$@"
    } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
}

cluster_start() {
    local dir
    dir="$(cluster_dir "$1")"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

cluster_stop() {
    local dir
    dir="$(cluster_dir "$1")"
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
}

# cluster_psql NAME [psql argument...]: psql as the postgres superuser, stopping at the first error.
cluster_psql() {
    local name=$1 dir
    shift
    dir="$(cluster_dir "$name")"
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/sock" -p "$(cluster_port "$name")" -U postgres "$@"
}
