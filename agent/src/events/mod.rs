//! Per-request events from the kernel: [`decode`] turns ring buffer records into events and
//! [`drain`] reads the ring once, pairing and booking what it read.

pub(crate) mod decode;
pub(crate) mod drain;
