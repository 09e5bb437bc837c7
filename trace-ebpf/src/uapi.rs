//! Kernel UAPI structs the programs read from user or kernel memory
//! (include/uapi/linux/kvm.h).

/// `struct kvm_create_device`
#[repr(C)]
pub struct KvmCreateDevice {
    pub ty: u32,
    pub fd: u32,
    pub flags: u32,
}

/// `struct kvm_device_attr`
#[repr(C)]
pub struct KvmDeviceAttr {
    pub flags: u32,
    pub group: u32,
    pub attr: u64,
    pub addr: u64,
}
