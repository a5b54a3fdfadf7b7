//! The server over real TLS on loopback, spoken to by real clients: tokio-rustls + hyper, and the
//! system `curl` (OpenSSL). What kube-apiserver's front proxy does (present the front-proxy
//! client certificate, name the user in `X-Remote-User`) gets the metrics; everything else gets
//! the apiserver's 401/403 Status.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode, header},
};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_rustls::TlsConnector;

use super::{
    auth::{FORBIDDEN, FakeAuthorizer, HPA_PATH, HPA_REPLY, HPA_USER, UNAUTHORIZED},
    fixture::fixture,
    pki::{Ca, Leaf},
};
use crate::{
    ApiOptions, RequestHeaderAuth, RequestHeaderConfig, ServingCertificate, protect, router, serve,
    server_config, tls::crypto_provider,
};

struct Server {
    port: u16,
    certificate: ServingCertificate,
    request_headers: RequestHeaderAuth,
    authorizer: Arc<FakeAuthorizer>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(serving: &Leaf, front_proxy_ca: &Ca) -> Self {
        let certificate =
            ServingCertificate::from_pem(serving.pem.as_bytes(), serving.key_pem.as_bytes())
                .expect("serving certificate");
        let request_headers = RequestHeaderAuth::new(
            RequestHeaderConfig::from_pem(
                front_proxy_ca.pem.as_bytes(),
                vec!["front-proxy-client".into()],
            )
            .expect("CA"),
        )
        .expect("config");
        let authorizer = FakeAuthorizer::allowing(&[HPA_USER]);
        let app = protect(
            router(fixture(), ApiOptions::default()),
            request_headers.authenticator(),
            Arc::clone(&authorizer),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let tls = server_config(&certificate).expect("TLS config");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, tls, app, async {
            let _ = stopped.await;
        }));
        Self {
            port,
            certificate,
            request_headers,
            authorizer,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("joined").expect("served until stopped");
        }
    }
}

/// A TLS client trusting `serving_ca`, presenting `client` if given.
fn client_config(serving_ca: &Ca, client: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(serving_ca.der.clone()).expect("root");
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der.clone()], leaf.key_der.clone_key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// GET `path` over a fresh TLS connection to `localhost`.
async fn get(
    port: u16,
    config: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::get(path).header(header::HOST, "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Body::empty()).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = to_bytes(Body::new(response.into_body()), usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

struct Pki {
    serving_ca: Ca,
    serving: Leaf,
    front_proxy_ca: Ca,
    proxy: Leaf,
    other_client: Leaf,
    rogue_proxy: Leaf,
    rogue_ca: Ca,
}

fn pki() -> Pki {
    let serving_ca = Ca::new("podmeter-serving-ca");
    let serving = serving_ca.server("podmeter-metrics-api.podmeter.svc");
    let front_proxy_ca = Ca::new("front-proxy-ca");
    let proxy = front_proxy_ca.client("front-proxy-client");
    let other_client = front_proxy_ca.client("other-client");
    let rogue_ca = Ca::new("front-proxy-ca");
    let rogue_proxy = rogue_ca.client("front-proxy-client");
    Pki {
        serving_ca,
        serving,
        front_proxy_ca,
        proxy,
        other_client,
        rogue_proxy,
        rogue_ca,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_front_proxy_speaks_for_users() {
    let pki = pki();
    let server = Server::start(&pki.serving, &pki.front_proxy_ca).await;
    let claims = [("X-Remote-User", HPA_USER)];
    let anonymous = client_config(&pki.serving_ca, None);
    let rogue = client_config(&pki.serving_ca, Some(&pki.rogue_proxy));
    let other = client_config(&pki.serving_ca, Some(&pki.other_client));
    let proxy = client_config(&pki.serving_ca, Some(&pki.proxy));
    let unauthorized = Ok((StatusCode::UNAUTHORIZED, UNAUTHORIZED.to_owned()));

    // No client certificate: X-Remote-User is a claim anyone can make.
    assert_eq!(
        get(server.port, anonymous.clone(), HPA_PATH, &claims).await,
        unauthorized
    );
    // A certificate from another CA with the right CN: the handshake completes, the headers are
    // still ignored.
    assert_eq!(
        get(server.port, rogue.clone(), HPA_PATH, &claims).await,
        unauthorized
    );
    // The right CA but a CN outside requestheader-allowed-names.
    assert_eq!(
        get(server.port, other.clone(), HPA_PATH, &claims).await,
        unauthorized
    );
    assert!(
        server.authorizer.asked().is_empty(),
        "no unauthenticated request reached the authoriser"
    );
    // The front proxy, for a user the SubjectAccessReview denies.
    assert_eq!(
        get(
            server.port,
            proxy.clone(),
            HPA_PATH,
            &[("X-Remote-User", "mallory")]
        )
        .await,
        Ok((StatusCode::FORBIDDEN, FORBIDDEN.to_owned()))
    );
    // The front proxy, for the HPA controller: the metrics.
    assert_eq!(
        get(server.port, proxy.clone(), HPA_PATH, &claims).await,
        Ok((StatusCode::OK, HPA_REPLY.to_owned()))
    );
    // Malformed and unknown requests get their Status over TLS too.
    let (status, body) = get(
        server.port,
        proxy.clone(),
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/http_requests_per_second?labelSelector=app%3D%3D%3D",
        &claims,
    )
    .await
    .expect("served");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("\"reason\":\"BadRequest\""), "{body}");
    let (status, body) = get(
        server.port,
        proxy.clone(),
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/nope",
        &claims,
    )
    .await
    .expect("served");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains("the server could not find the metric nope for pods"),
        "{body}"
    );
    // Kubelet probes carry no certificate.
    assert_eq!(
        get(server.port, anonymous.clone(), "/healthz", &[]).await,
        Ok((StatusCode::OK, "ok".to_owned()))
    );

    // Rotating the request-header CA (the ConfigMap changed) takes effect at once.
    server
        .request_headers
        .update(
            RequestHeaderConfig::from_pem(
                pki.rogue_ca.pem.as_bytes(),
                vec!["front-proxy-client".into()],
            )
            .expect("CA"),
        )
        .expect("valid");
    assert_eq!(
        get(server.port, rogue, HPA_PATH, &claims).await,
        Ok((StatusCode::OK, HPA_REPLY.to_owned()))
    );
    assert_eq!(
        get(server.port, proxy, HPA_PATH, &claims).await,
        unauthorized
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_can_be_replaced_while_serving() {
    let pki = pki();
    let server = Server::start(&pki.serving, &pki.front_proxy_ca).await;
    let (status, _) = get(
        server.port,
        client_config(&pki.serving_ca, None),
        "/healthz",
        &[],
    )
    .await
    .expect("old certificate trusted");
    assert_eq!(status, StatusCode::OK);

    let new_ca = Ca::new("podmeter-serving-ca-2");
    let renewed = new_ca.server("podmeter-metrics-api.podmeter.svc");
    server
        .certificate
        .replace_pem(renewed.pem.as_bytes(), renewed.key_pem.as_bytes())
        .expect("valid");
    let refused = get(
        server.port,
        client_config(&pki.serving_ca, None),
        "/healthz",
        &[],
    )
    .await;
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with("handshake")),
        "{refused:?}"
    );
    assert_eq!(
        get(server.port, client_config(&new_ca, None), "/healthz", &[]).await,
        Ok((StatusCode::OK, "ok".to_owned()))
    );
    // A key that does not match is refused and the current certificate stays.
    assert!(
        server
            .certificate
            .replace_pem(renewed.pem.as_bytes(), pki.serving.key_pem.as_bytes())
            .is_err()
    );
    assert!(
        get(server.port, client_config(&new_ca, None), "/healthz", &[])
            .await
            .is_ok()
    );
    server.stop().await;
}

/// Writes `contents` to `name` in `dir`, for curl.
fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

/// `curl` with `args`; the body and the status code it printed.
async fn curl(args: Vec<String>) -> (String, u16) {
    let shown = args.join(" ");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--write-out", "\n%{http_code}"])
            .args(&args)
            .output()
    })
    .await
    .expect("joined")
    .expect("the system curl must be installed for this test");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "curl {shown}: {stderr}");
    let (body, code) = stdout.rsplit_once('\n').expect("status code line");
    (body.to_owned(), code.parse().expect("numeric status"))
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_as_the_front_proxy_and_as_a_stranger() {
    let pki = pki();
    let server = Server::start(&pki.serving, &pki.front_proxy_ca).await;
    let dir = tempfile::Builder::new()
        .prefix("podmeter-metrics-api-")
        .tempdir()
        .expect("temp dir");
    let ca = path_arg(&write(&dir, "serving-ca.crt", &pki.serving_ca.pem));
    let cert = path_arg(&write(&dir, "front-proxy-client.crt", &pki.proxy.pem));
    let key = path_arg(&write(&dir, "front-proxy-client.key", &pki.proxy.key_pem));
    let url = format!("https://localhost:{}{HPA_PATH}", server.port);
    let user = format!("X-Remote-User: {HPA_USER}");
    let resolve = format!("localhost:{}:127.0.0.1", server.port);

    let (body, code) = curl(vec![
        "--resolve".into(),
        resolve.clone(),
        "--cacert".into(),
        ca.clone(),
        "--cert".into(),
        cert,
        "--key".into(),
        key,
        "-H".into(),
        user.clone(),
        url.clone(),
    ])
    .await;
    assert_eq!((code, body), (200, HPA_REPLY.to_owned()));

    let (body, code) = curl(vec![
        "--resolve".into(),
        resolve,
        "--cacert".into(),
        ca,
        "-H".into(),
        user,
        url,
    ])
    .await;
    assert_eq!((code, body), (401, UNAUTHORIZED.to_owned()));
    server.stop().await;
}
