//! The generated PKI: the cluster and front-proxy CAs, serving and client certificates, and the
//! ServiceAccount signing key, all made by the `openssl` command line.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use super::{CALL_TIMEOUT, FRONT_PROXY_CLIENT_CN, KUBERNETES_CLUSTER_IP};
use crate::process::run_ok;

/// A certificate and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Files of the generated PKI.
#[derive(Debug)]
pub(super) struct Pki {
    pub(super) ca: CertPair,
    pub(super) serving: CertPair,
    pub(super) front_proxy_ca: CertPair,
    pub(super) front_proxy_client: CertPair,
    pub(super) sa_key: PathBuf,
    pub(super) sa_pub: PathBuf,
}

/// The openssl config every `req` uses: no prompts, and the extension sections we sign with.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

/// Certificates live 2 days: long enough for any test, short if a directory leaks.
const CERT_DAYS: &str = "2";

impl Pki {
    /// The apiserver's serving certificate names loopback, the `kubernetes` Service (its
    /// ClusterIP and DNS names) and `apiserver_address` when given (the pod-reachable one).
    pub(super) fn generate(dir: &Path, apiserver_address: Option<&str>) -> Result<Self> {
        fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG)?;
        let ca = self_signed_ca(dir, "ca", "podmeter-test-cluster-ca")?;
        let front_proxy_ca = self_signed_ca(dir, "front-proxy-ca", "podmeter-test-front-proxy-ca")?;
        let front_proxy_client = sign(
            dir,
            &front_proxy_ca,
            "front-proxy-client",
            &subject(FRONT_PROXY_CLIENT_CN, &[]),
            "client",
            None,
        )?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path_str(&sa_key)?,
        ])?;
        openssl(&[
            "pkey",
            "-in",
            path_str(&sa_key)?,
            "-pubout",
            "-out",
            path_str(&sa_pub)?,
        ])?;
        let mut sans = vec![
            "127.0.0.1",
            KUBERNETES_CLUSTER_IP,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        sans.extend(apiserver_address);
        let serving = serving_cert(dir, &ca, "apiserver", &sans)?;
        Ok(Self {
            ca,
            serving,
            front_proxy_ca,
            front_proxy_client,
            sa_key,
            sa_pub,
        })
    }

    pub(super) fn client_cert(
        &self,
        dir: &Path,
        file_stem: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<CertPair> {
        sign(
            dir,
            &self.ca,
            file_stem,
            &subject(user, groups),
            "client",
            None,
        )
    }
}

/// A serving certificate for `sans` (IP addresses or DNS names) signed by `ca`.
pub(super) fn serving_cert(
    dir: &Path,
    ca: &CertPair,
    file_stem: &str,
    sans: &[&str],
) -> Result<CertPair> {
    let alt_names = sans
        .iter()
        .map(|san| {
            if san.parse::<std::net::IpAddr>().is_ok() {
                format!("IP:{san}")
            } else {
                format!("DNS:{san}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let extensions = format!(
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, \
         keyEncipherment\nextendedKeyUsage = serverAuth\nauthorityKeyIdentifier = keyid\n\
         subjectAltName = {alt_names}\n"
    );
    let cn = sans.first().copied().unwrap_or(file_stem);
    sign(
        dir,
        ca,
        file_stem,
        &subject(cn, &[]),
        "server",
        Some(&extensions),
    )
}

/// `/O=group.../CN=name`; Kubernetes reads the user from CN and groups from O.
fn subject(common_name: &str, organizations: &[&str]) -> String {
    let escape = |value: &str| value.replace('\\', "\\\\").replace('/', "\\/");
    let mut subject = String::new();
    for organization in organizations {
        subject.push_str("/O=");
        subject.push_str(&escape(organization));
    }
    subject.push_str("/CN=");
    subject.push_str(&escape(common_name));
    subject
}

fn self_signed_ca(dir: &Path, file_stem: &str, common_name: &str) -> Result<CertPair> {
    let pair = new_key(dir, file_stem)?;
    let config = dir.join("openssl.cnf");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        path_str(&pair.key)?,
        "-subj",
        &subject(common_name, &[]),
        "-days",
        CERT_DAYS,
        "-config",
        path_str(&config)?,
        "-extensions",
        "ca",
        "-out",
        path_str(&pair.cert)?,
    ])?;
    Ok(pair)
}

/// Signs a new key for `subject` with `ca`, using section `section` of the openssl config or
/// `extensions` (a whole extension file) when given.
fn sign(
    dir: &Path,
    ca: &CertPair,
    file_stem: &str,
    subject: &str,
    section: &str,
    extensions: Option<&str>,
) -> Result<CertPair> {
    let pair = new_key(dir, file_stem)?;
    let csr = dir.join(format!("{file_stem}.csr"));
    let config = dir.join("openssl.cnf");
    openssl(&[
        "req",
        "-new",
        "-key",
        path_str(&pair.key)?,
        "-subj",
        subject,
        "-config",
        path_str(&config)?,
        "-out",
        path_str(&csr)?,
    ])?;
    let extfile = match extensions {
        Some(text) => {
            let file = dir.join(format!("{file_stem}.ext"));
            fs::write(&file, format!("[{section}]\n{text}"))?;
            file
        }
        None => config,
    };
    let serial = format!(
        "0x{:x}{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
        std::process::id()
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&csr)?,
        "-CA",
        path_str(&ca.cert)?,
        "-CAkey",
        path_str(&ca.key)?,
        "-set_serial",
        &serial,
        "-days",
        CERT_DAYS,
        "-extfile",
        path_str(&extfile)?,
        "-extensions",
        section,
        "-out",
        path_str(&pair.cert)?,
    ])?;
    Ok(pair)
}

/// A P-256 key in `<dir>/<file_stem>.key`; the certificate will go to `<file_stem>.crt`.
fn new_key(dir: &Path, file_stem: &str) -> Result<CertPair> {
    let pair = CertPair {
        cert: dir.join(format!("{file_stem}.crt")),
        key: dir.join(format!("{file_stem}.key")),
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path_str(&pair.key)?,
    ])?;
    Ok(pair)
}

fn openssl(args: &[&str]) -> Result<()> {
    let mut command = Command::new("openssl");
    command.args(args);
    run_ok(command, CALL_TIMEOUT)?;
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
