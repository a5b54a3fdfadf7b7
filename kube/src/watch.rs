//! The one list-then-watch loop: a kube-runtime watcher over one kind of object, with backoff,
//! reflected into a store that readers query, and an optional callback after each change.

use std::{borrow::Cow, fmt::Debug};

use futures::StreamExt as _;
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

/// A change the store has just applied, as the [`Watch::on_change`] callback sees it.
#[derive(Debug)]
pub enum Change<'a, K> {
    /// The initial list, or a relist after an error, replaced the store's content.
    Listed,
    /// The object was added or modified.
    Applied(&'a K),
    /// The object was deleted.
    Deleted(&'a K),
}

type Trim<K> = Box<dyn FnMut(&mut K) + Send>;
type OnChange<K> = Box<dyn FnMut(Change<'_, K>, &Store<K>) + Send>;

/// What to watch and what to do with each object: selectors, what to drop before the store
/// keeps an object, and a callback after each change. [`reflect`] runs it.
pub struct Watch<K: Resource<DynamicType = ()> + Clone + 'static> {
    what: Cow<'static, str>,
    config: watcher::Config,
    trim: Option<Trim<K>>,
    on_change: Option<OnChange<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Watch<K> {
    /// Every object of the kind; `what` names the watch in log lines.
    pub fn new(what: impl Into<Cow<'static, str>>) -> Self {
        Self {
            what: what.into(),
            config: watcher::Config::default(),
            trim: None,
            on_change: None,
        }
    }

    /// Only objects with these labels (`key=value,...`).
    #[must_use]
    pub fn labels(mut self, selector: &str) -> Self {
        self.config = self.config.labels(selector);
        self
    }

    /// Only objects with these fields (`spec.nodeName=node-a`).
    #[must_use]
    pub fn fields(mut self, selector: &str) -> Self {
        self.config = self.config.fields(selector);
        self
    }

    /// Drops what readers never need from each object before the store keeps it (managed fields
    /// are always dropped).
    #[must_use]
    pub fn trim(mut self, trim: impl FnMut(&mut K) + Send + 'static) -> Self {
        self.trim = Some(Box::new(trim));
        self
    }

    /// Called after the store applied each change, with the store.
    #[must_use]
    pub fn on_change(
        mut self,
        on_change: impl FnMut(Change<'_, K>, &Store<K>) + Send + 'static,
    ) -> Self {
        self.on_change = Some(Box::new(on_change));
        self
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Debug for Watch<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("what", &self.what)
            .field("labels", &self.config.label_selector)
            .field("fields", &self.config.field_selector)
            .finish_non_exhaustive()
    }
}

/// The store `watch` keeps, and the watch itself: a future to spawn that runs until dropped,
/// logging errors and relisting with backoff after them, so a missed event costs a relist,
/// never a stale view. The store is ready ([`Store::wait_until_ready`]) once the initial list
/// is in.
pub fn reflect<K>(
    api: Api<K>,
    watch: Watch<K>,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let Watch {
        what,
        config,
        mut trim,
        mut on_change,
    } = watch;
    let (store, writer) = reflector::store();
    let reader = store.clone();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |object: &mut K| {
            // Large, and read by nobody here.
            object.meta_mut().managed_fields = None;
            if let Some(trim) = &mut trim {
                trim(object);
            }
        })
        .reflect(writer);
    let run = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let change = match &event {
                Ok(watcher::Event::InitDone) => Change::Listed,
                Ok(watcher::Event::Apply(object)) => Change::Applied(object),
                Ok(watcher::Event::Delete(object)) => Change::Deleted(object),
                // The store swaps in the new list at `InitDone`.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Err(error) => {
                    tracing::warn!(%error, what = %what, "watch failed; retrying");
                    continue;
                }
            };
            if let Some(on_change) = &mut on_change {
                on_change(change, &reader);
            }
        }
    };
    (store, run)
}

#[cfg(test)]
mod tests;
