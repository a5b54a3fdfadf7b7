//! The pod UID in a kubelet cgroup path. The kubelet names each pod's cgroup after its UID:
//! - cgroupfs driver: `kubepods/pod<uid>` (Guaranteed), `kubepods/burstable/pod<uid>`,
//!   `kubepods/besteffort/pod<uid>`, containers below as `<id>` or `crio-<id>`;
//! - systemd driver: `kubepods.slice/kubepods-pod<uid_with_underscores>.slice` (Guaranteed),
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`, and the
//!   besteffort equivalent; containers below as `cri-containerd-<id>.scope`, `crio-<id>.scope`,
//!   `docker-<id>.scope`.
//!
//! The kubepods tree may itself sit below other cgroups (a kind node's `kubelet.slice`, a
//! `--cgroup-root` inside it), so the pod component is looked for anywhere below a `kubepods`
//! component.

use std::path::{Component, Path};

/// The UID of the pod whose cgroup `path` is or is inside, lower-case with dashes; `None` for
/// cgroups that are no pod's (system slices, the QoS levels themselves).
pub(crate) fn pod_uid(path: &Path) -> Option<String> {
    let mut below_kubepods = false;
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let name = name.to_str()?;
        let stem = name.strip_suffix(".slice").unwrap_or(name);
        if let Some(uid) = uid_in(stem, below_kubepods) {
            return Some(uid);
        }
        below_kubepods |= stem.contains("kubepods");
    }
    None
}

/// The UID in one path component: `pod<uid>` (cgroupfs, below a kubepods component) or
/// `kubepods[-<qos>]-pod<uid>` (systemd).
fn uid_in(stem: &str, below_kubepods: bool) -> Option<String> {
    let raw = if let Some(rest) = stem.strip_prefix("pod") {
        below_kubepods.then_some(rest)?
    } else if stem.starts_with("kubepods") || stem.contains("-kubepods") {
        stem.rsplit_once("-pod")?.1
    } else {
        return None;
    };
    normalise_uid(raw)
}

/// A UID as the API server spells it: a UUID (`8-4-4-4-12` hex digits), or for static pods the
/// 32 hex digits of their config hash. systemd slice names write its dashes as underscores.
fn normalise_uid(raw: &str) -> Option<String> {
    let uid: String = raw
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    let groups: Vec<&str> = uid.split('-').collect();
    let uuid = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g));
    let config_hash = uid.len() == 32 && hex(&uid);
    (uuid || config_hash).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c2a9e-5b1d-4c8e-9a7f-2d6b1e4f8c03";
    const UNDERSCORED: &str = "0f3c2a9e_5b1d_4c8e_9a7f_2d6b1e4f8c03";
    const ID: &str = "4b8f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";

    fn uid(path: &str) -> Option<String> {
        pod_uid(Path::new(path))
    }

    #[test]
    fn cgroupfs_driver_every_qos_class_and_runtime() {
        for qos in ["", "burstable/", "besteffort/"] {
            for container in [ID.to_owned(), format!("crio-{ID}"), format!("docker-{ID}")] {
                let path = format!("kubepods/{qos}pod{UID}/{container}");
                assert_eq!(uid(&path).as_deref(), Some(UID), "{path}");
            }
            let pod_level = format!("kubepods/{qos}pod{UID}");
            assert_eq!(uid(&pod_level).as_deref(), Some(UID), "{pod_level}");
        }
    }

    #[test]
    fn systemd_driver_every_qos_class_and_runtime() {
        let runtimes = [
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("crio-conmon-{ID}.scope"),
            format!("docker-{ID}.scope"),
        ];
        let pods = [
            format!("kubepods.slice/kubepods-pod{UNDERSCORED}.slice"),
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice"
            ),
            format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UNDERSCORED}.slice"
            ),
        ];
        for pod in &pods {
            assert_eq!(uid(pod).as_deref(), Some(UID), "{pod}");
            for runtime in &runtimes {
                let path = format!("{pod}/{runtime}");
                assert_eq!(uid(&path).as_deref(), Some(UID), "{path}");
            }
        }
    }

    #[test]
    fn nested_kubepods_trees_and_absolute_paths() {
        let kind = format!(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UNDERSCORED}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(uid(&kind).as_deref(), Some(UID));
        let absolute = format!("/sys/fs/cgroup/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(uid(&absolute).as_deref(), Some(UID));
    }

    #[test]
    fn static_pods_use_their_config_hash() {
        let hash = "6a5a1b2c3d4e5f60718293a4b5c6d7e8";
        assert_eq!(
            uid(&format!("kubepods/burstable/pod{hash}/{ID}")).as_deref(),
            Some(hash)
        );
        assert_eq!(
            uid(&format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice"
            ))
            .as_deref(),
            Some(hash)
        );
    }

    #[test]
    fn not_a_pod() {
        for path in [
            "",
            "kubepods",
            "kubepods/burstable",
            "kubepods.slice/kubepods-besteffort.slice",
            "system.slice/containerd.service",
            "user.slice/user-1000.slice",
            // A `pod...` directory outside the kubepods tree is someone else's naming.
            "shop/pod0f3c2a9e-5b1d-4c8e-9a7f-2d6b1e4f8c03",
            "kubepods/burstable/podnot-a-uid",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice",
        ] {
            assert_eq!(uid(path), None, "{path}");
        }
    }

    #[test]
    fn upper_case_is_normalised() {
        let upper = UID.to_ascii_uppercase();
        assert_eq!(uid(&format!("kubepods/pod{upper}")).as_deref(), Some(UID));
    }
}
