//! Facts about the running kernel, gathered at start-up: symbols, BTF offsets,
//! tracefs, version and what the kernel lets us load. Only this module (and the
//! loader) reads /proc and /sys.
pub mod btf;
pub mod btf_file;
pub mod caps;
pub mod kallsyms;
pub mod lockdown;
pub mod tracefs;
pub mod version;
