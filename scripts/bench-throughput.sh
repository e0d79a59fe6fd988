#!/usr/bin/env bash
# End-to-end throughput on one fresh local tansu broker, every engine in one run so the ratios
# hold on a noisy machine: the librdkafka ceiling (consume + produce, no model), streamtract
# with its default headers, with the full provenance headers and with none, and the Python loop
# a user would write instead (confluent-kafka + onnxruntime, batched, flush per batch).
#
#   scripts/bench-throughput.sh [STREAMTRACT_BINARY]
#
# Default binary: target/release/streamtract (cargo build --release). Env: RECORDS (default
# 50000), PARTITIONS (default 1), MODEL (default models/digits_mlp.onnx), ROUNDS (default 1:
# every engine once per round, rounds alternate, each figure printed), ST_ARGS (extra flags
# for every streamtract run), ENGINES (default "ceiling python default full none"; also `json`
# and `avro`: the same digits as JSON arrays, and as Confluent Avro records written by
# confluent-kafka's AvroSerializer to scripts/schema-registry.py, each in its own topic, read
# with --format json / --format confluent-avro; `default` is the CSV figure). Needs
# scripts/setup-test-env.sh. Prints one table: records/s (whole process, start-up included),
# ratio to the Python loop and to the ceiling, peak RSS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${1:-target/release/streamtract}"
RECORDS="${RECORDS:-50000}"
PARTITIONS="${PARTITIONS:-1}"
MODEL="${MODEL:-models/digits_mlp.onnx}"
ROUNDS="${ROUNDS:-1}"
PY="$ROOT/target/pyenv/bin/python"
DIR="$ROOT/target/bench-throughput"

[ -x "$BIN" ] || { echo "no streamtract binary at $BIN (cargo build --release)" >&2; exit 1; }
[ -x "$PY" ] || { echo "no test virtualenv (scripts/setup-test-env.sh)" >&2; exit 1; }

scripts/broker.sh stop "$DIR" >/dev/null 2>&1 || true
rm -rf "$DIR"
scripts/broker.sh start "$DIR" >/dev/null
trap 'scripts/broker.sh stop "$DIR" >/dev/null 2>&1 || true' EXIT
BROKERS="$(cat "$DIR/broker.addr")"

kclient() { "$PY" scripts/kclient.py "$1" --brokers "$BROKERS" "${@:2}"; }
# Writes RECORDS digits rows to TOPIC with confluent-kafka, as FORMAT: csv (the pixels of
# data/digits.csv), json (arrays) or avro (Confluent wire format, AvroSerializer, $REGISTRY).
produce_digits() {
    "$PY" - "$BROKERS" "$RECORDS" "$1" "$2" "$REGISTRY" <<'PY'
import json, sys
from confluent_kafka import Producer
brokers, n, fmt, topic, registry = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
lines = [l.split(",", 1)[1] for l in open("data/digits.csv").read().splitlines()]
rows = [[float(v) for v in l.split(",")] for l in lines]
if fmt == "avro":
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext
    schema = open("tests/avro-schemas/digits_v1.avsc").read()
    ser = AvroSerializer(SchemaRegistryClient({"url": registry}), schema)
    ctx = SerializationContext(topic, MessageField.VALUE)
    values = [ser({"pixels": r}, ctx) for r in rows]
elif fmt == "json":
    values = [json.dumps(r).encode() for r in rows]
else:
    values = [l.encode() for l in lines]
p = Producer({"bootstrap.servers": brokers, "linger.ms": 20})
for i in range(n):
    while True:
        try:
            p.produce(topic, key=f"k{i}".encode(), value=values[i % len(values)])
            break
        except BufferError:
            p.poll(0.1)
    p.poll(0)
left = p.flush(120)
if left:
    sys.exit(f"{left} input records not delivered")
PY
}

REGISTRY=""
kclient create-topic --topic input --partitions "$PARTITIONS" >/dev/null
produce_digits csv input

# The same records as JSON arrays and as Confluent Avro, for the `json` and `avro` engines.
if [[ " ${ENGINES:-} " == *" avro "* ]]; then
    "$PY" scripts/schema-registry.py >"$DIR/registry.out" 2>&1 &
    REGISTRY_PID=$!
    trap 'kill $REGISTRY_PID 2>/dev/null; scripts/broker.sh stop "$DIR" >/dev/null 2>&1 || true' EXIT
    for _ in $(seq 50); do grep -q listening "$DIR/registry.out" && break; sleep 0.1; done
    REGISTRY="$(sed -n 's/^listening on //p' "$DIR/registry.out")"
fi
for format in json avro; do
    [[ " ${ENGINES:-} " == *" $format "* ]] || continue
    kclient create-topic --topic "input-$format" --partitions "$PARTITIONS" >/dev/null
    produce_digits "$format" "input-$format"
done

# One engine: a fresh output topic, the command under /usr/bin/time; prints "records/s rss_kib".
run() {
    local name="$1" out="out-$1-$2"
    shift 2
    kclient create-topic --topic "$out" --partitions "$PARTITIONS" >/dev/null
    local cmd=("${@//@OUT@/$out}")
    local started ended broker_before broker_after
    broker_before=$(broker_cpu)
    started=$(date +%s.%N)
    /usr/bin/time -f '%M %U %S' -o "$DIR/time.$name" "${cmd[@]}" >"$DIR/stdout.$name" 2>"$DIR/stderr.$name" || {
        echo "$name failed:" >&2
        tail -20 "$DIR/stderr.$name" >&2
        exit 1
    }
    ended=$(date +%s.%N)
    broker_after=$(broker_cpu)
    local written
    written=$(kclient topic-info --topic "$out" | "$PY" -c 'import json,sys; i = json.load(sys.stdin); print(sum(i["high_watermarks"]) - sum(i["low_watermarks"]))')
    if [ "$written" != "$RECORDS" ]; then
        echo "$name wrote $written records, expected $RECORDS" >&2
        exit 1
    fi
    # records/s, peak RSS KiB, engine CPU s (user + sys), broker CPU s, wall s
    read -r rss user sys <<<"$(tail -1 "$DIR/time.$name")"
    "$PY" -c "print(f'{$RECORDS / ($ended - $started):.0f} $rss {$user + $sys:.2f} {($broker_after - $broker_before):.2f} {$ended - $started:.2f}')"
}

# CPU seconds the broker process has used so far (utime + stime from /proc).
broker_cpu() {
    "$PY" -c "import os; f=open('/proc/$(cat "$DIR/broker.pid")/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))"
}

# Binaries before --output-headers took full|compact|none spelled them true|false.
if "$BIN" run --help | grep -q compact; then FULL=full NONE=none; else FULL=true NONE=false; fi
ST=("$BIN" run --brokers "$BROKERS" --input input --output @OUT@ --model "$MODEL" --until-end true ${ST_ARGS:-})
LOOP=("$PY" scripts/kafka-loop.py --brokers "$BROKERS" --input input --output @OUT@ --records "$RECORDS" --partitions "$PARTITIONS")
declare -A NAMES=(
    [ceiling]="broker ceiling: librdkafka consume + produce, no model"
    [python]="Python loop: confluent-kafka + onnxruntime, batched, flush per batch, no headers"
    [default]="streamtract run (default headers)"
    [full]="streamtract run --output-headers full"
    [none]="streamtract run --output-headers none"
    [json]="streamtract run --format json (same digits as JSON arrays)"
    [avro]="streamtract run --format confluent-avro (same digits, AvroSerializer)"
)
read -r -a ORDER <<<"${ENGINES:-ceiling python default full none}"
declare -A RESULTS
for round in $(seq 1 "$ROUNDS"); do
    for e in "${ORDER[@]}"; do
        case "$e" in
            ceiling) r=$(run ceiling "$round" "${LOOP[@]:0:2}" ceiling "${LOOP[@]:2}") ;;
            python) r=$(run python "$round" "${LOOP[@]:0:2}" model "${LOOP[@]:2}" --model "$MODEL") ;;
            default) r=$(run default "$round" "${ST[@]}") ;;
            full) r=$(run full "$round" "${ST[@]}" --output-headers "$FULL") ;;
            none) r=$(run none "$round" "${ST[@]}" --output-headers "$NONE") ;;
            json) r=$(run json "$round" "${ST[@]/#input/input-json}" --format json) ;;
            avro) r=$(run avro "$round" "${ST[@]/#input/input-avro}" --format confluent-avro --schema-registry "$REGISTRY") ;;
        esac
        RESULTS[$e]="${RESULTS[$e]:-} $r"
    done
done

echo "$RECORDS records of data/digits.csv, $PARTITIONS partition(s), model $MODEL, tansu $(tansu --version 2>/dev/null | awk '{print $2}') (SQLite), $(nproc) cores"
"$PY" - "$ROUNDS" <<PY
import sys
rounds = int(sys.argv[1])
names = {$(for e in "${ORDER[@]}"; do printf '"%s": "%s", ' "$e" "${NAMES[$e]}"; done)}
results = {$(for e in "${ORDER[@]}"; do printf '"%s": "%s", ' "$e" "${RESULTS[$e]}"; done)}
runs = {}
for e, text in results.items():
    v = text.split()
    runs[e] = [(float(v[i]), int(v[i + 1]) / 1024, float(v[i + 2]), float(v[i + 3]), float(v[i + 4])) for i in range(0, len(v), 5)]
best = lambda e: max(r[0] for r in runs[e])
print(f"| engine | rec/s{' (each round)' if rounds > 1 else ''} | vs Python loop | vs ceiling | peak RSS | engine CPU / wall | broker CPU / wall |")
print("|---|---:|---:|---:|---:|---:|---:|")
for e in names:
    rates = " / ".join(f"{r[0]:,.0f}" for r in runs[e])
    rss = max(r[1] for r in runs[e])
    last = runs[e][-1]
    ratio = lambda anchor: f"{best(e) / best(anchor):.2f}x" if anchor in runs else "—"
    print(f"| {names[e]} | {rates} | {ratio('python')} | {ratio('ceiling')} | {rss:.0f} MiB | {last[2] / last[4]:.0%} | {last[3] / last[4]:.0%} |")
PY
