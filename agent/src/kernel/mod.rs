//! The kernel side as userspace sees it: [`preflight`] checks privileges and cgroup2,
//! [`programs`] loads and attaches the eBPF programs, [`counters`] reads their exact counters,
//! [`flow_sums`] their in-flight integral, latency sum and bytes, [`latency_histogram`] their
//! latency buckets, [`node_cgroups`] tells them which cgroups are the node's own,
//! [`ring_fill`] the ring buffer's fill and [`connection_table`] the connection table's size;
//! [`pins`] keeps programs and counters across agent restarts (`--bpffs-dir`).

pub(crate) mod connection_table;
pub(crate) mod counters;
pub(crate) mod flow_sums;
pub(crate) mod latency_histogram;
pub(crate) mod node_cgroups;
pub(crate) mod pins;
pub(crate) mod preflight;
pub(crate) mod programs;
pub(crate) mod ring_fill;
