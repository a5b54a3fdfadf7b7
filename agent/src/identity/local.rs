//! Pod identity without Kubernetes: which pod a cgroup directory belongs to.
//!
//! Two sources, in this order:
//! 1. an identity file (TOML) naming each pod's cgroup (`--identity file`):
//!    ```toml
//!    [[pods]]
//!    namespace = "shop"
//!    name = "web-1"
//!    cgroup = "shop/web-1"        # relative to the attach root, or absolute
//!    ```
//!    An `ips = [...]` key, from when pods were also identified by address, is accepted and
//!    ignored.
//! 2. the cgroup directory names (`--identity cgroup-dirs`): `<root>/<namespace>/<pod>/...` is
//!    pod `<pod>` in `<namespace>`; `<root>/<pod>` (one level) is pod `<pod>` in namespace
//!    `default`.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, de::IgnoredAny};

use super::PodId;
use crate::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    #[serde(default)]
    pods: Vec<PodEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodEntry {
    #[serde(default = "default_namespace")]
    namespace: String,
    name: String,
    cgroup: Option<PathBuf>,
    /// No longer used (pods are identified by cgroup); kept so existing files still load.
    ips: Option<IgnoredAny>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// Resolves cgroup paths (relative to the attach root) to pods.
#[derive(Debug, Default)]
pub(crate) struct LocalIdentity {
    /// Longest prefix wins: (cgroup path relative to the root, pod).
    cgroups: Vec<(PathBuf, PodId)>,
}

impl LocalIdentity {
    /// Reads an identity file; `root` makes absolute cgroup paths relative.
    pub(crate) fn from_file(path: &Path, root: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::IdentityFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, root).map_err(|reason| Error::IdentityFile {
            path: path.to_owned(),
            reason,
        })
    }

    pub(crate) fn parse(text: &str, root: &Path) -> Result<Self, String> {
        let file: IdentityFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.pods.iter().any(|entry| entry.ips.is_some()) {
            tracing::warn!("ips is no longer used; pods are identified by cgroup");
        }
        let mut identity = Self::default();
        for entry in file.pods {
            let pod = PodId::new(entry.namespace, entry.name);
            if let Some(cgroup) = entry.cgroup {
                let rel = match cgroup.strip_prefix(root) {
                    Ok(rel) => rel.to_owned(),
                    Err(_) if cgroup.is_absolute() => {
                        return Err(format!(
                            "cgroup {} of pod {pod} is not below {}",
                            cgroup.display(),
                            root.display()
                        ));
                    }
                    Err(_) => cgroup,
                };
                identity.cgroups.push((rel, pod));
            }
        }
        identity
            .cgroups
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        Ok(identity)
    }

    /// The pod a cgroup (path relative to the root) belongs to.
    pub(crate) fn pod_of_cgroup(&self, rel: &Path) -> Option<PodId> {
        if let Some((_, pod)) = self
            .cgroups
            .iter()
            .find(|(prefix, _)| rel.starts_with(prefix))
        {
            return Some(pod.clone());
        }
        let mut names = rel.components().filter_map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        });
        match (names.next(), names.next()) {
            (Some(ns), Some(pod)) => Some(PodId::new(ns, pod)),
            (Some(pod), None) => Some(PodId::new("default", pod)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_with_addresses_still_load() {
        // Addresses no longer identify pods: a file that gives one to two pods loads, and the
        // pods are found by their cgroups.
        let text = "[[pods]]\nname='a'\ncgroup='a'\nips=['198.18.0.1']\n[[pods]]\nname='b'\ncgroup='b'\nips=['198.18.0.1']";
        let id = LocalIdentity::parse(text, Path::new("/sys/fs/cgroup")).expect("loads");
        assert_eq!(
            id.pod_of_cgroup(Path::new("b/c")),
            Some(PodId::new("default", "b"))
        );
    }

    #[test]
    fn directory_names_are_namespace_then_pod() {
        let id = LocalIdentity::default();
        assert_eq!(
            id.pod_of_cgroup(Path::new("shop/web-1/nginx")),
            Some(PodId::new("shop", "web-1"))
        );
        assert_eq!(
            id.pod_of_cgroup(Path::new("web-1")),
            Some(PodId::new("default", "web-1"))
        );
        assert_eq!(id.pod_of_cgroup(Path::new("")), None);
    }

    #[test]
    fn file_entries_win_and_longest_prefix_first() {
        let text = r#"
            [[pods]]
            namespace = "shop"
            name = "outer"
            cgroup = "a"
            [[pods]]
            name = "inner"
            cgroup = "/sys/fs/cgroup/a/b"
            ips = ["198.18.0.9"]
        "#;
        let id = LocalIdentity::parse(text, Path::new("/sys/fs/cgroup")).expect("valid file");
        assert_eq!(
            id.pod_of_cgroup(Path::new("a/b/c")),
            Some(PodId::new("default", "inner"))
        );
        assert_eq!(
            id.pod_of_cgroup(Path::new("a/x")),
            Some(PodId::new("shop", "outer"))
        );
    }

    #[test]
    fn bad_files_say_why() {
        let root = Path::new("/sys/fs/cgroup");
        assert!(LocalIdentity::parse("[[pods]]\nname = 3", root).is_err());
        let outside = "[[pods]]\nname='a'\ncgroup='/elsewhere/a'";
        assert!(
            LocalIdentity::parse(outside, root)
                .expect_err("outside")
                .contains("not below")
        );
    }
}
