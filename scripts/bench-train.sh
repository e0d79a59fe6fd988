#!/usr/bin/env bash
# Training benchmark: streamtract train vs Keras model.fit (tensorflow-io Kafka, and numpy).
#
# What it measures
#   Whole-process training throughput, samples/s = training rows x epochs / wall seconds of the
#   whole process (start-up, imports, reading Kafka, Normalization adapt pass and model writing
#   included), and peak RSS (MiB, from /usr/bin/time -v), of three programs fitting the same recipe:
#     1. streamtract train (release build) reading the topic from a local tansu broker;
#     2. Keras model.fit on tensorflow-io's classic tensorflow_io.kafka.KafkaDataset reading the
#        same topic, CSV parsed with tf.strings.split/to_number, .batch(32) (scripts/keras-fit.py;
#        its docstring says why this dataset and which librdkafka settings it needs with tansu);
#     3. Keras model.fit on the same rows as in-memory numpy arrays.
#   Recipe: data/digits.csv (no header, label in column 0, 64 features), training rows = 0-based
#   row index i % 4 != 0 (1347 rows), Normalization(adapted) -> Dense(64, relu) -> Dense(32, relu)
#   -> Dense(10, softmax), Adam(1e-3), batch 32, sparse categorical cross-entropy, seed 1.
#   Two variants, each printed as a Markdown table with streamtract/tensorflow-io ratios:
#     small: 1347 records,                     20 epochs;
#     big:   the 1347 rows repeated 10 times,  13,470 records, 5 epochs.
#   Each program runs once per variant. Before measuring, every program is started once unmeasured
#   (so all of them start with their files in the page cache). Differences of a few percent are
#   noise, more so on a shared machine: the machine note (cores, load) is printed first.
#
# Prerequisites
#   - scripts/setup-test-env.sh done (tansu in ~/.cargo/bin, target/pyenv with confluent-kafka);
#   - the release binary: cargo build --release --bin streamtract
#     (or point STREAMTRACT_BIN at one);
#   - a Python with tensorflow 2.16, keras 3, numpy and tensorflow-io 0.37.1 (TF_PYTHON,
#     default target/tfenv/bin/python, made with: python3 -m venv target/tfenv &&
#     target/tfenv/bin/pip install tensorflow-cpu==2.16.2 tensorflow-io==0.37.1 'numpy<2');
#   - GNU time at /usr/bin/time (Debian package `time`).
#
# Run (from anywhere; about 3-5 minutes on 2 cores)
#   scripts/bench-train.sh
# Env: STREAMTRACT_BIN (default target/release/streamtract), TF_PYTHON,
#   BENCH_DIR (default target/bench-train: logs, models, /usr/bin/time reports, results),
#   BENCH_BROKER_DIR (default target/bench-train-broker; wiped and used for a private tansu that
#   is stopped on exit).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
STREAMTRACT_BIN="${STREAMTRACT_BIN:-$REPO_ROOT/target/release/streamtract}"
TF_PYTHON="${TF_PYTHON:-$REPO_ROOT/target/tfenv/bin/python}"
KPYTHON="$REPO_ROOT/target/pyenv/bin/python"
KCLIENT="$SCRIPT_DIR/kclient.py"
KERAS_FIT="$SCRIPT_DIR/keras-fit.py"
CSV="$REPO_ROOT/data/digits.csv"
BENCH_DIR="${BENCH_DIR:-$REPO_ROOT/target/bench-train}"
BROKER_DIR="${BENCH_BROKER_DIR:-$REPO_ROOT/target/bench-train-broker}"
GNU_TIME=/usr/bin/time

say() { printf '[bench-train] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---- prerequisites ----------------------------------------------------------------------------
[ -x "$STREAMTRACT_BIN" ] || die "$STREAMTRACT_BIN missing: cargo build --release --bin streamtract (or set STREAMTRACT_BIN)"
[ -x "$GNU_TIME" ] || die "$GNU_TIME missing: apt-get install time"
[ -x "$KPYTHON" ] || die "$KPYTHON missing: run scripts/setup-test-env.sh"
[ -x "$TF_PYTHON" ] || die "$TF_PYTHON missing (set TF_PYTHON)"
TFIO_VERSION="$("$TF_PYTHON" -c 'import importlib.metadata as m; print(m.version("tensorflow-io"))' 2>/dev/null)" ||
    die "tensorflow-io is not installed in $TF_PYTHON: $TF_PYTHON -m pip install tensorflow-io==0.37.1"
TF_VERSION="$("$TF_PYTHON" -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))' 2>/dev/null ||
    "$TF_PYTHON" -c 'import importlib.metadata as m; print(m.version("tensorflow"))')"
KERAS_VERSION="$("$TF_PYTHON" -c 'import importlib.metadata as m; print(m.version("keras"))')"

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"

# ---- broker and topics ------------------------------------------------------------------------
"$SCRIPT_DIR/broker.sh" stop "$BROKER_DIR" >/dev/null 2>&1 || true
rm -rf "$BROKER_DIR"
cleanup() { "$SCRIPT_DIR/broker.sh" stop "$BROKER_DIR" >&2 || true; }
trap cleanup EXIT
"$SCRIPT_DIR/broker.sh" start "$BROKER_DIR" >&2
BROKERS="$(cat "$BROKER_DIR/broker.addr")"

# topic NAME REPEAT: one partition holding the training rows, the whole set REPEAT times over.
make_topic() {
    local topic="$1" repeat="$2" hw
    "$KPYTHON" "$KCLIENT" create-topic --brokers "$BROKERS" --topic "$topic" --partitions 1 >/dev/null
    "$KPYTHON" - "$CSV" "$repeat" <<'PY' | "$KPYTHON" "$KCLIENT" produce --brokers "$BROKERS" --topic "$topic" --partition 0 >/dev/null
import base64, json, sys
lines = [l.strip() for l in open(sys.argv[1]) if l.strip()]
train = [l for i, l in enumerate(lines) if i % 4 != 0]
for _ in range(int(sys.argv[2])):
    for l in train:
        print(json.dumps({"value": base64.b64encode(l.encode()).decode()}))
PY
    hw="$("$KPYTHON" "$KCLIENT" topic-info --brokers "$BROKERS" --topic "$topic" |
        "$KPYTHON" -c 'import json, sys; print(json.load(sys.stdin)["high_watermarks"][0])')"
    say "topic $topic: $hw records"
    echo "$hw"
}

# ---- one measured run -------------------------------------------------------------------------
# measure NAME CMD...: runs CMD under /usr/bin/time -v; leaves NAME.{log,time,wall} in BENCH_DIR.
measure() {
    local name="$1" t0 t1 rc=0
    shift
    say "running $name"
    t0="$EPOCHREALTIME"
    "$GNU_TIME" -v -o "$BENCH_DIR/$name.time" "$@" >"$BENCH_DIR/$name.log" 2>&1 || rc=$?
    t1="$EPOCHREALTIME"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' >"$BENCH_DIR/$name.wall"
    if [ "$rc" -ne 0 ]; then
        say "$name failed (exit $rc); last lines of $BENCH_DIR/$name.log:"
        tail -n 20 "$BENCH_DIR/$name.log" >&2
        exit 1
    fi
}

rss_mib() { awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$BENCH_DIR/$1.time"; }
wall() { cat "$BENCH_DIR/$1.wall"; }

# final training accuracy of a run (streamtract: --metrics-json; Keras: keras-fit.py's --result)
accuracy() {
    "$TF_PYTHON" - "$BENCH_DIR/$1.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
acc = d["epochs"][-1]["accuracy"] if isinstance(d.get("epochs"), list) else d["accuracy"]
print(f"{acc:.3f}")
PY
}

run_variant() {
    local label="$1" topic="$2" rows="$3" repeat="$4" epochs="$5" v="$6"
    measure "$v-streamtract" "$STREAMTRACT_BIN" train --brokers "$BROKERS" --input "$topic" \
        --label-column first --layers 64,32 --activation relu --optimizer adam --learning-rate 0.001 \
        --epochs "$epochs" --batch-size 32 --seed 1 \
        --out "$BENCH_DIR/$v-streamtract.onnx" --metrics-json "$BENCH_DIR/$v-streamtract.json"
    measure "$v-tfio" "$TF_PYTHON" "$KERAS_FIT" kafka --brokers "$BROKERS" --topic "$topic" \
        --records "$rows" --epochs "$epochs" --result "$BENCH_DIR/$v-tfio.json"
    measure "$v-numpy" "$TF_PYTHON" "$KERAS_FIT" numpy --csv "$CSV" --repeat "$repeat" \
        --epochs "$epochs" --result "$BENCH_DIR/$v-numpy.json"

    local samples=$((rows * epochs))
    {
        echo
        echo "### $label: $rows records x $epochs epochs = $samples samples"
        echo
        echo "| program | wall s | samples/s | peak RSS MiB | final train acc |"
        echo "| --- | ---: | ---: | ---: | ---: |"
        local p name
        for p in streamtract tfio numpy; do
            case $p in
            streamtract) name="streamtract train (Kafka)" ;;
            tfio) name="Keras fit, tensorflow-io KafkaDataset" ;;
            numpy) name="Keras fit, numpy in memory" ;;
            esac
            awk -v n="$name" -v w="$(wall "$v-$p")" -v s="$samples" -v r="$(rss_mib "$v-$p")" -v a="$(accuracy "$v-$p")" \
                'BEGIN { printf "| %s | %.2f | %.0f | %d | %s |\n", n, w, s / w, r, a }'
        done
        echo
        awk -v ws="$(wall "$v-streamtract")" -v wt="$(wall "$v-tfio")" -v wn="$(wall "$v-numpy")" \
            -v rs="$(rss_mib "$v-streamtract")" -v rt="$(rss_mib "$v-tfio")" -v rn="$(rss_mib "$v-numpy")" 'BEGIN {
            printf "streamtract / tensorflow-io: samples/s x%.2f, peak RSS x%.3f\n", wt / ws, rs / rt
            printf "streamtract / numpy fit:     samples/s x%.2f, peak RSS x%.3f\n", wn / ws, rs / rn
        }'
    } >>"$BENCH_DIR/tables.md"
}

# ---- machine note -----------------------------------------------------------------------------
{
    echo "## bench-train ($(date -u +%FT%TZ))"
    echo
    echo "Machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, load average at start $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "One run per program and variant on a machine shared with other work: expect noise."
    echo "streamtract: $STREAMTRACT_BIN ($("$STREAMTRACT_BIN" --version 2>/dev/null || echo '?'))."
    echo "Keras: tensorflow $TF_VERSION, keras $KERAS_VERSION, tensorflow-io $TFIO_VERSION (tensorflow_io.kafka.KafkaDataset; librdkafka api.version.request=false, broker.version.fallback=0.9.0)."
    echo "Broker: tansu at $BROKERS (SQLite), one partition per topic."
} >"$BENCH_DIR/tables.md"

SMALL_ROWS="$(make_topic bench-digits-x1 1)"
BIG_ROWS="$(make_topic bench-digits-x10 10)"
[ "$SMALL_ROWS" = 1347 ] || die "bench-digits-x1 holds $SMALL_ROWS records, expected 1347"
[ "$BIG_ROWS" = 13470 ] || die "bench-digits-x10 holds $BIG_ROWS records, expected 13470"

# Warm-up (unmeasured): page cache for the binary, Python, TensorFlow and tensorflow-io.
say "warm-up"
"$STREAMTRACT_BIN" train --help >/dev/null
"$TF_PYTHON" -c 'import tensorflow, keras, tensorflow_io.kafka' >/dev/null 2>&1

run_variant "small" bench-digits-x1 "$SMALL_ROWS" 1 20 small
run_variant "big (training rows x10)" bench-digits-x10 "$BIG_ROWS" 10 5 big

echo
cat "$BENCH_DIR/tables.md"
echo
echo "Logs, /usr/bin/time reports and per-run JSON: $BENCH_DIR"
