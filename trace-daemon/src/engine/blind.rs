//! A blind gap: a watched module went away or came back and kvscope attached
//! again, seeing nothing in between. What lived across the gap may have
//! changed unseen: its state is unknown from then on, never guessed, and
//! nothing is raised about it; half-seen operations are dropped.
use super::Engine;

impl Engine {
    /// Nothing was seen from `from_ns` to `to_ns`.
    pub fn blind(&mut self, from_ns: u64, to_ns: u64) {
        for vm in self.vms.values_mut().filter(|v| !v.is_destroyed()) {
            vm.blind_from_ns.get_or_insert(from_ns);
        }
        for d in self.devices.values_mut() {
            d.blind_from_ns.get_or_insert(from_ns);
        }
        self.pending_put.clear();
        self.pending_open.clear();
        self.in_notifier.clear();
        self.in_registration.clear();
        self.registered_get.clear();
        self.locks.forget_acquires();
        self.last_ts = self.last_ts.max(to_ns);
    }
}
