//! Load-time configuration: the running kernel's struct offsets, set by the
//! loader with `EbpfLoader::override_global`.
use trace_common::ProbeConfig;

#[unsafe(no_mangle)]
pub(crate) static KVSCOPE_CONFIG: ProbeConfig = ProbeConfig::UNKNOWN;

/// Reads one field of the config. Volatile, so the compiler cannot fold the
/// default value in before the loader rewrites `.rodata`.
macro_rules! conf {
    ($field:ident) => {
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!($crate::config::KVSCOPE_CONFIG.$field))
        }
    };
}
pub(crate) use conf;
