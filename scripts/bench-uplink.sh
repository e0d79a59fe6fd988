#!/usr/bin/env bash
# The edge uplink's cost: two fresh local tansu brokers (edge: inputs, central: outputs), one
# run each of
#   no spool        --output-brokers central, no spool (the baseline)
#   spool idle      the same with --spool-dir: the uplink is up, the spool stays empty
#   spooling        central stopped: every output goes to the spool (a bounded run ends with
#                   them on disk)
#   drain only      central started again, no new input: the spool drains; drain rate
#   draining        the spool holds RECORDS outputs of an earlier outage and RECORDS new inputs
#                   arrive: inputs/s while the spool drains in front of them
#
#   scripts/bench-uplink.sh [STREAMTRACT_BINARY]
#
# Default binary: target/release/streamtract. Env: RECORDS (default 50000), MODEL (default
# models/digits_mlp.onnx). Needs scripts/setup-test-env.sh. Prints one table; every run's
# output topic is checked to hold what it should.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${1:-target/release/streamtract}"
RECORDS="${RECORDS:-50000}"
MODEL="${MODEL:-models/digits_mlp.onnx}"
PY="$ROOT/target/pyenv/bin/python"
DIR="$ROOT/target/bench-uplink"

[ -x "$BIN" ] || { echo "no streamtract binary at $BIN (cargo build --release)" >&2; exit 1; }
[ -x "$PY" ] || { echo "no test virtualenv (scripts/setup-test-env.sh)" >&2; exit 1; }

stop_all() {
    scripts/broker.sh stop "$DIR/edge" >/dev/null 2>&1 || true
    scripts/broker.sh stop "$DIR/central" >/dev/null 2>&1 || true
}
stop_all
rm -rf "$DIR"
mkdir -p "$DIR"
trap stop_all EXIT
scripts/broker.sh start "$DIR/edge" >/dev/null
scripts/broker.sh start "$DIR/central" >/dev/null
EDGE="$(cat "$DIR/edge/broker.addr")"
CENTRAL="$(cat "$DIR/central/broker.addr")"
kclient() { "$PY" scripts/kclient.py "$1" --brokers "$2" "${@:3}"; }

kclient create-topic "$EDGE" --topic input --partitions 1 >/dev/null
kclient create-topic "$EDGE" --topic empty --partitions 1 >/dev/null
"$PY" - "$EDGE" "$RECORDS" <<'PY'
import sys
from confluent_kafka import Producer
brokers, n = sys.argv[1], int(sys.argv[2])
lines = [l.split(",", 1)[1].encode() for l in open("data/digits.csv").read().splitlines()]
p = Producer({"bootstrap.servers": brokers, "linger.ms": 20})
for i in range(n):
    while True:
        try:
            p.produce("input", key=f"k{i}".encode(), value=lines[i % len(lines)])
            break
        except BufferError:
            p.poll(0.1)
    p.poll(0)
if p.flush(120):
    sys.exit("input records not delivered")
PY
for t in out-none out-idle out-outage1 out-outage2; do
    kclient create-topic "$CENTRAL" --topic "$t" --partitions 1 >/dev/null
done

# One bounded run: NAME INPUT OUTPUT [flags]; prints "seconds peak_rss_kib".
run() {
    local name="$1" input="$2" output="$3"
    shift 3
    local started ended
    started=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$DIR/time.$name" "$BIN" run --brokers "$EDGE" --output-brokers "$CENTRAL" \
        --input "$input" --output "$output" --model "$MODEL" --until-end true "$@" \
        >/dev/null 2>"$DIR/stderr.$name" || {
        echo "$name failed:" >&2
        tail -20 "$DIR/stderr.$name" >&2
        exit 1
    }
    ended=$(date +%s.%N)
    "$PY" -c "print(f'{$ended - $started:.3f} $(tail -1 "$DIR/time.$name")')"
}

# Records in TOPIC on the central broker.
written() {
    kclient topic-info "$CENTRAL" --topic "$1" | "$PY" -c 'import json,sys; i = json.load(sys.stdin); print(sum(i["high_watermarks"]) - sum(i["low_watermarks"]))'
}
expect() {
    local got
    got=$(written "$1")
    [ "$got" = "$2" ] || { echo "$1 holds $got records, expected $2" >&2; exit 1; }
}
spool_bytes() { du -sb "$1" | cut -f1; }

SPOOL1="$DIR/spool1" SPOOL2="$DIR/spool2"
SPOOL_ARGS=(--spool-max-bytes 1073741824 --uplink-timeout-ms 2000)
# Each assignment on its own line, so that a failed run stops the script (set -e).
r=$(run none input out-none); read -r t_none rss_none <<<"$r"
expect out-none "$RECORDS"
r=$(run idle input out-idle --spool-dir "$SPOOL1" "${SPOOL_ARGS[@]}"); read -r t_idle rss_idle <<<"$r"
expect out-idle "$RECORDS"
# A spool learns an output topic's partition count while the cluster is up (a run that reads
# nothing), as a box must have started once with its uplink before an outage.
r=$(run learn1 empty out-outage1 --spool-dir "$SPOOL1" "${SPOOL_ARGS[@]}")
r=$(run learn2 empty out-outage2 --spool-dir "$SPOOL2" "${SPOOL_ARGS[@]}")

scripts/broker.sh stop "$DIR/central" >/dev/null
r=$(run spooling input out-outage1 --spool-dir "$SPOOL1" "${SPOOL_ARGS[@]}"); read -r t_spooling rss_spooling <<<"$r"
spooled_bytes=$(spool_bytes "$SPOOL1")
r=$(run spooling2 input out-outage2 --spool-dir "$SPOOL2" "${SPOOL_ARGS[@]}")
scripts/broker.sh start "$DIR/central" >/dev/null

r=$(run drain empty out-outage1 --spool-dir "$SPOOL1" "${SPOOL_ARGS[@]}"); read -r t_drain rss_drain <<<"$r"
expect out-outage1 "$RECORDS"
r=$(run draining input out-outage2 --spool-dir "$SPOOL2" "${SPOOL_ARGS[@]}"); read -r t_draining rss_draining <<<"$r"
expect out-outage2 "$((2 * RECORDS))"

echo "$RECORDS records of data/digits.csv, 1 partition, model $MODEL, two tansu $(tansu --version 2>/dev/null | awk '{print $2}') brokers (SQLite) on loopback, $(nproc) cores"
echo "spool after the outage: $spooled_bytes bytes for $RECORDS records"
"$PY" - "$RECORDS" "$t_none" "$rss_none" "$t_idle" "$rss_idle" "$t_spooling" "$rss_spooling" "$t_drain" "$rss_drain" "$t_draining" "$rss_draining" <<'PY'
import sys
n = int(sys.argv[1])
v = sys.argv[2:]
rows = [
    ("no spool (--output-brokers only)", "inputs/s", n / float(v[0]), v[1]),
    ("spool idle (uplink up)", "inputs/s", n / float(v[2]), v[3]),
    ("spooling (uplink down, outputs to disk)", "inputs/s", n / float(v[4]), v[5]),
    ("drain only (uplink back, no new input)", "spooled outputs/s", n / float(v[6]), v[7]),
    ("draining (uplink back, new inputs behind the spool)", "inputs/s", n / float(v[8]), v[9]),
]
base = rows[0][2]
print("| run | rate | vs no spool | peak RSS |")
print("|---|---:|---:|---:|")
for name, unit, rate, rss in rows:
    print(f"| {name} | {rate:,.0f} {unit} | {rate / base:.2f}x | {int(rss) / 1024:.0f} MiB |")
PY
