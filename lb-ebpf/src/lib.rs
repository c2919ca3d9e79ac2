//! lb's datapath, kernel side and ABI.
//!
//! The library part is `no_std` and holds what the XDP/tc programs and
//! userspace must agree on: map layouts ([`abi`]), the flow hash ([`hash`]) and
//! the checksum arithmetic ([`csum`]), so none of it is written twice. The
//! programs themselves are the `lb-xdp` binary (`src/bin/lb-xdp`), built for
//! the BPF target by `lb-core`'s build script.
#![no_std]

pub mod abi;
pub mod csum;
pub mod hash;
