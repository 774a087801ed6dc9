//! Sources turn the outside world into a [`World`](crate::world::World):
//! a directory of manifests (standalone mode) or, in a cluster, the API.

pub mod cluster;
pub mod files;
pub mod manifest;
pub mod relevant;

/// Tests that set, clear or read the process-wide pacing flag
/// (`switchyard_dataplane::pace`) hold this, so that they do not race.
#[cfg(test)]
pub(crate) static PACE_FLAG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
