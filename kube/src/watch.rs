//! A kube-runtime watcher over one kind of object, reflected into a store: after the initial
//! list and after every change, a callback gets every current object. The watcher relists with
//! backoff after errors, so a missed event costs a relist, never a stale view.

use std::{fmt::Debug, sync::Arc};

use futures::StreamExt;
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::de::DeserializeOwned;

/// What to watch: an optional label and field selector.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    pub labels: Option<String>,
    pub fields: Option<String>,
}

impl Selectors {
    fn config(&self) -> watcher::Config {
        let mut config = watcher::Config::default();
        if let Some(labels) = &self.labels {
            config = config.labels(labels);
        }
        if let Some(fields) = &self.fields {
            config = config.fields(fields);
        }
        config
    }
}

/// Runs until the watch stream ends (it does not, short of the task being dropped): calls
/// `on_change` with every current object once the initial list is in, then after each change.
pub async fn run<K>(
    api: Api<K>,
    selectors: Selectors,
    what: &'static str,
    mut on_change: impl FnMut(&[Arc<K>]),
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, selectors.config())
        .default_backoff()
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                on_change(&reader.state());
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(error) => tracing::warn!(%error, what, "watch failed; retrying"),
        }
    }
}
