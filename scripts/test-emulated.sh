#!/usr/bin/env bash
# Tests one ARM target under qemu-user on this x86_64 machine:
#   1. the crate's unit tests, the binary's tests and the TensorFlow parity test
#      (tests/parity.rs: every model against TensorFlow's outputs to 1e-5, on the ARM kernels),
#      cross-compiled and run under qemu (the runner in .cargo/config.toml);
#   2. the end-to-end smoke test (tests/smoke.rs) with the static ARM release binary under qemu
#      against an x86_64 tansu broker on loopback: digits MLP and CNN outputs equal to
#      TensorFlow's reference files to 1e-4.
#   scripts/test-emulated.sh aarch64-unknown-linux-musl
#   scripts/test-emulated.sh armv7-unknown-linux-musleabihf
# Needs scripts/setup-cross.sh, scripts/setup-test-env.sh and the release binary of
# scripts/build-static.sh TARGET (it is built here when missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${1:?usage: scripts/test-emulated.sh aarch64-unknown-linux-musl|armv7-unknown-linux-musleabihf}"
case "$TARGET" in
    aarch64-*|armv7-*) ;;
    *) echo "FAIL: $TARGET is not an emulated ARM target"; exit 1 ;;
esac
BIN="${CARGO_TARGET_DIR:-target}/$TARGET/release/streamtract"
[ -x "$BIN" ] || scripts/build-static.sh "$TARGET"

# The subshell keeps the cross environment (RUSTC_BOOTSTRAP, CC_…) away from the host build
# of step 2.
(
    # shellcheck source=scripts/cross-env.sh
    source "$ROOT/scripts/cross-env.sh"
    build_std=()
    # The armv7 standard library is built from source; tests also need the `test` crate.
    [ ${#cross_cargo_args[@]} -gt 0 ] && build_std=(-Z build-std=std,panic_unwind,test)
    echo "== $TARGET: unit, binary and parity tests under ${runner[*]}"
    # tests/parity.rs starts the binary too: through the emulator.
    export STREAMTRACT_TEST_RUNNER="${runner[0]}"
    start=$(date +%s)
    cargo test ${build_std[@]+"${build_std[@]}"} --target "$TARGET" \
        --lib --bins --test parity
    if [ "${TARGET%%-*}" = armv7 ]; then
        # qemu's CPU has NEON, so tract ran its armv7neon kernels above; boards without NEON
        # get the armvfpv2 ones: the same tests again with NEON switched off in tract.
        echo "== $TARGET: the same tests with tract's NEON kernels off (armvfpv2)"
        TRACT_CPU_ARM32_NEON=false cargo test ${build_std[@]+"${build_std[@]}"} \
            --target "$TARGET" --lib --bins --test parity
    fi
    echo "== $TARGET: emulated tests took $(( $(date +%s) - start )) s"
)

# The emulator from cross-env.sh, read in a subshell so its build settings stay out of the
# host build of the smoke test; tract calls 32-bit ARM `arm`.
runner="$(source "$ROOT/scripts/cross-env.sh" && echo "${runner[0]}")"
arch="${TARGET%%-*}"
[ "$arch" = armv7 ] && arch=arm
echo "== $TARGET: end-to-end smoke run of $BIN under $runner against tansu"
STREAMTRACT_SMOKE_BIN="$BIN" STREAMTRACT_TEST_RUNNER="$runner" STREAMTRACT_SMOKE_ARCH="$arch" cargo test --test smoke
