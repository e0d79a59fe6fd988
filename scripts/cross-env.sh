# Sourced by scripts/build-static.sh and scripts/test-emulated.sh with TARGET set: exports what
# cargo needs to build for that static target and sets `cross_cargo_args` (extra cargo
# arguments) and `runner` (the qemu-user command for ARM, empty on x86_64). The linkers and
# runners themselves are in .cargo/config.toml; the tools come from scripts/setup-cross.sh.
cross_cargo_args=()
runner=()
case "$TARGET" in
    x86_64-unknown-linux-musl)
        # tract's assembly kernels are built by the C compiler of the target: musl's.
        export CC_x86_64_unknown_linux_musl=musl-gcc
        ;;
    aarch64-unknown-linux-musl)
        # Debian's cross gcc assembles tract's and ring's ARM code; it links with the start
        # files and C library Rust ships for this target.
        export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
        runner=(qemu-aarch64-static)
        ;;
    armv7-unknown-linux-musleabihf)
        cross_sysroot="$ROOT/target/cross/armv7-musl-sysroot"
        if [ ! -f "$cross_sysroot/musl-gcc.specs" ]; then
            echo "FAIL: no armv7 musl sysroot at $cross_sysroot: run scripts/setup-cross.sh first" >&2
            exit 1
        fi
        export CC_armv7_unknown_linux_musleabihf=arm-linux-gnueabihf-gcc
        # rustup has no prebuilt armv7 musl standard library on our registries: cargo builds it
        # from rust-src (RUSTC_BOOTSTRAP lets stable cargo take -Z build-std) and links
        # Debian's musl through musl-gcc's specs (scripts/setup-cross.sh).
        export RUSTC_BOOTSTRAP=1
        export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-C link-self-contained=no -C link-arg=-specs=$cross_sysroot/musl-gcc.specs -L $cross_sysroot/lib"
        cross_cargo_args=(-Z build-std=std,panic_unwind)
        runner=(qemu-arm-static)
        ;;
    *)
        echo "FAIL: unknown target $TARGET (x86_64-unknown-linux-musl, aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf)" >&2
        exit 1
        ;;
esac
