//! Privileged integration-test harness for podmeter.
//!
//! Tests build "pods" on one machine (a network namespace with a veth on a shared bridge, plus a
//! cgroup v2 directory laid out as `<parent>/<namespace>/<pod>`), run real servers and clients in
//! them (nginx, hey, curl) and start the podmeter agent as a real process on the parent cgroup.
//! Every resource is owned by a guard whose `Drop` removes it, also when a test panics; children
//! get SIGTERM if the test process itself is killed, and the next cluster removes what a killed
//! run left behind.
//!
//! For end-to-end tests against Kubernetes itself, [`control_plane::ControlPlane`] runs a real
//! apiserver, controllers and scheduler, and [`node::RealNode`] a real kubelet on containerd.
//!
//! Environment:
//! - `PODMETER_BIN`: agent binary (default `debug/podmeter` in [`target_dir`]).
//! - `PODMETER_TESTS_CGROUP2`: cgroup2 mount (default `/sys/fs/cgroup/unified`).
//! - `PODMETER_TESTS_IGNORE_FIREWALL=1`: start even if the root firewall drops by policy.
//!
//! ```no_run
//! use podmeter_tests::{serial, AgentProcess, Cluster, Hey, Nginx};
//!
//! let _serial = serial();
//! let cluster = Cluster::new().expect("cluster");
//! let pod_a = cluster.pod("default", "pod-a").expect("pod a");
//! let pod_b = cluster.pod("default", "pod-b").expect("pod b");
//! let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
//! let agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");
//! let report = Hey::new(nginx.url("/")).requests(1000).concurrency(4).run_from(&pod_a).expect("hey");
//! assert_eq!(report.status(200), 1000);
//! let counts = agent.wait_stable_counts("default", "pod-b").expect("counts");
//! assert_eq!(counts.inbound, 1000);
//! ```

pub mod agent;
pub mod autoscale;
pub mod cgroup;
pub mod clients;
pub mod control_plane;
pub mod hostnet;
pub mod ingress;
pub mod kubelet;
pub mod lock;
pub mod loss;
pub mod metrics_api;
mod names;
pub mod netns;
pub mod nginx;
pub mod node;
pub mod paced;
pub mod process;
pub mod prometheus;
pub mod raw_http;
pub mod scripted;
mod stale;
pub mod tempdir;
pub mod wait;

pub use agent::{AgentProcess, PodCounts};
pub use clients::{ClientReport, Curl, Hey};
pub use lock::serial;
pub use netns::{Cluster, Pod};
pub use nginx::Nginx;
pub use process::{ChildGuard, run, run_ok, run_with_input};
pub use tempdir::TempDir;

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("target")
        },
        std::path::PathBuf::from,
    )
}
