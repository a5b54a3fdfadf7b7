//! TLS for the agent API when it authenticates its callers: the serving certificate from files,
//! else a self-signed one made at start, and a [`TlsListener`] that hands `axum::serve` only
//! connections whose handshake succeeded (plain HTTP to the port gets no answer but a closed
//! connection). Handshakes run in their own tasks, so a slow client holds back no other.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for `axum::serve` to take them.
const ACCEPT_QUEUE: usize = 64;

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServingCertificate {
    /// Made at start, valid for the names in [`self_signed_names`]; callers cannot verify it
    /// and rely on their bearer token being bound to this API's audience (README, "HTTP API of
    /// the agent").
    SelfSigned,
    /// A PEM chain (leaf first) and its PEM private key, read once at start.
    Files { cert: PathBuf, key: PathBuf },
}

/// The serving certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} in {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("making a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the serving certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The names of the self-signed certificate: loopback and this host's name.
fn self_signed_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificate chain and key `source` names.
fn chain_and_key(
    source: &ServingCertificate,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match source {
        ServingCertificate::SelfSigned => {
            let certified = rcgen::generate_simple_self_signed(self_signed_names())?;
            let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_owned())))?;
            Ok((vec![certified.cert.der().clone()], key))
        }
        ServingCertificate::Files { cert, key } => {
            let pem = read_pem_file(cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TlsError::Pem {
                    what: "certificates",
                    path: cert.clone(),
                    source,
                })?;
            let key_pem = read_pem_file(key)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem {
                    what: "private key",
                    path: key.clone(),
                    source,
                })?;
            Ok((chain, key_der))
        }
    }
}

/// TLS 1.2 and 1.3 with ring, no client certificates, HTTP/1.1 by ALPN.
pub fn server_config(source: &ServingCertificate) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = chain_and_key(source)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections are handed on only once their TLS handshake succeeded.
pub struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: Arc<ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, handshaken) = mpsc::channel(ACCEPT_QUEUE);
        let accepting = tokio::spawn(accept(listener, TlsAcceptor::from(tls), tx));
        Ok(Self {
            handshaken,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (it never does while the listener lives): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn a_self_signed_certificate_makes_a_configuration() {
        let config = server_config(&ServingCertificate::SelfSigned).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_files_name_the_path() {
        let error = server_config(&ServingCertificate::Files {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
        })
        .expect_err("no files");
        assert!(
            error.to_string().contains("/nonexistent/tls.crt"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn plain_http_gets_no_answer() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls = server_config(&ServingCertificate::SelfSigned).expect("config");
        let listener = TlsListener::new(tcp, tls).expect("listener");
        let addr = listener.local;
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut reply))
            .await
            .expect("the server closes the connection");
        assert!(!reply.starts_with(b"HTTP/"), "{reply:?}");
        server.abort();
    }
}
