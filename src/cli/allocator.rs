#![allow(unsafe_code)] // a `GlobalAlloc` implementation is unsafe by definition
//! The memory allocator the `streamtract` binary and the benches install.
//!
//! A library does not pick the global allocator for its users, so this module belongs to the
//! binary (`src/main.rs` installs [`CHOSEN`]); the inference bench includes the same file so it
//! measures what the binary runs with.
//!
//! Why it matters: tract allocates every intermediate tensor of every run and frees it at the
//! end. musl's malloc hands large blocks back to the kernel on free, so the static binary paid
//! page faults and TLB shootdowns on every batch and ran the digits MLP about 2× slower than a
//! glibc build (docs/performance.md "Allocator"). The static binary therefore uses
//! [dlmalloc](https://docs.rs/dlmalloc), a pure-Rust port of Doug Lea's allocator that keeps
//! freed memory for reuse (and trims it back above 2 MiB of free space at the top of its heap).
//!
//! | build | allocator |
//! |---|---|
//! | `--features mimalloc` | mimalloc (compiles C) |
//! | musl target (the static binary) | dlmalloc, pure Rust |
//! | musl target with `--features libc-malloc` | musl's malloc (kept to measure against) |
//! | any other target | the C library's malloc |

pub use chosen::{Chosen, CHOSEN, NAME};

#[cfg(feature = "mimalloc")]
mod chosen {
    /// The allocator type of this build (see the module docs for which one and why).
    pub type Chosen = mimalloc::MiMalloc;
    /// The allocator value to install as `#[global_allocator]`.
    pub const CHOSEN: Chosen = mimalloc::MiMalloc;
    /// Short name of this build's allocator, printed by `streamtract --version`.
    pub const NAME: &str = "mimalloc";
}

#[cfg(all(
    not(feature = "mimalloc"),
    target_env = "musl",
    not(feature = "libc-malloc")
))]
mod chosen {
    use std::alloc::{GlobalAlloc, Layout};

    /// The allocator type of this build (see the module docs for which one and why).
    pub type Chosen = Dlmalloc;
    /// The allocator value to install as `#[global_allocator]`.
    pub const CHOSEN: Chosen = Dlmalloc;
    /// Short name of this build's allocator, printed by `streamtract --version`.
    pub const NAME: &str = "dlmalloc";

    /// [`dlmalloc::GlobalDlmalloc`] behind calls that are never inlined. Its methods are
    /// `#[inline]` (lock, allocate, unlock, check), and with fat LTO they were copied into the
    /// callers: the static binary grew by 488 KB. Out of line, the lock and the call cost a few
    /// nanoseconds per allocation, next to the page faults they replace.
    pub struct Dlmalloc;

    // SAFETY: every method forwards to `GlobalDlmalloc`, which upholds `GlobalAlloc`'s contract.
    unsafe impl GlobalAlloc for Dlmalloc {
        #[inline(never)]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's guarantees for `layout` are passed on unchanged.
            unsafe { dlmalloc::GlobalDlmalloc.alloc(layout) }
        }

        #[inline(never)]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator with `layout` (the caller's guarantee).
            unsafe { dlmalloc::GlobalDlmalloc.dealloc(ptr, layout) }
        }

        #[inline(never)]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as for `alloc`.
            unsafe { dlmalloc::GlobalDlmalloc.alloc_zeroed(layout) }
        }

        #[inline(never)]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as for `dealloc`, and `new_size` is the caller's valid size.
            unsafe { dlmalloc::GlobalDlmalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(all(
    not(feature = "mimalloc"),
    any(not(target_env = "musl"), feature = "libc-malloc")
))]
mod chosen {
    /// The allocator type of this build (see the module docs for which one and why).
    pub type Chosen = std::alloc::System;
    /// The allocator value to install as `#[global_allocator]`.
    pub const CHOSEN: Chosen = std::alloc::System;
    /// Short name of this build's allocator, printed by `streamtract --version`.
    pub const NAME: &str = "C library malloc";
}
