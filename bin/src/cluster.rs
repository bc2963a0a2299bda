//! `kproxy run` against the Kubernetes API: watchers on Services and EndpointSlices (in
//! protobuf, see `listwatch`), this node's Node and the ServiceCIDRs (kube-rs), turned
//! into [`Update`]s for the sync loop.
//!
//! The watchers use kube-proxy's label selectors, so Services and EndpointSlices that
//! belong to another proxy (`service.kubernetes.io/service-proxy-name`) or to headless
//! Services never reach kproxy. A relist (after a 410 Gone or a reconnect) re-applies
//! every object and deletes those that disappeared meanwhile; re-applied objects that did
//! not change mark nothing in the snapshot, so a relist leaves the ruleset alone.
//!
//! The watchers run on their own thread with a small tokio runtime; the sync loop stays
//! synchronous and receives updates over a channel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event as Watched};
use kube::{Api, Client, Resource, ResourceExt};
use proxy_core::manifest::Object;

use crate::listwatch;
use crate::retry::Retry;
use crate::source::Update;
use proxy_core::{Event, ObjectRef, ingest};
use tracing::{info, warn};

/// kube-proxy's selector for Services and EndpointSlices: not owned by another proxy, and
/// not headless.
pub const PROXIED: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Where the API server is and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// A kubeconfig file (`--kubeconfig`); without it, the in-cluster configuration or
    /// `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Overrides the API server address (`--master`).
    pub master: Option<String>,
}

async fn client(connection: &Connection) -> Result<Client> {
    let mut config = match &connection.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("finding the Kubernetes API (in-cluster or kubeconfig)")?,
    };
    if let Some(master) = &connection.master {
        config.cluster_url = master.parse().with_context(|| format!("--master: invalid URL {master:?}"))?;
    }
    Client::try_from(config).context("building the Kubernetes client")
}

/// Starts the watchers on their own thread. Updates go to `tx`, wrapped by `wrap`. The
/// client is built before this returns, so a bad kubeconfig fails the start.
///
/// With the localhost relay's counters, its listeners that cannot open become Warning
/// Events on their Services too.
pub fn spawn<T: Send + 'static>(
    connection: &Connection,
    node_name: String,
    relay: Option<Arc<relay_backend::Stats>>,
    tx: Sender<T>,
    wrap: fn(Update) -> T,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let client = runtime.block_on(client(connection))?;
    std::thread::Builder::new().name("watch".into()).spawn(move || {
        let watchers = Watchers::new(client, node_name);
        if let Some(stats) = relay {
            let (client, recorder) = (watchers.client.clone(), watchers.recorder.clone());
            runtime.spawn(relay_events(client, recorder, stats));
        }
        runtime.block_on(watchers.run(|u| tx.send(wrap(u)).is_ok()));
    })?;
    Ok(())
}

/// Turns the localhost relay's listeners that cannot open (most often: another process
/// holds the port on 127.0.0.1) into Warning Events on their Services, once per failure.
async fn relay_events(client: Client, recorder: Recorder, stats: Arc<relay_backend::Stats>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        for failure in stats.take_failures() {
            let svc = &failure.route.name.service;
            // The Event needs the Service's uid, which the watchers do not keep. kproxy
            // may list Services, not get them: a list of one, by name.
            let api = Api::<Service>::namespaced(client.clone(), &svc.namespace);
            let one = kube::api::ListParams::default().fields(&format!("metadata.name={}", svc.name));
            let reference = match api.list(&one).await.map(|l| l.items.into_iter().next()) {
                Ok(Some(s)) => s.object_ref(&()),
                Ok(None) => continue,
                Err(e) => {
                    warn!("could not read Service {svc} for an Event: {e}");
                    continue;
                }
            };
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: "LocalhostNodePortConflict".into(),
                note: Some(format!("cannot serve NodePort {} on this node: {}", failure.listener, failure.error)),
                action: "ServeLocalhostNodePort".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!("could not record an Event for Service {svc}: {e}");
            }
        }
    }
}

/// One watch event, tagged with its resource. Each lives only until it is handled, so
/// the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Tagged {
    Service(anyhow::Result<Watched<Service>>),
    Slice(anyhow::Result<Watched<EndpointSlice>>),
    Node(watcher::Result<Watched<Node>>),
    Cidr(watcher::Result<Watched<ServiceCIDR>>),
}

/// The names seen by one watcher, to find deletions across a relist. Hashed with foldhash
/// (seeded per process): with SipHash, these sets were a twelfth of the initial list's time.
#[derive(Default)]
struct Names {
    known: foldhash::HashSet<ObjectRef>,
    relisting: Option<foldhash::HashSet<ObjectRef>>,
    listed: bool,
}

impl Names {
    fn start_list(&mut self, what: &str) {
        if self.listed {
            info!("relisting {what}");
        }
        // Nothing can have disappeared before anything was seen: the first list (the
        // bulk of the objects) is recorded once, not twice.
        self.relisting = (!self.known.is_empty()).then(foldhash::HashSet::default);
    }

    fn seen(&mut self, id: ObjectRef) {
        if let Some(relisting) = &mut self.relisting {
            relisting.insert(id.clone());
        }
        self.known.insert(id);
    }

    /// Ends a (re)list; returns the names that were not in it.
    fn list_done(&mut self) -> Vec<ObjectRef> {
        self.listed = true;
        let Some(now) = self.relisting.take() else { return Vec::new() };
        let gone: Vec<ObjectRef> = self.known.difference(&now).cloned().collect();
        self.known = now;
        gone
    }
}

struct Watchers {
    client: Client,
    node_name: String,
    recorder: Recorder,
    services: Names,
    slices: Names,
    node: Option<Node>,
    /// The Node watch has finished its first list (found the Node or not).
    node_listed: bool,
    cidrs: BTreeMap<String, ServiceCIDR>,
    /// The last problems reported per Service, so that a relist does not repeat Events.
    reported: foldhash::HashMap<ObjectRef, String>,
    announced: bool,
}

fn id_of<K: Resource>(obj: &K) -> ObjectRef {
    ObjectRef::new(obj.namespace().as_deref().unwrap_or("default"), obj.name_any())
}

fn watch<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = watcher::Result<Watched<K>>> + Send
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    // managedFields are never read: Services and EndpointSlices are decoded without them
    // (see `proto`); the Node and ServiceCIDRs drop them here, so nothing keeps them around.
    watcher::watcher(api, config).backoff(Retry::default()).modify(|o| o.managed_fields_mut().clear())
}

impl Watchers {
    fn new(client: Client, node_name: String) -> Watchers {
        let reporter = Reporter { controller: "kproxy".into(), instance: Some(node_name.clone()) };
        Watchers {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node_name,
            services: Names::default(),
            slices: Names::default(),
            node: None,
            node_listed: false,
            cidrs: BTreeMap::new(),
            reported: foldhash::HashMap::default(),
            announced: false,
        }
    }

    /// Runs until `send` fails (the sync loop is gone).
    async fn run(mut self, mut send: impl FnMut(Update) -> bool) {
        // Services and EndpointSlices in protobuf, as kube-proxy: the API server encodes
        // a protobuf list several times faster than JSON, and kproxy decodes it faster
        // still (see `proto`). The Node and ServiceCIDRs are few and stay on kube-rs.
        let this_node = watcher::Config::default().fields(&format!("metadata.name={}", self.node_name));
        let c = &self.client;
        let mut all = futures::stream::select_all([
            listwatch::list_watch::<Service>(c.clone(), PROXIED).map(Tagged::Service).boxed(),
            listwatch::list_watch::<EndpointSlice>(c.clone(), PROXIED).map(Tagged::Slice).boxed(),
            watch(Api::<Node>::all(c.clone()), this_node).map(Tagged::Node).boxed(),
            watch(Api::<ServiceCIDR>::all(c.clone()), watcher::Config::default()).map(Tagged::Cidr).boxed(),
        ]);
        while let Some(tagged) = all.next().await {
            for update in self.handle(tagged) {
                if !send(update) {
                    return;
                }
            }
        }
    }

    fn handle(&mut self, tagged: Tagged) -> Vec<Update> {
        let mut out = Vec::new();
        match tagged {
            Tagged::Service(Ok(ev)) => self.on_service(ev, &mut out),
            Tagged::Slice(Ok(ev)) => self.on_slice(ev, &mut out),
            Tagged::Node(Ok(ev)) => {
                if self.on_node(ev) {
                    out.push(Update::Context(self.context_objects()));
                }
            }
            Tagged::Cidr(Ok(ev)) => {
                if self.on_cidr(ev) {
                    out.push(Update::Context(self.context_objects()));
                }
            }
            Tagged::Service(Err(e)) => warn!("watching Services: {e}; retrying"),
            Tagged::Slice(Err(e)) => warn!("watching EndpointSlices: {e}; retrying"),
            Tagged::Node(Err(e)) => warn!("watching Node {}: {e}; retrying", self.node_name),
            Tagged::Cidr(Err(e)) => warn!("watching ServiceCIDRs: {e}; retrying"),
        }
        // Like kube-proxy, wait for the Node too: its zone and addresses shape the rules,
        // and learning them just after the first sync would redo that sync in full.
        if !self.announced && self.services.listed && self.slices.listed && self.node_listed {
            self.announced = true;
            info!(services = self.services.known.len(), slices = self.slices.known.len(), "initial list done");
            out.push(Update::Listed);
        }
        out
    }

    fn on_service(&mut self, ev: Watched<Service>, out: &mut Vec<Update>) {
        match ev {
            Watched::Init => self.services.start_list("Services"),
            Watched::InitApply(svc) | Watched::Apply(svc) => {
                let id = id_of(&svc);
                self.services.seen(id.clone());
                let ingested = ingest::service_applied(&svc);
                self.report(&svc, &id, &ingested);
                out.push(Update::Event(ingested.event));
            }
            Watched::InitDone => {
                out.extend(self.services.list_done().into_iter().map(|id| Update::Event(Event::ServiceDeleted(id))));
            }
            Watched::Delete(svc) => {
                let id = id_of(&svc);
                self.services.known.remove(&id);
                self.reported.remove(&id);
                out.push(Update::Event(Event::ServiceDeleted(id)));
            }
        }
    }

    fn on_slice(&mut self, ev: Watched<EndpointSlice>, out: &mut Vec<Update>) {
        match ev {
            Watched::Init => self.slices.start_list("EndpointSlices"),
            Watched::InitApply(slice) | Watched::Apply(slice) => {
                self.slices.seen(id_of(&slice));
                let ingested = ingest::slice_applied(&slice);
                for p in &ingested.problems {
                    warn!("skipped {p}");
                }
                out.push(Update::Event(ingested.event));
            }
            Watched::InitDone => {
                out.extend(self.slices.list_done().into_iter().map(|id| Update::Event(Event::SliceDeleted(id))));
            }
            Watched::Delete(slice) => {
                let id = id_of(&slice);
                self.slices.known.remove(&id);
                out.push(Update::Event(Event::SliceDeleted(id)));
            }
        }
    }

    /// Returns whether the Node changed.
    fn on_node(&mut self, ev: Watched<Node>) -> bool {
        match ev {
            Watched::Init => false,
            Watched::InitDone => {
                self.node_listed = true;
                false
            }
            Watched::InitApply(node) | Watched::Apply(node) => {
                let changed = self.node.as_ref() != Some(&node);
                self.node = Some(node);
                changed
            }
            Watched::Delete(_) => self.node.take().is_some(),
        }
    }

    /// Returns whether the ServiceCIDRs changed.
    fn on_cidr(&mut self, ev: Watched<ServiceCIDR>) -> bool {
        match ev {
            Watched::Init | Watched::InitDone => false,
            Watched::InitApply(cidr) | Watched::Apply(cidr) => {
                let name = cidr.name_any();
                let changed = self.cidrs.get(&name).map(|c| &c.spec) != Some(&cidr.spec);
                self.cidrs.insert(name, cidr);
                changed
            }
            Watched::Delete(cidr) => self.cidrs.remove(&cidr.name_any()).is_some(),
        }
    }

    fn context_objects(&self) -> Vec<Object> {
        let node = self.node.iter().map(|n| Object::Node(Box::new(n.clone())));
        node.chain(self.cidrs.values().map(|c| Object::ServiceCidr(Box::new(c.clone())))).collect()
    }

    /// Logs a Service's problems and, when they are new, records them as a Warning Event
    /// on the Service, so that its owner sees them with `kubectl describe`. Events are sent
    /// in the background: a slow API server must not hold up the watchers.
    fn report(&mut self, svc: &Service, id: &ObjectRef, ingested: &ingest::Ingested) {
        if ingested.problems.is_empty() {
            self.reported.remove(id);
            return;
        }
        let note: Vec<String> = ingested.problems.iter().map(ToString::to_string).collect();
        let note = note.join("; ");
        let skipped = matches!(ingested.event, Event::ServiceDeleted(_));
        warn!("{} {note}", if skipped { "skipped Service:" } else { "skipped part of a Service:" });
        if self.reported.get(id) == Some(&note) {
            return;
        }
        self.reported.insert(id.clone(), note.clone());
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: if skipped { "InvalidService" } else { "InvalidServicePart" }.into(),
            // The API limits a note to 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: if skipped { "SkipService" } else { "SkipInvalidFields" }.into(),
            secondary: None,
        };
        let reference: ObjectReference = svc.object_ref(&());
        let (recorder, id) = (self.recorder.clone(), id.clone());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!("could not record an Event for Service {id}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn watchers() -> Watchers {
        // Never connected: these tests feed watch events by hand.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Watchers::new(Client::try_from(config).unwrap(), "node-a".into())
    }

    fn service(name: &str, cluster_ip: &str) -> Service {
        Service {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: Some(vec![cluster_ip.into()]),
                ports: Some(vec![ServicePort { port: 80, protocol: Some("TCP".into()), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(name: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some([("kubernetes.io/service-name".to_string(), name[..1].to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ..Default::default()
        }
    }

    /// The events in a batch of updates, as strings, and whether `Listed` was among them.
    fn summary(updates: Vec<Update>) -> (Vec<String>, bool) {
        let mut events = Vec::new();
        let mut listed = false;
        for u in updates {
            match u {
                Update::Event(Event::ServiceApplied(s)) => events.push(format!("+svc {}", s.id)),
                Update::Event(Event::ServiceDeleted(id)) => events.push(format!("-svc {id}")),
                Update::Event(Event::SliceApplied(s)) => events.push(format!("+slice {}", s.id)),
                Update::Event(Event::SliceDeleted(id)) => events.push(format!("-slice {id}")),
                Update::Context(objects) => events.push(format!("context {}", objects.len())),
                Update::Listed => listed = true,
            }
        }
        (events, listed)
    }

    #[tokio::test]
    async fn nothing_is_listed_until_services_slices_and_the_node_are() {
        let mut w = watchers();
        assert!(!summary(w.handle(Tagged::Service(Ok(Watched::Init)))).1);
        let (events, listed) = summary(w.handle(Tagged::Service(Ok(Watched::InitApply(service("a", "10.96.0.1"))))));
        assert_eq!(events, ["+svc ns/a"]);
        assert!(!listed);
        assert!(!summary(w.handle(Tagged::Service(Ok(Watched::InitDone)))).1, "slices are not listed yet");
        assert!(!summary(w.handle(Tagged::Slice(Ok(Watched::Init)))).1);
        assert!(!summary(w.handle(Tagged::Slice(Ok(Watched::InitDone)))).1, "the Node is not listed yet");
        assert!(!summary(w.handle(Tagged::Cidr(Ok(Watched::InitDone)))).1, "ServiceCIDRs do not gate");
        assert!(summary(w.handle(Tagged::Node(Ok(Watched::InitDone)))).1);
        assert!(!summary(w.handle(Tagged::Slice(Ok(Watched::Init)))).1, "Listed is sent once");
    }

    #[tokio::test]
    async fn a_relist_deletes_what_disappeared_and_keeps_the_rest() {
        let mut w = watchers();
        for ev in [
            Watched::Init,
            Watched::InitApply(service("a", "10.96.0.1")),
            Watched::InitApply(service("b", "10.96.0.2")),
            Watched::InitDone,
        ] {
            w.handle(Tagged::Service(Ok(ev)));
        }
        for ev in [Watched::Init, Watched::InitApply(slice("a-1")), Watched::InitApply(slice("b-1")), Watched::InitDone]
        {
            w.handle(Tagged::Slice(Ok(ev)));
        }
        // The watch expired (410 Gone); the relist no longer has b and b-1.
        let mut events = Vec::new();
        for ev in [Watched::Init, Watched::InitApply(service("a", "10.96.0.1")), Watched::InitDone] {
            events.extend(summary(w.handle(Tagged::Service(Ok(ev)))).0);
        }
        for ev in [Watched::Init, Watched::InitApply(slice("a-1")), Watched::InitDone] {
            events.extend(summary(w.handle(Tagged::Slice(Ok(ev)))).0);
        }
        assert_eq!(events, ["+svc ns/a", "-svc ns/b", "+slice ns/a-1", "-slice ns/b-1"]);
        // A deletion seen by the watch itself is not repeated by the next relist.
        w.handle(Tagged::Service(Ok(Watched::Delete(service("a", "10.96.0.1")))));
        let mut events = Vec::new();
        for ev in [Watched::Init, Watched::InitDone] {
            events.extend(summary(w.handle(Tagged::Service(Ok(ev)))).0);
        }
        assert!(events.is_empty(), "{events:?}");
    }

    #[tokio::test]
    async fn an_initial_list_started_again_deletes_what_the_broken_attempt_saw() {
        let mut w = watchers();
        let mut events = Vec::new();
        // The first attempt breaks after two Services; the second no longer has b.
        for ev in [
            Watched::Init,
            Watched::InitApply(service("a", "10.96.0.1")),
            Watched::InitApply(service("b", "10.96.0.2")),
            Watched::Init,
            Watched::InitApply(service("a", "10.96.0.1")),
            Watched::InitDone,
        ] {
            events.extend(summary(w.handle(Tagged::Service(Ok(ev)))).0);
        }
        assert_eq!(events, ["+svc ns/a", "+svc ns/b", "+svc ns/a", "-svc ns/b"]);
    }

    #[tokio::test]
    async fn an_invalid_service_is_deleted_and_reported_once_without_blocking_others() {
        let mut w = watchers();
        let (events, _) = summary(w.handle(Tagged::Service(Ok(Watched::Apply(service("bad", "10.96.0.300"))))));
        assert_eq!(events, ["-svc ns/bad"]);
        let id = ObjectRef::new("ns", "bad");
        let note = w.reported.get(&id).cloned().expect("the problem is recorded for an Event");
        assert!(note.contains("10.96.0.300"), "{note}");
        let (events, _) = summary(w.handle(Tagged::Service(Ok(Watched::Apply(service("good", "10.96.0.3"))))));
        assert_eq!(events, ["+svc ns/good"]);
        // Fixed: the record goes, so a later breakage is reported again.
        w.handle(Tagged::Service(Ok(Watched::Apply(service("bad", "10.96.0.30")))));
        assert!(!w.reported.contains_key(&id));
    }

    #[tokio::test]
    async fn node_and_service_cidr_changes_update_the_context() {
        let mut w = watchers();
        let node =
            Node { metadata: ObjectMeta { name: Some("node-a".into()), ..Default::default() }, ..Default::default() };
        let (events, _) = summary(w.handle(Tagged::Node(Ok(Watched::InitApply(node.clone())))));
        assert_eq!(events, ["context 1"]);
        assert!(summary(w.handle(Tagged::Node(Ok(Watched::Apply(node))))).0.is_empty(), "no change, no update");
        let cidr = ServiceCIDR {
            metadata: ObjectMeta { name: Some("kubernetes".into()), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(summary(w.handle(Tagged::Cidr(Ok(Watched::Apply(cidr.clone()))))).0, ["context 2"]);
        assert_eq!(summary(w.handle(Tagged::Cidr(Ok(Watched::Delete(cidr))))).0, ["context 1"]);
    }
}
