//! The running proxy: listeners, HTTP and TCP data paths, rule engine,
//! backends, balancing, health checks, stats.

pub mod state;
pub mod txn;
