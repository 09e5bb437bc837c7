//! The lock table: hooked calls that take a watched lock, per kernel variant
//! (`notes/kernel-paths.md` sections 1 and 4). Lean lock watching sees no
//! acquire; at such a call, the locks the thread's owner words showed held are
//! ordered before the lock the table says the call takes.
use trace_common::{HookId, LockClass};

use crate::engine::Config;

/// The watched lock `hook`'s function takes, on the kernel `cfg` describes.
pub fn taken_by(hook: HookId, cfg: &Config) -> Option<LockClass> {
    match hook {
        // 6.1/6.2 and the kvm_ops patch: vfio_file_set_kvm -> group_lock
        // (reached under kvm->lock from kvm_vfio_release: the S2 edge).
        HookId::VfioFileSetKvm if cfg.set_kvm_takes_group_lock => Some(LockClass::VfioGroupLock),
        // Drivers whose open_device takes kvm->lock under the VFIO open locks.
        HookId::VfioApMdevSetKvm | HookId::TestdevLockKvm => Some(LockClass::KvmLock),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_kvm_takes_group_lock_only_where_the_variant_says() {
        let mut cfg = Config::default();
        assert_eq!(taken_by(HookId::VfioFileSetKvm, &cfg), None);
        cfg.set_kvm_takes_group_lock = true;
        assert_eq!(
            taken_by(HookId::VfioFileSetKvm, &cfg),
            Some(LockClass::VfioGroupLock)
        );
        assert_eq!(
            taken_by(HookId::TestdevLockKvm, &cfg),
            Some(LockClass::KvmLock)
        );
        assert_eq!(taken_by(HookId::KvmPutKvm, &cfg), None);
    }
}
