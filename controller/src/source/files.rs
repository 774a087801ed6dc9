//! Standalone mode's source: a directory of manifests, watched.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory is
//! read. A file that fails to parse is logged and its last good version
//! stays in force; everything else keeps serving. Changes are picked up from
//! inotify (debounced) and, as a safety net, by a metadata rescan every
//! second. A changed file whose latest event says it was closed after
//! writing, or renamed into place, is applied at once; any other change (or
//! a vanished file) is applied only once two scans 50 ms apart agree on its
//! size and mtime, so a file caught half-written (`cmd > file` truncates
//! first) or briefly absent (editors that save by delete-and-recreate) never
//! empties the routing table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchyard_dataplane::pace::{self, yield_point};
use tokio::sync::mpsc;

use super::manifest;
use crate::world::{Object, ObjectKey, World};

/// How long a changed file must keep the same size and mtime.
const SETTLE: Duration = Duration::from_millis(50);

/// Where each object came from: `(kind, key) → file`.
pub type Origins = HashMap<(&'static str, ObjectKey), Arc<Path>>;

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
    /// Changes seen once and waiting for a second, agreeing scan
    /// (`None`: the file is gone).
    unsettled: BTreeMap<PathBuf, Option<Fingerprint>>,
    /// The first scan applies everything at once.
    started: bool,
    /// Files whose latest filesystem event said they were written and
    /// closed, or renamed into place: complete, applied without settling.
    /// (By file name: the directory is watched non-recursively.)
    complete: BTreeSet<std::ffi::OsString>,
    /// The world of the last call to [`ManifestDir::world`], kept so that a
    /// change to one file does not rebuild (and clone) every object.
    built: Option<Built>,
    /// Files changed (or gone) since `built` was made.
    dirty: BTreeSet<PathBuf>,
}

/// A world and where its objects came from.
#[derive(Debug, Default)]
struct Built {
    world: World,
    origins: Origins,
    /// The objects each file contributes.
    by_file: HashMap<PathBuf, Vec<ObjectId>>,
    /// Objects defined in more than one file: a change that touches one
    /// rebuilds everything, so that the first file by name keeps winning.
    duplicated: HashSet<ObjectId>,
}

type ObjectId = (&'static str, ObjectKey);

/// What a rescan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rescan {
    /// The loaded objects changed.
    pub changed: bool,
    /// Some file changed but is not settled yet: scan again shortly.
    pub unsettled: bool,
    /// At least [`pace::BULK`] objects changed (after the first scan): the
    /// rest of the scan, and the compile that follows, are paced.
    pub bulk: bool,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            unsettled: BTreeMap::new(),
            started: false,
            complete: BTreeSet::new(),
            built: None,
            dirty: BTreeSet::new(),
        }
    }

    /// Records what a filesystem event says about `path`: complete (closed
    /// after writing, or renamed into place) or still being written.
    pub fn note_event(&mut self, path: &Path, complete: bool) {
        let Some(name) = path.file_name() else { return };
        if complete {
            self.complete.insert(name.to_owned());
        } else {
            self.complete.remove(name);
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Re-reads files whose size or mtime changed (and settled) and
    /// forgets deleted ones (once settled).
    pub fn rescan(&mut self) -> std::io::Result<Rescan> {
        let mut seen = Vec::new();
        let mut changed = false;
        let mut unsettled = false;
        let first = !self.started;
        self.started = true;
        // Objects added, changed or removed by this scan.
        let mut objects_changed = 0;
        let mut bulk = false;
        let mut count_changes = |n: usize| {
            objects_changed += n;
            if objects_changed >= pace::BULK && !first && !bulk {
                // A bulk change (say, a rollout's EndpointSlices): paced.
                pace::behind();
                bulk = true;
            }
        };
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let is_manifest = is_manifest(&path);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !is_manifest || !meta.is_file() {
                continue;
            }
            seen.push(path.clone());
            let fingerprint = Fingerprint { len: meta.len(), modified: meta.modified().ok() };
            // A mark is good for the scan that follows its event only.
            let complete = path.file_name().is_some_and(|name| self.complete.remove(name));
            if self.files.get(&path).is_some_and(|f| f.fingerprint == fingerprint) {
                self.unsettled.remove(&path);
                continue;
            }
            if !first && !complete && self.unsettled.get(&path) != Some(&Some(fingerprint)) {
                self.unsettled.insert(path.clone(), Some(fingerprint));
                unsettled = true;
                continue;
            }
            self.unsettled.remove(&path);
            changed = true;
            self.dirty.insert(path.clone());
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
                    // By position: an edit of one object in a large file
                    // is a small change.
                    let same = parsed.objects.iter().zip(&state.objects).filter(|(new, old)| new == old).count();
                    count_changes(parsed.objects.len().max(state.objects.len()) - same);
                    state.objects = parsed.objects;
                }
                Err(err) => {
                    tracing::error!(file = %path.display(), error = %err, "invalid manifest; keeping its last good version");
                }
            }
        }
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !seen.contains(p)).cloned().collect();
        for path in gone {
            if self.unsettled.get(&path) == Some(&None) {
                self.unsettled.remove(&path);
                if let Some(state) = self.files.remove(&path) {
                    count_changes(state.objects.len());
                }
                self.dirty.insert(path);
                changed = true;
            } else {
                self.unsettled.insert(path, None);
                unsettled = true;
            }
        }
        // A file that appeared and vanished before settling is forgotten.
        self.unsettled.retain(|path, fp| fp.is_none() || seen.contains(path));
        Ok(Rescan { changed, unsettled, bulk })
    }

    /// The world made of every file's last good objects. An object defined
    /// in two files is taken from the first by file name (and logged).
    /// Updated in place for the files changed since the last call; rebuilt
    /// when a change touches an object defined twice.
    pub fn world(&mut self) -> (&World, &Origins) {
        let dirty = std::mem::take(&mut self.dirty);
        let updated = match self.built.as_mut() {
            Some(built) => dirty.iter().all(|path| built.update(path, self.files.get(path))),
            None => false,
        };
        if !updated {
            self.built = Some(Built::from_files(&self.files));
        }
        let built = self.built.as_ref().expect("built above");
        (&built.world, &built.origins)
    }
}

impl Built {
    fn from_files(files: &BTreeMap<PathBuf, FileState>) -> Self {
        let mut built = Built::default();
        for (path, state) in files {
            // One copy of the path, shared by the file's objects.
            let shared: Arc<Path> = Arc::from(path.as_path());
            let mut ids = Vec::with_capacity(state.objects.len());
            for object in &state.objects {
                yield_point();
                let id = (object.kind(), object.key());
                if let Some(first) = built.origins.get(&id) {
                    tracing::warn!(
                        file = %path.display(), kind = id.0, object = %id.1, first = %first.display(),
                        "object defined twice; using the first file's"
                    );
                    built.duplicated.insert(id);
                    continue;
                }
                built.world.insert(object.clone());
                built.origins.insert(id.clone(), shared.clone());
                ids.push(id);
            }
            built.by_file.insert(path.clone(), ids);
        }
        built
    }

    /// Replaces what `path` contributed by its current objects (`None`:
    /// the file is gone). False when that cannot be done in place (an
    /// object defined elsewhere too): the caller rebuilds.
    fn update(&mut self, path: &Path, state: Option<&FileState>) -> bool {
        let objects = state.map_or(&[][..], |s| &s.objects[..]);
        let old = self.by_file.get(path).map_or(&[][..], |ids| &ids[..]);
        let mut new_ids = Vec::with_capacity(objects.len());
        let mut seen = HashSet::with_capacity(objects.len());
        for object in objects {
            let id = (object.kind(), object.key());
            let elsewhere = self.origins.get(&id).is_some_and(|p| **p != *path);
            if elsewhere || self.duplicated.contains(&id) || !seen.insert(id.clone()) {
                return false;
            }
            new_ids.push(id);
        }
        if old.iter().any(|id| self.duplicated.contains(id)) {
            return false;
        }
        for id in old {
            yield_point();
            self.world.remove(id.0, &id.1);
            self.origins.remove(id);
        }
        let shared: Arc<Path> = Arc::from(path);
        for (object, id) in objects.iter().zip(&new_ids) {
            yield_point();
            self.world.insert(object.clone());
            self.origins.insert(id.clone(), shared.clone());
        }
        if state.is_some() {
            self.by_file.insert(path.to_path_buf(), new_ids);
        } else {
            self.by_file.remove(path);
        }
        true
    }
}

/// Whether the directory's file at `path` is read as a manifest.
fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// Watches `dir` and calls `on_change` with the new world after each
/// change (and once at start). Runs until the task is dropped. Needs the
/// multi-thread runtime (scans run in `block_in_place`).
pub async fn watch(mut dir: ManifestDir, mut on_change: impl FnMut(&World, &Origins)) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<(PathBuf, bool)>>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
            // Closed after writing, or renamed into place: the file is whole.
            let complete = matches!(
                event.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            );
            // Other accesses (opens, reads, a close after reading) change
            // nothing, and the rescan's own reads cause them: reacting to
            // those would rescan in a loop.
            if matches!(event.kind, EventKind::Access(_)) && !complete {
                return;
            }
            // A writer's temporary file (renamed into place later) is no
            // change yet: only manifests put the apply in progress behind,
            // and so do a lost-events rescan and the `..data` symlink swap
            // of a mounted ConfigMap or Secret.
            let swap = |p: &PathBuf| p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".."));
            if event.need_rescan() || event.paths.is_empty() || event.paths.iter().any(|p| is_manifest(p) || swap(p)) {
                pace::behind();
            }
            let _ = tx.send(event.paths.into_iter().map(|p| (p, complete)).collect());
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
        // Reading, parsing and compiling a large directory takes
        // milliseconds: off the worker, so that the runtime's other tasks
        // do not wait for it (the runtime moves them to another thread).
        // What changed so far goes into this scan; long loops yield the
        // CPU to requests if more changes come meanwhile (`pace`).
        pace::caught_up();
        let settle = tokio::task::block_in_place(|| match dir.rescan() {
            Ok(scan) => {
                if scan.changed || first {
                    let (world, origins) = dir.world();
                    on_change(world, origins);
                    first = false;
                }
                scan.unsettled
            }
            Err(err) => {
                tracing::error!(dir = %dir.path().display(), error = %err, "cannot list manifest directory");
                false
            }
        });
        if settle {
            tokio::time::sleep(SETTLE).await;
            continue;
        }
        tokio::select! {
            _ = tick.tick() => {}
            Some(paths) = rx.recv() => {
                // Coalesce a burst (editors write, rename, chmod…); the
                // latest event of each file says whether it is complete.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let mut events = paths;
                while let Ok(more) = rx.try_recv() {
                    events.extend(more);
                }
                for (path, complete) in events {
                    dir.note_event(&path, complete);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn changes_apply_only_once_settled_and_deletes_need_two_scans() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("svc.yaml");
        std::fs::write(&file, SVC).unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        // The first scan applies at once.
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: true, unsettled: false, bulk: false });
        assert_eq!(dir.world().0.services.len(), 1);
        // Truncated (as `cmd > file` does first): not applied on one sighting.
        std::fs::write(&file, "").unwrap();
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: false, unsettled: true, bulk: false });
        assert_eq!(dir.world().0.services.len(), 1, "a half-written file does not empty the table");
        // Fully written before the next scan: the complete version applies.
        std::fs::write(&file, format!("{SVC}---\n")).unwrap();
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: false, unsettled: true, bulk: false });
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: true, unsettled: false, bulk: false });
        assert_eq!(dir.world().0.services.len(), 1);
        // Deleted: forgotten only when still gone on the next scan.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: false, unsettled: true, bulk: false });
        assert_eq!(dir.world().0.services.len(), 1);
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: true, unsettled: false, bulk: false });
        assert!(dir.world().0.services.is_empty());
    }

    /// The world kept up to date file by file is the one a full rebuild
    /// makes, through edits, duplicates (first file by name wins), deletes
    /// and an object moving between files.
    #[test]
    fn the_world_updated_in_place_equals_a_rebuild() {
        let svc = |name: &str, port: u16| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: {port}}}]}}\n")
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        let step = |dir: &mut ManifestDir, writes: &[(&str, Option<String>)]| {
            for (file, text) in writes {
                let path = tmp.path().join(file);
                match text {
                    Some(text) => std::fs::write(&path, text).unwrap(),
                    None => std::fs::remove_file(&path).unwrap(),
                }
                dir.note_event(&path, true);
            }
            // Deletes need a second scan.
            for _ in 0..3 {
                if !dir.rescan().unwrap().unsettled {
                    break;
                }
            }
            let rebuilt = Built::from_files(&dir.files);
            let (world, origins) = dir.world();
            assert_eq!(world.services, rebuilt.world.services);
            assert_eq!(*origins, rebuilt.origins);
            world
                .services
                .iter()
                .map(|(k, s)| (k.name.clone(), s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port))
                .collect::<Vec<_>>()
        };
        let ports = step(&mut dir, &[("a.yaml", Some(svc("web", 80))), ("b.yaml", Some(svc("api", 90)))]);
        assert_eq!(ports, [("api".to_string(), 90), ("web".to_string(), 80)]);
        let ports = step(&mut dir, &[("a.yaml", Some(svc("web", 81)))]);
        assert_eq!(ports, [("api".to_string(), 90), ("web".to_string(), 81)]);
        let ports = step(&mut dir, &[("c.yaml", Some(svc("web", 82)))]);
        assert_eq!(ports, [("api".to_string(), 90), ("web".to_string(), 81)], "a.yaml is first by name");
        let ports = step(&mut dir, &[("a.yaml", None)]);
        assert_eq!(ports, [("api".to_string(), 90), ("web".to_string(), 82)], "c.yaml's copy takes over");
        let ports = step(&mut dir, &[("b.yaml", Some(String::new())), ("a.yaml", Some(svc("api", 91)))]);
        assert_eq!(ports, [("api".to_string(), 91), ("web".to_string(), 82)]);
        let ports = step(&mut dir, &[("d.yaml", Some(format!("{}---\n{}", svc("db", 5432), svc("cache", 6379))))]);
        assert_eq!(ports.len(), 4);
    }

    #[test]
    fn a_file_closed_after_writing_applies_in_one_scan() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("svc.yaml");
        std::fs::write(&file, SVC).unwrap();
        let mut dir = ManifestDir::new(tmp.path());
        assert!(dir.rescan().unwrap().changed);
        // Closed after writing: applied at once.
        std::fs::write(&file, SVC.replace("web", "api")).unwrap();
        dir.note_event(&file, true);
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: true, unsettled: false, bulk: false });
        // Written again, with a later event that is not a close: it settles first.
        std::fs::write(&file, SVC.replace("web", "other")).unwrap();
        dir.note_event(&file, true);
        dir.note_event(&file, false);
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: false, unsettled: true, bulk: false });
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: true, unsettled: false, bulk: false });
        // A mark serves one scan only.
        dir.note_event(&file, true);
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: false, unsettled: false, bulk: false });
        std::fs::write(&file, SVC.replace("web", "fourth-name")).unwrap();
        assert_eq!(dir.rescan().unwrap(), Rescan { changed: false, unsettled: true, bulk: false });
    }

    #[test]
    fn temporary_files_are_not_manifests() {
        for name in ["a.yaml", "b.yml", "c.json", "dir/d.yaml"] {
            assert!(is_manifest(Path::new(name)), "{name}");
        }
        for name in ["a.yaml.tmp", ".tmp", "slices-001.yaml.swp", "README", "e.yaml~"] {
            assert!(!is_manifest(Path::new(name)), "{name}");
        }
    }

    /// A change of many objects (a rollout's EndpointSlices, a large file
    /// replaced or deleted) is applied paced (`pace`); a small one (one
    /// object edited, even in a large file) and the first scan are not.
    #[test]
    fn a_bulk_change_is_paced_and_a_small_one_is_not() {
        let _flag = crate::source::PACE_FLAG.blocking_lock();
        let svc = |name: &str| {
            format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}]}}\n")
        };
        let many = |prefix: &str, n: usize| (0..n).map(|i| svc(&format!("{prefix}-{i}"))).collect::<String>();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("svc.yaml");
        let mut dir = ManifestDir::new(tmp.path());
        let mut scan = |text: String| {
            std::fs::write(&file, text).unwrap();
            dir.note_event(&file, true);
            pace::caught_up();
            let scan = dir.rescan().unwrap();
            assert_eq!(scan.bulk, pace::is_behind());
            (scan.changed, scan.bulk)
        };
        assert_eq!(scan(many("first", pace::BULK)), (true, false), "the first scan is not paced");
        let mut edited = many("first", pace::BULK);
        edited.push_str(&svc("one-more"));
        assert_eq!(scan(edited), (true, false), "one object more in a large file is a small change");
        assert_eq!(scan(many("again", pace::BULK)), (true, true), "every object replaced");
        assert_eq!(scan(svc("one")), (true, true), "all but one removed");
        assert_eq!(scan(svc("two")), (true, false));
        assert_eq!(dir.world().0.services.len(), 1);
    }
}
