//! The guest lab: real Debian kernels booted under QEMU (TCG, `-cpu max` so the
//! guest has SVM and KVM loads), q35 with an emulated Intel IOMMU and the `edu`
//! PCI device bound to vfio-pci, a self-contained initramfs whose init runs one
//! command and powers off. Kernels are downloaded and unpacked, never installed
//! on the host; QEMU 10 comes from bookworm-backports (7.2 crashes guests under
//! multi-threaded TCG: notes/guest-lab.md).
//!
//! By part: `kernels` (the matrix), `debian` (packages), `kbuild` (kernels
//! and the test module built here), `initramfs`, `qemu` (boot), `scenarios`
//! (what runs in the guest and what it must show: data), `verdict` (the
//! guest's JSON checked against it, typed), `matrix` (`cargo xtask lab`),
//! `readme` (the support matrix's dates), `bench` and `stress`; `host`: the
//! host lab (systemd, libvirt, QEMU and the installed package in the guest).
pub mod bench;
pub mod btfgen;
pub mod debian;
pub mod frozen;
pub mod host;
pub mod initramfs;
pub mod kbuild;
pub mod kernels;
pub mod matrix;
pub mod progstats;
pub mod qemu;
pub mod readme;
pub mod scenarios;
pub mod selftests;
pub mod stress;
pub mod verdict;
