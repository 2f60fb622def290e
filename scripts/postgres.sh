#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback, for the tests.
#   eval "$(bash scripts/postgres.sh start)"   # installs Debian's postgresql if missing, starts a cluster in a
#                                             # temp dir on a free port, prints KOE_TEST_DATABASE_URL/KOE_TEST_PGDIR
#   bash scripts/postgres.sh stop "$KOE_TEST_PGDIR"   # stops it and removes the dir
# As root (CI), initdb and pg_ctl run as the `postgres` user: PostgreSQL refuses to run as root.
set -euo pipefail
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
# Run from the cluster's dir: the postgres user may not be allowed into the caller's working directory.
as_owner() { if [ "$(id -u)" = 0 ]; then (cd "$dir" && runuser -u postgres -- "$@"); else "$@"; fi; }
case "${1:-}" in
start)
  if [ -z "$(pg_bin)" ]; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  bin=$(pg_bin)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/koe-pg.XXXXXX")
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$bin/initdb" -D "$dir/data" -U koe --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  # Durability settings off: a test cluster is thrown away, and the machine is shared.
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
  echo "export KOE_TEST_DATABASE_URL=postgresql://koe@127.0.0.1:$port/postgres KOE_TEST_PGDIR=$dir"
  ;;
stop)
  dir=${2:?the cluster dir printed by start}
  as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
  cd /
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start | stop DIR" >&2
  exit 2
  ;;
esac
