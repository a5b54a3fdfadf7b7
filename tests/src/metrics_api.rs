//! `podmeter metrics-api` as a real process on loopback, registered with a [`ControlPlane`] as
//! the aggregated API server of `custom.metrics.k8s.io` (v1beta1, v1beta2) and
//! `external.metrics.k8s.io` (v1beta1): its RBAC, Service and APIServices.

use std::{
    net::{TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    AgentProcess, ChildGuard, TempDir,
    control_plane::{ControlPlane, Credentials},
    tempdir,
};

/// Namespace and name of the metrics API's ServiceAccount and Service.
pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "podmeter-metrics-api";
/// The file name of the metrics API's token for the agents.
const AGENT_TOKEN_FILE: &str = "agent-token";
/// How long the process may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The DNS names and address the apiserver's proxy may dial or verify: it verifies the serving
/// certificate against `<service>.<namespace>.svc`, and connects to the ExternalName.
pub fn serving_sans() -> Vec<String> {
    vec![
        format!("{NAME}.{NAMESPACE}.svc"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]
}

/// RBAC for the metrics API's own identity (ServiceAccount `kube-system/podmeter-metrics-api`):
/// delegated authentication and authorisation, the request-header ConfigMap, read access to
/// pods (labels) and EndpointSlices (agent discovery), the node agents' API (`get
/// nodes/podmeter`), its certificate Secret and its APIServices' caBundle, as
/// `deploy/base/metrics-api-rbac.yaml` grants.
pub const RBAC: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'podmeter-metrics-api:system:auth-delegator'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:auth-delegator'}
subjects: [{kind: ServiceAccount, name: podmeter-metrics-api, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: 'podmeter-metrics-api:auth-reader', namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects: [{kind: ServiceAccount, name: podmeter-metrics-api, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: 'podmeter-metrics-api'}
rules:
- {apiGroups: [''], resources: [pods], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
- {apiGroups: [''], resources: [nodes/podmeter], verbs: [get]}
- apiGroups: [apiregistration.k8s.io]
  resources: [apiservices]
  resourceNames: [v1beta1.custom.metrics.k8s.io, v1beta2.custom.metrics.k8s.io, v1beta1.external.metrics.k8s.io]
  verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'podmeter-metrics-api'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'podmeter-metrics-api'}
subjects: [{kind: ServiceAccount, name: podmeter-metrics-api, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: 'podmeter-metrics-api-certs', namespace: kube-system}
rules:
- {apiGroups: [''], resources: [secrets], resourceNames: [podmeter-metrics-api-certs], verbs: [get]}
- {apiGroups: [''], resources: [secrets], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: 'podmeter-metrics-api-certs', namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: 'podmeter-metrics-api-certs'}
subjects: [{kind: ServiceAccount, name: podmeter-metrics-api, namespace: kube-system}]
";

/// The Secret in which the metrics API keeps the certificate it makes (in [`NAMESPACE`]).
pub const CERT_SECRET: &str = "podmeter-metrics-api-certs";

/// The audience of the tokens the node agent accepts (its `--token-audience` default).
pub const AGENT_AUDIENCE: &str = "podmeter-agent";

/// Name of the node agent's ServiceAccount (in [`NAMESPACE`]) when its API checks tokens.
pub const AGENT_NAME: &str = "podmeter-agent";

/// RBAC for the node agent's identity: checking its callers' tokens (TokenReview) and watching
/// its node's pods (`--identity kubernetes`), as `deploy/base/agent-rbac.yaml` grants.
pub const AGENT_RBAC: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'podmeter-agent:system:auth-delegator'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:auth-delegator'}
subjects: [{kind: ServiceAccount, name: podmeter-agent, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: 'podmeter-agent'}
rules:
- {apiGroups: [''], resources: [pods], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'podmeter-agent'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'podmeter-agent'}
subjects: [{kind: ServiceAccount, name: podmeter-agent, namespace: kube-system}]
";

/// The Service (ExternalName `localhost`, no kube-proxy needed) and the three APIServices, with
/// `ca_bundle_pem` (the CA that signed the serving certificate) as their `caBundle`, or none (the
/// metrics API sets it).
pub fn registration(port: u16, ca_bundle_pem: Option<&[u8]>) -> String {
    let ca = ca_bundle_pem.map_or_else(String::new, |ca| format!("\n  caBundle: {}", base64(ca)));
    let mut yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {NAME}, namespace: {NAMESPACE}}}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{{name: https, port: {port}, protocol: TCP}}]
"
    );
    for (group, version, priority) in [
        ("custom.metrics.k8s.io", "v1beta1", 100),
        ("custom.metrics.k8s.io", "v1beta2", 200),
        ("external.metrics.k8s.io", "v1beta1", 100),
    ] {
        yaml.push_str(&format!(
            "---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: {version}.{group}}}
spec:
  group: {group}
  version: {version}
  groupPriorityMinimum: 100
  versionPriority: {priority}{ca}
  service: {{name: {NAME}, namespace: {NAMESPACE}, port: {port}}}
"
        ));
    }
    yaml
}

/// Standard base64 with padding (the harness has no base64 crate).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Quantity as the metrics API writes values (`25500m`, `10`, `2k`), read with the agent's own
/// parser; NaN for anything else.
pub fn quantity(value: &str) -> f64 {
    podmeter_metrics_api::Quantity::parse(value).map_or(f64::NAN, |q| q.as_f64())
}

/// `kubectl get --raw path` as `who` for a `MetricValueList`: the served value per pod name.
pub fn pod_values(
    cp: &ControlPlane,
    who: &Credentials,
    path: &str,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let out = cp
        .kubectl_as(who, &["get", "--raw", path])?
        .check("kubectl get --raw")?;
    let list: Value = serde_json::from_str(&out.stdout)?;
    anyhow::ensure!(list["kind"] == "MetricValueList", "{list}");
    Ok(metric_values(&list))
}

/// The value per described object's name in a `MetricValueList`.
pub fn metric_values(list: &Value) -> std::collections::BTreeMap<String, f64> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            (
                item["describedObject"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                quantity(item["value"].as_str().unwrap_or_default()),
            )
        })
        .collect()
}

/// Whether APIService `name` reports `Available=True`, and its condition for messages.
pub fn apiservice_available(cp: &ControlPlane, name: &str) -> Result<(bool, Value)> {
    let service = cp.get_json(&format!(
        "/apis/apiregistration.k8s.io/v1/apiservices/{name}"
    ))?;
    let condition = service["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Available"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok((condition["status"] == "True", condition))
}

/// A running `podmeter metrics-api`; dropping it stops it.
#[derive(Debug)]
pub struct MetricsApiProcess {
    _process: ChildGuard,
    port: u16,
    /// Files it reads (e.g. its token for the agents), removed after it stops.
    files: Option<TempDir>,
}

impl MetricsApiProcess {
    /// Starts `podmeter metrics-api --listen 127.0.0.1:<free port> <args>` and returns once the
    /// port accepts connections.
    pub fn start(args: &[&str]) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("picking a free loopback port")?
            .port();
        let mut command = Command::new(AgentProcess::binary());
        command
            .arg("metrics-api")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            // Stopped by the test, with no endpoints or proxies to drain first.
            .args(["--shutdown-delay-secs", "0"])
            .args(args)
            .env("PODMETER_LOG", "info,podmeter=debug");
        let mut process = ChildGuard::spawn_forwarding(command, "metrics-api")?;
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = process.try_wait()? {
                bail!("metrics-api exited before listening: {status}; see its lines above");
            }
            if Instant::now() >= deadline {
                bail!("metrics-api did not listen on port {port} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            _process: process,
            port,
            files: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file with the bearer token it sends to the agents, when [`start_registered`] made it.
    pub fn agent_token_file(&self) -> Option<std::path::PathBuf> {
        self.files.as_ref().map(|f| f.path().join(AGENT_TOKEN_FILE))
    }
}

/// Installs the metrics API as `kubectl apply -k deploy/base` would, minus the Deployment: its
/// RBAC, its ServiceAccount identity and a token of it for the agents' audience (as the projected
/// volume gives it); starts it collecting as `agents` says (`["--agent", url]`, or
/// `["--agent-service", "ns/name", ...]`) with no certificate flags, so that it makes its own
/// certificate in Secret [`CERT_SECRET`]; and registers its APIServices (Service `ExternalName`
/// localhost) without a `caBundle`, which it sets.
pub fn start_registered(cp: &ControlPlane, agents: &[&str]) -> Result<MetricsApiProcess> {
    let server = start_self_managed(cp, agents)?;
    cp.apply(&registration(server.port(), None))
        .context("Service and APIServices")?;
    Ok(server)
}

/// [`start_registered`] without the registration: one more replica of an installed metrics API.
pub fn start_self_managed(cp: &ControlPlane, agents: &[&str]) -> Result<MetricsApiProcess> {
    cp.apply(RBAC).context("metrics-api RBAC")?;
    let identity = cp
        .service_account_credentials(NAMESPACE, NAME, Duration::from_secs(3600))
        .context("metrics-api ServiceAccount token")?;
    let agent_token = cp
        .service_account_token(
            NAMESPACE,
            NAME,
            &[AGENT_AUDIENCE],
            Duration::from_secs(3600),
        )
        .context("metrics-api token for the agents")?;
    let path = |p: &std::path::Path| p.to_str().map(str::to_owned).context("non UTF-8 path");
    let files = tempdir::new("metrics-api")?;
    let token = tempdir::write(&files, AGENT_TOKEN_FILE, agent_token.as_bytes())?;
    let (kubeconfig, token) = (path(identity.kubeconfig())?, path(&token)?);
    let mut args = vec![
        "--kubeconfig",
        &kubeconfig,
        "--namespace",
        NAMESPACE,
        "--agent-token-file",
        &token,
    ];
    args.extend_from_slice(agents);
    let mut server = MetricsApiProcess::start(&args).context("metrics-api starts")?;
    server.files = Some(files);
    Ok(server)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(input.as_bytes()), output);
        }
    }
}
