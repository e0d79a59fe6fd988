//! run config
