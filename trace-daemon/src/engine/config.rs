//! The engine's settings (from the config file and the attach plan) and the
//! measurements it hands to metrics.
use serde::{Deserialize, Serialize};
use trace_common::LockClass;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Steps kept per object timeline (older ones are folded into a summary).
    pub timeline_cap: usize,
    /// Destroyed VMs and closed devices kept for `timeline` and reports.
    pub retain_dead: usize,
    /// A VM whose fd is closed but which is not destroyed after this long is a zombie.
    pub zombie_after_ms: u64,
    /// A device fully closed whose kvm reference is still held after this long leaks it.
    pub leak_grace_ms: u64,
    pub long_wait_ms: u64,
    pub long_hold_ms: u64,
    /// Whether kvm_destroy_vm is hooked. When it is not (tier 3), the last close
    /// of a VM's fds at count 1 is taken as its destruction, marked inferred.
    pub destroy_observable: bool,
    /// Whether the device fd's release does the close itself (6.1 and the
    /// kvm_ops patch: no vfio_df_close/vfio_device_close hook follows it), so
    /// open_count drops at the release. Set from the attach plan, not config.
    #[serde(skip)]
    pub release_closes: bool,
    /// Lean lock watching: lock-order edges also come from the lock table (a
    /// hooked call that takes a watched lock, ordered after the locks its
    /// owner words showed held). Set from the session, not config.
    #[serde(skip)]
    pub table_edges: bool,
    /// vfio_file_set_kvm takes group_lock (before 6.3's 2b48f52f: 6.1, 6.2,
    /// the kvm_ops patch). Set from the attach plan, not config.
    #[serde(skip)]
    pub set_kvm_takes_group_lock: bool,
    /// Distinct findings kept; the oldest are dropped (and counted) past it.
    pub max_findings: usize,
    /// Collect measurements (lock waits and holds, VM teardown) for the
    /// caller to drain (`take_observations`); the daemon's histograms.
    #[serde(skip)]
    pub observe: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timeline_cap: 256,
            retain_dead: 1024,
            zombie_after_ms: 10_000,
            leak_grace_ms: 1_000,
            long_wait_ms: 1_000,
            long_hold_ms: 5_000,
            destroy_observable: true,
            release_closes: false,
            table_edges: false,
            set_kvm_takes_group_lock: false,
            max_findings: 10_000,
            observe: false,
        }
    }
}

impl Config {
    /// A reloaded configuration keeps what the running session's attach
    /// decided (it is not the file's to change).
    pub fn keeping_attach_facts(self, running: &Config) -> Config {
        Config {
            destroy_observable: running.destroy_observable,
            release_closes: running.release_closes,
            table_edges: running.table_edges,
            set_kvm_takes_group_lock: running.set_kvm_takes_group_lock,
            ..self
        }
    }
}

/// A measurement the engine made, for metrics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observation {
    LockWait {
        class: LockClass,
        secs: f64,
    },
    LockHold {
        class: LockClass,
        secs: f64,
    },
    /// VM fd closed -> kvm_destroy_vm.
    Teardown {
        secs: f64,
    },
}
