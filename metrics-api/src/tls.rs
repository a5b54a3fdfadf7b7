//! Serving over TLS as an aggregated API server: a replaceable serving certificate, client
//! certificates requested but not required, and an accept loop that hands each request its
//! connection's client certificate chain ([`PeerCertificates`]).
//!
//! Like the Go apiserver (`tls.RequestClientCert`), the handshake accepts any client certificate
//! whose key the client proves it holds; the chain is verified per request against the current
//! request-header CA ([`super::request_header`]), so a CA rotation needs no new listener and a
//! certificate from the wrong CA gets a 401 Status rather than a TLS alert. No CA names are hinted
//! in the CertificateRequest, so clients send the certificate they have.

use std::{
    future::Future,
    path::Path,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use axum::{Router, extract::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use rustls::{
    DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        ClientHello, ResolvesServerCert,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::{
    error::Error,
    request_header::{PeerCertificates, parse_certificates},
};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent a request's headers by then is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The rustls provider of the whole module: ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The serving certificate, replaceable while serving (a rotated Secret, a renewed
/// certificate): new handshakes use the latest.
#[derive(Clone, Debug)]
pub struct ServingCertificate {
    current: Arc<CurrentCertificate>,
}

#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, Error> {
    let chain = parse_certificates(chain_pem, "serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| Error::Pem {
        what: "serving key",
        source,
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(|source| Error::Key {
            what: "serving key",
            source,
        })?;
    Ok(Arc::new(certified))
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

impl ServingCertificate {
    /// A certificate chain (leaf first) and its private key, both PEM.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        Ok(Self {
            current: Arc::new(CurrentCertificate(RwLock::new(certified_key(
                chain_pem, key_pem,
            )?))),
        })
    }

    /// `tls.crt` and `tls.key` of a mounted Secret.
    pub fn from_files(chain: &Path, key: &Path) -> Result<Self, Error> {
        Self::from_pem(&read(chain)?, &read(key)?)
    }

    /// Serves `chain_pem`/`key_pem` from the next handshake on; on error the current one stays.
    pub fn replace_pem(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), Error> {
        let certified = certified_key(chain_pem, key_pem)?;
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = certified;
        Ok(())
    }

    pub fn replace_from_files(&self, chain: &Path, key: &Path) -> Result<(), Error> {
        self.replace_pem(&read(chain)?, &read(key)?)
    }
}

/// Requests a client certificate, checks only that the client holds its key, and leaves the
/// chain to per-request verification.
#[derive(Debug)]
struct RequestClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RequestClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's TLS configuration: TLS 1.2 and 1.3 with ring, `certificate` served, client
/// certificates requested, HTTP/1.1 by ALPN (kube-apiserver's proxy falls back to it).
pub fn server_config(certificate: &ServingCertificate) -> Result<Arc<ServerConfig>, Error> {
    let provider = crypto_provider();
    let verifier = RequestClientCertificate {
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(certificate.current.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then lets requests in flight
/// finish (for up to 10 s). Each request carries its connection's [`PeerCertificates`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let certificates = PeerCertificates(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map_or_else(Default::default, |chain| {
                        chain.iter().map(|c| c.clone().into_owned()).collect()
                    }),
            );
            let service = app.map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(certificates.clone());
                request
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the shutdown grace period");
    }
    Ok(())
}
