//! The UDP session table (pure): which endpoint each loopback client's datagrams go to,
//! and when a session ends. The timeouts are conntrack's UDP defaults, so a relayed flow
//! lives as long as the same flow through the kernel's NAT would: 30 s until the endpoint
//! has answered (`nf_conntrack_udp_timeout`), 120 s after (`nf_conntrack_udp_timeout_stream`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Idle time after which a session the endpoint never answered ends.
pub const UNREPLIED: Duration = Duration::from_secs(30);
/// Idle time after which an answered session ends.
pub const REPLIED: Duration = Duration::from_secs(120);

/// One client's session.
#[derive(Debug)]
pub struct Session<T> {
    /// The endpoint its datagrams go to.
    pub endpoint: SocketAddr,
    /// What the relay keeps for it (its upstream socket's task).
    pub handle: T,
    last: Instant,
    replied: bool,
}

/// The sessions of one listener, at most `cap` of them.
#[derive(Debug)]
pub struct Sessions<T> {
    map: HashMap<SocketAddr, Session<T>>,
    cap: usize,
}

/// Why a datagram found no session.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// The table holds `cap` sessions.
    Full,
}

impl<T> Sessions<T> {
    /// An empty table for at most `cap` sessions.
    pub fn new(cap: usize) -> Sessions<T> {
        Sessions { map: HashMap::new(), cap }
    }

    /// The number of sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The session of a client, refreshed by a datagram from it at `now`.
    pub fn outbound(&mut self, client: SocketAddr, now: Instant) -> Option<&Session<T>> {
        let s = self.map.get_mut(&client)?;
        s.last = now;
        Some(s)
    }

    /// Starts a session, unless the table is full.
    pub fn insert(&mut self, client: SocketAddr, endpoint: SocketAddr, handle: T, now: Instant) -> Result<(), Full> {
        if self.map.len() >= self.cap && !self.map.contains_key(&client) {
            return Err(Full::Full);
        }
        self.map.insert(client, Session { endpoint, handle, last: now, replied: false });
        Ok(())
    }

    /// A reply from the endpoint to a client at `now`: the session now lives longer.
    pub fn reply(&mut self, client: SocketAddr, now: Instant) {
        if let Some(s) = self.map.get_mut(&client) {
            s.last = now;
            s.replied = true;
        }
    }

    /// Ends the sessions idle past their timeout at `now`, and those whose endpoint
    /// `keep` rejects (the endpoint left the Service: the kernel path clears such UDP
    /// flows from conntrack too). Returns their handles.
    pub fn expire(&mut self, now: Instant, keep: impl Fn(&SocketAddr) -> bool) -> Vec<T> {
        let gone: Vec<SocketAddr> = self
            .map
            .iter()
            .filter(|(_, s)| {
                let timeout = if s.replied { REPLIED } else { UNREPLIED };
                now.saturating_duration_since(s.last) > timeout || !keep(&s.endpoint)
            })
            .map(|(c, _)| *c)
            .collect();
        gone.into_iter().filter_map(|c| self.map.remove(&c)).map(|s| s.handle).collect()
    }

    /// Ends every session.
    pub fn clear(&mut self) -> Vec<T> {
        self.map.drain().map(|(_, s)| s.handle).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_unanswered_session_ends_after_30_s_idle_an_answered_one_after_120_s() {
        let t0 = Instant::now();
        let mut s = Sessions::new(8);
        s.insert(addr("127.0.0.1:1000"), addr("10.0.0.1:53"), 1, t0).unwrap();
        s.insert(addr("127.0.0.1:1001"), addr("10.0.0.1:53"), 2, t0).unwrap();
        s.reply(addr("127.0.0.1:1001"), t0);
        assert!(s.expire(t0 + UNREPLIED, |_| true).is_empty(), "not past the timeout yet");
        assert_eq!(s.expire(t0 + UNREPLIED + Duration::from_secs(1), |_| true), vec![1]);
        assert!(s.expire(t0 + REPLIED, |_| true).is_empty());
        assert_eq!(s.expire(t0 + REPLIED + Duration::from_secs(1), |_| true), vec![2]);
        assert!(s.is_empty());
    }

    #[test]
    fn traffic_keeps_a_session_alive() {
        let t0 = Instant::now();
        let mut s = Sessions::new(8);
        let c = addr("127.0.0.1:1000");
        s.insert(c, addr("10.0.0.1:53"), (), t0).unwrap();
        for i in 1..10 {
            assert!(s.outbound(c, t0 + Duration::from_secs(20 * i)).is_some());
            assert!(s.expire(t0 + Duration::from_secs(20 * i + 5), |_| true).is_empty());
        }
    }

    #[test]
    fn a_removed_endpoints_sessions_end_at_once() {
        let t0 = Instant::now();
        let mut s = Sessions::new(8);
        s.insert(addr("127.0.0.1:1000"), addr("10.0.0.1:53"), 1, t0).unwrap();
        s.insert(addr("127.0.0.1:1001"), addr("10.0.0.2:53"), 2, t0).unwrap();
        let kept = addr("10.0.0.2:53");
        assert_eq!(s.expire(t0, |ep| *ep == kept), vec![1]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_table_is_capped() {
        let t0 = Instant::now();
        let mut s = Sessions::new(1);
        s.insert(addr("127.0.0.1:1000"), addr("10.0.0.1:53"), 1, t0).unwrap();
        assert_eq!(s.insert(addr("127.0.0.1:1001"), addr("10.0.0.1:53"), 2, t0), Err(Full::Full));
        // A client that has a session may replace it.
        assert!(s.insert(addr("127.0.0.1:1000"), addr("10.0.0.2:53"), 3, t0).is_ok());
    }
}
