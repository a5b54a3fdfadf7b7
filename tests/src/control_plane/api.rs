//! Talking to the apiserver: identities ([`Credentials`] and their kubeconfigs), raw HTTPS
//! requests with curl ([`ApiResponse`]), `kubectl`, and the [`ControlPlane`] methods built on them.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{CALL_TIMEOUT, CertPair, ControlPlane};
use crate::process::{CommandOutput, run, run_with_input};

#[derive(Debug, Clone)]
pub(super) enum Auth {
    Cert(CertPair),
    Token(String),
}

/// How to talk to the apiserver as one identity: a kubeconfig for `kubectl`, and the same
/// credentials for raw requests ([`ControlPlane::request_as`]).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub(super) user: String,
    pub(super) kubeconfig: PathBuf,
    pub(super) auth: Auth,
}

impl Credentials {
    /// The user name the apiserver sees (e.g. `system:serviceaccount:default:reader`).
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The client certificate, for credentials made by [`ControlPlane::user_credentials`].
    pub fn client_cert(&self) -> Option<&CertPair> {
        match &self.auth {
            Auth::Cert(pair) => Some(pair),
            Auth::Token(_) => None,
        }
    }

    /// The bearer token, for credentials made by [`ControlPlane::service_account_credentials`].
    pub fn token(&self) -> Option<&str> {
        match &self.auth {
            Auth::Token(token) => Some(token),
            Auth::Cert(_) => None,
        }
    }
}

/// An HTTP answer of the apiserver.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

impl ApiResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {}", self.status, self.body))
    }
}

impl ControlPlane {
    /// Credentials of a user authenticated by a client certificate (CN `user`, O `groups`).
    pub fn user_credentials(&self, user: &str, groups: &[&str]) -> Result<Credentials> {
        let file_stem = format!("user-{}", sanitize(user));
        let pair = self
            .pki
            .client_cert(self.dir.path(), &file_stem, user, groups)?;
        self.credentials(user.into(), &file_stem, Auth::Cert(pair))
    }

    /// Credentials of ServiceAccount `namespace/name` (created when missing) with a bound token
    /// from the TokenRequest API, valid for `validity` (at least 10 minutes).
    pub fn service_account_credentials(
        &self,
        namespace: &str,
        name: &str,
        validity: Duration,
    ) -> Result<Credentials> {
        let token = self.service_account_token(namespace, name, &[], validity)?;
        let file_stem = format!("sa-{}-{}", sanitize(namespace), sanitize(name));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        self.credentials(user, &file_stem, Auth::Token(token))
    }

    /// `user`'s credentials with a kubeconfig for this server written as `<file_stem>.kubeconfig`.
    fn credentials(&self, user: String, file_stem: &str, auth: Auth) -> Result<Credentials> {
        let kubeconfig = write_kubeconfig(
            self.dir.path(),
            file_stem,
            &self.server,
            &self.pki.ca.cert,
            &auth,
        )?;
        Ok(Credentials {
            user,
            kubeconfig,
            auth,
        })
    }

    /// A bound token of ServiceAccount `namespace/name` (created when missing) from the
    /// TokenRequest API for `audiences` (none: the apiserver's own), valid for `validity` (at
    /// least 10 minutes).
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        validity: Duration,
    ) -> Result<String> {
        let accounts = format!("/api/v1/namespaces/{namespace}/serviceaccounts");
        let account = serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        });
        let created = self.request("POST", &accounts, Some(&account))?;
        if !created.is_success() && created.status != 409 {
            bail!(
                "creating ServiceAccount {namespace}/{name}: HTTP {} {}",
                created.status,
                created.body
            );
        }
        let mut spec = serde_json::json!({"expirationSeconds": validity.as_secs().max(600)});
        if !audiences.is_empty() {
            spec["audiences"] = serde_json::json!(audiences);
        }
        let token_request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec,
        });
        let answer = self.post_json(&format!("{accounts}/{name}/token"), &token_request)?;
        Ok(answer["status"]["token"]
            .as_str()
            .with_context(|| format!("TokenRequest answer without a token: {answer}"))?
            .to_owned())
    }

    /// Runs the `kubectl` on `PATH` as admin; check the result with [`CommandOutput::check`].
    pub fn kubectl(&self, args: &[&str]) -> Result<CommandOutput> {
        self.kubectl_as(&self.admin, args)
    }

    /// Runs the `kubectl` on `PATH` as admin, allowed `timeout` instead of the usual call limit:
    /// for commands that wait on the kubelet, such as `delete --wait`.
    pub fn kubectl_within(&self, args: &[&str], timeout: Duration) -> Result<CommandOutput> {
        run(self.kubectl_command(&self.admin, args), timeout)
    }

    /// Runs `kubectl` with `credentials`, e.g. `["get", "--raw", "/apis/custom.metrics.k8s.io"]`.
    pub fn kubectl_as(&self, credentials: &Credentials, args: &[&str]) -> Result<CommandOutput> {
        run(self.kubectl_command(credentials, args), CALL_TIMEOUT)
    }

    fn kubectl_command(&self, credentials: &Credentials, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        // Our own discovery cache: ports are reused across runs, by different servers.
        command
            .arg(format!("--kubeconfig={}", credentials.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("kubectl-cache").display()
            ))
            .args(args)
            .env_remove("KUBECONFIG");
        command
    }

    /// `kubectl apply -f -` of `yaml` as admin; fails with kubectl's output unless it succeeds.
    pub fn apply(&self, yaml: &str) -> Result<CommandOutput> {
        let command = self.kubectl_command(&self.admin, &["apply", "-f", "-"]);
        run_with_input(command, yaml.as_bytes(), CALL_TIMEOUT)?
            .check(&format!("kubectl apply of:\n{yaml}\n"))
    }

    /// A raw API request as admin: `method` on `path` (e.g. `/api/v1/namespaces`), with a JSON
    /// body for POST/PUT (`application/json`) and PATCH (`application/merge-patch+json`).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<ApiResponse> {
        self.request_as(&self.admin, method, path, body)
    }

    /// Like [`ControlPlane::request`] with `credentials`.
    pub fn request_as(
        &self,
        credentials: &Credentials,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse> {
        curl(
            &self.server,
            &self.pki.ca.cert,
            &credentials.auth,
            method,
            path,
            body,
        )
    }

    /// GET `path` as admin and parse the JSON answer; fails unless the status is 2xx.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        expect_success("GET", path, self.request("GET", path, None)?)
    }

    /// POST `body` to `path` as admin; fails unless the status is 2xx.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        expect_success("POST", path, self.request("POST", path, Some(body))?)
    }

    /// JSON merge patch (RFC 7386) of `path` as admin; fails unless the status is 2xx.
    pub fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value> {
        expect_success("PATCH", path, self.request("PATCH", path, Some(patch))?)
    }

    /// Marks a pod Running and Ready with `pod_ip` through its `status` subresource, as a kubelet
    /// would (none runs here); the HPA counts only such pods. Returns the updated pod.
    pub fn mark_pod_running(&self, namespace: &str, pod: &str, pod_ip: &str) -> Result<Value> {
        let now = rfc3339_now();
        let patch = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
        }});
        self.merge_patch(
            &format!("/api/v1/namespaces/{namespace}/pods/{pod}/status"),
            &patch,
        )
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn expect_success(method: &str, path: &str, response: ApiResponse) -> Result<Value> {
    if !response.is_success() {
        bail!(
            "{method} {path}: HTTP {} {}",
            response.status,
            response.body
        );
    }
    response.json()
}

/// One HTTPS request to the apiserver with curl (the harness's HTTP client has no TLS).
pub(super) fn curl(
    server: &str,
    ca: &Path,
    auth: &Auth,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<ApiResponse> {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "20", "-X", method])
        .arg("--cacert")
        .arg(ca)
        .args(["-H", "Accept: application/json"])
        .args(["-o", "-", "-w", "\n%{http_code}"]);
    match auth {
        Auth::Cert(pair) => {
            command
                .arg("--cert")
                .arg(&pair.cert)
                .arg("--key")
                .arg(&pair.key);
        }
        Auth::Token(token) => {
            command
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"));
        }
    }
    let input = match body {
        Some(body) => {
            let content_type = if method.eq_ignore_ascii_case("PATCH") {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            command
                .args(["-H", &format!("Content-Type: {content_type}")])
                .args(["--data-binary", "@-"]);
            serde_json::to_vec(body)?
        }
        None => Vec::new(),
    };
    command.arg(format!("{server}{path}"));
    let output = run_with_input(command, &input, CALL_TIMEOUT)?
        .check(&format!("curl -X {method} {server}{path}"))?;
    let (body, status) = output
        .stdout
        .rsplit_once('\n')
        .with_context(|| format!("curl printed no status: {:?}", output.stdout))?;
    Ok(ApiResponse {
        status: status
            .trim()
            .parse()
            .with_context(|| format!("curl status {status:?}"))?,
        body: body.to_owned(),
    })
}

/// Writes `<dir>/<name>.kubeconfig` for `server`, trusting `ca`, authenticating with `auth`.
pub(super) fn write_kubeconfig(
    dir: &Path,
    name: &str,
    server: &str,
    ca: &Path,
    auth: &Auth,
) -> Result<PathBuf> {
    let mut user = String::new();
    match auth {
        Auth::Cert(pair) => {
            writeln!(user, "    client-certificate: {}", pair.cert.display())?;
            writeln!(user, "    client-key: {}", pair.key.display())?;
        }
        Auth::Token(token) => writeln!(user, "    token: {token}")?,
    }
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: podmeter-test\n  cluster:\n    \
         server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n\
         {user}contexts:\n- name: {name}\n  context:\n    cluster: podmeter-test\n    user: {name}\n\
         current-context: {name}\n",
        ca = ca.display(),
    );
    let path = dir.join(format!("{name}.kubeconfig"));
    fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
