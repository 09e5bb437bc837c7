//! 5.10-5.18, the notifier era: `vfio_group_set_kvm` hands the VM to the
//! group's drivers through the group notifier (VFIO_GROUP_NOTIFY_SET_KVM), and
//! a driver that needs the VM takes its own reference in that callback
//! (kvmgt, vfio_ap). Such a get is made between the call's entry and its exit
//! on the calling thread, or, when the group already had its VM, inside the
//! driver's `vfio_register_notifier` (the chain is replayed to a new
//! notifier), during a device open whose group the open's exit names. The
//! driver gives the reference back when a device of the group is released.
//! The VFIO core itself holds none.
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
            (HookId::VfioRegisterNotifier, Kind::NotifierRegister) => {
                self.in_registration.insert(e.pid, None);
            }
            (HookId::VfioRegisterNotifier, _) => {
                // A get made in the replay stays the thread's until its open
                // names the group.
                if let Some(Some(kvm)) = self.in_registration.remove(&e.pid) {
                    self.registered_get.insert(e.pid, kvm);
                }
            }
            (_, Kind::DeviceOpened) => {
                let (Some(group), Some(kvm)) = (e.group, self.registered_get.remove(&e.pid)) else {
                    return;
                };
                if let Some(vm) = self.vms.get_mut(&kvm) {
                    vm.name_recent_get(e.pid, Holder::Notifier(group));
                }
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

    /// The holder of a get `e` makes on `kvm` inside a group notifier called
    /// by vfio_group_set_kvm. One made in a notifier's registration is noted,
    /// to be named at the open's exit.
    pub(super) fn notifier_get(&mut self, e: &Event, kvm: u64) -> Option<Holder> {
        if e.kind != Kind::VmGet {
            return None;
        }
        if let Some(r) = self.in_registration.get_mut(&e.pid) {
            *r = Some(kvm);
            return None;
        }
        match self.in_notifier.get(&e.pid) {
            Some(&(k, group)) if k == kvm => Some(Holder::Notifier(group)),
            _ => None,
        }
    }
}
