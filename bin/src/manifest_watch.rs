//! `kproxy run --manifests`: the manifests as a source of [`Update`]s.
//!
//! Files are watched with inotify (the `notify` crate); a change re-reads only the files it
//! names. A file that cannot be read whole right now (caught mid-write, say) keeps its
//! previous objects, so a half-written file does not delete Services. Where inotify is not
//! available, the files are polled instead.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use proxy_core::manifest::Object;
use proxy_core::{Event, ObjectRef, ingest};
use tracing::warn;

use crate::manifests::{self, FileLoad};
use crate::source::Update;

/// The identity of a Service or EndpointSlice, to notice deletions.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Key {
    Service(ObjectRef),
    Slice(ObjectRef),
}

fn key(object: &Object) -> Option<Key> {
    let id = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        ObjectRef::new(m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or(""))
    };
    match object {
        Object::Service(s) => Some(Key::Service(id(&s.metadata))),
        Object::EndpointSlice(s) => Some(Key::Slice(id(&s.metadata))),
        Object::Node(_) | Object::ServiceCidr(_) => None,
    }
}

/// The manifests as last read: each file's objects.
#[derive(Default)]
pub struct Manifests {
    paths: Vec<PathBuf>,
    files: BTreeMap<PathBuf, Vec<Object>>,
    known: HashSet<Key>,
}

impl Manifests {
    /// Reads every file once. Fails only when a path cannot be listed at all.
    pub fn read(paths: &[PathBuf]) -> Result<(Manifests, Vec<Update>)> {
        let mut m = Manifests { paths: paths.to_vec(), ..Manifests::default() };
        let files = manifests::load_files(paths)?;
        let updates = m.take(files, true);
        Ok((m, updates))
    }

    /// Re-reads the files `changed` names (all of them when it is empty), and returns the
    /// updates that bring the engine in line with them.
    pub fn reread(&mut self, changed: &[PathBuf]) -> Result<Vec<Update>> {
        let wanted = manifests::files(&self.paths)?;
        let present: HashSet<&PathBuf> = wanted.iter().collect();
        let before = self.files.len();
        self.files.retain(|path, _| present.contains(path));
        let removed = self.files.len() != before;
        let todo: Vec<PathBuf> = if changed.is_empty() {
            wanted.clone()
        } else {
            wanted.iter().filter(|p| changed.iter().any(|c| same_file(c, p))).cloned().collect()
        };
        if todo.is_empty() && !removed {
            return Ok(Vec::new());
        }
        let files = manifests::load_files(&todo)?;
        Ok(self.take(files, removed))
    }

    /// Stores freshly read files; returns the engine's updates.
    fn take(&mut self, files: Vec<FileLoad>, context_may_change: bool) -> Vec<Update> {
        let mut updates = Vec::new();
        let mut problems = Vec::new();
        let mut fresh = Vec::new();
        for file in files {
            problems.extend(file.problems);
            if file.complete || !self.files.contains_key(&file.path) {
                fresh.push(file.path.clone());
                self.files.insert(file.path, file.objects);
            } else {
                warn!(file = %file.path.display(), "incomplete manifest; keeping its previous contents");
            }
        }
        let known: HashSet<Key> = self.files.values().flatten().filter_map(key).collect();
        for gone in self.known.difference(&known) {
            updates.push(Update::Event(match gone {
                Key::Service(id) => Event::ServiceDeleted(id.clone()),
                Key::Slice(id) => Event::SliceDeleted(id.clone()),
            }));
        }
        self.known = known;
        for object in fresh.iter().flat_map(|path| &self.files[path]) {
            let ingested = match object {
                Object::Service(s) => ingest::service_applied(s),
                Object::EndpointSlice(s) => ingest::slice_applied(s),
                Object::Node(_) | Object::ServiceCidr(_) => continue,
            };
            problems.extend(ingested.problems.iter().map(ToString::to_string));
            updates.push(Update::Event(ingested.event));
        }
        crate::report(&problems);
        let context: Vec<Object> = self
            .files
            .values()
            .flatten()
            .filter(|o| matches!(o, Object::Node(_) | Object::ServiceCidr(_)))
            .cloned()
            .collect();
        if context_may_change || !fresh.is_empty() {
            updates.push(Update::Context(context));
        }
        updates
    }
}

/// Whether two paths name the same file (inotify reports absolute paths; the flags may
/// give relative ones).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || std::path::absolute(a).ok() == std::path::absolute(b).ok()
}

/// The directories to watch: each directory given, and the parent of each file given (so
/// that a file replaced by a rename is still seen).
fn watch_points(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.as_os_str() != "-")
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            }
        })
        .collect();
    points.sort();
    points.dedup();
    points
}

/// Reads the manifests once, sends their updates and `Listed`, then watches them on a
/// thread of its own. `poll` is the polling interval where inotify is not available.
pub fn spawn<T: Send + 'static>(paths: &[PathBuf], poll: Duration, tx: Sender<T>, wrap: fn(Update) -> T) -> Result<()> {
    let (mut manifests, updates) = Manifests::read(paths)?;
    for update in updates.into_iter().chain([Update::Listed]) {
        let _ = tx.send(wrap(update));
    }
    let (events_tx, events) = mpsc::channel::<Vec<PathBuf>>();
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !event.kind.is_access()
        {
            let _ = events_tx.send(event.paths);
        }
    };
    let mut watcher: Box<dyn Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
        Ok(w) => Box::new(w),
        Err(e) => {
            warn!("inotify unavailable ({e}); polling the manifests every {poll:?}");
            Box::new(notify::PollWatcher::new(handler, notify::Config::default().with_poll_interval(poll))?)
        }
    };
    for point in watch_points(paths) {
        watcher.watch(&point, RecursiveMode::NonRecursive).with_context(|| format!("watching {}", point.display()))?;
    }
    std::thread::Builder::new().name("manifests".into()).spawn(move || {
        let _watcher = watcher;
        while let Ok(mut changed) = events.recv() {
            // An editor's save is several events: take them together.
            while let Ok(more) = events.recv_timeout(Duration::from_millis(10)) {
                changed.extend(more);
            }
            let updates = match manifests.reread(&changed) {
                Ok(updates) => updates,
                Err(e) => {
                    warn!("reading the manifests: {e:#}; keeping the current rules");
                    continue;
                }
            };
            for update in updates {
                if tx.send(wrap(update)).is_err() {
                    return;
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {namespace: default, name: NAME}\n\
                       spec: {clusterIP: ADDR, ports: [{port: 80}]}\n";

    fn svc(name: &str, ip: &str) -> String {
        SVC.replace("NAME", name).replace("ADDR", ip)
    }

    fn summary(updates: &[Update]) -> Vec<String> {
        updates
            .iter()
            .map(|u| match u {
                Update::Event(Event::ServiceApplied(s)) => format!("+svc {}", s.id),
                Update::Event(Event::ServiceDeleted(id)) => format!("-svc {id}"),
                Update::Event(other) => format!("{other:?}"),
                Update::Context(objects) => format!("context {}", objects.len()),
                Update::Listed => "listed".into(),
            })
            .collect()
    }

    #[test]
    fn only_changed_files_are_read_and_deletions_are_found() {
        let dir = std::env::temp_dir().join(format!("kproxy-manifest-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), svc("a", "10.96.0.1")).unwrap();
        std::fs::write(dir.join("b.yaml"), svc("b", "10.96.0.2")).unwrap();
        let (mut m, updates) = Manifests::read(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(summary(&updates), ["+svc default/a", "+svc default/b", "context 0"]);

        // b changes: only b is read again.
        std::fs::write(dir.join("b.yaml"), svc("b", "10.96.0.3")).unwrap();
        assert_eq!(summary(&m.reread(&[dir.join("b.yaml")]).unwrap()), ["+svc default/b", "context 0"]);
        // A file caught half-written keeps its objects.
        std::fs::write(dir.join("a.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: [").unwrap();
        assert_eq!(summary(&m.reread(&[dir.join("a.yaml")]).unwrap()), Vec::<String>::new());
        // A Service moving from one file to another is not deleted.
        std::fs::write(dir.join("a.yaml"), "").unwrap();
        std::fs::write(dir.join("b.yaml"), svc("a", "10.96.0.1") + "---\n" + &svc("b", "10.96.0.3")).unwrap();
        let updates = m.reread(&[dir.join("a.yaml"), dir.join("b.yaml")]).unwrap();
        assert_eq!(summary(&updates), ["+svc default/a", "+svc default/b", "context 0"]);
        // A removed file deletes its objects; an unrelated file is ignored.
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let updates = m.reread(&[dir.join("b.yaml"), dir.join("notes.txt")]).unwrap();
        let mut s = summary(&updates);
        s.sort();
        assert_eq!(s, ["-svc default/a", "-svc default/b", "context 0"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_watched_through_their_directories() {
        let points = watch_points(&[PathBuf::from("/etc/kproxy/a.yaml"), PathBuf::from("b.yaml"), "-".into()]);
        assert_eq!(points, [PathBuf::from("/etc/kproxy"), PathBuf::from(".")]);
    }
}
