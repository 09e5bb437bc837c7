//! The lab's scenarios, as data: which kernels each runs on, what the guest
//! does (the test module's mode, the driver's arguments), and what kvscope
//! must show (counts, opens, findings, holders, frames), with why the
//! kernel's design implies it. Also the roles each kernel must attach.
use lab_driver::protocol::{Step, Suite};

/// Roles that must attach on each lab kernel, with the method expected. On the
/// Debian kernels KVM and VFIO are modules: kprobes (aya 0.14 takes fentry
/// targets from vmlinux BTF only). The kernels built here build them in:
/// fentry. The mutex API is in vmlinux everywhere: fentry.
const MODULAR: &[&str] = &["6.1", "6.12", "sid", "trixie", "trixie-bpo", "bullseye"];
const BUILT: &[&str] = &["patched", "cdev"];
/// Kernels with the 6.6+ shape (vfio_df_*, VFIO's own kvm reference).
const DF66: &[&str] = &["6.12", "sid", "trixie", "trixie-bpo", "cdev"];
const DF66_MODULAR: &[&str] = &["6.12", "sid", "trixie", "trixie-bpo"];
/// Kernels with KVM_GET_STATS_FD (5.14+): every one but 5.10.
const STATS_FDS: &[&str] = ALL;
pub const EXPECT: &[(&str, &[&str], &str)] = &[
    ("vm-get", MODULAR, "kprobe"),
    ("vm-put", MODULAR, "kprobe"),
    ("vm-destroyed", MODULAR, "kprobe"),
    ("vm-fd-release", MODULAR, "kprobe"),
    ("device-open", MODULAR, "kprobe"),
    ("device-release", MODULAR, "kprobe"),
    ("vfio-kvm-get", DF66_MODULAR, "kprobe"),
    ("vfio-kvm-put", DF66_MODULAR, "kprobe"),
    ("vfio-kvm-get", &["cdev"], "fentry"),
    ("vfio-kvm-put", &["cdev"], "fentry"),
    ("group-vm-link", MODULAR, "kprobe"),
    ("kvm-vfio-teardown", MODULAR, "kprobe"),
    ("vm-get", BUILT, "fentry"),
    ("vm-put", BUILT, "fentry"),
    ("vm-destroyed", BUILT, "fentry"),
    ("vm-fd-release", BUILT, "fentry"),
    // On the patched 6.1 vfio_device_open is inlined: the group ioctl stands in.
    ("device-open", BUILT, "fentry"),
    ("device-release", BUILT, "fentry"),
    ("group-vm-link", BUILT, "fentry"),
    ("kvm-vfio-teardown", BUILT, "fentry"),
    // Lean's handlers in place of the syscall tracepoints.
    ("vm-fd-created", MODULAR, "kprobe"),
    ("kvm-vfio-created", MODULAR, "kprobe"),
    ("vm-fd-created", BUILT, "fentry"),
    ("kvm-vfio-created", BUILT, "fentry"),
    // Lean's holders of a VM besides its fd: vCPU fds after KVM_CREATE_VCPU,
    // stats files (5.14+; anon_inode_getfile is in vmlinux), their releases.
    ("vcpu-fd-created", MODULAR, "kprobe"),
    ("vcpu-fd-created", BUILT, "fentry"),
    ("holder-fd-release", MODULAR, "kprobe"),
    ("holder-fd-release", BUILT, "fentry"),
    ("stats-fd-created", STATS_FDS, "fentry"),
    ("device-open-attempt", &["6.1"], "kprobe"),
    ("device-open-attempt", &["patched"], "fentry"),
    ("lock-acquire", FENTRY_ARGS, "fentry"),
    ("lock-release", FENTRY_ARGS, "fentry"),
    // 5.10: no bpf_get_func_arg, so no fentry program of kvscope's loads.
    ("lock-acquire", &["bullseye"], "kprobe"),
    ("lock-release", &["bullseye"], "kprobe"),
];

/// Kernels whose BPF has bpf_get_func_arg (5.17+): kvscope's fentry programs load.
const FENTRY_ARGS: &[&str] = ALL;

/// The stack variant `check` must name per kernel.
pub fn expect_variant(kernel: &str) -> &'static str {
    match kernel {
        "patched" => "kvm_ops patch",
        "6.12" | "sid" | "trixie" | "trixie-bpo" | "cdev" => "6.6+",
        "bullseye" => "5.10-5.18 notifier era",
        _ => "6.1-style",
    }
}

/// One scenario of the lab: what the guest does, and what kvscope must show.
pub struct Scenario {
    /// Kernels of the matrix it runs on.
    pub kernels: &'static [&'static str],
    /// kvscope_testdev's mode (None: the edu device bound to vfio-pci).
    pub testdev: Option<&'static str>,
    /// kvscope-lab-driver's arguments.
    pub driver: &'static str,
    /// The VM's users_count after every change, read from the kernel.
    pub counts: &'static [i64],
    /// The device's open_count after every change.
    pub open_counts: &'static [i64],
    /// Findings (kind, locks named), exactly, in order.
    pub findings: &'static [(&'static str, &'static [&'static str])],
    /// Holders the VM's timeline must name, as "+1 HOLDER" / "-1 HOLDER".
    pub attributed: &'static [&'static str],
    /// Frames the VM's timeline (with stacks) must show.
    pub frames: &'static [&'static str],
    /// Why the kernel's design implies this.
    pub why: &'static str,
    /// The driver blocks by design (a thread waiting for itself): killed after
    /// this many ms.
    pub kill_after_ms: Option<u64>,
    /// Findings deep raises that lean cannot see in this scenario (an order
    /// outside the lock table); `long-hold` never is in lean.
    pub lean_lacks: &'static [&'static str],
    /// Two threads race: the findings are compared as a set, each one's locks
    /// sorted (which thread closes a cycle first varies).
    pub unordered: bool,
    /// Exact expectations; false for a race whose interleaving varies: then
    /// the counts must end at 0 with one destroy, every open_count must be 0
    /// or 1 ending at 0, and `findings` lists the kinds allowed.
    pub exact: bool,
}

const GROUP_LOCK: &str = "vfio_group.group_lock";
const DEV_SET_LOCK: &str = "vfio_device_set.lock";
const KVM_LOCK: &str = "kvm.lock";
const NO_VFIO_REF: &[&str] = &["6.1", "patched"];
const ALL: &[&str] = &[
    "6.1",
    "6.12",
    "sid",
    "trixie",
    "trixie-bpo",
    "patched",
    "cdev",
];

/// Every reference QEMU's VM holds, named at both ends.
const QEMU_HOLDERS: &[&str] = &[
    "+1 vm fd",
    "+1 vcpu 0 fd",
    "+1 stats fd",
    "+1 kvm-vfio fd",
    "+1 vfio device",
    "-1 kvm-vfio fd",
    "-1 stats fd",
    "-1 vcpu 0 fd",
    "-1 vm fd",
    "-1 vfio device",
];

/// QEMU with the iommufd backend on the cdev kernel: whichever way it ends,
/// exit releases the device file last (kvm-vfio holds it), under dev_set->lock.
const fn qemu_iommufd(driver: &'static str, why: &'static str) -> Scenario {
    Scenario {
        kernels: &["cdev"],
        testdev: None,
        driver,
        counts: &[1, 2, 3, 4, 5, 4, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[DEV_SET_LOCK])],
        attributed: QEMU_HOLDERS,
        frames: &["vfio_df_unbind_iommufd", "vfio_device_put_kvm"],
        why,
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    }
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        kernels: DF66,
        testdev: None,
        driver: "dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.6+: VFIO holds a reference from open to last close; the kvm-vfio get is inlined (an inferred +1)",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: DF66,
        testdev: None,
        driver: "vm-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[GROUP_LOCK, DEV_SET_LOCK])],
        attributed: &[],
        frames: &["vfio_device_put_kvm"],
        why: "VM and kvm-vfio fds closed first: VFIO's put is the last, under group_lock and dev_set->lock (S3)",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: DF66,
        testdev: None,
        driver: "exit",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "exit's deferred fputs run LIFO: the device goes first, the VM fd drops the last reference under no VFIO lock",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: NO_VFIO_REF,
        testdev: None,
        driver: "dev-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.1 (and the patch with a driver that sets no kvm_ops): VFIO holds no kvm reference",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: NO_VFIO_REF,
        testdev: None,
        driver: "vm-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.1: the VM dies with its last KVM fd, the VFIO device still open",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: NO_VFIO_REF,
        testdev: None,
        driver: "exit",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.1: no VFIO reference, no VFIO lock around the last put",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    // 5.10 (the notifier era) with vfio-pci, which registers no notifier:
    // only the VM fd and the kvm-vfio fd hold the VM; open_count does not
    // exist (vfio_device is private to vfio.c and has none).
    Scenario {
        kernels: &["bullseye"],
        testdev: None,
        driver: "dev-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[],
        findings: &[],
        attributed: &["-1 kvm-vfio fd", "-1 vm fd"],
        frames: &[],
        why: "5.10: the VFIO core holds no kvm reference; the kvm-vfio fd does, given back at its close",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["bullseye"],
        testdev: None,
        driver: "vm-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[],
        findings: &[],
        attributed: &["-1 kvm-vfio fd", "-1 vm fd"],
        frames: &[],
        why: "5.10: the VM dies with its last KVM fd (kvm_vfio_destroy from kvm_destroy_vm), the device still open",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["bullseye"],
        testdev: None,
        driver: "exit",
        counts: &[1, 2, 1, 0],
        open_counts: &[],
        findings: &[],
        attributed: &["-1 kvm-vfio fd", "-1 vm fd"],
        frames: &[],
        why: "5.10: exit's closes, no VFIO lock and no VFIO reference around the last put",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    // 5.10 with a driver shaped like kvmgt (test module, mode=notifier): an
    // mdev whose open registers for VFIO_GROUP_NOTIFY_SET_KVM; the group
    // (linked before the open) calls it at once and it takes a reference,
    // dropped at its release.
    Scenario {
        kernels: &["bullseye"],
        testdev: Some("notifier"),
        driver: "--testdev vm-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[],
        findings: &[],
        attributed: &["+1 notifier", "-1 notifier", "-1 vm fd", "-1 kvm-vfio fd"],
        frames: &["testdev_release", "vfio_device_fops_release"],
        why: "5.10: the driver's notifier reference outlives the VM fds: its release makes the last put (no VFIO mutex is held there in this era)",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["bullseye"],
        testdev: Some("notifier"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[],
        findings: &[],
        attributed: &["+1 notifier", "-1 notifier", "-1 vm fd", "-1 kvm-vfio fd"],
        frames: &[],
        why: "5.10: the device closed first gives the notifier's reference back; the KVM fds make the last put",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    // S2 with a real driver: open_device takes kvm->lock under the VFIO locks.
    Scenario {
        kernels: &["6.1"],
        testdev: Some("kvmlock"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("lock-order-inversion", &[KVM_LOCK, GROUP_LOCK])],
        attributed: &[],
        frames: &[],
        why: "6.1: open_device takes kvm->lock under group_lock; kvm_vfio_release takes group_lock under kvm->lock (S2)",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["6.12"],
        testdev: Some("kvmlock"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.3+ (2b48f52f2bff): kvm_vfio_release reaches only the kvm_ref_lock spinlock: no reverse edge",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    // A driver bug: open_device re-takes kvm->lock it holds (killable): the
    // opener waits for itself until the lab kills it.
    Scenario {
        kernels: &["6.12"],
        testdev: Some("relock"),
        driver: "--testdev --expect-open-error dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        // The open never completes: open_count never rises.
        open_counts: &[],
        findings: &[("self-deadlock", &[KVM_LOCK]), ("long-wait", &[KVM_LOCK])],
        attributed: &[],
        frames: &[],
        why: "open_device waits for kvm->lock it holds: self-deadlock at the wait, a long wait when the kill ends it (-EINTR); VFIO then gives its reference back",
        exact: true,
        kill_after_ms: Some(3000),
        lean_lacks: &[],
        unordered: false,
    },
    // A real ABBA deadlock on watched locks: two threads of one process, each
    // holding one of kvm->lock and dev_set->lock and waiting (killably) for
    // the other's, until the lab kills the process.
    Scenario {
        kernels: &["6.12"],
        testdev: Some("abba"),
        driver: "--testdev abba",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[
            ("lock-order-inversion", &[DEV_SET_LOCK, KVM_LOCK]),
            ("deadlock", &[DEV_SET_LOCK, KVM_LOCK]),
            ("long-wait", &[KVM_LOCK]),
            ("long-wait", &[DEV_SET_LOCK]),
        ],
        attributed: &[],
        frames: &[],
        why: "each thread waits for the lock the other holds: a deadlock while it lasts (both modes, from the contention tracepoints and owner words); deep also sees both orders; the kill ends both waits",
        exact: true,
        kill_after_ms: Some(3000),
        lean_lacks: &["lock-order-inversion"],
        unordered: true,
    },
    // The 6.1 S1 shape: the driver's own reference is the last, dropped in close_device.
    Scenario {
        kernels: &["6.1"],
        testdev: Some("ownref"),
        driver: "--testdev vm-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[DEV_SET_LOCK, GROUP_LOCK])],
        attributed: &[],
        frames: &["testdev_close_device"],
        why: "6.1: close_device runs under dev_set->lock and group_lock; the driver's put there is the last",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["6.12"],
        testdev: Some("ownref"),
        driver: "--testdev vm-first",
        counts: &[1, 2, 3, 4, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[GROUP_LOCK, DEV_SET_LOCK])],
        attributed: &[],
        frames: &["vfio_device_put_kvm"],
        why: "6.12: the driver's put comes first; VFIO's own reference is still the last, dropped after close_device (S3)",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    // The patched stack: a driver that uses kvm_ops.
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops"),
        driver: "--testdev vm-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[DEV_SET_LOCK])],
        attributed: &["+1 (kvm_ops)", "-1 (kvm_ops)"],
        // The driver's put_kvm tail-calls kvm_put_kvm: the release is its frame.
        frames: &["testdev_get_kvm", "vfio_device_fops_release"],
        why: "the patch: put_kvm() runs after group_lock is dropped but under dev_set->lock",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &["+1 (kvm_ops)", "-1 (kvm_ops)"],
        // The driver's put_kvm tail-calls kvm_put_kvm: the release is its frame.
        frames: &["testdev_get_kvm", "vfio_device_fops_release"],
        why: "device first: the driver's put is not the last",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops"),
        driver: "--testdev --no-kvm dev-first",
        counts: &[1, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("unbalanced-put", &[])],
        attributed: &[],
        frames: &[],
        why: "the patch's defect: put_kvm() at the last close although get_kvm() was never called",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops-fail"),
        driver: "--testdev --expect-open-error dev-first",
        counts: &[1, 2, 1, 0],
        // The device is seen at the attempt; its open_count never rises.
        open_counts: &[],
        findings: &[("unbalanced-put", &[])],
        attributed: &[],
        frames: &[],
        why: "the patch's open error path calls put_kvm() although the driver's get_kvm() failed",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["patched"],
        testdev: Some("kvmops-lock"),
        driver: "--testdev dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("lock-order-inversion", &[KVM_LOCK, GROUP_LOCK])],
        attributed: &["+1 (kvm_ops)", "-1 (kvm_ops)"],
        frames: &[],
        why: "the patch keeps 6.1's kvm_vfio_release under kvm->lock -> group_lock; open_device takes kvm->lock under group_lock (S2)",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    // The cdev / iommufd path (6.6+, CONFIG_VFIO_DEVICE_CDEV): the device's
    // own node, added to the kvm-vfio device by its fd, bound to an iommufd.
    Scenario {
        kernels: &["cdev"],
        testdev: None,
        driver: "--cdev dev-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "cdev: the bind (vfio_df_open under dev_set->lock) takes VFIO's kvm reference; closing the device first gives it back before the KVM fds",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["cdev"],
        testdev: None,
        driver: "--cdev vm-first",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[DEV_SET_LOCK])],
        attributed: &[],
        frames: &["vfio_device_put_kvm"],
        why: "cdev: VFIO's put is the last, in vfio_df_unbind_iommufd under dev_set->lock only (S3 on the cdev path: no group_lock)",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: &["cdev"],
        testdev: None,
        driver: "--cdev exit",
        counts: &[1, 2, 3, 2, 1, 0],
        open_counts: &[1, 0],
        findings: &[("destroy-under-lock", &[DEV_SET_LOCK])],
        attributed: &[],
        frames: &["vfio_device_put_kvm"],
        why: "cdev, process exit: kvm-vfio holds the device file itself (KVM_DEV_VFIO_FILE_ADD keeps a reference), so the device is released by kvm_vfio_release's fput, queued after the VM fd's put: VFIO's put is the last, under dev_set->lock (S3 on any exit, a crash or a kill included; the group path's exit is clean because kvm-vfio holds the group file, not the device's)",
        exact: true,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    // Debian's QEMU as the client with its iommufd backend (`-object
    // iommufd`, the device's cdev): QEMU's own quit, and a SIGKILL.
    qemu_iommufd(
        "qemu --cdev quit",
        "QEMU's quit leaves its fds to exit_files: the kvm-vfio fd's release drops its VM reference and its hold on the device file, whose release then unbinds the iommufd under dev_set->lock and gives back VFIO's reference, the last (S3, met by a real client)",
    ),
    qemu_iommufd(
        "qemu --cdev kill",
        "SIGKILL: the same exit path from get_signal: VFIO's put in vfio_df_unbind_iommufd is the last, under dev_set->lock (S3)",
    ),
    // Opens racing the last puts: invariants, whatever the interleaving.
    Scenario {
        kernels: DF66,
        testdev: None,
        driver: "race 40",
        counts: &[0],
        open_counts: &[0],
        findings: &[("destroy-under-lock", &[]), ("get-safe-failed", &[])],
        attributed: &[],
        frames: &[],
        why: "6.6+: an open between the unlink and the last put gets no kvm; if a device close comes last, VFIO's put is (S3)",
        exact: false,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
    Scenario {
        kernels: NO_VFIO_REF,
        testdev: None,
        driver: "race 40",
        counts: &[0],
        open_counts: &[0],
        findings: &[],
        attributed: &[],
        frames: &[],
        why: "6.1: vfio-pci's opens take no kvm reference: the VM ends with its KVM fds, cleanly",
        exact: false,
        kill_after_ms: None,
        lean_lacks: &[],
        unordered: false,
    },
];

impl Scenario {
    pub fn runs_on(&self, kernel: &str) -> bool {
        self.kernels.contains(&kernel)
    }

    /// How the lab names it: the device and the driver's mode.
    pub fn name(&self) -> String {
        format!(
            "{} {}",
            self.testdev
                .map_or("edu".to_owned(), |m| format!("testdev mode={m}")),
            self.driver.trim_start_matches("--testdev ")
        )
    }
}

impl Scenario {
    /// The findings expected in a lock-watching mode: lean sees no release,
    /// so it raises no long-hold, nor what the scenario says it lacks.
    pub fn findings_in(&self, lean: bool) -> Vec<(&'static str, &'static [&'static str])> {
        self.findings
            .iter()
            .filter(|(k, _)| !lean || !(*k == "long-hold" || self.lean_lacks.contains(k)))
            .copied()
            .collect()
    }
}

/// What the guest runs on `kernel`: each scenario's step, by index, once per
/// lock-watching mode.
pub fn suite(kernel: &str) -> Suite {
    let mut steps = Vec::new();
    for (id, sc) in SCENARIOS
        .iter()
        .enumerate()
        .filter(|(_, sc)| sc.runs_on(kernel))
    {
        let step = |locks: Option<&str>| Step {
            id,
            testdev: sc.testdev.map(str::to_owned),
            driver: sc.driver.split_whitespace().map(str::to_owned).collect(),
            locks: locks.map(str::to_owned),
            kill_after_ms: sc.kill_after_ms,
        };
        // Every scenario in both modes: deep, then lean (the default).
        steps.push(step(Some("deep")));
        steps.push(step(Some("lean")));
    }
    let selftests = match super::selftests::source_of(kernel) {
        Some(_) => super::selftests::CURATED
            .iter()
            .map(|t| super::selftests::name(t).to_owned())
            .collect(),
        None => Vec::new(),
    };
    Suite { steps, selftests }
}
