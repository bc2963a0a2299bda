//! Removing rules: kproxy's own (`kproxy cleanup`, `--cleanup`) and the leftovers of
//! kube-proxy's modes, so that swapping kube-proxy's image for kproxy's never leaves stale
//! DNAT running beside kproxy's rules.
//!
//! kube-proxy's leftovers are what upstream's `CleanupLeftovers` removes: its nftables
//! tables (`ip`/`ip6 kube-proxy`); its iptables and IPVS modes' `KUBE-*` chains, through
//! the iptables tools when they are installed (iptables-nft or legacy, whichever the node
//! uses); IPVS mode's `kube-ipvs0` interface with the IPVS services, and its ipsets. The
//! kubelet's own chains (`KUBE-FIREWALL`, `KUBE-KUBELET-CANARY`, `KUBE-IPTABLES-HINT`)
//! are never touched. Upstream removes them before its first sync; kproxy removes them
//! after its first commit, so there is no moment without rules.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result};
use nft_backend::NftBackend;
use proxy_core::Backend;
use tracing::{info, warn};

/// kube-proxy's iptables and IPVS modes' chains, by table (upstream's cleanup lists).
const CHAINS: &[(&str, &[&str])] = &[
    (
        "nat",
        &[
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
            "KUBE-PROXY-CANARY",
            "KUBE-NODE-PORT",
            "KUBE-LOAD-BALANCER",
        ],
    ),
    (
        "filter",
        &[
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
            "KUBE-PROXY-CANARY",
            "KUBE-NODE-PORT",
            "KUBE-SOURCE-RANGES-FIREWALL",
            "KUBE-IPVS-FILTER",
            "KUBE-IPVS-OUT-FILTER",
        ],
    ),
    ("mangle", &["KUBE-PROXY-CANARY"]),
];

/// Per-Service chains of iptables mode (nat table).
const PREFIXES: &[&str] = &["KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-"];

/// IPVS mode's ipsets.
const IPSETS: &[&str] = &[
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// IPVS mode's dummy interface in kube-proxy.
pub const KUBE_IPVS_LINK: &str = "kube-ipvs0";

fn is_kube_proxy_chain(table: &str, chain: &str) -> bool {
    CHAINS.iter().any(|(t, chains)| *t == table && chains.contains(&chain))
        || (table == "nat" && PREFIXES.iter().any(|p| chain.starts_with(p)))
}

/// The `iptables-restore --noflush` input that removes kube-proxy's chains from an
/// `iptables-save` dump: the jumps into them from other chains, then their contents, then
/// the chains. `None` when there is nothing to remove.
pub fn iptables_removal(save: &str) -> Option<String> {
    let mut out = String::new();
    let mut table = "";
    let mut chains: Vec<&str> = Vec::new();
    let mut deletes: Vec<String> = Vec::new();
    let flush = |out: &mut String, table: &str, chains: &mut Vec<&str>, deletes: &mut Vec<String>| {
        if chains.is_empty() && deletes.is_empty() {
            return;
        }
        out.push_str(&format!("*{table}\n"));
        for d in deletes.drain(..) {
            out.push_str(&d);
            out.push('\n');
        }
        for c in chains.iter() {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in chains.drain(..) {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
    };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
        } else if line.starts_with("COMMIT") {
            flush(&mut out, table, &mut chains, &mut deletes);
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if is_kube_proxy_chain(table, name) {
                chains.push(name);
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let target = rule.split_whitespace().skip_while(|w| *w != "-j" && *w != "-g").nth(1);
            if !is_kube_proxy_chain(table, chain) && target.is_some_and(|t| is_kube_proxy_chain(table, t)) {
                deletes.push(format!("-D {rule}"));
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Removes kube-proxy's iptables chains with one family's tools; `Ok(false)` when the
/// tools are not installed.
fn iptables(save: &str, restore: &str) -> Result<bool> {
    let dump = match Command::new(save).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(_) | Err(_) => return Ok(false),
    };
    let Some(script) = iptables_removal(&dump) else { return Ok(true) };
    let mut child = Command::new(restore)
        .args(["--noflush", "--counters"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {restore}"))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "{restore}: {}", String::from_utf8_lossy(&out.stderr).trim());
    info!("removed kube-proxy's iptables chains ({save})");
    Ok(true)
}

/// IPVS mode's leftovers: `kube-ipvs0` and the IPVS services (all of them, as upstream),
/// and the ipsets.
fn ipvs_mode() -> Result<()> {
    let config =
        ipvs_backend::Config { interface: KUBE_IPVS_LINK.into(), table: "kube-proxy".into(), ..Default::default() };
    match ipvs_backend::IpvsBackend::new(config).cleanup() {
        Ok(()) | Err(ipvs_backend::Error::NoIpvs) => {}
        Err(e) => return Err(e).context("removing kube-ipvs0 and IPVS services"),
    }
    if Command::new("ipset").arg("version").output().is_ok_and(|o| o.status.success()) {
        for set in IPSETS {
            let _ = Command::new("ipset").args(["destroy", set]).stderr(Stdio::null()).status();
        }
    }
    Ok(())
}

/// Removes what kube-proxy's modes left, in nftables mode (`all_modes`: iptables, IPVS and
/// nftables) or in IPVS mode (its nftables tables only, as upstream's IPVS mode).
/// Returns the failures, each already logged.
pub fn kube_proxy_leftovers(all_modes: bool) -> usize {
    let mut failures = 0;
    let mut fail = |what: &str, e: anyhow::Error| {
        warn!("cleaning up kube-proxy's {what}: {e:#}");
        failures += 1;
    };
    if let Err(e) = NftBackend::new("kube-proxy").cleanup() {
        fail("nftables tables", e.into());
    }
    if !all_modes {
        return failures;
    }
    for (save, restore) in [("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")] {
        if let Err(e) = iptables(save, restore) {
            fail("iptables chains", e);
        }
    }
    if let Err(e) = ipvs_mode() {
        fail("IPVS leftovers", e);
    }
    failures
}

/// `--cleanup`: kproxy's rules and every kube-proxy mode's, then exit (1 on any failure,
/// as upstream's "encountered an error while tearing down rules").
pub fn everything(table: &str) -> Result<ExitCode> {
    let mut failures = kube_proxy_leftovers(true);
    if let Err(e) = own(table) {
        warn!("{e:#}");
        failures += 1;
    }
    anyhow::ensure!(failures == 0, "encountered an error while tearing down rules");
    Ok(ExitCode::SUCCESS)
}

/// kproxy's own rules: its tables, and in IPVS mode its virtual services and dummy
/// interface. Reports what it removed on standard output (`kproxy cleanup`'s report).
pub fn own(table: &str) -> Result<()> {
    let ipvs_config = ipvs_backend::Config { table: table.to_string(), ..Default::default() };
    match ipvs_backend::IpvsBackend::new(ipvs_config).cleanup() {
        Ok(()) => println!("kproxy: removed IPVS services bound to {}", ipvs_backend::link::DEFAULT_NAME),
        Err(ipvs_backend::Error::NoIpvs) => {}
        Err(e) => return Err(e).context("removing IPVS services"),
    }
    NftBackend::new(table).cleanup().with_context(|| format!("removing table {table}"))?;
    println!("kproxy: removed tables ip {table} and ip6 {table}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from an iptables-save of a node running kube-proxy in iptables mode.
    const SAVE: &str = "\
# Generated by iptables-save
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABC - [0:0]
:KUBE-SEP-XYZ - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -j DOCKER
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j KUBE-SVC-ABC
-A KUBE-SVC-ABC -j KUBE-SEP-XYZ
COMMIT
";

    #[test]
    fn removes_kube_proxy_chains_and_jumps_and_keeps_the_kubelets() {
        let script = iptables_removal(SAVE).unwrap();
        let expected = "\
*mangle
:KUBE-PROXY-CANARY - [0:0]
-X KUBE-PROXY-CANARY
COMMIT
*filter
-D INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-D FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-X KUBE-FORWARD
-X KUBE-SERVICES
COMMIT
*nat
-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABC - [0:0]
:KUBE-SEP-XYZ - [0:0]
-X KUBE-SERVICES
-X KUBE-SVC-ABC
-X KUBE-SEP-XYZ
COMMIT
";
        assert_eq!(script, expected);
        assert_eq!(iptables_removal("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n"), None);
    }
}
