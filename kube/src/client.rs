//! The API client every podmeter process builds: from a kubeconfig file when one is named, else
//! in-cluster or `$KUBECONFIG`.

use std::path::{Path, PathBuf};

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },

    #[error("no Kubernetes configuration (in-cluster or $KUBECONFIG): {0}")]
    InferConfig(#[from] kube::config::InferConfigError),

    #[error("building the Kubernetes client: {0}")]
    Build(#[source] kube::Error),
}

/// A client from `kubeconfig`, else from the in-cluster configuration or `$KUBECONFIG`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    // The client's TLS takes the process-wide provider; ring is the one built in. An error
    // means one is installed already, which serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let wrap = |source| ClientError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(wrap)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(wrap)?
        }
        None => kube::Config::infer().await?,
    };
    kube::Client::try_from(config).map_err(ClientError::Build)
}
