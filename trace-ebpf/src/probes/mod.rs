//! One file per hook family.
mod kvm;
mod mutex;
mod syscalls;
mod vfio;
