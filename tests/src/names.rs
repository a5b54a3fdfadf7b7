//! Names of everything a test run creates: unique per process, and parseable back to the PID of
//! the process that created them, so leftovers of a killed run can be recognised and removed.

use std::sync::atomic::{AtomicU32, Ordering};

/// One counter for all kinds of names keeps every name of a process distinct.
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Prefix of network namespace names: `pmt-<pid>-<id>`.
pub(crate) const NETNS_PREFIX: &str = "pmt-";
/// Prefix of bridge names: `pmb<pid hex>x<id hex>`.
pub(crate) const BRIDGE_PREFIX: &str = "pmb";
/// Prefix of host-side veth names: `pmv<pid hex>x<id hex>`.
pub(crate) const VETH_PREFIX: &str = "pmv";
/// Prefix of dummy link names (a control plane's pod-reachable address): `pmd<pid hex>x<id hex>`.
pub(crate) const DUMMY_PREFIX: &str = "pmd";
/// Prefix of test parent cgroups: `podmeter-test-<pid>-<id>`.
pub(crate) const CGROUP_PREFIX: &str = "podmeter-test-";
/// Prefix of a real node's name, which is also its kubelet's cgroup root in every hierarchy:
/// `podmeter-node-<pid>-<id>`.
pub(crate) const NODE_PREFIX: &str = "podmeter-node-";
/// Prefix of temp dirs: `podmeter-test-<pid>-<id>-<label>-XXXXXX`.
pub(crate) const TEMP_DIR_PREFIX: &str = "podmeter-test-";

/// Linux interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
pub(crate) const IFNAME_MAX: usize = 15;

pub(crate) fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn netns_name(id: u32) -> String {
    format!("{NETNS_PREFIX}{}-{id}", std::process::id())
}

pub(crate) fn bridge_name(id: u32) -> String {
    interface_name(BRIDGE_PREFIX, id)
}

pub(crate) fn veth_name(id: u32) -> String {
    interface_name(VETH_PREFIX, id)
}

pub(crate) fn dummy_name(id: u32) -> String {
    interface_name(DUMMY_PREFIX, id)
}

pub(crate) fn cgroup_parent_name(id: u32) -> String {
    format!("{CGROUP_PREFIX}{}-{id}", std::process::id())
}

pub(crate) fn node_name(id: u32) -> String {
    format!("{NODE_PREFIX}{}-{id}", std::process::id())
}

pub(crate) fn temp_dir_stem(id: u32) -> String {
    format!("{TEMP_DIR_PREFIX}{}-{id}", std::process::id())
}

/// The PID encoded in a temp dir name made from [`temp_dir_stem`] (`<stem>-<label>-XXXXXX`).
pub(crate) fn temp_dir_owner(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix(TEMP_DIR_PREFIX)?.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    Some(pid)
}

/// Hex keeps the name short: pid_max is 2^22, so the PID takes at most 6 hex digits, and with the
/// 3-byte prefix and the `x` separator there are 5 digits left for the id.
fn interface_name(prefix: &str, id: u32) -> String {
    let name = format!("{prefix}{:x}x{id:x}", std::process::id());
    assert!(
        name.len() <= IFNAME_MAX,
        "interface name {name} is longer than {IFNAME_MAX} bytes"
    );
    name
}

/// The PID encoded in an interface name made by [`bridge_name`], [`veth_name`] or
/// [`dummy_name`].
pub(crate) fn interface_owner(prefix: &str, name: &str) -> Option<u32> {
    let (pid, id) = name.strip_prefix(prefix)?.split_once('x')?;
    u32::from_str_radix(id, 16).ok()?;
    u32::from_str_radix(pid, 16).ok()
}

/// The PID encoded in a name made by [`netns_name`] or [`cgroup_parent_name`].
pub(crate) fn decimal_owner(prefix: &str, name: &str) -> Option<u32> {
    let (pid, id) = name.strip_prefix(prefix)?.split_once('-')?;
    id.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_to_their_owner() {
        let pid = std::process::id();
        assert_eq!(
            interface_owner(BRIDGE_PREFIX, &bridge_name(0xfffff)),
            Some(pid)
        );
        assert_eq!(interface_owner(VETH_PREFIX, &veth_name(7)), Some(pid));
        assert_eq!(interface_owner(DUMMY_PREFIX, &dummy_name(8)), Some(pid));
        assert_eq!(decimal_owner(NETNS_PREFIX, &netns_name(3)), Some(pid));
        assert_eq!(
            decimal_owner(CGROUP_PREFIX, &cgroup_parent_name(9)),
            Some(pid)
        );
        assert_eq!(decimal_owner(NODE_PREFIX, &node_name(5)), Some(pid));
        assert_eq!(interface_owner(BRIDGE_PREFIX, "pmbridge"), None);
        assert_eq!(decimal_owner(NETNS_PREFIX, "pmt-cli"), None);
        assert_eq!(
            temp_dir_owner(&format!("{}-nginx", temp_dir_stem(4))),
            Some(pid)
        );
        assert_eq!(temp_dir_owner("podmeter-tests.lock"), None);
    }
}
