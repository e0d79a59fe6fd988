#!/usr/bin/env bash
# Start, stop or query a local tansu broker (Kafka-compatible) for demos and CI.
#
#   scripts/broker.sh start  DIR [PORT]   start on 127.0.0.1:PORT (a free port if not given)
#   scripts/broker.sh stop   DIR          stop it (SIGTERM, then SIGKILL after 10 s)
#   scripts/broker.sh status DIR          print the address; exit 0 if running, 3 if not
#
# DIR (e.g. target/demo-broker) holds the SQLite database tansu.db, broker.log, broker.pid,
# broker.addr ("127.0.0.1:PORT") and cluster.id (the broker's cluster id, generated once).
# Data persists across stop/start; rm -rf DIR for a fresh broker.
# Without PORT, start reuses the port in DIR/broker.addr when it is free.
# Needs scripts/setup-test-env.sh to have been run. Env: TANSU_LOG (RUST_LOG for tansu, default
# "warn"), BROKER_START_TIMEOUT (seconds, default 30).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
PYTHON="$REPO_ROOT/target/pyenv/bin/python"
KCLIENT="$SCRIPT_DIR/kclient.py"
START_TIMEOUT="${BROKER_START_TIMEOUT:-30}"

usage() {
    echo "usage: $0 start|stop|status DIR [PORT]" >&2
    exit 64
}

say() { printf '[broker] %s\n' "$*"; }

[ $# -ge 2 ] || usage
cmd="$1"
mkdir -p "$2"
DIR="$(cd "$2" && pwd)"
PORT_ARG="${3:-}"
PID_FILE="$DIR/broker.pid"
ADDR_FILE="$DIR/broker.addr"
LOG_FILE="$DIR/broker.log"

# tansu 0.6.0's SQLite schema has no index on header(topition, offset_id), and it looks up the
# headers of every fetched record with a query on those columns: each fetch then scans the whole
# header table, so reading slows down in proportion to the number of headers ever stored
# (quadratic over a run that writes headers, as streamtract does on every output). Adding the
# missing index after start-up changes no data and no behaviour, only the speed of that lookup.
index_headers() {
    "$PYTHON" - "$DIR/tansu.db" <<'PY' || say "warning: could not add the header index (reads of records with headers will be slow)"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
db.execute("create index if not exists streamtract_header_record on header (topition, offset_id)")
db.commit()
PY
}

find_tansu() {
    if command -v tansu >/dev/null 2>&1; then
        command -v tansu
    elif [ -x "$HOME/.cargo/bin/tansu" ]; then
        echo "$HOME/.cargo/bin/tansu"
    else
        echo "tansu not found on PATH or in ~/.cargo/bin; run scripts/setup-test-env.sh" >&2
        exit 1
    fi
}

# The pid in DIR/broker.pid, if that process is alive and is tansu.
running_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q tansu || return 1
    echo "$pid"
}

# True while pid exists and is not a zombie (an exited child we have not reaped yet).
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [ -n "$state" ] && [ "$state" != Z ]
}

port_is_free() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

log_tail() {
    echo "---- last lines of $LOG_FILE ----" >&2
    tail -n 30 "$LOG_FILE" >&2 || true
    echo "----" >&2
}

# Launch tansu on $1 and wait for it. Returns 0 when ready, 2 if tansu exited (e.g. port taken),
# 1 on timeout (tansu is killed).
launch() {
    local port="$1" tansu pid deadline addr="127.0.0.1:$1" cluster
    tansu="$(find_tansu)"
    # A cluster id of its own lets the readiness check tell this broker from any other process
    # answering on the port. It is kept in DIR because tansu keys the stored data by it.
    [ -s "$DIR/cluster.id" ] || echo "streamtract-$(date +%s)-$$-$RANDOM" >"$DIR/cluster.id"
    cluster="$(cat "$DIR/cluster.id")"
    echo "==== $(date -u +%FT%TZ) starting tansu on $addr" >>"$LOG_FILE"
    : >"$DIR/ping.err"
    # tansu resolves sqlite://NAME against its working directory (and reads ./.env), so run it in DIR.
    (
        cd "$DIR"
        unset SCHEMA_REGISTRY OTEL_EXPORTER_OTLP_ENDPOINT
        export RUST_LOG="${TANSU_LOG:-warn}" NO_COLOR=1
        exec "$tansu" broker --silent \
            --cluster-id "$cluster" \
            --listener-url "tcp://$addr" \
            --advertised-listener-url "tcp://$addr" \
            --storage-engine "sqlite://tansu.db" \
            </dev/null >>"$LOG_FILE" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$addr" >"$ADDR_FILE"
    deadline=$((SECONDS + START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        if ! alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            rm -f "$PID_FILE"
            return 2
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
            "$PYTHON" "$KCLIENT" ping --brokers "$addr" --timeout 2 \
                --cluster-id "$cluster" >/dev/null 2>>"$DIR/ping.err"; then
            return 0
        fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
    return 1
}

do_start() {
    if pid="$(running_pid)"; then
        say "already running: pid $pid at $(cat "$ADDR_FILE")"
        return 0
    fi
    [ -x "$PYTHON" ] || { echo "$PYTHON missing; run scripts/setup-test-env.sh" >&2; exit 1; }
    find_tansu >/dev/null
    local attempts=1 port prev rc t0
    if [ -n "$PORT_ARG" ]; then
        port="$PORT_ARG"
    else
        attempts=5
        prev="$(sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p' "$ADDR_FILE" 2>/dev/null || true)"
        if [ -n "$prev" ] && port_is_free "$prev"; then port="$prev"; else port="$(free_port)"; fi
    fi
    t0="$EPOCHREALTIME"
    for ((i = 1; i <= attempts; i++)); do
        rc=0
        launch "$port" || rc=$?
        case $rc in
        0)
            index_headers
            say "tansu ready at 127.0.0.1:$port (pid $(cat "$PID_FILE"), data $DIR, $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') s)"
            return 0
            ;;
        1)
            echo "tansu did not answer Kafka metadata requests within ${START_TIMEOUT}s" >&2
            log_tail
            exit 1
            ;;
        2)
            echo "tansu exited during start-up on port $port (attempt $i/$attempts)" >&2
            [ "$i" -lt "$attempts" ] && port="$(free_port)"
            ;;
        esac
    done
    log_tail
    exit 1
}

do_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        say "not running ($DIR)"
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
    say "stopped pid $pid"
}

do_status() {
    local pid
    if pid="$(running_pid)"; then
        say "running: pid $pid at $(cat "$ADDR_FILE")"
        return 0
    fi
    say "not running ($DIR)"
    exit 3
}

case "$cmd" in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
*) usage ;;
esac
