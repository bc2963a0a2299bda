//! Loading manifests from files and directories, and turning them into desired rules.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use proxy_core::manifest::{self, Object};
use proxy_core::{Engine, ingest};

use crate::config::Config;
use crate::node;

/// The files behind a list of paths: files as given, directories as their `.yaml`, `.yml`
/// and `.json` files in name order. `-` is standard input.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            entries.sort();
            out.extend(entries);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Everything read from the manifests, in file order.
#[derive(Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    /// One line per unusable manifest entry, naming the file and the object.
    pub problems: Vec<String>,
}

/// One file's objects and problems.
pub struct FileLoad {
    pub path: PathBuf,
    pub objects: Vec<Object>,
    pub problems: Vec<String>,
    /// False when the file could not be read or stopped parsing part-way (a syntax error,
    /// or a file caught mid-write): its objects are then not the whole story.
    pub complete: bool,
}

/// Reads and parses every file, one result per file.
pub fn load_files(paths: &[PathBuf]) -> Result<Vec<FileLoad>> {
    let mut out = Vec::new();
    for path in files(paths)? {
        let mut load = FileLoad { path: path.clone(), objects: Vec::new(), problems: Vec::new(), complete: true };
        let text = if path == Path::new("-") {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    load.problems.push(format!("{}: {e}", path.display()));
                    load.complete = false;
                    out.push(load);
                    continue;
                }
            }
        };
        for entry in manifest::parse(&text) {
            match entry {
                Ok(object) => load.objects.push(object),
                Err(e) => {
                    // A document without a kind is a syntax error or a truncated file.
                    load.complete &= e.kind.is_some();
                    load.problems.push(format!("{}: {e}", path.display()));
                }
            }
        }
        out.push(load);
    }
    Ok(out)
}

/// Reads and parses every file. Unreadable files and bad entries become problems; the
/// rest is kept.
pub fn load(paths: &[PathBuf]) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    for file in load_files(paths)? {
        loaded.objects.extend(file.objects);
        loaded.problems.extend(file.problems);
    }
    Ok(loaded)
}

/// The engine holding the manifests' objects, planned once, with this node's context.
/// Problems found while translating are appended to `problems`.
pub fn engine(config: &Config, objects: &[Object], problems: &mut Vec<String>) -> Result<Engine> {
    let mut engine = Engine::new(node::context_of(config, objects, problems)?);
    apply(&mut engine, objects, problems);
    engine.plan();
    Ok(engine)
}

/// Feeds the Services and EndpointSlices to the engine (the Node and ServiceCIDRs shape
/// the node context instead, see [`node::context_of`]).
pub fn apply(engine: &mut Engine, objects: &[Object], problems: &mut Vec<String>) {
    for object in objects {
        let ingested = match object {
            Object::Service(s) => ingest::service_applied(s),
            Object::EndpointSlice(s) => ingest::slice_applied(s),
            Object::Node(_) | Object::ServiceCidr(_) => continue,
        };
        problems.extend(ingested.problems.iter().map(ToString::to_string));
        engine.apply(ingested.event);
    }
}
