//! BPF_F_MMAPABLE array maps mapped into our memory, so userspace writes
//! them with plain (or atomic) stores instead of one syscall per slot.

use std::os::fd::{AsFd, AsRawFd};

use aya::Ebpf;

use super::DatapathError;

/// Array maps store each value in a slot rounded up to 8 bytes.
pub const fn slot_size(value_size: usize) -> usize {
    value_size.div_ceil(8) * 8
}

pub struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    /// Start of the mapping; slot `i` is at `i * slot_size(value size)`.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn new(
        ebpf: &Ebpf,
        name: &'static str,
        entries: u64,
        value_size: usize,
    ) -> Result<Self, DatapathError> {
        let map = ebpf.map(name).ok_or(DatapathError::Map(name))?;
        let data = match map {
            aya::maps::Map::Array(d) => d,
            _ => return Err(DatapathError::Map(name)),
        };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (entries as usize * slot_size(value_size)).div_ceil(page) * page;
        // SAFETY: mapping a BPF_F_MMAPABLE array fd, shared, at offset 0, for
        // exactly its data size; the kernel keeps the map alive while mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Mmap(name, std::io::Error::last_os_error()));
        }
        Ok(Mmap {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: the mapping is plain shared memory; its users hand out no
// references into it.
unsafe impl Send for Mmap {}
unsafe impl Sync for Mmap {}
