#!/usr/bin/env bash
# Builds the static x86_64-unknown-linux-musl release binary, checks that it is statically
# linked and that the stripped size stays under the bound, and prints its size.
#   scripts/build-static.sh            -> target/x86_64-unknown-linux-musl/release/streamtract
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MAX_BYTES=$((30 * 1024 * 1024))
# tract's assembly kernels are built by the C compiler of the target: musl's.
export CC_x86_64_unknown_linux_musl=musl-gcc
cargo build --release --target x86_64-unknown-linux-musl
BIN="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/streamtract"
if file "$BIN" | grep -q "dynamically linked"; then
    echo "FAIL: $BIN is dynamically linked:"; file "$BIN"; exit 1
fi
if ldd "$BIN" 2>&1 | grep -q "=>"; then
    echo "FAIL: $BIN has shared library dependencies:"; ldd "$BIN"; exit 1
fi
size=$(stat -c %s "$BIN")
echo "static binary: $BIN, $size bytes ($(( size / 1024 / 1024 )) MiB), $(file -b "$BIN" | cut -d, -f1-2)"
"$BIN" --version
if [ "$size" -gt "$MAX_BYTES" ]; then
    echo "FAIL: $size bytes exceeds the bound of $MAX_BYTES"; exit 1
fi
