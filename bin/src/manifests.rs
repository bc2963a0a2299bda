//! Loading manifests from files and directories, and turning them into desired rules.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use proxy_core::manifest::{self, Object};
use proxy_core::{Engine, ingest, translate};

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

/// This node's context from the configuration and the manifests' Node and ServiceCIDRs.
pub fn context(config: &Config, objects: &[Object], problems: &mut Vec<String>) -> Result<proxy_core::NodeContext> {
    let name = node::node_name(config);
    let mut node_obj = None;
    let mut service_cidrs = Vec::new();
    for object in objects {
        match object {
            Object::Node(n) if n.metadata.name.as_deref() == Some(name.as_str()) => match translate::node(n) {
                Ok(t) => {
                    problems.extend(t.problems.iter().map(ToString::to_string));
                    node_obj = Some(t.value);
                }
                Err(e) => problems.push(format!("{e:?}")),
            },
            Object::ServiceCidr(c) => {
                let cidrs = c.spec.as_ref().and_then(|s| s.cidrs.as_ref()).into_iter().flatten();
                for cidr in cidrs {
                    match proxy_core::ip::parse_cidr_sloppy(cidr) {
                        Some(net) => service_cidrs.push(net),
                        None => problems.push(format!(
                            "ServiceCIDR {}: spec.cidrs: invalid CIDR {cidr:?}",
                            c.metadata.name.as_deref().unwrap_or("")
                        )),
                    }
                }
            }
            _ => {}
        }
    }
    node::context(config, node_obj.as_ref(), service_cidrs)
}

/// Whether this node may receive traffic: false while its Node object is being deleted
/// or carries the cluster autoscaler's deletion taint (kube-proxy's "node eligible").
pub fn node_eligible(config: &Config, objects: &[Object]) -> bool {
    let name = node::node_name(config);
    !objects.iter().any(|o| match o {
        Object::Node(n) if n.metadata.name.as_deref() == Some(name.as_str()) => {
            translate::node(n).is_ok_and(|t| t.value.being_deleted)
        }
        _ => false,
    })
}

/// The engine holding the manifests' objects, planned once, with this node's context.
/// Problems found while translating are appended to `problems`.
pub fn engine(config: &Config, objects: &[Object], problems: &mut Vec<String>) -> Result<Engine> {
    let mut engine = Engine::new(context(config, objects, problems)?);
    apply(&mut engine, objects, problems);
    engine.plan();
    Ok(engine)
}

/// Feeds the Services and EndpointSlices to the engine (the Node and ServiceCIDRs shape
/// the node context instead, see [`context`]).
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
