//! The serving certificate when `--tls-cert-file` is not given, managed as KEDA's metrics server
//! manages its own: a CA and a serving certificate for `<service>.<namespace>.svc` in a Secret
//! of the metrics API's namespace, made by the first replica and read by the others (so every
//! replica serves the same certificate), and the CA kept in the `spec.caBundle` of the
//! APIServices that point here. A changed Secret is served from the next handshake on; a deleted
//! one is made again; an APIService whose caBundle differs is patched back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::Error;
use crate::ServingCertificate;

/// The APIServices whose caBundle is kept current (those of `deploy/base/apiservices.yaml`).
pub const APISERVICES: [&str; 3] = [
    "v1beta1.custom.metrics.k8s.io",
    "v1beta2.custom.metrics.k8s.io",
    "v1beta1.external.metrics.k8s.io",
];
/// How often the Secret and the APIServices are checked.
const CHECK: Duration = Duration::from_secs(5);
/// Years the CA and the serving certificate are valid (rotation: delete the Secret).
const VALIDITY_YEARS: i32 = 10;
/// Attempts at reading or creating the Secret when replicas race.
const ATTEMPTS: usize = 5;

/// Where the certificate lives and whom it names.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    /// The metrics API's namespace: the Secret's, and the Service's.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The Service the APIServices point at.
    pub service: String,
}

/// The CA and the serving certificate and key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// The names the aggregation layer may verify: `<service>.<namespace>.svc` and its variants.
fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The mean Gregorian year is 365.2425 days.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

/// A new CA and a serving certificate for `names` signed by it (ECDSA P-256). The CA's key is
/// dropped: nothing else is ever signed with it.
pub fn generate(names: Vec<String>) -> Result<Bundle, rcgen::Error> {
    let year = this_year();
    // From the start of last year: clocks of other nodes may lag.
    let (not_before, not_after) = (
        rcgen::date_time_ymd(year - 1, 1, 1),
        rcgen::date_time_ymd(year + VALIDITY_YEARS, 1, 1),
    );
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "podmeter-metrics-api-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let common_name = names.get(2).or(names.first()).cloned().unwrap_or_default();
    let mut serving = CertificateParams::new(names)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, common_name);
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.not_before = not_before;
    serving.not_after = not_after;
    let cert = serving.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca: ca_cert.pem().into_bytes(),
        cert: cert.pem().into_bytes(),
        key: key.serialize_pem().into_bytes(),
    })
}

/// The bundle in a Secret, if it holds all three keys.
fn from_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let get = |key: &str| data.get(key).map(|v| v.0.clone());
    Some(Bundle {
        ca: get("ca.crt")?,
        cert: get("tls.crt")?,
        key: get("tls.key")?,
    })
}

fn to_secret(bundle: &Bundle, managed: &SelfManaged) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(managed.secret.clone()),
            namespace: Some(managed.namespace.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "podmeter-metrics-api".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                ("ca.crt", &bundle.ca),
                ("tls.crt", &bundle.cert),
                ("tls.key", &bundle.key),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.clone())))
            .collect(),
        ),
        ..Secret::default()
    }
}

fn apiservices(client: Client) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    };
    Api::all_with(client, &resource)
}

fn kube_error(what: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { what, source }
}

impl SelfManaged {
    /// The bundle in the Secret, which is made first when missing. Of replicas racing to make it,
    /// one wins; the others get 409 and read the winner's.
    pub async fn load_or_create(&self, client: &Client) -> Result<Bundle, Error> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        for _ in 0..ATTEMPTS {
            if let Some(secret) = secrets
                .get_opt(&self.secret)
                .await
                .map_err(kube_error("reading the certificate Secret"))?
            {
                return from_secret(&secret).ok_or_else(|| Error::CertificateSecret {
                    namespace: self.namespace.clone(),
                    name: self.secret.clone(),
                });
            }
            let bundle = generate(dns_names(&self.service, &self.namespace))?;
            match secrets
                .create(&PostParams::default(), &to_secret(&bundle, self))
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = %self.namespace, secret = %self.secret,
                        "made the serving certificate and its CA");
                    return Ok(bundle);
                }
                // Another replica made it first: read theirs.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(source) => return Err(kube_error("creating the certificate Secret")(source)),
            }
        }
        Err(Error::CertificateSecret {
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
        })
    }

    /// Patches the caBundle of every APIService of [`APISERVICES`] that exists and differs from
    /// `ca`; a missing one is looked at again at the next check.
    async fn publish_ca(client: &Client, ca: &[u8]) {
        let api = apiservices(client.clone());
        let wanted = serde_json::to_value(ByteString(ca.to_vec())).unwrap_or_default();
        for name in APISERVICES {
            match api.get_opt(name).await {
                Ok(Some(service)) if service.data["spec"]["caBundle"] == wanted => {}
                Ok(Some(_)) => {
                    let patch = serde_json::json!({"spec": {"caBundle": wanted}});
                    match api
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => tracing::info!(apiservice = name, "caBundle set"),
                        Err(error) => tracing::warn!(apiservice = name, %error, "caBundle not set"),
                    }
                }
                Ok(None) => tracing::debug!(apiservice = name, "no such APIService yet"),
                Err(error) => tracing::warn!(apiservice = name, %error, "cannot read APIService"),
            }
        }
    }

    /// Keeps `certificate` (serving `bundle`) and the APIServices' caBundle in step with the
    /// Secret, forever.
    pub async fn keep(self, client: Client, certificate: ServingCertificate, mut bundle: Bundle) {
        let mut ticker = tokio::time::interval(CHECK);
        loop {
            ticker.tick().await;
            match self.load_or_create(&client).await {
                Ok(current) if current != bundle => {
                    match certificate.replace_pem(&current.cert, &current.key) {
                        Ok(()) => {
                            tracing::info!(secret = %self.secret, "serving certificate replaced");
                            bundle = current;
                        }
                        Err(error) => tracing::warn!(%error, "serving certificate not replaced"),
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot check the serving certificate"),
            }
            Self::publish_ca(&client, &bundle.ca).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_names_the_service_and_is_signed_by_the_ca() {
        let bundle =
            generate(dns_names("podmeter-metrics-api", "podmeter-system")).expect("bundle");
        let serving = ServingCertificate::from_pem(&bundle.cert, &bundle.key);
        assert!(serving.is_ok(), "{serving:?}");
        // As the aggregation layer does: the chain against the CA, the name against the Service's.
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&bundle.ca).expect("ca pem"))
            .expect("ca");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::crypto_provider(),
        )
        .build()
        .expect("verifier");
        let leaf = CertificateDer::from_pem_slice(&bundle.cert).expect("pem");
        for name in [
            "podmeter-metrics-api.podmeter-system.svc",
            "podmeter-metrics-api",
        ] {
            let name = ServerName::try_from(name).expect("name");
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                verifier.as_ref(),
                &leaf,
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
            .expect("verified");
        }
    }

    #[test]
    fn a_secret_round_trips() {
        let bundle = Bundle {
            ca: b"ca".to_vec(),
            cert: b"cert".to_vec(),
            key: b"key".to_vec(),
        };
        let managed = SelfManaged {
            namespace: "ns".into(),
            secret: "s".into(),
            service: "svc".into(),
        };
        assert_eq!(from_secret(&to_secret(&bundle, &managed)), Some(bundle));
        assert_eq!(from_secret(&Secret::default()), None);
    }
}
