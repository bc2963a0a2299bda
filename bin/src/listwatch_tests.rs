//! The list-watch loop against a fake API server: an in-process `tower` service that
//! answers kproxy's requests from a script of recorded protobuf lists and watch streams,
//! `410 Gone`, errors and server-side ends, and records what was asked.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use prost::Message as _;

use super::*;
use k8s_openapi::api::core::v1::Service;

/// A recorded list of Services (the test bed's API server, protobuf).
const LIST: &[u8] = include_bytes!("../testdata/services.pb");
/// A recorded watch stream (length-prefixed WatchEvents): Service np added.
const WATCH: &[u8] = include_bytes!("../testdata/watch-np.pb");

/// One scripted answer.
enum Reply {
    /// 200 with this body.
    Ok(Vec<u8>),
    /// An error status, with a `metav1.Status` body.
    Status(u16, &'static str),
}

#[derive(Clone, Default)]
struct FakeApiServer {
    script: Arc<Mutex<VecDeque<Reply>>>,
    asked: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

fn enveloped(message: &[u8]) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    out.extend(Envelope { raw: Some(message.to_vec()) }.encode_to_vec());
    out
}

fn status(code: u16, reason: &str) -> Vec<u8> {
    let status =
        proto::Status { code: Some(i32::from(code)), reason: Some(reason.into()), message: Some(reason.into()) };
    enveloped(&status.encode_to_vec())
}

/// A watch frame: an event of `kind` carrying `object` (encoded, not yet enveloped).
fn frame(kind: &str, object: &[u8]) -> Vec<u8> {
    let event = proto::WatchEvent {
        r#type: Some(kind.into()),
        object: Some(proto::RawExtension { raw: Some(enveloped(object)) }),
    };
    let bytes = event.encode_to_vec();
    let mut frame = (bytes.len() as u32).to_be_bytes().to_vec();
    frame.extend(bytes);
    frame
}

/// An ERROR event carrying a Status.
fn error_frame(code: u16, reason: &str) -> Vec<u8> {
    let status =
        proto::Status { code: Some(i32::from(code)), reason: Some(reason.into()), message: Some(reason.into()) };
    frame("ERROR", &status.encode_to_vec())
}

/// A BOOKMARK: only its resource version matters.
fn bookmark(version: &str) -> Vec<u8> {
    let meta = proto::ObjectMeta { resource_version: Some(version.into()), ..Default::default() };
    frame("BOOKMARK", &proto::Service { metadata: Some(meta), ..Default::default() }.encode_to_vec())
}

impl FakeApiServer {
    fn new(script: Vec<Reply>) -> FakeApiServer {
        FakeApiServer { script: Arc::new(Mutex::new(script.into())), ..Default::default() }
    }

    /// A client whose every request this fake answers, in script order; past the
    /// script, requests hang (as a watch with nothing to say).
    fn client(&self) -> Client {
        let fake = self.clone();
        let service = tower::service_fn(move |request: http::Request<Body>| {
            let fake = fake.clone();
            async move {
                fake.asked.lock().unwrap().push(request.uri().to_string());
                let reply = fake.script.lock().unwrap().pop_front();
                let (code, body) = match reply {
                    Some(Reply::Ok(body)) => (200, body),
                    Some(Reply::Status(code, reason)) => (code, status(code, reason)),
                    None => std::future::pending().await,
                };
                let response = http::Response::builder().status(code).body(Body::from(body)).unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        Client::new(service, "default")
    }
}

/// The events of the stream, as short strings, until `n` have come or none comes for 5 s.
async fn events(stream: impl Stream<Item = anyhow::Result<Watched<Service>>>, n: usize) -> Vec<String> {
    let stream = stream.take(n);
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        out.push(e);
    }
    out.into_iter()
        .map(|e| match e {
            Ok(Watched::Init) => "init".to_string(),
            Ok(Watched::InitApply(s)) => format!("list {}", kube::ResourceExt::name_any(&s)),
            Ok(Watched::InitDone) => "listed".into(),
            Ok(Watched::Apply(s)) => format!("apply {}", kube::ResourceExt::name_any(&s)),
            Ok(Watched::Delete(s)) => format!("delete {}", kube::ResourceExt::name_any(&s)),
            Err(e) => format!("error {e}"),
        })
        .collect()
}

fn listed_names() -> Vec<String> {
    let (_, items) = proto::list_parts(proto::unwrap_envelope(LIST).unwrap()).unwrap();
    items.iter().map(|i| proto::Service::decode(*i).unwrap().metadata.unwrap().name.unwrap()).collect()
}

#[tokio::test]
async fn lists_watches_resumes_and_relists_after_410() {
    // The recorded events, then a bookmark: the resumed watch must start from it.
    let mut watch_then_end = WATCH.to_vec();
    watch_then_end.extend(bookmark("99999"));
    let fake = FakeApiServer::new(vec![
        Reply::Ok(LIST.to_vec()),
        // The watch sends the recorded events, then the server ends it (timeout).
        Reply::Ok(watch_then_end),
        // The resumed watch: its version was compacted away.
        Reply::Ok(error_frame(410, "Expired")),
        // The relist fails once, then succeeds.
        Reply::Status(500, "InternalError"),
        Reply::Ok(LIST.to_vec()),
    ]);
    let names = listed_names();
    let n = names.len();
    let stream = list_watch::<Service>(fake.client(), "!service.kubernetes.io/headless");
    // The list (init, n, listed), the recorded watch's one event, the 410, the 500, the relist.
    let got = events(stream, 2 * n + 7).await;
    let mut expected = vec!["init".to_string()];
    expected.extend(names.iter().map(|s| format!("list {s}")));
    expected.push("listed".into());
    assert_eq!(got.len(), 2 * n + 7, "{got:#?}");
    assert_eq!(got[..n + 2], expected[..], "the first list");
    assert_eq!(got[n + 2], "apply np", "the recorded watch event (bookmarks are not events)");
    assert!(got[n + 3].starts_with("error 410 Expired"), "{got:?}");
    assert!(got[n + 4].starts_with("error 500 InternalError"), "{got:?}");
    assert_eq!(got[n + 5..], expected[..], "the relist");

    let asked = fake.asked.lock().unwrap().clone();
    assert!(asked.len() >= 5, "{asked:#?}");
    let list_version = proto::list_parts(proto::unwrap_envelope(LIST).unwrap()).unwrap().0.unwrap();
    assert!(
        asked[0].contains("resourceVersion=0") && !asked[0].contains("watch=true"),
        "lists from the cache: {}",
        asked[0]
    );
    assert!(asked[0].contains("labelSelector="), "with kube-proxy's selector: {}", asked[0]);
    assert!(
        asked[1].contains("watch=true") && asked[1].ends_with(&format!("resourceVersion={list_version}")),
        "{}",
        asked[1]
    );
    assert!(
        asked[2].contains("watch=true") && asked[2].ends_with("resourceVersion=99999"),
        "resumes from the bookmark: {}",
        asked[2]
    );
    assert!(asked[3].contains("resourceVersion=0") && asked[4].contains("resourceVersion=0"), "relists: {asked:#?}");
}

#[tokio::test]
async fn an_error_event_other_than_410_resumes_the_watch_without_a_relist() {
    let fake = FakeApiServer::new(vec![
        Reply::Ok(LIST.to_vec()),
        Reply::Ok([bookmark("5000"), error_frame(500, "InternalError")].concat()),
        Reply::Status(429, "TooManyRequests"),
        Reply::Ok(WATCH.to_vec()),
    ]);
    let n = listed_names().len();
    let got = events(list_watch::<Service>(fake.client(), "x"), n + 5).await;
    assert_eq!(got.len(), n + 5, "{got:#?}");
    assert!(got[n + 2].starts_with("error 500") && got[n + 3].starts_with("error 429"), "{got:#?}");
    assert_eq!(got[n + 4], "apply np");
    let asked = fake.asked.lock().unwrap().clone();
    // The first watch from the list's version; both retries from the bookmark's, no list.
    assert!(asked[1].contains("watch=true") && !asked[1].ends_with("resourceVersion=5000"), "{}", asked[1]);
    for (i, request) in asked.iter().enumerate().skip(2).take(2) {
        assert!(request.contains("watch=true") && request.ends_with("resourceVersion=5000"), "request {i}: {request}");
    }
}
