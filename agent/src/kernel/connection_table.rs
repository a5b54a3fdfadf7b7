//! How many connections the kernel's connection table holds: its keys, counted with
//! `BPF_MAP_GET_NEXT_KEY` (aya's key iterator needs the value type, which only the eBPF crate
//! knows; the keys are socket cookies, `u64`).

use std::{
    collections::HashSet,
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The map-element part of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

/// The number of keys in the hash map `fd` (keys are `u64`), visiting at most `2 * max_entries`
/// keys. A key deleted while the walk stands on it makes the kernel restart from the first key;
/// counting distinct keys makes such restarts harmless, and the bound makes them finite.
pub fn count_keys(fd: BorrowedFd<'_>, max_entries: u32) -> io::Result<u64> {
    let map_fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?;
    let mut seen = HashSet::new();
    let mut current: Option<u64> = None;
    let mut next: u64 = 0;
    for _ in 0..2 * u64::from(max_entries) {
        let mut attr = ElemAttr {
            map_fd,
            _pad: 0,
            key: current.as_ref().map_or(0, |k| std::ptr::from_ref(k) as u64),
            next_key: std::ptr::from_mut(&mut next) as u64,
            flags: 0,
        };
        // SAFETY: bpf(2) reads `attr` and writes one u64 key to `next`, both live for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                std::ptr::from_mut(&mut attr),
                size_of::<ElemAttr>(),
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            return Err(error);
        }
        seen.insert(next);
        current = Some(next);
    }
    Ok(seen.len() as u64)
}
