//! Whether a replica should get queries: what `/readyz` answers, so that the Service (and the
//! aggregation layer behind it) routes only to replicas that have numbers and are not going away.
//!
//! - **Starting**: no collection has read an agent yet, so every list would be empty. Ready after
//!   the first collection that read one, or after the staleness bound with none answering (an
//!   API whose agents are all down serves empty lists, as a ready one would after they fail).
//! - **Ready**.
//! - **Stopping**: told to stop. The replica goes on serving for the shutdown delay while the
//!   endpoints and every proxy in front forget it, so that no query reaches a closed port
//!   (kube-apiserver's own `--shutdown-delay-duration` does the same).

use std::sync::{
    Arc,
    atomic::{AtomicU8, Ordering},
};

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

/// A replica's readiness, shared by the collector, the shutdown and `/readyz`.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// Not ready until [`Readiness::ready`].
    pub fn starting() -> Self {
        Self(Arc::new(AtomicU8::new(STARTING)))
    }

    /// Ready from the start (a source that has its numbers at once, e.g. in tests).
    pub fn ready_now() -> Self {
        Self(Arc::new(AtomicU8::new(READY)))
    }

    /// Has numbers to serve; a stopping replica stays stopping.
    pub fn ready(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Told to stop: not ready from now on.
    pub fn stopping(&self) {
        self.0.store(STOPPING, Ordering::Relaxed);
    }

    /// `Ok` when ready, else why not (the `/readyz` body).
    pub fn check(&self) -> Result<(), &'static str> {
        match self.0.load(Ordering::Relaxed) {
            READY => Ok(()),
            STARTING => Err("no collection has read a node agent yet"),
            _ => Err("shutting down"),
        }
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::ready_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_unready_becomes_ready_and_never_again_once_stopping() {
        let readiness = Readiness::starting();
        assert!(readiness.check().is_err());
        readiness.ready();
        assert_eq!(readiness.check(), Ok(()));
        readiness.stopping();
        assert_eq!(readiness.check(), Err("shutting down"));
        // A collection finishing during the shutdown delay does not make it ready again.
        readiness.ready();
        assert_eq!(readiness.check(), Err("shutting down"));
    }
}
