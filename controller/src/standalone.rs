//! `switchyard standalone`: serve from a watched manifest directory.

use anyhow::Context as _;

use crate::cli::StandaloneArgs;
use crate::publish::Publisher;
use crate::runtime::{ControlPlane, Dataplane};
use crate::source::files::{self, ManifestDir};

pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let meta = std::fs::metadata(&args.manifests)
        .with_context(|| format!("--manifests {}: cannot read directory", args.manifests.display()))?;
    anyhow::ensure!(meta.is_dir(), "--manifests {}: not a directory", args.manifests.display());

    let dataplane = Dataplane::bind(&args.dataplane).await?;
    let control = ControlPlane::start(args.dataplane.controller_nice)?;
    control.reclaim_snapshots(dataplane.snapshots.clone());
    // Made here, so that its health probes run on the dataplane's runtime.
    let mut publisher =
        Publisher::new(dataplane.snapshots.clone(), dataplane.metrics.clone(), args.classes.to_config());
    let dir = ManifestDir::new(&args.manifests);
    let source = control.handle().spawn(files::watch(dir, move |world, origins| {
        publisher.apply(world, |kind, key| origins.get(&(kind, key.clone())).map(|p| p.display().to_string()));
    }));
    let served = dataplane.serve_until_signal().await;
    source.abort();
    served
}
