//! Embedding proxy-core with a tiny custom backend that prints the Changes it receives.
//!
//! ```sh
//! cargo run -p proxy-core --features manifests --example print_backend -- examples/cluster
//! ```
//!
//! It feeds YAML manifests (files or directories) to an [`Engine`], syncs a backend, then
//! deletes one EndpointSlice and syncs again, so both a full and a partial sync show up.

use std::convert::Infallible;
use std::path::Path;

use proxy_core::manifest::{self, Object};
use proxy_core::{Backend, Change, Changes, Desired, Engine, NodeContext, SyncStats, Syncer, ingest, translate};

/// The whole backend: print what changed.
struct PrintBackend;

impl Backend for PrintBackend {
    type Error = Infallible;

    fn sync_full(&mut self, desired: &Desired) -> Result<SyncStats, Infallible> {
        println!("full sync: {} service ports", desired.service_port_count());
        for rules in desired.families().flat_map(|f| f.service_ports.values()) {
            println!("  {} {}:{} -> {:?}", rules.name, rules.cluster_ip, rules.port, rules.internal_route());
        }
        Ok(SyncStats { full: true, operations: desired.service_port_count() })
    }

    fn sync_partial(&mut self, changes: &Changes, _desired: &Desired) -> Result<SyncStats, Infallible> {
        for family in proxy_core::IpFamily::ALL {
            for (name, change) in &changes.family(family).service_ports {
                match change {
                    Change::Added(_) => println!("  + {name}"),
                    Change::Removed(_) => println!("  - {name}"),
                    Change::Updated { .. } => {
                        let delta = change.endpoint_delta();
                        println!("  ~ {name}: +{:?} -{:?}", delta.added, delta.removed)
                    }
                }
            }
        }
        Ok(SyncStats { full: false, operations: changes.len() })
    }

    fn cleanup(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let mut engine = Engine::new(NodeContext::new("node-a"));
    let mut last_slice = None;
    for path in &paths {
        for file in files(Path::new(path))? {
            for object in manifest::parse(&std::fs::read_to_string(&file)?) {
                let ingested = match object {
                    Ok(Object::Service(s)) => ingest::service_applied(&s),
                    Ok(Object::EndpointSlice(s)) => {
                        last_slice = Some(ingest::slice_deleted(&s));
                        ingest::slice_applied(&s)
                    }
                    Ok(Object::Node(n)) => {
                        // The node's context is the embedder's: here, from its Node object.
                        if let Ok(node) = translate::node(&n) {
                            let mut context = engine.node_context().clone();
                            context.update_from_node(&node.value);
                            engine.set_node_context(context);
                        }
                        continue;
                    }
                    Ok(Object::ServiceCidr(_)) => continue,
                    Err(e) => {
                        eprintln!("{}: {e}", file.display());
                        continue;
                    }
                };
                ingested.problems.iter().for_each(|p| eprintln!("{}: {p}", file.display()));
                engine.apply(ingested.event);
            }
        }
    }
    let mut syncer = Syncer::new(PrintBackend);
    let plan = engine.plan();
    syncer.sync(&plan, engine.desired())?;

    if let Some(delete) = last_slice {
        println!("after deleting the last EndpointSlice:");
        engine.apply(delete);
        let plan = engine.plan();
        syncer.sync(&plan, engine.desired())?;
    }
    Ok(())
}

/// A file, or the `.yaml`/`.yml`/`.json` files of a directory in name order.
fn files(path: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<_> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
        .collect();
    out.sort();
    Ok(out)
}
