//! Which pod a cgroup belongs to. Two sources: the Kubernetes API (this node's
//! pods, watched; [`kubernetes`]) or, without a cluster, an identity file and cgroup directory
//! names ([`local`]). [`cgroup_path`] reads the pod UID out of the kubelet's cgroup names.

pub(crate) mod cgroup_path;
pub(crate) mod cgroups;
pub(crate) mod kubernetes;
pub(crate) mod local;

use std::{
    cmp::Ordering,
    fmt,
    hash::{Hash, Hasher},
    path::Path,
};

pub(crate) use kubernetes::KubernetesIdentity;
pub(crate) use local::LocalIdentity;

/// A pod: its name, and with the Kubernetes source its UID and owning workload.
///
/// Two `PodId`s are the same pod when namespace, name and UID agree: a pod deleted and created
/// again under the same name (a StatefulSet's `web-0`) is a new pod and starts from zero. The
/// workload is descriptive and takes no part in equality.
#[derive(Clone, Debug)]
pub struct PodId {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: Option<String>,
    pub(crate) workload: Option<Workload>,
}

impl PodId {
    /// A pod known by name only (the identity file, cgroup directory names, tests).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            workload: None,
        }
    }

    fn key(&self) -> (&str, &str, Option<&str>) {
        (&self.namespace, &self.name, self.uid.as_deref())
    }
}

impl PartialEq for PodId {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for PodId {}

impl Hash for PodId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for PodId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PodId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The controller a pod belongs to: `Deployment` (through its ReplicaSet), `StatefulSet`,
/// `DaemonSet`, `Job`, or whatever other kind owns it; the agent API's type, as it serves it.
pub(crate) use podmeter_wire::Workload;

/// Which source names pods (`--identity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityKind {
    /// This node's pods from the Kubernetes API, matched by the pod UID in cgroup names.
    Kubernetes,
    /// The `--identity-file` entries first, then cgroup directory names.
    File,
    /// cgroup directory names: `<namespace>/<pod>/...`.
    CgroupDirs,
}

impl IdentityKind {
    /// The source when `--identity` is not given: an identity file if one is named, Kubernetes
    /// inside a cluster (`KUBERNETES_SERVICE_HOST` is set in every pod), else directory names.
    pub fn choose(flag: Option<Self>, identity_file: bool, in_cluster: bool) -> Self {
        match flag {
            Some(kind) => kind,
            None if identity_file => Self::File,
            None if in_cluster => Self::Kubernetes,
            None => Self::CgroupDirs,
        }
    }

    /// Whether this process runs in a Kubernetes pod.
    pub fn in_cluster() -> bool {
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kubernetes => "kubernetes",
            Self::File => "file",
            Self::CgroupDirs => "cgroup-dirs",
        })
    }
}

/// The source the agent resolves pods with.
pub(crate) enum Identity {
    Local(LocalIdentity),
    Kubernetes(KubernetesIdentity),
}

impl Identity {
    /// The pod a cgroup (path relative to the attach root) belongs to.
    pub(crate) fn pod_of_cgroup(&self, rel: &Path) -> Option<PodId> {
        match self {
            Self::Local(local) => local.pod_of_cgroup(rel),
            Self::Kubernetes(k8s) => k8s.pod_of_cgroup(rel),
        }
    }

    /// Whether a cgroup is the node's own (the kubelet's, a node agent's) rather than a pod's,
    /// by its path alone: with Kubernetes, any path with no `kubepods` component (a pod whose
    /// UID is not in the store yet is still a pod); otherwise a path that names no pod.
    pub(crate) fn is_node_cgroup(&self, rel: &Path) -> bool {
        match self {
            Self::Local(local) => local.pod_of_cgroup(rel).is_none(),
            Self::Kubernetes(_) => outside_kubepods(rel),
        }
    }
}

/// Whether no component of the path is the kubelet's pods tree (`kubepods`, `kubepods.slice`,
/// `kubepods-burstable.slice`, ...).
fn outside_kubepods(rel: &Path) -> bool {
    !rel.components()
        .any(|c| c.as_os_str().to_string_lossy().contains("kubepods"))
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(local) => f.debug_tuple("Local").field(local).finish(),
            Self::Kubernetes(_) => f.write_str("Kubernetes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_kind_defaults() {
        use IdentityKind::*;
        assert_eq!(IdentityKind::choose(None, false, true), Kubernetes);
        assert_eq!(IdentityKind::choose(None, false, false), CgroupDirs);
        assert_eq!(IdentityKind::choose(None, true, true), File);
        assert_eq!(
            IdentityKind::choose(Some(CgroupDirs), false, true),
            CgroupDirs
        );
        assert_eq!(
            IdentityKind::choose(Some(Kubernetes), false, false),
            Kubernetes
        );
    }

    #[test]
    fn the_nodes_cgroups_are_told_by_their_path() {
        for node in [
            "",
            "system.slice/kubelet.service",
            "user.slice",
            "podmeter-probe",
        ] {
            assert!(outside_kubepods(Path::new(node)), "{node}");
        }
        for pod in [
            "kubepods",
            "kubepods/burstable/pod1234/abcd",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice",
            "kubelet.slice/kubelet-kubepods.slice",
        ] {
            assert!(!outside_kubepods(Path::new(pod)), "{pod}");
        }
        let dirs = Identity::Local(LocalIdentity::default());
        assert!(dirs.is_node_cgroup(Path::new("")), "the root is no pod");
        assert!(!dirs.is_node_cgroup(Path::new("shop/web-1")));
    }

    #[test]
    fn pods_are_equal_by_namespace_name_and_uid_only() {
        let mut a = PodId::new("shop", "web-0");
        a.uid = Some("1".into());
        let mut b = a.clone();
        b.workload = Some(Workload::new("StatefulSet", "web"));
        assert_eq!(a, b);
        let mut c = a.clone();
        c.uid = Some("2".into());
        assert_ne!(a, c, "same name, new pod");
        assert_eq!(PodId::new("shop", "web-0"), PodId::new("shop", "web-0"));
    }
}
