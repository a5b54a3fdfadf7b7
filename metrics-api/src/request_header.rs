//! Request-header authentication, as kube-apiserver's front proxy expects of an aggregated API
//! server (`k8s.io/apiserver/pkg/authentication/request/headerrequest` behind
//! `request/x509.Verifier`): a request is from the user named in `X-Remote-User`, with the groups
//! in `X-Remote-Group` and the extras in `X-Remote-Extra-*`, only if its connection presented a
//! client certificate that chains to the request-header CA (for client auth) and, when an
//! allowed-names list is set, whose subject CN is on it. On any other connection those headers
//! mean nothing.
//!
//! The CA and names come from the `kube-system/extension-apiserver-authentication` ConfigMap
//! ([`RequestHeaderConfig::from_configmap_data`]) and can change at runtime: [`RequestHeaderAuth`]
//! is the reloadable holder (a `tokio::sync::watch` channel); every
//! [`RequestHeaderAuthenticator`] it hands out sees an update at the next request.

use std::{collections::BTreeMap, sync::Arc};

use axum::http::{HeaderMap, HeaderName};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, UnixTime, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use tokio::sync::watch;

use super::{error::Error, tls::crypto_provider};

/// The certificate chain a client presented on its connection (end entity first), put in each
/// request's extensions by [`super::tls::serve`].
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<[CertificateDer<'static>]>);

/// Who a request is from (`user.Info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The group every authenticated user is in (`user.AllAuthenticated`).
pub const ALL_AUTHENTICATED: &str = "system:authenticated";

/// The request-header settings (kube-apiserver's `--requestheader-*` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// The CAs a front proxy's client certificate must chain to. Empty: nobody authenticates.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Subject CNs allowed to act as a front proxy; empty allows any CN.
    pub allowed_names: Vec<String>,
    /// Headers naming the user, first non-empty wins.
    pub username_headers: Vec<String>,
    /// Headers carrying the user's UID (Kubernetes 1.32+), first non-empty wins.
    pub uid_headers: Vec<String>,
    /// Headers carrying groups: every non-empty value of each.
    pub group_headers: Vec<String>,
    /// Header prefixes carrying extras: `X-Remote-Extra-Scopes: a` is extra `scopes: [a]`.
    pub extra_header_prefixes: Vec<String>,
}

/// The ConfigMap keys kube-apiserver writes (`clusterauthenticationtrust` controller).
const CLIENT_CA_KEY: &str = "requestheader-client-ca-file";
const ALLOWED_NAMES_KEY: &str = "requestheader-allowed-names";
const USERNAME_HEADERS_KEY: &str = "requestheader-username-headers";
const UID_HEADERS_KEY: &str = "requestheader-uid-headers";
const GROUP_HEADERS_KEY: &str = "requestheader-group-headers";
const EXTRA_PREFIXES_KEY: &str = "requestheader-extra-headers-prefix";

impl RequestHeaderConfig {
    /// A CA bundle (PEM) and allowed names, with the header names kubeadm configures
    /// (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-`).
    #[cfg(test)]
    pub fn from_pem(client_ca_pem: &[u8], allowed_names: Vec<String>) -> Result<Self, Error> {
        Ok(Self {
            client_ca: parse_certificates(client_ca_pem, "request-header CA bundle")?,
            allowed_names,
            username_headers: vec!["X-Remote-User".to_owned()],
            uid_headers: Vec::new(),
            group_headers: vec!["X-Remote-Group".to_owned()],
            extra_header_prefixes: vec!["X-Remote-Extra-".to_owned()],
        })
    }

    /// The settings in the `data` of `kube-system/extension-apiserver-authentication`: the CA
    /// PEM under `requestheader-client-ca-file`, the lists as JSON arrays. A missing key is an
    /// empty setting, as the apiserver's delegating authenticator reads it (without a CA, no
    /// request authenticates).
    pub fn from_configmap_data(data: &BTreeMap<String, String>) -> Result<Self, Error> {
        let list = |key: &'static str| -> Result<Vec<String>, Error> {
            match data.get(key) {
                None => Ok(Vec::new()),
                Some(json) if json.trim().is_empty() => Ok(Vec::new()),
                Some(json) => serde_json::from_str::<Option<Vec<String>>>(json)
                    .map(Option::unwrap_or_default)
                    .map_err(|source| Error::ConfigMapList { key, source }),
            }
        };
        let client_ca = match data.get(CLIENT_CA_KEY) {
            Some(pem) if !pem.trim().is_empty() => {
                parse_certificates(pem.as_bytes(), "request-header CA bundle")?
            }
            _ => Vec::new(),
        };
        Ok(Self {
            client_ca,
            allowed_names: list(ALLOWED_NAMES_KEY)?,
            username_headers: list(USERNAME_HEADERS_KEY)?,
            uid_headers: list(UID_HEADERS_KEY)?,
            group_headers: list(GROUP_HEADERS_KEY)?,
            extra_header_prefixes: list(EXTRA_PREFIXES_KEY)?,
        })
    }
}

/// Every certificate in a PEM bundle; none is an error.
pub fn parse_certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem { what, source })?;
    if certificates.is_empty() {
        return Err(Error::NoCertificate { what });
    }
    Ok(certificates)
}

/// Why a request is not authenticated. Each is a 401; none of them reveals more to the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthenticationError {
    #[error("no client certificate, so request headers are not trusted")]
    NoClientCertificate,
    #[error("no request-header CA is configured")]
    NoClientCa,
    #[error("client certificate rejected: {0}")]
    Certificate(rustls::Error),
    #[error("client certificate cannot be parsed: {0}")]
    Unparseable(x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("x509: subject with cn={common_name} is not in the allowed list {allowed:?}")]
    NameNotAllowed {
        common_name: String,
        allowed: Vec<String>,
    },
    #[error("none of the headers {headers:?} names a user")]
    NoUser { headers: Vec<String> },
}

/// A [`RequestHeaderConfig`] made ready for requests.
#[derive(Debug)]
struct Trust {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    allowed_names: Vec<String>,
    username: Vec<HeaderName>,
    uid: Vec<HeaderName>,
    groups: Vec<HeaderName>,
    /// Lower case, as `HeaderMap` names are.
    extra_prefixes: Vec<String>,
}

fn header_names(names: &[String], setting: &'static str) -> Result<Vec<HeaderName>, Error> {
    names
        .iter()
        .map(|name| {
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| Error::HeaderName {
                setting,
                name: name.clone(),
            })
        })
        .collect()
}

impl Trust {
    fn new(config: RequestHeaderConfig) -> Result<Self, Error> {
        let verifier = if config.client_ca.is_empty() {
            None
        } else {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(config.client_ca);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                    .build()
                    .map_err(|source| Error::ClientCa { source })?;
            Some(verifier)
        };
        let extra_prefixes = config
            .extra_header_prefixes
            .iter()
            .map(|prefix| {
                let prefix = prefix.trim();
                if prefix.is_empty() {
                    Err(Error::HeaderName {
                        setting: "extra headers prefix",
                        name: prefix.to_owned(),
                    })
                } else {
                    Ok(prefix.to_ascii_lowercase())
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            verifier,
            allowed_names: config.allowed_names,
            username: header_names(&config.username_headers, "username headers")?,
            uid: header_names(&config.uid_headers, "uid headers")?,
            groups: header_names(&config.group_headers, "group headers")?,
            extra_prefixes,
        })
    }
}

/// The reloadable request-header settings. Keep it where the ConfigMap watch runs; hand
/// [`RequestHeaderAuth::authenticator`]s to the servers.
#[derive(Debug)]
pub struct RequestHeaderAuth {
    sender: watch::Sender<Arc<Trust>>,
}

impl RequestHeaderAuth {
    pub fn new(config: RequestHeaderConfig) -> Result<Self, Error> {
        let (sender, _) = watch::channel(Arc::new(Trust::new(config)?));
        Ok(Self { sender })
    }

    /// Replaces the settings for every authenticator, from the next request on. An invalid
    /// config is refused and the current one stays.
    pub fn update(&self, config: RequestHeaderConfig) -> Result<(), Error> {
        let trust = Arc::new(Trust::new(config)?);
        self.sender.send_replace(trust);
        Ok(())
    }

    pub fn authenticator(&self) -> RequestHeaderAuthenticator {
        RequestHeaderAuthenticator {
            trust: self.sender.subscribe(),
        }
    }
}

/// Authenticates requests with the current [`RequestHeaderAuth`] settings.
#[derive(Clone, Debug)]
pub struct RequestHeaderAuthenticator {
    trust: watch::Receiver<Arc<Trust>>,
}

/// The first non-empty UTF-8 value among `names`.
fn first_value(headers: &HeaderMap, names: &[HeaderName]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| headers.get(name))
        .filter_map(|value| std::str::from_utf8(value.as_bytes()).ok())
        .find(|value| !value.is_empty())
        .map(str::to_owned)
}

/// `url.PathUnescape` of an extra's key, or the key as it is if that fails.
fn unescape_extra_key(key: &str) -> String {
    super::uri::decode_path(key).unwrap_or_else(|_| key.to_owned())
}

impl RequestHeaderAuthenticator {
    /// The user a request is from, given its connection's client certificates and its headers.
    pub fn authenticate(
        &self,
        peer: Option<&PeerCertificates>,
        headers: &HeaderMap,
    ) -> Result<UserInfo, AuthenticationError> {
        let trust = Arc::clone(&self.trust.borrow());
        let chain = peer
            .map(|p| &*p.0)
            .filter(|chain| !chain.is_empty())
            .ok_or(AuthenticationError::NoClientCertificate)?;
        let verifier = trust
            .verifier
            .as_ref()
            .ok_or(AuthenticationError::NoClientCa)?;
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or(AuthenticationError::NoClientCertificate)?;
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(AuthenticationError::Certificate)?;
        if !trust.allowed_names.is_empty() {
            let common_name = common_name(end_entity)?;
            if !trust.allowed_names.contains(&common_name) {
                return Err(AuthenticationError::NameNotAllowed {
                    common_name,
                    allowed: trust.allowed_names.clone(),
                });
            }
        }
        trust.user(headers)
    }
}

impl Trust {
    /// The user `headers` name, read as the front proxy wrote them; the connection is trusted
    /// already.
    fn user(&self, headers: &HeaderMap) -> Result<UserInfo, AuthenticationError> {
        let name =
            first_value(headers, &self.username).ok_or_else(|| AuthenticationError::NoUser {
                headers: self.username.iter().map(ToString::to_string).collect(),
            })?;
        let uid = first_value(headers, &self.uid).unwrap_or_default();
        let mut groups: Vec<String> = self
            .groups
            .iter()
            .flat_map(|name| headers.get_all(name))
            .filter_map(|value| std::str::from_utf8(value.as_bytes()).ok())
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for prefix in &self.extra_prefixes {
            for (header, value) in headers {
                let Some(key) = header.as_str().strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
                    continue;
                };
                extra
                    .entry(unescape_extra_key(key))
                    .or_default()
                    .push(value.to_owned());
            }
        }
        // The apiserver's AuthenticatedGroupAdder: RBAC's system:discovery and friends are bound
        // to this group.
        if !groups
            .iter()
            .any(|g| g == ALL_AUTHENTICATED || g == "system:unauthenticated")
        {
            groups.push(ALL_AUTHENTICATED.to_owned());
        }
        Ok(UserInfo {
            name,
            uid,
            groups,
            extra,
        })
    }
}

/// The certificate's subject CN (the last one, as Go's `pkix.Name.CommonName` keeps).
pub fn common_name(der: &CertificateDer<'_>) -> Result<String, AuthenticationError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(AuthenticationError::Unparseable)?;
    Ok(certificate
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .last()
        .unwrap_or_default()
        .to_owned())
}

/// The user `headers` name under the header names of a
/// `kube-system/extension-apiserver-authentication` ConfigMap's `data`, as
/// [`RequestHeaderAuthenticator::authenticate`] reads them once the client certificate is
/// trusted. Public for the fuzz targets only (`fuzz/`), which cannot present a trusted chain.
pub fn user_from_headers(
    configmap: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Result<Result<UserInfo, AuthenticationError>, Error> {
    Ok(Trust::new(RequestHeaderConfig::from_configmap_data(configmap)?)?.user(headers))
}

#[cfg(test)]
mod tests;
