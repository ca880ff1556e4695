#!/usr/bin/env bash
# A three-node NATS JetStream cluster on loopback, for trying the production topology locally
# (docs/scaling.md): every node runs deploy/nats/cluster.conf with its own free client, route
# and monitoring ports and its own store directory. Nothing here touches the machine's own
# nats-server.
#
# Usage:
#   scripts/nats-cluster.sh start [DIR]   start the nodes, wait until JetStream is healthy on
#                                         each, and print the NATS_URL to give the service
#   scripts/nats-cluster.sh stop [DIR]    stop the nodes this script started, by their pid files
#   scripts/nats-cluster.sh status [DIR]  which nodes run, and the NATS_URL
#   scripts/nats-cluster.sh kill N [DIR]  kill -9 node N (0, 1 or 2), keeping its store
#   scripts/nats-cluster.sh restart N [DIR]  start node N again on its ports and store
#
# DIR (default <repo>/.data/nats-cluster) holds each node's store, log, pid and ports.
# Then, for example:
#   NATS_URL="$(cat .data/nats-cluster/nats_url)" NATS_STREAM_REPLICAS=3 just run
# Environment: NATS_SERVER_BIN (default: nats-server on PATH, else /usr/sbin/nats-server),
# CLUSTER_TIMEOUT (seconds to wait for health, default 30).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONF="$REPO_ROOT/deploy/nats/cluster.conf"
NODES=(n0 n1 n2)
BIN="${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
TIMEOUT="${CLUSTER_TIMEOUT:-30}"

cmd="${1:-status}"
shift || true
node_arg=""
if [[ "$cmd" == kill || "$cmd" == restart ]]; then
  node_arg="${1:?usage: $0 $cmd N [DIR]}"
  shift
fi
DIR="${1:-$REPO_ROOT/.data/nats-cluster}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac

fresh_ports() { # fresh_ports: a ports file per node, nine distinct free ports in all
  # Every socket stays bound until all nine are chosen, so that no port is handed out twice.
  python3 - "$DIR" "${NODES[@]}" <<'PY'
import socket, sys
folder, nodes, held = sys.argv[1], sys.argv[2:], []
for node in nodes:
    ports = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        held.append(s)
        ports.append(s.getsockname()[1])
    with open(f"{folder}/{node}.ports", "w") as f:
        f.write("CLIENT_PORT=%d\nROUTE_PORT=%d\nMONITOR_PORT=%d\n" % tuple(ports))
PY
}

# A free port is only free until someone binds it: between the choice and nats-server's own
# bind, another process on the machine (a parallel test) can take it. A start that chose its
# ports itself and lost one that way chooses again.
MAX_ATTEMPTS=3

port_taken() { # port_taken: a node's log, past the byte offsets in LOG_FROM, says a port was in use
  local n
  for n in "${NODES[@]}"; do
    tail -c "+$((${LOG_FROM[$n]:-0} + 1))" "$DIR/$n.log" 2>/dev/null |
      grep -q "address already in use" && return 0
  done
  return 1
}

alive() { # alive PID: it exists and is not a zombie
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z* ]]
}

running() { # running NODE
  local pid_file="$DIR/$1.pid"
  [[ -f "$pid_file" ]] && alive "$(cat "$pid_file")"
}

gone() { # gone PID: wait up to 10 s until it no longer runs
  for _ in $(seq 1 100); do
    alive "$1" || return 0
    sleep 0.1
  done
  return 1
}

spawn() { # spawn NODE: start one node from its recorded ports
  local n="$1"
  # shellcheck source=/dev/null
  . "$DIR/$n.ports"
  local routes=()
  for m in "${NODES[@]}"; do
    routes+=("nats://127.0.0.1:$(. "$DIR/$m.ports"; echo "$ROUTE_PORT")")
  done
  NATS_SERVER_NAME="$n" \
  NATS_LISTEN="127.0.0.1:$CLIENT_PORT" \
  NATS_MONITOR_LISTEN="127.0.0.1:$MONITOR_PORT" \
  NATS_STORE_DIR="$DIR/$n" \
  NATS_CLUSTER_NAME="local" \
  NATS_CLUSTER_LISTEN="127.0.0.1:$ROUTE_PORT" \
  NATS_ROUTE_1="${routes[0]}" NATS_ROUTE_2="${routes[1]}" NATS_ROUTE_3="${routes[2]}" \
    nohup "$BIN" -c "$CONF" >>"$DIR/$n.log" 2>&1 </dev/null &
  echo $! >"$DIR/$n.pid"
}

healthy() { # healthy NODE: JetStream on the node answers healthy
  # shellcheck source=/dev/null
  . "$DIR/$1.ports"
  curl -sf "http://127.0.0.1:$MONITOR_PORT/healthz" 2>/dev/null | grep -q '"ok"'
}

wait_healthy() {
  local deadline=$((SECONDS + TIMEOUT))
  for n in "$@"; do
    until healthy "$n"; do
      if ! running "$n"; then
        echo "nats-cluster: $n exited; see $DIR/$n.log" >&2
        tail -n 20 "$DIR/$n.log" >&2 || true
        return 1
      fi
      if ((SECONDS > deadline)); then
        echo "nats-cluster: $n not healthy within ${TIMEOUT}s; see $DIR/$n.log" >&2
        return 1
      fi
      sleep 0.2
    done
  done
}

stop_node() { # stop_node NODE: TERM, then KILL after 10 s
  local n="$1" pid
  running "$n" || { rm -f "$DIR/$n.pid"; return 0; }
  pid="$(cat "$DIR/$n.pid")"
  kill "$pid" 2>/dev/null || true
  gone "$pid" || { kill -9 "$pid" 2>/dev/null || true; gone "$pid" || true; }
  rm -f "$DIR/$n.pid"
}

case "$cmd" in
  start)
    mkdir -p "$DIR"
    chosen=false
    for n in "${NODES[@]}"; do
      if running "$n"; then
        echo "nats-cluster: $n already runs (pid $(cat "$DIR/$n.pid")); stop it first" >&2
        exit 1
      fi
      [[ -f "$DIR/$n.ports" ]] || chosen=true
    done
    if $chosen; then fresh_ports; fi
    declare -A LOG_FROM
    for attempt in $(seq 1 "$MAX_ATTEMPTS"); do
      for n in "${NODES[@]}"; do
        LOG_FROM[$n]="$(stat -c %s "$DIR/$n.log" 2>/dev/null || echo 0)"
        spawn "$n"
      done
      wait_healthy "${NODES[@]}" && break
      # Whatever started goes down again, ports chosen here or not.
      for n in "${NODES[@]}"; do stop_node "$n"; done
      if $chosen && ((attempt < MAX_ATTEMPTS)) && port_taken; then
        echo "nats-cluster: a port chosen for the cluster was taken meanwhile; choosing again" >&2
        fresh_ports
        continue
      fi
      exit 1
    done
    urls=()
    for n in "${NODES[@]}"; do
      urls+=("nats://127.0.0.1:$(. "$DIR/$n.ports"; echo "$CLIENT_PORT")")
    done
    (IFS=,; echo "${urls[*]}") >"$DIR/nats_url"
    echo "NATS_URL=$(cat "$DIR/nats_url")"
    ;;
  stop)
    for n in "${NODES[@]}"; do stop_node "$n"; done
    echo "nats-cluster: stopped"
    ;;
  kill)
    n="n$node_arg"
    if running "$n"; then
      pid="$(cat "$DIR/$n.pid")"
      kill -9 "$pid"
      gone "$pid" || true
    fi
    rm -f "$DIR/$n.pid"
    echo "nats-cluster: killed $n"
    ;;
  restart)
    n="n$node_arg"
    stop_node "$n"
    spawn "$n"
    wait_healthy "$n" || exit 1
    echo "nats-cluster: $n runs again"
    ;;
  status)
    for n in "${NODES[@]}"; do
      if running "$n"; then echo "$n: running (pid $(cat "$DIR/$n.pid"))"; else echo "$n: stopped"; fi
    done
    [[ -f "$DIR/nats_url" ]] && echo "NATS_URL=$(cat "$DIR/nats_url")"
    ;;
  *)
    echo "usage: $0 start|stop|status [DIR] | kill N [DIR] | restart N [DIR]" >&2
    exit 2
    ;;
esac
