#![allow(unsafe_code)] // the copy routines are assembly, called through raw pointers in the tests
//! Memory copies (`memcpy`, `memmove`) for the static binary.
//!
//! The static musl binary copies memory with musl's `memcpy`, which moves every size with
//! `rep movsq` after a byte loop to align the destination. That is fine for kilobytes and slow
//! for the 16–64-byte copies tract makes when it lays a convolution's input out as patches
//! (`Im2col`, one image row at a time): under `perf`, 31% of the static binary's CNN time was
//! in musl's `memcpy`, and the glibc build ran the CNN about 2× faster. This module provides a
//! `memcpy` and a `memmove` for x86_64 that copy up to 64 bytes with a few register moves and
//! no loop, up to 511 bytes in a 32-byte loop, and hand larger blocks to `rep movsq` as musl
//! does. They use general-purpose registers only: tract's AVX kernels leave the vector
//! registers' upper halves dirty, and an SSE2 version paid a transition penalty on every copy
//! (the MLP ran 18% slower with it). docs/performance.md "Memory copies", has the figures: the CNN runs
//! 2× faster, as fast as the glibc build.
//!
//! A library does not choose these for the program it is linked into, so they live in the
//! binary: the routines are compiled on x86_64 under names of their own
//! (`streamtract_memcpy`, `streamtract_memmove`, tested below on every x86_64 build), and only
//! the x86_64 musl build makes them the program's `memcpy` and `memmove`; elsewhere the C
//! library's routines are already fast and nothing changes. The C library's routines are the
//! portable twin: the ARM builds (aarch64, armv7) copy with musl's own ARM routines, and a test
//! below runs ours against the C library's on the same buffers wherever both are linked (the
//! x86_64 glibc test build). The inference bench includes this
//! file too, so it measures the copies the binary links.
//!
//! The routines are written in assembly (`memcopy_x86_64.s`, assembled by rustc, no C
//! compiler): a `memcpy` written in Rust can be recognised by the optimiser as a copy loop and
//! compiled into a call to `memcpy`, itself.

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(include_str!("memcopy_x86_64.s"));

/// Whether this build makes our routines the program's `memcpy` and `memmove`: on x86_64
/// musl, unless the `libc-memcpy` feature asks for musl's own.
const EXPORTED: bool = cfg!(all(
    target_arch = "x86_64",
    target_env = "musl",
    not(feature = "libc-memcpy")
));

/// What this build links as `memcpy`, printed by `streamtract --version`: `"streamtract"` on
/// x86_64 musl, `"C library"` elsewhere.
pub const NAME: &str = if EXPORTED { "streamtract" } else { "C library" };

// Both symbols are defined together on purpose: musl's `memmove` jumps into musl's `memcpy`
// object, so defining only `memcpy` would pull musl's second definition into the link.
#[cfg(all(
    target_arch = "x86_64",
    target_env = "musl",
    not(feature = "libc-memcpy")
))]
core::arch::global_asm!(
    ".globl memcpy",
    ".type memcpy,@function",
    "memcpy:",
    "jmp streamtract_memcpy",
    ".globl memmove",
    ".type memmove,@function",
    "memmove:",
    "jmp streamtract_memmove",
);

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    extern "C" {
        fn streamtract_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
        fn streamtract_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    }

    /// Sizes around every boundary of the routines (4, 8, 16, 32, 64, the 32-byte loop, 512
    /// for `rep movsq`) and a few large ones.
    fn sizes() -> Vec<usize> {
        let mut sizes: Vec<usize> = (0..=600).collect();
        for edge in [4096usize, 8192] {
            sizes.extend(edge - 40..edge + 40);
        }
        sizes.extend([10_000, 65_537, 1 << 20]);
        sizes
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn memcpy_copies_every_size_and_alignment_and_nothing_else() {
        for n in sizes() {
            for (src_off, dst_off) in [(0, 0), (1, 0), (0, 3), (5, 11), (8, 1)] {
                let src = pattern(n + 16);
                let mut dst = vec![0xAAu8; n + 32];
                // SAFETY: both ranges lie inside their own, distinct buffers.
                let returned = unsafe {
                    streamtract_memcpy(dst.as_mut_ptr().add(dst_off), src.as_ptr().add(src_off), n)
                };
                assert_eq!(returned, dst.as_mut_ptr().wrapping_add(dst_off), "n = {n}");
                assert_eq!(
                    &dst[dst_off..dst_off + n],
                    &src[src_off..src_off + n],
                    "n = {n}"
                );
                assert!(
                    dst[..dst_off].iter().all(|&b| b == 0xAA),
                    "wrote before, n = {n}"
                );
                assert!(
                    dst[dst_off + n..].iter().all(|&b| b == 0xAA),
                    "wrote after, n = {n}"
                );
            }
        }
    }

    #[test]
    fn memmove_copies_overlapping_ranges_in_both_directions() {
        for n in sizes().into_iter().filter(|&n| n <= 70_000) {
            for shift in [
                0usize, 1, 3, 8, 15, 16, 17, 31, 32, 63, 64, 65, 100, 4095, 4096,
            ] {
                // Destination after the source (copied back to front) and before it.
                for dst_after in [true, false] {
                    let mut buf = pattern(n + shift + 32);
                    let expected_source = buf[..].to_vec();
                    let (src_off, dst_off) = if dst_after {
                        (8, 8 + shift)
                    } else {
                        (8 + shift, 8)
                    };
                    let ptr = buf.as_mut_ptr();
                    // SAFETY: both ranges lie inside `buf` (length n + shift + 32).
                    let returned =
                        unsafe { streamtract_memmove(ptr.add(dst_off), ptr.add(src_off), n) };
                    assert_eq!(returned, ptr.wrapping_add(dst_off));
                    let what = format!("n = {n}, shift = {shift}, dst_after = {dst_after}");
                    assert_eq!(
                        &buf[dst_off..dst_off + n],
                        &expected_source[src_off..src_off + n],
                        "{what}"
                    );
                    let untouched = |i: usize| i < dst_off || i >= dst_off + n;
                    for (i, (&now, &before)) in buf.iter().zip(&expected_source).enumerate() {
                        if untouched(i) {
                            assert_eq!(now, before, "byte {i} outside the destination, {what}");
                        }
                    }
                }
            }
        }
    }

    /// The portable twin: on a test build whose `memcpy`/`memmove` are the C library's (not
    /// the x86_64 musl binary, where they are ours), both routines must leave every byte of
    /// the buffer exactly as the C library's do, overlapping moves included.
    #[cfg(not(all(target_env = "musl", not(feature = "libc-memcpy"))))]
    #[test]
    fn ours_and_the_c_librarys_leave_the_same_bytes() {
        extern "C" {
            fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
            fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
        }
        type Copy = unsafe extern "C" fn(*mut u8, *const u8, usize) -> *mut u8;
        let pairs: [(&str, Copy, Copy); 2] = [
            ("memcpy", streamtract_memcpy, memcpy),
            ("memmove", streamtract_memmove, memmove),
        ];
        // A small deterministic generator (xorshift) picks sizes, offsets and overlaps.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        for round in 0..20_000 {
            let n = if round % 10 == 0 {
                next(70_000)
            } else {
                next(700)
            };
            let buf_len = 2 * n + 256;
            let overlapping = round % 3 == 0;
            for (name, ours, theirs) in pairs {
                if overlapping && name == "memcpy" {
                    continue; // memcpy's contract excludes overlap
                }
                // Disjoint: the source in the first 128 bytes, the destination after it.
                let (src_off, dst_off) = if overlapping {
                    (next(buf_len - n), next(buf_len - n))
                } else {
                    (next(128), n + 128 + next(64))
                };
                let mut a = pattern(buf_len);
                let mut b = a.clone();
                // SAFETY: both ranges lie inside their buffer of `buf_len` bytes (2n + 256); memcpy
                // gets disjoint ranges (dst_off >= 128 + n > src_off + n).
                let (ra, rb) = unsafe {
                    (
                        ours(a.as_mut_ptr().add(dst_off), a.as_ptr().add(src_off), n),
                        theirs(b.as_mut_ptr().add(dst_off), b.as_ptr().add(src_off), n),
                    )
                };
                assert_eq!(ra.wrapping_sub(a.as_mut_ptr() as usize) as usize, dst_off);
                assert_eq!(rb.wrapping_sub(b.as_mut_ptr() as usize) as usize, dst_off);
                assert!(a == b, "{name}: n = {n}, src {src_off}, dst {dst_off}");
            }
        }
    }
}
