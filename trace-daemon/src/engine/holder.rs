//! Who holds a reference on a VM: a typed name, shown as text at the edges.
use serde::Serialize;

/// A holder of `struct kvm` references, as the engine attributes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// The VM's own fd (`KVM_CREATE_VM`), given back by `kvm_vm_release`.
    VmFd,
    /// The kvm-vfio device fd (`KVM_CREATE_DEVICE`), given back at its release.
    KvmVfioFd,
    /// A VFIO device's core (`vfio_device_get_kvm_safe`, 6.3+).
    VfioDevice(u64),
    /// A driver's reference through the seed patch's `kvm_ops->get_kvm()`.
    KvmOps(u64),
    /// 5.10-5.18: a driver's reference taken in its group notifier callback
    /// (VFIO_GROUP_NOTIFY_SET_KVM from `vfio_group_set_kvm` on this group),
    /// given back when a device of the group is released (kvmgt's shape).
    Notifier(u64),
    /// A vCPU fd (`KVM_CREATE_VCPU`, tracepoint tier), by vCPU id.
    VcpuFd(u32),
    /// A VM or vCPU stats fd (`KVM_GET_STATS_FD`, tracepoint tier).
    StatsFd,
    /// The part of the count no observed get named.
    Unattributed,
}

impl Holder {
    /// Text order (`kvm-vfio fd` < `vfio device ...` < `vm fd`): the order
    /// reports have always listed holders in.
    fn rank(self) -> (u8, u64, bool) {
        match self {
            Holder::KvmVfioFd => (0, 0, false),
            Holder::VfioDevice(d) => (1, d, false),
            Holder::KvmOps(d) => (1, d, true),
            Holder::Notifier(g) => (2, g, false),
            Holder::StatsFd => (3, 0, false),
            Holder::Unattributed => (4, 0, false),
            Holder::VcpuFd(id) => (5, id as u64, false),
            Holder::VmFd => (6, 0, false),
        }
    }
}

impl Ord for Holder {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for Holder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::VmFd => f.write_str("vm fd"),
            Holder::KvmVfioFd => f.write_str("kvm-vfio fd"),
            Holder::VfioDevice(d) => write!(f, "vfio device {d:#x}"),
            Holder::KvmOps(d) => write!(f, "vfio device {d:#x} (kvm_ops)"),
            Holder::Notifier(g) => write!(f, "group {g:#x} notifier"),
            Holder::VcpuFd(id) => write!(f, "vcpu {id} fd"),
            Holder::StatsFd => f.write_str("stats fd"),
            Holder::Unattributed => f.write_str("unattributed"),
        }
    }
}

impl Serialize for Holder {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_the_text_order() {
        let mut hs = [
            Holder::VmFd,
            Holder::KvmOps(0xa0),
            Holder::VfioDevice(0xb0),
            Holder::KvmVfioFd,
            Holder::VfioDevice(0xa0),
        ];
        hs.sort();
        let text: Vec<String> = hs.iter().map(ToString::to_string).collect();
        let mut sorted = text.clone();
        sorted.sort();
        assert_eq!(text, sorted);
    }
}
