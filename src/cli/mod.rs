//! The binary's own modules: they turn flags and the config file into library option structs,
//! and choose what a library must not choose for its users (the global allocator, the memory
//! copies). Nothing here is part of the library.

pub mod allocator;
pub mod config;
pub mod memcopy;
pub mod run;
#[cfg(feature = "train")]
pub mod train;
