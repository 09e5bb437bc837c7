//! The matrix: each lab kernel, where it comes from, and how to get it.
use super::{debian, debian::Unpacked, kbuild};

pub struct Kernel {
    /// Short name used on the command line and in the cache.
    pub name: &'static str,
    pub source: Source,
    /// Modules whose BTF the kernel lacks (before 5.11), made from its -dbg
    /// package (btfgen.rs) and handed to kvscope with `--btf`.
    pub module_btf: &'static [&'static str],
}

pub enum Source {
    /// A Debian image: the meta package resolving to the current one, and the
    /// suite it comes from.
    Debian {
        meta: &'static str,
        suite: Option<&'static str>,
    },
    /// Built here from Debian's source (kbuild.rs): the patched stack, the
    /// cdev kernel.
    Built(&'static kbuild::Build),
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.12",
        source: Source::Debian {
            meta: "linux-image-cloud-amd64",
            suite: Some("bookworm-backports"),
        },
        module_btf: &[],
    },
    Kernel {
        name: "6.1",
        source: Source::Debian {
            meta: "linux-image-cloud-amd64",
            suite: None,
        },
        module_btf: &[],
    },
    // The newest kernel the registry offers (sid), where it unpacks and boots.
    Kernel {
        name: "sid",
        source: Source::Debian {
            meta: "linux-image-cloud-amd64",
            suite: Some("sid"),
        },
        module_btf: &[],
    },
    // Debian 13 (trixie): the stable line's kernel, and the newest its
    // backports offer (both picked at run time, as for the others).
    Kernel {
        name: "trixie",
        source: Source::Debian {
            meta: "linux-image-cloud-amd64",
            suite: Some("trixie"),
        },
        module_btf: &[],
    },
    Kernel {
        name: "trixie-bpo",
        source: Source::Debian {
            meta: "linux-image-cloud-amd64",
            suite: Some("trixie-backports"),
        },
        module_btf: &[],
    },
    // Debian 11 (bullseye, 5.10): the notifier era (the kvm pointer reaches
    // drivers through VFIO_GROUP_NOTIFY_SET_KVM), vmlinux BTF, no module BTF.
    // The generic flavour: the cloud one builds no mdev bus (the test
    // module's notifier mode is an mdev driver, as kvmgt is).
    Kernel {
        name: "bullseye",
        source: Source::Debian {
            meta: "linux-image-amd64",
            suite: Some("bullseye-security"),
        },
        module_btf: &["kvm", "vfio"],
    },
    Kernel {
        name: "patched",
        source: Source::Built(&kbuild::PATCHED),
        module_btf: &[],
    },
    // 6.12 with IOMMUFD and the VFIO device cdev (off in Debian's configs).
    Kernel {
        name: "cdev",
        source: Source::Built(&kbuild::CDEV),
        module_btf: &[],
    },
];

/// The kernel of a matrix entry: downloaded and unpacked, or built.
pub fn unpacked(k: &Kernel) -> anyhow::Result<Unpacked> {
    match k.source {
        Source::Debian { meta, suite } => debian::debian_kernel(meta, suite),
        Source::Built(b) => kbuild::built(b),
    }
}
