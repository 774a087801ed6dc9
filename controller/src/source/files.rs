//! Standalone mode's source: a directory of manifests, watched.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory is
//! read. A file that fails to parse is logged and its last good version
//! stays in force; everything else keeps serving. Changes are picked up from
//! inotify (debounced) and, as a safety net, by a metadata rescan every
//! second.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::manifest;
use crate::world::{Object, ObjectKey, World};

/// Where each object came from: `(kind, key) → file`.
pub type Origins = HashMap<(&'static str, ObjectKey), PathBuf>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug)]
struct FileState {
    fingerprint: Fingerprint,
    /// The last good parse; empty if the file never parsed.
    objects: Vec<Object>,
}

/// The manifest directory and the last good content of each file.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), files: BTreeMap::new() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Re-reads files whose size or mtime changed and forgets deleted ones.
    /// Returns true when anything changed.
    pub fn rescan(&mut self) -> std::io::Result<bool> {
        let mut seen = Vec::new();
        let mut changed = false;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let is_manifest =
                path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !is_manifest || !meta.is_file() {
                continue;
            }
            seen.push(path.clone());
            let fingerprint = Fingerprint { len: meta.len(), modified: meta.modified().ok() };
            if self.files.get(&path).is_some_and(|f| f.fingerprint == fingerprint) {
                continue;
            }
            changed = true;
            let state = self.files.entry(path.clone()).or_insert(FileState { fingerprint, objects: Vec::new() });
            state.fingerprint = fingerprint;
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(err) => {
                    tracing::error!(file = %path.display(), error = %err, "cannot read manifest; keeping its last good version");
                    continue;
                }
            };
            match manifest::parse(&text) {
                Ok(parsed) => {
                    for ignored in &parsed.ignored {
                        tracing::info!(file = %path.display(), object = %ignored, "ignoring object of a kind switchyard does not read");
                    }
                    tracing::debug!(file = %path.display(), objects = parsed.objects.len(), "manifest loaded");
                    state.objects = parsed.objects;
                }
                Err(err) => {
                    tracing::error!(file = %path.display(), error = %err, "invalid manifest; keeping its last good version");
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(path));
        changed |= self.files.len() != before;
        Ok(changed)
    }

    /// The world made of every file's last good objects. An object defined
    /// in two files is taken from the first by file name (and logged).
    pub fn world(&self) -> (World, Origins) {
        let mut world = World::default();
        let mut origins = Origins::new();
        for (path, state) in &self.files {
            for object in &state.objects {
                let id = (object.kind(), object.key());
                if let Some(first) = origins.get(&id) {
                    tracing::warn!(
                        file = %path.display(), kind = id.0, object = %id.1, first = %first.display(),
                        "object defined twice; using the first file's"
                    );
                    continue;
                }
                world.insert(object.clone());
                origins.insert(id, path.clone());
            }
        }
        (world, origins)
    }
}

/// Watches `dir` and calls `on_change` with the new world after each
/// change (and once at start). Runs until the task is dropped.
pub async fn watch(mut dir: ManifestDir, mut on_change: impl FnMut(&World, &Origins)) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| {
        use notify::Watcher;
        w.watch(dir.path(), notify::RecursiveMode::NonRecursive).map(|()| w)
    });
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(err) => {
            tracing::warn!(dir = %dir.path().display(), error = %err, "cannot watch directory; polling every second");
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        match dir.rescan() {
            Ok(changed) if changed || first => {
                let (world, origins) = dir.world();
                on_change(&world, &origins);
                first = false;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::error!(dir = %dir.path().display(), error = %err, "cannot list manifest directory")
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = rx.recv() => {
                // Coalesce a burst (editors write, rename, chmod…).
                tokio::time::sleep(Duration::from_millis(20)).await;
                while rx.try_recv().is_ok() {}
            }
        }
    }
}
