//! Whether the agent's exit is an uninstall. With `--bpffs-dir` the programs and counters stay
//! pinned and attached when the agent exits, so that the next agent takes them over
//! (`kernel::pins`). When the agent's DaemonSet is deleted (`kubectl delete -k deploy/base`) no
//! next agent comes: then the agent removes what it pinned, as `podmeter agent-uninstall` would.
//!
//! The agent knows its Pod (`--pod-name`, `--pod-namespace`: the downward API's `POD_NAME` and
//! `POD_NAMESPACE`); the Pod's controller owner reference names the DaemonSet. At exit one read
//! of that DaemonSet, and one of its namespace at the same time, decide ([`decide`]):
//! - it is gone (404) or being deleted (deletionTimestamp set): uninstall;
//! - the API refuses the agent's credentials (401: its ServiceAccount is deleted) or the read
//!   (403: its RoleBinding is deleted), after the same read was allowed earlier in this agent's
//!   life: uninstall. `kubectl delete -k` deletes the ServiceAccount and the RBAC in the same call
//!   as the DaemonSet, before the kubelet stops the pods, so this is what the agent usually sees.
//!   A refusal the agent saw from the start is missing RBAC, not an uninstall;
//! - its namespace is being deleted: uninstall. `kubectl delete namespace` deletes the DaemonSet
//!   too, but in no set order with the pods;
//! - the DaemonSet is there (a pod restart, a deleted pod, a rolling update), or anything else
//!   (no answer, a timeout, another status): keep the pins. A lost takeover costs counts; pins
//!   left behind cost nothing until `podmeter agent-uninstall` removes them.
//!
//! The owner is found and read once in the background at start, so that the exit needs one round
//! trip (bounded by the caller), and so that missing RBAC shows in the log at start rather than at
//! exit.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, Pod},
};
use kube::{Api, Client, ResourceExt as _};
use tracing::{debug, info, warn};

/// The agent's own Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodRef {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The DaemonSet that owns the agent's Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DaemonSetRef {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl fmt::Display for DaemonSetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What to do with the pins at exit; the text says why, for the one line the agent logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No agent comes next: detach and unpin.
    Uninstall(String),
    /// Leave them for the next agent.
    Keep(String),
}

/// The owner as far as the agent knows it.
#[derive(Clone, Debug)]
struct Owner {
    daemonset: DaemonSetRef,
    /// Whether reading it succeeded once with the agent's credentials: only then does a later
    /// 401 or 403 mean that they were revoked.
    readable: bool,
}

/// The uninstall check of one agent: started with the agent, asked once at exit.
pub(crate) struct UninstallCheck {
    client: Client,
    pod: PodRef,
    owner: Arc<Mutex<Option<Owner>>>,
    arming: tokio::task::JoinHandle<()>,
}

impl Drop for UninstallCheck {
    fn drop(&mut self) {
        self.arming.abort();
    }
}

impl UninstallCheck {
    /// Starts finding the owner of `pod` in the background. Must run inside a tokio runtime.
    pub(crate) fn start(client: Client, pod: PodRef) -> Self {
        let owner = Arc::new(Mutex::new(None));
        let arming = tokio::spawn(arm(client.clone(), pod.clone(), owner.clone()));
        Self {
            client,
            pod,
            owner,
            arming,
        }
    }

    /// Whether this exit is an uninstall, asked of the API within `within` (the whole check: the
    /// agent must exit well within its pod's termination grace period). No answer keeps the pins.
    pub(crate) async fn verdict(&self, within: Duration) -> Verdict {
        match tokio::time::timeout(within, self.ask()).await {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Keep(format!(
                "no answer from the Kubernetes API within {} s about the agent's DaemonSet",
                within.as_secs_f64()
            )),
        }
    }

    async fn ask(&self) -> Verdict {
        let known = self.owner.lock().ok().and_then(|owner| owner.clone());
        let owner = match known {
            Some(owner) => owner,
            // Not found at start yet (the API was unreachable, or the agent is stopped right
            // after it started): find it now; its credentials are unproven for 401 and 403.
            None => match owner_of(&self.client, &self.pod).await {
                Ok(daemonset) => Owner {
                    daemonset,
                    readable: false,
                },
                Err(error) => return Verdict::Keep(error.to_string()),
            },
        };
        let daemonset = &owner.daemonset;
        // Its namespace at the same time: deleting the namespace deletes the DaemonSet, but maybe
        // after the pods.
        let (daemonset_api, namespace_api) = (
            daemonsets(&self.client, daemonset),
            Api::<Namespace>::all(self.client.clone()),
        );
        let (read, namespace) = tokio::join!(
            daemonset_api.get(&daemonset.name),
            namespace_api.get(&daemonset.namespace),
        );
        decide(daemonset, &read, owner.readable, &namespace)
    }
}

/// The rule: what one read of `daemonset` and one of its namespace say about the agent's exit.
/// `readable` is whether an earlier read of the DaemonSet with the same credentials succeeded.
pub(crate) fn decide(
    daemonset: &DaemonSetRef,
    read: &Result<DaemonSet, kube::Error>,
    readable: bool,
    namespace: &Result<Namespace, kube::Error>,
) -> Verdict {
    match decide_daemonset(daemonset, read, readable) {
        Verdict::Keep(_)
            if namespace
                .as_ref()
                .is_ok_and(|ns| ns.metadata.deletion_timestamp.is_some()) =>
        {
            Verdict::Uninstall(format!(
                "namespace {} is being deleted, and DaemonSet {daemonset} with it",
                daemonset.namespace
            ))
        }
        // Any other answer about the namespace (refused: the agent may not read it) says
        // nothing.
        verdict => verdict,
    }
}

fn decide_daemonset(
    daemonset: &DaemonSetRef,
    read: &Result<DaemonSet, kube::Error>,
    readable: bool,
) -> Verdict {
    let status = match read {
        Ok(found) if found.metadata.deletion_timestamp.is_some() => {
            return Verdict::Uninstall(format!(
                "DaemonSet {daemonset} is being deleted (deletionTimestamp set)"
            ));
        }
        Ok(_) => return Verdict::Keep(format!("DaemonSet {daemonset} is still there")),
        Err(kube::Error::Api(status)) => status,
        Err(error) => {
            return Verdict::Keep(format!(
                "could not tell whether DaemonSet {daemonset} is gone: {error}"
            ));
        }
    };
    // The apiserver's own Status, not an answer of something in between (a proxy's plain 404
    // has no reason, and no details naming the object).
    let names_it = status
        .details
        .as_ref()
        .is_some_and(|details| details.name == daemonset.name);
    match (status.code, status.reason.as_str()) {
        (404, "NotFound") if names_it => {
            Verdict::Uninstall(format!("DaemonSet {daemonset} is gone (404 Not Found)"))
        }
        (401, "Unauthorized") if readable => Verdict::Uninstall(format!(
            "DaemonSet {daemonset} is gone (401 Unauthorized: the agent's ServiceAccount was \
             deleted with it)"
        )),
        (403, "Forbidden") if readable => Verdict::Uninstall(format!(
            "DaemonSet {daemonset} is gone (403 Forbidden: the agent's permission to read it was \
             deleted with it)"
        )),
        (code @ (401 | 403), _) => Verdict::Keep(format!(
            "reading DaemonSet {daemonset} is refused ({code}) and never was allowed: grant the \
             agent `get` on it (deploy/base/agent-rbac.yaml)"
        )),
        (code, _) => Verdict::Keep(format!(
            "could not tell whether DaemonSet {daemonset} is gone: HTTP {code} {}",
            status.message
        )),
    }
}

fn daemonsets(client: &Client, daemonset: &DaemonSetRef) -> Api<DaemonSet> {
    Api::namespaced(client.clone(), &daemonset.namespace)
}

/// Why the owner of the agent's Pod is not known.
#[derive(Debug, thiserror::Error)]
enum OwnerError {
    /// Asking again cannot help.
    #[error("{0}")]
    Final(String),
    /// The API did not answer, or not yet.
    #[error("{0}")]
    Retry(String),
}

/// The DaemonSet that controls `pod`, from its owner references.
async fn owner_of(client: &Client, pod: &PodRef) -> Result<DaemonSetRef, OwnerError> {
    let found = Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .get(&pod.name)
        .await
        .map_err(|error| match &error {
            kube::Error::Api(status) if matches!(status.code, 401 | 403 | 404) => {
                OwnerError::Final(format!(
                    "cannot read the agent's Pod {pod} (check POD_NAME, POD_NAMESPACE and the \
                     agent's RBAC): {}",
                    status.message
                ))
            }
            _ => OwnerError::Retry(format!("reading the agent's Pod {pod}: {error}")),
        })?;
    daemonset_owner(&found)
        .ok_or_else(|| OwnerError::Final(format!("the agent's Pod {pod} is no DaemonSet's pod")))
}

/// The DaemonSet among a pod's owner references that controls it.
pub(crate) fn daemonset_owner(pod: &Pod) -> Option<DaemonSetRef> {
    let owner = pod.owner_references().iter().find(|owner| {
        owner.controller == Some(true)
            && owner.kind == "DaemonSet"
            && owner.api_version.starts_with("apps/")
    })?;
    Some(DaemonSetRef {
        namespace: pod.namespace()?,
        name: owner.name.clone(),
    })
}

/// How long the start waits before asking again when the API did not answer.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Finds the owner of `pod` and reads it once, asking again while the API does not answer.
async fn arm(client: Client, pod: PodRef, slot: Arc<Mutex<Option<Owner>>>) {
    let mut delay = RETRY_FIRST;
    loop {
        let outcome = match owner_of(&client, &pod).await {
            Ok(daemonset) => {
                let read = daemonsets(&client, &daemonset).get(&daemonset.name).await;
                match read {
                    Ok(_) => Ok(Owner {
                        daemonset,
                        readable: true,
                    }),
                    Err(kube::Error::Api(status)) if matches!(status.code, 401 | 403 | 404) => {
                        if status.code == 404 {
                            warn!(
                                daemonset = %daemonset,
                                "the agent's DaemonSet is not found: the pins are removed at exit \
                                 if it is still gone then"
                            );
                        } else {
                            warn!(
                                daemonset = %daemonset,
                                "the agent may not read its DaemonSet ({}): its pins will be kept \
                                 at every exit, also when the DaemonSet is deleted; grant it `get` \
                                 on the DaemonSet (deploy/base/agent-rbac.yaml)",
                                status.code
                            );
                        }
                        // Known, but never read: only a 404 at exit can say it is gone.
                        Ok(Owner {
                            daemonset,
                            readable: false,
                        })
                    }
                    Err(error) => Err(OwnerError::Retry(format!(
                        "reading DaemonSet {daemonset}: {error}"
                    ))),
                }
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(owner) => {
                if owner.readable {
                    info!(
                        daemonset = %owner.daemonset,
                        "uninstall check ready: the pins are removed at exit once DaemonSet {} \
                         is gone",
                        owner.daemonset
                    );
                }
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(owner);
                }
                return;
            }
            Err(OwnerError::Final(why)) => {
                warn!("no uninstall check: {why}; the pins are kept at every exit");
                return;
            }
            Err(OwnerError::Retry(why)) => {
                debug!(retry_in = ?delay, "the uninstall check's owner is not known yet: {why}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests;
