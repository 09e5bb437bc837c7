//! 5.10-5.18, the notifier era: `vfio_group_set_kvm` hands the VM to the
//! group's drivers through the group notifier (VFIO_GROUP_NOTIFY_SET_KVM), and
//! a driver that needs the VM takes its own reference in that callback
//! (kvmgt, vfio_ap). Such a get is made between the call's entry and its exit
//! on the calling thread; the driver gives the reference back when a device
//! of the group is released. The VFIO core itself holds none.
use trace_common::HookId;

use super::{Engine, holder::Holder};
use crate::event::{Event, Kind};

impl Engine {
    /// Tracks the thread inside `vfio_group_set_kvm`; a device release of a
    /// group whose notifier holds a reference names the holder of the put
    /// that follows on this thread.
    pub(super) fn notifier_event(&mut self, e: &Event) {
        match (e.hook, e.kind) {
            (HookId::VfioGroupSetKvm, Kind::FileLink) => {
                if let (Some(group), Some(kvm)) = (e.group, e.kvm) {
                    self.in_notifier.insert(e.pid, (kvm, group));
                }
            }
            (HookId::VfioGroupSetKvm, _) => {
                self.in_notifier.remove(&e.pid);
            }
            (_, Kind::DeviceRelease) => {
                let Some(group) = e.group else { return };
                let h = Holder::Notifier(group);
                let holding = self
                    .vms
                    .values()
                    .find(|vm| vm.holders.get(&h).is_some_and(|n| *n > 0));
                if let Some(vm) = holding {
                    self.pending_put.insert(e.pid, (vm.addr, h));
                }
            }
            _ => {}
        }
    }

    /// The holder of a get `e` makes on `kvm` inside a group notifier.
    pub(super) fn notifier_get(&self, e: &Event, kvm: u64) -> Option<Holder> {
        if e.kind != Kind::VmGet || self.in_notifier.is_empty() {
            return None;
        }
        match self.in_notifier.get(&e.pid) {
            Some(&(k, group)) if k == kvm => Some(Holder::Notifier(group)),
            _ => None,
        }
    }
}
