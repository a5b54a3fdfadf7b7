//! Pod names, kept here for the modules that book per-pod numbers; the sources of identity live
//! in [`crate::identity`].

pub use crate::identity::{LocalIdentity as Identity, PodId, Workload};
