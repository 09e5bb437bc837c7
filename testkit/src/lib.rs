//! Generators kept out of the shipped library: `flood` (real VM churn under a
//! live session, for the live-path bench and its test), `scenario` (event streams as
//! the kernel paths emit them, for scenario tests) and `workload` (a large
//! reproducible stream of ABI records, for the replay benchmark).
pub mod flood;
pub mod scenario;
pub mod workload;
