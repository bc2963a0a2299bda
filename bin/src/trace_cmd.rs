//! `kproxy trace`: proxy-core's packet tracer on the command line, and with `--conntrack`
//! where a client's existing flows were actually sent, from the kernel's conntrack table.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use proxy_core::trace::{Packet, Source, Verdict, trace};
use proxy_core::{IpFamily, LocalDetector, NodeContext, Protocol};

use crate::config::ProxyFlags;
use crate::manifests;

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Manifest files or directories.
    #[arg(long, num_args = 1.., required_unless_present = "conntrack")]
    manifests: Vec<PathBuf>,
    /// Instead of tracing a new packet, list the client's (`--from`) existing flows in this
    /// node's conntrack table that were DNATed, with the endpoint each one went to (only
    /// those to `--to`, if given).
    #[arg(long)]
    conntrack: bool,
    /// The source: `pod:IP`, `node` (or `node:IP`), `external:IP`, or a bare IP (a node
    /// address is the node, an address the local-traffic detector claims is a pod, anything
    /// else is external).
    #[arg(long)]
    from: String,
    /// The destination, as `IP:PORT[/PROTO]` (`[IPv6]:PORT/PROTO`); the protocol is tcp,
    /// udp or sctp (default tcp).
    #[arg(long, required_unless_present = "conntrack")]
    to: Option<String>,
    #[command(flatten)]
    node: ProxyFlags,
}

/// Parses `IP:PORT[/PROTO]`.
fn destination(s: &str) -> Result<(SocketAddr, Protocol)> {
    let (addr, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => bail!("--to: unknown protocol {other:?} (tcp, udp or sctp)"),
    };
    let addr: SocketAddr = addr.parse().with_context(|| format!("--to: expected IP:PORT, got {addr:?}"))?;
    Ok((addr, protocol))
}

/// Parses `--from` against the node context.
fn source(s: &str, ctx: &NodeContext, family: IpFamily) -> Result<Source> {
    let ip = |v: &str| -> Result<IpAddr> { v.parse().with_context(|| format!("--from: invalid IP {v:?}")) };
    Ok(match s.split_once(':').filter(|(kind, _)| matches!(*kind, "pod" | "node" | "external")) {
        Some(("pod", v)) => Source::pod(ip(v)?),
        Some(("node", v)) => Source::node(ip(v)?),
        Some((_, v)) => Source::external(ip(v)?),
        None if s == "node" => {
            let primary = ctx.family(family).primary_ip().context("--from node: this node has no IP of that family")?;
            Source::node(primary)
        }
        None => {
            let addr = ip(s)?;
            if ctx.node_ips.contains(&addr) || addr.is_loopback() {
                Source::node(addr)
            } else if matches!(&ctx.family(IpFamily::of(&addr)).local_detector, LocalDetector::Cidrs(nets) if nets.iter().any(|n| n.contains(&addr)))
            {
                Source::pod(addr)
            } else {
                Source::external(addr)
            }
        }
    })
}

/// `--conntrack`: the client's DNATed flows, one per line:
/// `tcp 10.0.0.2:40000 -> 10.96.0.10:80 => 10.244.0.11:8080`.
fn conntrack(args: &TraceArgs) -> Result<ExitCode> {
    let bare = args.from.split_once(':').filter(|(k, _)| matches!(*k, "pod" | "node" | "external")).map(|(_, v)| v);
    let text = bare.unwrap_or(&args.from);
    let client: IpAddr = text.parse().with_context(|| format!("--from: expected the client's IP, got {text:?}"))?;
    let to = args.to.as_deref().map(destination).transpose()?;
    let flows = crate::conntrack::dnated_from(client).context("reading the conntrack table")?;
    let flows: Vec<_> = flows
        .iter()
        .filter_map(|f| Some((f, f.service_protocol()?)))
        .filter(|(f, proto)| to.is_none_or(|to| (f.orig_dst, *proto) == to))
        .collect();
    if flows.is_empty() {
        println!("no DNATed flows from {client} in this node's conntrack table");
    }
    for (f, proto) in flows {
        println!("{} {} -> {} => {}", proto.as_str(), f.orig_src, f.orig_dst, f.reply_src);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: &TraceArgs) -> Result<ExitCode> {
    if args.conntrack {
        return conntrack(args);
    }
    let config = args.node.resolve()?;
    let loaded = manifests::load(&args.manifests)?;
    let mut problems = loaded.problems;
    let engine = manifests::engine(&config, &loaded.objects, &mut problems)?;
    for p in &problems {
        eprintln!("warning: skipped {p}");
    }
    let (dst, protocol) = destination(args.to.as_deref().unwrap_or_default())?;
    let source = source(&args.from, engine.node_context(), IpFamily::of(&dst.ip()))?;
    let packet = Packet { source, protocol, destination: dst.ip(), port: dst.port() };
    let result = trace(engine.desired(), &packet);
    let verdict = match &result.verdict {
        Verdict::Endpoints(_) => format!("endpoints: {}", result.verdict),
        Verdict::Reject => "REJECT".to_string(),
        Verdict::Drop => "DROP".to_string(),
        Verdict::NoMatch => "no match (not a Service address: the packet passes untouched)".to_string(),
    };
    println!("{verdict}");
    println!("masquerade: {}", if result.masquerade { "yes" } else { "no" });
    Ok(ExitCode::SUCCESS)
}
