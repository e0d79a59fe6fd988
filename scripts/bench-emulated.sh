#!/usr/bin/env bash
# Inference per batch for the digits MLP and CNN on an ARM target, under qemu-user on this
# x86_64 machine. EMULATED: the figures say the ARM kernels run and how they compare with each
# other, not how fast a board is (qemu translates every instruction).
#   scripts/bench-emulated.sh aarch64-unknown-linux-musl|armv7-unknown-linux-musleabihf
# Builds benches/inference.rs with the release profile (the shipped build's settings, reusing
# scripts/build-static.sh's dependencies) and runs it once per model under qemu, since the
# bench's own one-process-per-model driver would exec an ARM binary without the emulator.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${1:?usage: scripts/bench-emulated.sh aarch64-unknown-linux-musl|armv7-unknown-linux-musleabihf}"
# shellcheck source=scripts/cross-env.sh
source "$ROOT/scripts/cross-env.sh"
[ ${#runner[@]} -gt 0 ] || { echo "FAIL: $TARGET is not an emulated target"; exit 1; }
bench="$(cargo bench ${cross_cargo_args[@]+"${cross_cargo_args[@]}"} --profile release \
    --target "$TARGET" --bench inference --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "inference" and m.get("executable"):
        print(m["executable"])')"
echo "EMULATED: $TARGET under $("${runner[@]}" --version | head -1); not a speed claim"
printf '%-16s %6s %14s %14s\n' model batch "µs/batch" rows/s
for model in digits_mlp digits_cnn; do
    "${runner[@]}" "$bench" --only "$model"
done
