//! The kernel side as userspace sees it: [`preflight`] checks privileges and cgroup2,
//! [`programs`] loads and attaches the eBPF programs, [`counters`] reads their exact counters,
//! [`ring_fill`] the ring buffer's fill and [`connection_table`] the connection table's size.

pub mod connection_table;
pub mod counters;
pub mod preflight;
pub mod programs;
pub mod ring_fill;
