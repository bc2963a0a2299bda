//! List, then watch, Services and EndpointSlices in protobuf, as client-go's reflector
//! does for kube-proxy.
//!
//! The stream yields kube-runtime's watcher events (`Init`, `InitApply`…, `InitDone`,
//! then `Apply` / `Delete`), so the watchers in `cluster` handle both this and kube-rs's
//! JSON watcher alike. The list is served from the API server's watch cache
//! (`resourceVersion=0`, as client-go's first list); the watch resumes from the last
//! version seen after a dropped connection or a server-side timeout, and a `410 Gone`
//! (the version was compacted away) starts again with a fresh list. Failed requests are
//! retried with [`Retry`]'s backoff.

use std::io;
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures::channel::mpsc;
use futures::{AsyncRead, AsyncReadExt, SinkExt, Stream, TryStreamExt};
use http::header::{ACCEPT, HeaderValue};
use http_body_util::BodyExt;
use kube::Client;
use kube::api::{ListParams, WatchParams};
use kube::client::Body;
use kube::core::Request;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::Event as Watched;
use prost::Message;

use crate::proto::{self, Wire};
use crate::retry::Retry;

/// A list in protobuf.
const LIST: &str = "application/vnd.kubernetes.protobuf";
/// A watch in protobuf: length-prefixed frames.
const WATCH: &str = "application/vnd.kubernetes.protobuf;stream=watch";
/// A watch request that sends no byte for this long is dead: the API server ends every
/// watch after its 290 s `timeoutSeconds`, and sends bookmarks well before that.
const IDLE: Duration = Duration::from_secs(300);
/// No watch event comes near this; a bigger frame length means a corrupt stream.
const MAX_FRAME: usize = 256 << 20;
/// Events decoded ahead of the consumer.
const QUEUE: usize = 1024;

/// Why one list or watch attempt ended.
enum Failure {
    /// The version to resume from is gone (410): list again.
    Gone(anyhow::Error),
    /// Anything else: retry from where it was.
    Other(anyhow::Error),
    /// The stream's consumer is gone.
    Closed,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Other(e.into())
    }
}

/// Lists and watches `K` (all namespaces) matching `labels`. The work runs as a task on
/// the current tokio runtime and stops when the stream is dropped.
pub fn list_watch<K>(client: Client, labels: &'static str) -> impl Stream<Item = anyhow::Result<Watched<K>>> + Send
where
    K: Wire + kube::Resource<DynamicType = ()>,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let url = K::url_path(&(), None);
    tokio::spawn(ListWatch { client, request: Request::new(url), labels, tx }.run());
    rx
}

struct ListWatch<K> {
    client: Client,
    request: Request,
    labels: &'static str,
    tx: mpsc::Sender<anyhow::Result<Watched<K>>>,
}

impl<K: Wire> ListWatch<K> {
    async fn run(mut self) {
        let mut retry = Retry::default();
        let mut version: Option<String> = None;
        loop {
            let step = match &mut version {
                None => self.list().await.map(|v| version = Some(v)),
                Some(v) => self.watch(v).await,
            };
            let error = match step {
                Ok(()) => {
                    retry.reset();
                    continue;
                }
                Err(Failure::Closed) => return,
                Err(Failure::Gone(e)) => {
                    version = None;
                    e
                }
                Err(Failure::Other(e)) => e,
            };
            if self.emit(Err(error)).await.is_err() {
                return;
            }
            tokio::time::sleep(retry.next().unwrap_or(Retry::MAX)).await;
        }
    }

    async fn emit(&mut self, item: anyhow::Result<Watched<K>>) -> Result<(), Failure> {
        self.tx.send(item).await.map_err(|_| Failure::Closed)
    }

    /// One list: `Init`, each object, `InitDone`. Returns the list's resource version.
    async fn list(&mut self) -> Result<String, Failure> {
        let params = ListParams::default().labels(self.labels).match_any();
        let body = open(&self.client, self.request.list(&params)?, LIST).await?;
        // Collected as the chunks arrive and joined once (`read_to_end` zero-fills and
        // copies as it grows: a sixth of the list's decoding time at 10k Services).
        let bytes = body.collect().await.context("reading the list")?.to_bytes();
        let (version, items) = proto::list_parts(proto::unwrap_envelope(&bytes)?)?;
        let version = version.filter(|v| !v.is_empty()).ok_or_else(|| anyhow!("the list has no resourceVersion"))?;
        self.emit(Ok(Watched::Init)).await?;
        for item in items {
            let object = K::from_message(K::Message::decode(item)?);
            self.emit(Ok(Watched::InitApply(object))).await?;
        }
        self.emit(Ok(Watched::InitDone)).await?;
        Ok(version)
    }

    /// One watch from `version`, which follows every event and bookmark. Returns when the
    /// server ends the watch.
    async fn watch(&mut self, version: &mut String) -> Result<(), Failure> {
        let params = WatchParams::default().labels(self.labels);
        let body = open(&self.client, self.request.watch(&params, version)?, WATCH).await?;
        let mut body = body.into_data_stream().map_err(io::Error::other).into_async_read();
        while let Some(frame) = next_frame(&mut body).await? {
            let event = proto::WatchEvent::decode(frame.as_slice())?;
            let raw = event.object.and_then(|o| o.raw).unwrap_or_default();
            let inner = proto::unwrap_envelope(&raw)?;
            let kind = event.r#type.unwrap_or_default();
            if kind == "ERROR" {
                return Err(status_failure(&proto::Status::decode(inner)?));
            }
            let message = K::Message::decode(inner)?;
            if let Some(v) = K::meta(&message).and_then(|m| m.resource_version.as_deref()).filter(|v| !v.is_empty()) {
                v.clone_into(version);
            }
            let event = match kind.as_str() {
                "ADDED" | "MODIFIED" => Watched::Apply(K::from_message(message)),
                "DELETED" => Watched::Delete(K::from_message(message)),
                "BOOKMARK" => continue,
                other => return Err(anyhow!("unknown watch event type {other:?}").into()),
            };
            self.emit(Ok(event)).await?;
        }
        Ok(())
    }
}

/// Sends a GET asking for `accept`; a failed request becomes a [`Failure`] with the API
/// server's own message.
async fn open(client: &Client, mut request: http::Request<Vec<u8>>, accept: &'static str) -> Result<Body, Failure> {
    request.headers_mut().insert(ACCEPT, HeaderValue::from_static(accept));
    let response = client.send(request.map(Body::from)).await?;
    let code = response.status();
    if !code.is_success() {
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(match proto::unwrap_envelope(&body).ok().and_then(|m| proto::Status::decode(m).ok()) {
            Some(status) => status_failure(&status),
            None => Failure::Other(anyhow!("{code}: {}", String::from_utf8_lossy(&body).trim())),
        });
    }
    Ok(response.into_body())
}

fn status_failure(status: &proto::Status) -> Failure {
    let code = status.code.unwrap_or_default();
    let error = anyhow!(
        "{code} {}: {}",
        status.reason.as_deref().unwrap_or_default(),
        status.message.as_deref().unwrap_or_default()
    );
    if code == 410 { Failure::Gone(error) } else { Failure::Other(error) }
}

/// The next length-prefixed frame of a watch, or `None` where the stream ends.
async fn next_frame(body: &mut (impl AsyncRead + Unpin)) -> Result<Option<Vec<u8>>, Failure> {
    let mut len = [0u8; 4];
    match tokio::time::timeout(IDLE, body.read_exact(&mut len)).await {
        Err(_) => return Err(anyhow!("no data for {} s", IDLE.as_secs()).into()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(())) => {}
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(anyhow!("a watch frame of {len} bytes").into());
    }
    let mut frame = vec![0; len];
    tokio::time::timeout(IDLE, body.read_exact(&mut frame))
        .await
        .map_err(|_| anyhow!("no data for {} s", IDLE.as_secs()))?
        .context("reading a watch frame")?;
    Ok(Some(frame))
}

#[cfg(test)]
#[path = "listwatch_tests.rs"]
mod tests;
