//! Names for VMs: the identity the live side read (/proc) when it saw a VM
//! created is given to that VM's generation, live or replayed.
use super::Engine;
use crate::identity::Identity;

impl Engine {
    /// `id` is who created the VM at `addr` seen created at `created_ns`: the
    /// generation that began then (the latest one begun by then, should the
    /// creation have been seen by another hook a little earlier).
    pub fn identify(&mut self, addr: u64, created_ns: u64, id: Identity) {
        if let Some(vm) = self.vms.get_mut(&addr).filter(|v| v.first_ns <= created_ns) {
            vm.identity = Some(id);
            return;
        }
        if let Some(vm) = self
            .dead_vms
            .iter_mut()
            .filter(|v| v.addr == addr && v.first_ns <= created_ns)
            .max_by_key(|v| v.first_ns)
        {
            vm.identity = Some(id);
        }
    }

    /// The operator's name of the VM at `addr` now: the live one, else the
    /// last one there.
    pub fn vm_label_now(&self, addr: u64) -> Option<String> {
        let vm = self.vms.get(&addr).or_else(|| {
            self.dead_vms
                .iter()
                .filter(|v| v.addr == addr)
                .max_by_key(|v| v.first_ns)
        })?;
        vm.identity.as_ref().map(Identity::label)
    }
}
