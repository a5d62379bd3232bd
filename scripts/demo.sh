#!/usr/bin/env bash
# Sets up the machine, builds and installs session_ext, starts a throwaway cluster with the
# library preloaded, and walks through a session's lifecycle in SQL. Safe to run again: the
# cluster is recreated each time. `./scripts/demo.sh 17` runs it on PostgreSQL 17 (default 15;
# supported: 15, 16, 17, 18).
SESSION_EXT_PG_MAJORS="${1:-15}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${SESSION_EXT_DEMO_PORT:-28815}"
setup
install_extension
say "starting a throwaway cluster on port $PORT"
cluster_create demo "$PORT" "shared_preload_libraries = 'session_ext'"
cluster_start demo
say "the demo"
cluster_psql demo -f "$ROOT/scripts/demo.sql"
# A database for the web example (examples/web), with the Supabase-style roles it connects as.
cluster_psql demo -c "CREATE DATABASE web"
cluster_psql demo -d web -f "$ROOT/pg_test/fixtures/supabase_roles.sql" -c "CREATE EXTENSION session_ext" \
    -f "$ROOT/pg_test/fixtures/grant_api_roles.sql"

dir="$(cluster_dir demo)"
say "done"
cat <<MSG
The demo cluster is still running. To connect:
    psql -h $dir/sock -p $PORT -U postgres
To try the web example (Node.js 20 or later) in its database "web", then open http://localhost:3000:
    cd examples/web && npm ci
    DATABASE_URL='postgresql://authenticator@/web?host=$dir/sock&port=$PORT' npm start
To stop it:
    sudo -u postgres $PG_BIN/pg_ctl -D $dir/data stop
MSG
