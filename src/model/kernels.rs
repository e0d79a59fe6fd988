//! Which of tract's matrix-multiply kernel families this machine runs.
//!
//! tract-linalg carries hand-written assembly kernels per architecture (x86_64 AVX/FMA,
//! aarch64 `arm64simd`/`arm64fp16`, armv7 `armv7neon`) and a portable Rust fallback
//! (`generic`) that every machine can run. Which ones a binary has depends on how it was built
//! (a cross build without the target's assembler has only the fallback) and which one it uses
//! depends on the CPU it runs on (armv7 boards without NEON). Both change inference speed
//! several-fold, so `streamtract inspect` prints this and `run` logs it at start-up.
//!
//! ```
//! let kernels = streamtract::model::Kernels::native();
//! // On every architecture tract knows, the portable fallback is the last tier.
//! assert_eq!(kernels.tiers.last().copied(), Some("generic"));
//! println!("{kernels}"); // e.g. "x86_64 fma (x86_64,avx,fma; tiers: x86_64-fma > generic)"
//! ```

use std::fmt;

use tract_onnx::prelude::tract_linalg;

/// The kernel families tract picks from on this machine, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernels {
    /// The architecture tract recognised (`x86_64`, `aarch64`, `arm`), or `none` for an
    /// architecture it has no kernels for.
    pub arch: String,
    /// The highest instruction-set level found, in tract's words: `fma`, `avx512`, `neon`,
    /// `fp16`, `vfp` (armv7 without NEON), …
    pub level: &'static str,
    /// Every instruction-set feature found, comma-separated (`aarch64,fp16`).
    pub features: String,
    /// The kernel tiers this build carries that apply to this machine, asked in this order;
    /// `generic` (portable Rust) is the last.
    pub tiers: Vec<&'static str>,
}

impl Kernels {
    /// Probes this machine once (tract caches the answer) and lists the tiers that apply.
    pub fn native() -> Kernels {
        let isa = tract_linalg::isa::native();
        let arch = isa
            .arch()
            .map_or_else(|| "none".to_string(), |a| a.to_string());
        Kernels {
            arch,
            level: isa.nickname(),
            features: format!("{isa:?}"),
            tiers: tract_linalg::mmm_tiers::for_isa(&isa)
                .iter()
                .map(|tier| tier.name)
                .collect(),
        }
    }

    /// Whether a tier other than the portable fallback applies: false means every matrix
    /// product runs in portable Rust, several times slower.
    pub fn has_assembly(&self) -> bool {
        self.tiers.iter().any(|tier| *tier != "generic")
    }
}

impl fmt::Display for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}; tiers: {})",
            self.arch,
            self.level,
            self.features,
            self.tiers.join(" > ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builds we ship are x86_64, aarch64 and armv7 (NEON boards and qemu's default CPU):
    /// each must carry and choose an assembly tier, never only the fallback. This test runs
    /// natively and under qemu-user (scripts/test-emulated.sh).
    #[test]
    fn shipped_architectures_use_an_assembly_kernel_family() {
        let kernels = Kernels::native();
        let expected_arch = if cfg!(target_arch = "x86_64") {
            "x86_64"
        } else if cfg!(target_arch = "aarch64") {
            "aarch64"
        } else if cfg!(target_arch = "arm") {
            "arm"
        } else {
            return;
        };
        assert_eq!(kernels.arch, expected_arch, "{kernels}");
        assert!(
            kernels.has_assembly(),
            "only the generic fallback: {kernels}"
        );
        assert_eq!(kernels.tiers.last().copied(), Some("generic"), "{kernels}");
    }
}
