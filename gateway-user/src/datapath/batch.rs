//! `BPF_MAP_UPDATE_BATCH` for array maps of `u32`: a Maglev table (16,381 entries) in one
//! syscall instead of one per entry. aya has no batch operations, so the syscall is made
//! here; kernels without them (before 5.6) get the per-entry writes back from the caller.
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;

/// `enum bpf_cmd`: `BPF_MAP_UPDATE_BATCH`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h), which the kernel
/// reads up to its own size; what follows must be zero, so nothing follows.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `values` at indices `first..` of the array `map`. A partial write (the kernel
/// reports how many it took) is resumed where it stopped.
pub fn write_u32s(map: &MapData, first: u32, values: &[u32]) -> std::io::Result<()> {
    let end = u32::try_from(values.len())
        .ok()
        .and_then(|len| first.checked_add(len))
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let keys: Vec<u32> = (first..end).collect();
    let fd = map.fd().as_fd().as_raw_fd();
    let mut done = 0usize;
    while done < values.len() {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (values.len() - done) as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: bpf(2) with an attribute struct laid out as the kernel's, whose key and
        // value pointers cover `count` u32s each and outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The kernel writes back how many it took; none would loop forever.
        if attr.count == 0 {
            return Err(std::io::Error::other("the batch update took no entry"));
        }
        done += attr.count as usize;
    }
    Ok(())
}
