//! Sources turn the outside world into a [`World`](crate::world::World):
//! a directory of manifests (standalone mode) or, in a cluster, the API.

pub mod cluster;
pub mod files;
pub mod manifest;
pub mod relevant;
