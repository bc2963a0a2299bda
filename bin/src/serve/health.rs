//! The proxier health server: `/healthz` and `/livez` with kube-proxy's bodies, codes
//! and headers (`pkg/proxy/healthcheck/proxy_health.go`).
//!
//! kproxy programs both families in one transaction, so both report the same state, as
//! the two proxiers of a dual-stack kube-proxy do when they are in step.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::metrics::Metrics;
use super::{Handler, not_found, respond, rfc3339};
use crate::syncloop::Freshness;

/// The state `/healthz` reports: the sync loop's [`Freshness`], published after every
/// change to it, and the node's eligibility.
#[derive(Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    freshness: Freshness,
    node_eligible: bool,
}

/// Upstream's `ProxyHealth` JSON, field for field and in its order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<std::collections::BTreeMap<&'static str, FamilyStatus>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyStatus {
    last_updated: String,
    healthy: bool,
}

/// Go's zero `time.Time`.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Health {
    /// Publishes the sync loop's view.
    pub fn publish(&self, freshness: Freshness) {
        self.state.lock().unwrap().freshness = freshness;
    }

    /// Whether the node may receive traffic (its Node is not being deleted).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.state.lock().unwrap().node_eligible = eligible;
    }

    /// Whether the rules are current (what HealthCheckNodePorts call
    /// `serviceProxyHealthy`).
    pub fn healthy(&self, timeout: Duration) -> bool {
        self.state.lock().unwrap().freshness.healthy(Instant::now(), timeout)
    }

    /// (status code, JSON body) for `/healthz` (`check_node`) or `/livez`.
    fn report(&self, timeout: Duration, check_node: bool) -> (u16, String) {
        let s = self.state.lock().unwrap();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let healthy = s.freshness.healthy(now, timeout);
        let last = s.freshness.last_synced.map(|at| rfc3339(wall - now.saturating_duration_since(at)));
        let ok = healthy && (!check_node || s.node_eligible);
        let status = last.as_ref().map(|last| {
            ["IPv4", "IPv6"]
                .into_iter()
                .map(|family| (family, FamilyStatus { last_updated: last.clone(), healthy }))
                .collect()
        });
        let body = Body {
            // Upstream reports the current time as lastUpdated when healthy.
            last_updated: if ok { rfc3339(wall) } else { last.unwrap_or_else(|| ZERO_TIME.into()) },
            current_time: rfc3339(wall),
            node_eligible: check_node.then_some(s.node_eligible),
            healthy,
            status,
        };
        (if ok { 200 } else { 503 }, serde_json::to_string(&body).unwrap_or_default())
    }

    /// The handler of the health server: `/healthz` and `/livez`, any method.
    pub fn handler(self: Arc<Self>, metrics: Arc<Metrics>, timeout: Duration) -> Handler {
        Box::new(move |request: tiny_http::Request| {
            let path = request.url().split('?').next().unwrap_or_default().to_string();
            let (check_node, counter) = match path.as_str() {
                "/healthz" => (true, &metrics.healthz),
                "/livez" => (false, &metrics.livez),
                _ => return not_found(request),
            };
            let (code, body) = self.report(timeout, check_node);
            counter.get_or_create(&vec![("code".to_string(), code.to_string())]).inc();
            respond(request, code, body, "application/json", &[]);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(h: &Health, check_node: bool) -> (u16, serde_json::Value) {
        let (code, text) = h.report(Duration::from_secs(60), check_node);
        (code, serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn bodies_as_upstreams() {
        let h = Health::default();
        // Nothing queued yet (starting): healthy, but no Node seen: /healthz says 503.
        let (code, b) = body(&h, true);
        assert_eq!(code, 503);
        assert_eq!(b["nodeEligible"], false);
        assert_eq!(b["healthy"], true);
        assert_eq!(b["lastUpdated"], ZERO_TIME);
        assert!(b.get("status").is_none());
        let (code, b) = body(&h, false);
        assert_eq!(code, 200);
        assert!(b.get("nodeEligible").is_none(), "/livez has no nodeEligible");
        // Synced, Node eligible: 200 with per-family status.
        let now = Instant::now();
        h.publish(Freshness { queued_since: None, last_synced: Some(now) });
        h.set_node_eligible(true);
        let (code, b) = body(&h, true);
        assert_eq!(code, 200);
        assert_eq!(b["status"]["IPv4"]["healthy"], true);
        assert_eq!(b["status"]["IPv6"]["healthy"], true);
        let text = h.report(Duration::from_secs(60), true).1;
        assert!(
            text.starts_with(r#"{"lastUpdated":""#)
                && text.contains(r#","nodeEligible":true,"healthy":true,"status":{"IPv4":{"#),
            "{text}"
        );
        // A change waiting past the timeout: 503 on both, with the real lastUpdated.
        h.publish(Freshness { queued_since: Some(now - Duration::from_secs(61)), last_synced: Some(now) });
        let (code, b) = body(&h, false);
        assert_eq!(code, 503);
        assert_eq!(b["healthy"], false);
        assert_eq!(b["status"]["IPv6"]["healthy"], false);
        assert!(!h.healthy(Duration::from_secs(60)));
    }
}
