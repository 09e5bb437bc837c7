//! The seed's `kvm_ops` patch (6.1): VFIO calls the driver's get_kvm() on a
//! device's first open and put_kvm() whenever open_count drops back to 0 with
//! kvm_ops set. This pairs the opens with the gets the same thread made, to
//! find the puts that give back nothing.
use super::{
    Engine,
    finding::{Finding, ObjRef, PutFault},
};
use crate::event::{Event, Kind};

/// A device open under way on a thread (from the open-attempt hook), and the
/// successful gets the thread made since.
#[derive(Clone, Debug)]
pub(super) struct PendingOpen {
    device: u64,
    open_before: Option<i32>,
    kvm_ops: bool,
    gets: u32,
    stack_id: Option<u32>,
}

/// An open or release of a device whose driver set kvm_ops.
pub(super) fn ops_set(e: &Event) -> bool {
    e.kvm_ops.is_some_and(|o| o != 0)
}

/// The patch's first open: open_count became 1 and the open succeeded.
pub(super) fn first_open(e: &Event) -> bool {
    e.kind == Kind::DeviceOpened
        && ops_set(e)
        && e.open_count == Some(1)
        && e.ret.is_none_or(|r| r >= 0)
}

impl Engine {
    /// Open attempts, the gets made during them, and their outcome.
    pub(super) fn open_event(&mut self, e: &Event, out: &mut Vec<Finding>) {
        match e.kind {
            Kind::DeviceOpenAttempt => {
                if let Some(dev) = e.device {
                    let p = PendingOpen {
                        device: dev,
                        open_before: e.open_count,
                        kvm_ops: ops_set(e),
                        gets: 0,
                        stack_id: e.stack_id,
                    };
                    self.pending_open.insert(e.pid, p);
                }
            }
            Kind::VmGet if e.ok != Some(false) => {
                if let Some(p) = self.pending_open.get_mut(&e.pid) {
                    p.gets += 1;
                }
            }
            Kind::DeviceOpened => {
                if let Some(p) = self.pending_open.remove(&e.pid) {
                    out.extend(self.failed_open(e, &p));
                }
            }
            _ => {}
        }
    }

    /// The open error path: once open_count was bumped, a failed open drops
    /// it back and calls put_kvm() at 0, whether get_kvm() succeeded,
    /// failed, or was never called.
    fn failed_open(&self, e: &Event, p: &PendingOpen) -> Option<Finding> {
        let failed = e.ret.is_some_and(|r| r < 0);
        if !failed || !p.kvm_ops || p.open_before != Some(0) || p.gets > 0 {
            return None;
        }
        let fault = PutFault::KvmOpsOpenError {
            device: ObjRef {
                addr: p.device,
                generation: self.dev_generations.get(&p.device).copied().unwrap_or(0),
            },
            ret: e.ret.unwrap_or(0),
            get_failed: e.kvm.is_some(),
        };
        Some(Finding::unbalanced_put(e, fault, p.stack_id))
    }
}
