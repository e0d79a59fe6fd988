//! The binary's own commands beside `run` and `inspect` (which live in `main.rs`). Nothing
//! here is part of the library: these modules turn flags into library option structs.

#[cfg(feature = "train")]
pub mod train;
