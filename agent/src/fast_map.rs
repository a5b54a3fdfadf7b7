//! The hash map of the per-event path: connections by socket cookie, pods by id, series by pod.
//! Each request looks several of them up, and the standard library's SipHash was about a tenth
//! of the agent's CPU per request. foldhash is several times faster and still seeded per process,
//! which is enough for keys that come from the kernel and the cluster's own pod names.

/// A `HashMap` with foldhash; build it with `FastMap::default()`.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
