//! Reads of kernel memory at offsets from the config. An unknown offset or a
//! failed read yields `None`: the datum is then reported unknown.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use trace_common::OFFSET_UNKNOWN;

use crate::config::conf;

#[inline(always)]
pub fn ptr_at(base: u64, off: u32) -> Option<u64> {
    if base == 0 || off == OFFSET_UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.ok()
}

#[inline(always)]
pub fn i32_at(base: u64, off: u32) -> Option<i32> {
    if base == 0 || off == OFFSET_UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const i32) }.ok()
}

/// Address of a field (no read): `&obj->field`.
#[inline(always)]
pub fn field_addr(base: u64, off: u32) -> Option<u64> {
    if base == 0 || off == OFFSET_UNKNOWN {
        None
    } else {
        Some(base + off as u64)
    }
}

/// The `struct file *` behind `fd` in the current task's fd table.
#[inline(always)]
pub fn file_of_fd(fd: i32) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let fdt = fdtable()?;
    let max = i32_at(fdt, conf!(fdtable_max_fds))?;
    if fd >= max {
        return None;
    }
    let arr = ptr_at(fdt, conf!(fdtable_fd))?;
    let file = unsafe { bpf_probe_read_kernel((arr + (fd as u64) * 8) as *const u64) }.ok()?;
    if file == 0 { None } else { Some(file) }
}

/// The current task's `struct fdtable`.
#[inline(always)]
fn fdtable() -> Option<u64> {
    let task = unsafe { bpf_get_current_task() };
    let files = ptr_at(task, conf!(task_files))?;
    ptr_at(files, conf!(files_fdt))
}

/// The size of the current task's fd table (fds are below it).
#[inline(always)]
pub fn fd_table_size() -> Option<i32> {
    i32_at(fdtable()?, conf!(fdtable_max_fds))
}

#[inline(always)]
pub fn private_data(file: u64) -> Option<u64> {
    ptr_at(file, conf!(file_private_data)).filter(|p| *p != 0)
}

/// `file->f_op`: which kind of file it is.
#[inline(always)]
pub fn f_op(file: u64) -> Option<u64> {
    ptr_at(file, conf!(file_f_op)).filter(|p| *p != 0)
}

/// The references to `file`: `f_count` before 6.13; `f_ref` after, which
/// holds the count minus one (FILE_REF_ONEREF is 0) and, past
/// FILE_REF_MAXREF, a released or dead file (None).
#[inline(always)]
pub fn file_refs(file: u64) -> Option<u64> {
    if let Some(r) = ptr_at(file, conf!(file_ref)) {
        return (r <= i64::MAX as u64).then_some(r + 1);
    }
    ptr_at(file, conf!(file_count))
}

/// A `struct vfio_device *` from a VFIO device file's private_data: the device
/// itself before 6.6, a `struct vfio_device_file *` (whose `device` we follow) after.
#[inline(always)]
pub fn vfio_device_of_private(private: u64) -> Option<u64> {
    let df_dev = conf!(vfio_device_file_device);
    if df_dev == OFFSET_UNKNOWN {
        Some(private)
    } else {
        ptr_at(private, df_dev).filter(|p| *p != 0)
    }
}

/// True for a kernel pointer (not NULL, not an ERR_PTR).
#[inline(always)]
pub fn is_kptr(v: u64) -> bool {
    v != 0 && v < (-4095i64) as u64
}
