//! Generators kept out of the shipped library: `scenario` (event streams as
//! the kernel paths emit them, for scenario tests) and `workload` (a large
//! reproducible stream of ABI records, for the replay benchmark).
pub mod scenario;
pub mod workload;
