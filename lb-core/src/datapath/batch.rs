//! Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH`: thousands of entries
//! per syscall, where aya 0.14's iterator (which has no batch call) makes
//! two syscalls per entry. The lc/wlc recount scans the connection table
//! every second: 262144 entries took 420 ms one by one.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's own "not supported" (not in libc: it never reaches
/// userspace through glibc's errno names).
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
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

/// Entries fetched per syscall at first; a bucket holding more makes the
/// kernel answer ENOSPC, and the chunk doubles.
const CHUNK: usize = 4_096;

/// Every (key, value) of a hash map. `None` when the kernel has no batch
/// lookup for this map (the caller then iterates).
pub fn dump<K: Pod + Default, V: Pod + Default>(map: &MapData) -> io::Result<Option<Vec<(K, V)>>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    // The kernel's resume token for hash maps is a bucket index (u32).
    let mut token = 0u64;
    let mut first = true;
    loop {
        let mut keys = vec![K::default(); chunk];
        let mut values = vec![V::default(); chunk];
        let mut next = 0u64;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token) as u64 },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` points at buffers of `chunk` keys and values of the
        // map's key and value types and at two 8-byte tokens, all alive for
        // the call; the size passed is the struct's own.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (r < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if first => {
                return Ok(None);
            }
            Some(libc::ENOSPC) if attr.count == 0 => {
                chunk *= 2;
                continue;
            }
            Some(libc::ENOENT) | None => {}
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        }
        let n = attr.count as usize;
        out.extend(keys.into_iter().zip(values).take(n));
        if err.is_some() {
            // ENOENT: the last bucket was read.
            return Ok(Some(out));
        }
        token = next;
        first = false;
    }
}
