//! How many connections the kernel's connection table holds.
//!
//! The table is read through aya's typed map (`HashMap<_, u64, Connection>`; aya reads LRU hash
//! maps with its `HashMap`), whose key and value sizes aya checks against the loaded map. Its
//! key iterator costs what a hand-written walk would: one `BPF_MAP_GET_NEXT_KEY` per key and no
//! value copies. It is not bounded by itself, so the walk here is.

use std::collections::HashSet;

use aya::maps::{HashMap, Map, MapError};
use podmeter_common::Connection;

/// The number of connections in the table `map`, visiting at most `2 * max_entries` keys. A key
/// deleted while the walk stands on it makes the kernel restart from the first key; counting
/// distinct keys (socket cookies) makes such restarts harmless, and the bound makes them finite.
pub fn count(map: &Map, max_entries: u32) -> Result<u64, MapError> {
    let table: HashMap<&_, u64, Connection> = HashMap::try_from(map)?;
    let bound = 2 * usize::try_from(max_entries).unwrap_or(usize::MAX / 2);
    let mut seen = HashSet::new();
    for key in table.keys().take(bound) {
        seen.insert(key?);
    }
    Ok(seen.len() as u64)
}
