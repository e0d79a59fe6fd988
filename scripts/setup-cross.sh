#!/usr/bin/env bash
# Installs what the ARM edge builds and their emulated tests need, from Debian's packages and
# rustup; each step is skipped when its result is already present.
#   - Debian's GNU cross compilers (they assemble tract's and ring's ARM code and link),
#     qemu-user 10 from bookworm-backports (runs ARM binaries on this x86_64 machine; Debian
#     12's own qemu 7.2 made the armv7 binary die with SIGSEGV at exit in a third of the
#     CNN runs (16 of 43), which qemu 10 never did in 18; and it cannot show an ARM /proc/cpuinfo, so
#     tract never chose its NEON kernels under it) and `file`;
#   - Rust's aarch64-unknown-linux-musl standard library (rustup);
#   - for armv7-unknown-linux-musleabihf, which rustup has no prebuilt standard library for
#     here: Rust's library sources (rust-src, built by scripts/build-static.sh with
#     -Z build-std) and a musl sysroot from Debian's armhf musl-dev package, unpacked under
#     target/cross/ (no foreign architecture is added to the system).
# Prints the sysroot path on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SYSROOT="$ROOT/target/cross/armv7-musl-sysroot"
say() { printf '[setup-cross] %s\n' "$*" >&2; }

need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need+=(gcc-arm-linux-gnueabihf)
command -v file >/dev/null 2>&1 || need+=(file)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
qemu_major="$(qemu-arm-static --version 2>/dev/null | awk '/version/ {split($3, v, "."); print v[1]; exit}')"
if [ "${qemu_major:-0}" -lt 8 ]; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    if [ "$codename" = bookworm ]; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" \
            >/etc/apt/sources.list.d/streamtract-backports.list
        say "apt-get install -t bookworm-backports qemu-user-static (qemu ${qemu_major:-none} is too old)"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-user-static >&2
    else
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >&2
    fi
fi
say "$(qemu-arm-static --version | head -1)"

installed="$(rustup target list --installed)"
grep -qx aarch64-unknown-linux-musl <<<"$installed" || rustup target add aarch64-unknown-linux-musl >&2
rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src >&2

if [ ! -f "$SYSROOT/lib/libc.a" ]; then
    # Same musl release as the host's musl-tools; Debian's pool layout is stable.
    version="$(apt-cache policy musl-dev | awk '/Candidate:/ {print $2}')"
    url="http://deb.debian.org/debian/pool/main/m/musl/musl-dev_${version}_armhf.deb"
    say "fetching $url"
    work="$(mktemp -d)"
    curl -sSfL -o "$work/musl-dev.deb" "$url"
    dpkg-deb -x "$work/musl-dev.deb" "$work/root"
    mkdir -p "$SYSROOT"
    rm -rf "$SYSROOT/lib" "$SYSROOT/include"
    cp -r "$work/root/usr/lib/arm-linux-musleabihf" "$SYSROOT/lib"
    cp -r "$work/root/usr/include/arm-linux-musleabihf" "$SYSROOT/include"
    # Rust's std links `-lunwind` on musl; GCC's static unwinder provides the same _Unwind_*
    # functions (panics unwind, `catch_unwind` works: the crate's tests use it).
    cp "$(arm-linux-gnueabihf-gcc -print-file-name=libgcc_eh.a)" "$SYSROOT/lib/libunwind.a"
    # musl-gcc's specs with the sysroot's paths: the cross gcc then links musl's start files
    # and C library instead of its own glibc ones.
    sed "s#/usr/lib/arm-linux-musleabihf#$SYSROOT/lib#g; s#/usr/include/arm-linux-musleabihf#$SYSROOT/include#g" \
        "$SYSROOT/lib/musl-gcc.specs" >"$SYSROOT/musl-gcc.specs"
    rm -rf "$work"
fi
say "armv7 musl sysroot: $SYSROOT"
echo "$SYSROOT"
