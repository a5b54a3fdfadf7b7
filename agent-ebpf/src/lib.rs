// The eBPF programs are the `podmeter` binary target; this library only lets the agent's build.rs
// declare a build-dependency on this crate so cargo rebuilds the programs when they change.
#![no_std]
