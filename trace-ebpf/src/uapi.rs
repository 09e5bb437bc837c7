//! Kernel UAPI structs the programs read from user or kernel memory
//! (include/uapi/linux/kvm.h, include/linux/socket.h).

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

/// `struct cmsghdr` (include/linux/socket.h), its data after it.
#[repr(C)]
pub struct CmsgHdr {
    pub len: u64,
    pub level: i32,
    pub ty: i32,
}
