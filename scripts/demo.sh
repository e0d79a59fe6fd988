#!/usr/bin/env bash
# The demo: start a local broker, feed the 1,797 scikit-learn digits as CSV records, run the
# digits CNN over them with streamtract, print a few predictions and the accuracy against the
# labels, stop the broker.
#
#   scripts/demo.sh
#
# First run installs tansu (about 20 minutes on 2 cores) and the Python test client.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '\n==> %s\n' "$*"; }

say "installing what the demo needs (skipped when present)"
scripts/setup-test-env.sh

say "building streamtract (release)"
cargo build --release --quiet
BIN="$ROOT/target/release/streamtract"
PY="$ROOT/target/pyenv/bin/python"

DIR="$ROOT/target/demo-broker"
rm -rf "$DIR"
trap 'scripts/broker.sh stop "$DIR" >/dev/null 2>&1 || true' EXIT
say "starting a local tansu broker"
scripts/broker.sh start "$DIR"
BROKER="$(cat "$DIR/broker.addr")"

"$PY" scripts/kclient.py create-topic --brokers "$BROKER" --topic pixels --partitions 3
"$PY" scripts/kclient.py create-topic --brokers "$BROKER" --topic predictions --partitions 3

say "producing data/digits.csv (1797 rows, key = row number, value = 64 pixel values) to 'pixels'"
"$PY" - "$ROOT/data/digits.csv" <<'PY' | "$PY" scripts/kclient.py produce --brokers "$BROKER" --topic pixels >/dev/null
import base64, json, sys
for i, line in enumerate(open(sys.argv[1])):
    pixels = line.strip().split(",", 1)[1]
    print(json.dumps({"key": base64.b64encode(str(i).encode()).decode(),
                      "value": base64.b64encode(pixels.encode()).decode()}))
PY

say "streamtract inspect models/digits_cnn.onnx"
"$BIN" inspect models/digits_cnn.onnx

say "streamtract run --input pixels --output predictions --model models/digits_cnn.onnx --format csv --top-k 1 --until-end"
"$BIN" run --brokers "$BROKER" --input pixels --output predictions \
    --model models/digits_cnn.onnx --format csv --top-k 1 --until-end

say "reading 'predictions' back with an independent client (confluent-kafka)"
"$PY" scripts/kclient.py consume --brokers "$BROKER" --topic predictions --count 1797 --timeout 60 \
    >"$DIR/predictions.jsonl"
"$PY" - "$ROOT/data/digits.csv" "$DIR/predictions.jsonl" <<'PY'
import base64, json, sys
labels = [int(l.split(",", 1)[0]) for l in open(sys.argv[1])]
outputs = [json.loads(l) for l in open(sys.argv[2])]
correct = 0
for n, o in enumerate(sorted(outputs, key=lambda o: int(base64.b64decode(o["key"])))):
    row = int(base64.b64decode(o["key"]))
    value = json.loads(base64.b64decode(o["value"]))
    best = value["top_k"][0]
    correct += best["index"] == labels[row]
    if n < 8:
        print(f"  row {row:4d}: predicted {best['index']} (score {best['score']:.3f}), label {labels[row]}")
print(f"\n{len(outputs)} predictions, accuracy against the labels: {correct / len(labels):.4f} ({correct}/{len(labels)})")
PY
