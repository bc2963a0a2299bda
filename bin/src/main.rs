//! `kproxy`: a drop-in replacement for kube-proxy, with kube-proxy's nftables-mode
//! semantics.

mod cluster;
mod config;
mod conntrack;
mod daemon;
mod dataplane;
mod lean;
mod listwatch;
mod manifest_watch;
mod manifests;
mod node;
mod proto;
mod retry;
mod serve;
mod source;
mod syncloop;
mod sysctls;
mod trace_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nft_backend::NftBackend;
use proxy_core::{Backend, IpFamily};

use crate::config::NodeFlags;
use crate::dataplane::Dataplane;

/// kproxy: Kubernetes Services on a node, with kube-proxy's nftables semantics.
#[derive(Parser, Debug)]
#[command(name = "kproxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the node daemon: keeps the rules in step with the Kubernetes API (or a
    /// directory of manifests), resyncs periodically and repairs foreign changes to its tables.
    Run(daemon::RunArgs),
    /// Applies the rules for the Services, EndpointSlices and Node in the manifests to the
    /// current network namespace, once, and exits.
    Sync {
        /// Manifest files or directories (YAML or JSON; multi-document and `kind: List`).
        #[arg(long, num_args = 1.., required = true)]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeFlags,
    },
    /// Prints the nftables ruleset `sync` would write, without touching the kernel.
    Plan {
        /// Manifest files or directories.
        #[arg(long, num_args = 1.., required = true)]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeFlags,
    },
    /// Says where a packet would go: its possible endpoints, or REJECT / DROP, and whether
    /// it is masqueraded.
    Trace(trace_cmd::TraceArgs),
    /// Removes everything kproxy created (its nftables tables).
    Cleanup {
        /// Also remove upstream kube-proxy's nftables tables (`ip kube-proxy` and
        /// `ip6 kube-proxy`), when migrating from it.
        #[arg(long)]
        include_kube_proxy: bool,
        /// The nftables table kproxy owns.
        #[arg(long, default_value = nft_backend::DEFAULT_TABLE)]
        table: String,
    },
    /// Prints the version.
    Version,
}

pub(crate) fn init_logging(flags: &NodeFlags, min_verbosity: u8) {
    let level = match flags.verbosity.max(min_verbosity) {
        0..=1 => "warn",
        2..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    // kube-client logs every failed connection as an error; kproxy's watchers report them
    // once, with what they were watching.
    let filter = tracing_subscriber::EnvFilter::try_from_env("KPROXY_LOG")
        .unwrap_or_else(|_| format!("{level},kube_client::client::builder=off").into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if flags.logging_format == "json" { builder.json().try_init() } else { builder.try_init() };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => daemon::run(&args),
        Command::Sync { manifests, node } => sync(&manifests, &node),
        Command::Plan { manifests, node } => plan(&manifests, &node),
        Command::Trace(args) => trace_cmd::run(&args),
        Command::Cleanup { include_kube_proxy, table } => cleanup(&table, include_kube_proxy),
        Command::Version => {
            println!("kproxy {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the problems found in the manifests, one per line, on standard error.
pub(crate) fn report(problems: &[String]) {
    for p in problems {
        eprintln!("warning: skipped {p}");
    }
}

fn sync(paths: &[PathBuf], flags: &NodeFlags) -> Result<ExitCode> {
    init_logging(flags, 0);
    let config = flags.resolve()?;
    let start = Instant::now();
    let loaded = manifests::load(paths)?;
    let mut problems = loaded.problems;
    let engine = manifests::engine(&config, &loaded.objects, &mut problems)?;
    report(&problems);
    let desired = engine.desired();
    let mut backend = Dataplane::new(&config);
    let stats = backend.sync_full(desired).context("applying the rules")?;
    if let Dataplane::Ipvs(_) = backend {
        // After the sync: the IPVS sysctls exist once the ip_vs module is in.
        let (_, warnings) = sysctls::ipvs(&sysctls::Roots::default(), config.ipvs_strict_arp);
        for w in warnings {
            eprintln!("warning: could not set an IPVS sysctl: {w}");
        }
    }
    // As after every sync: UDP flows pinned to endpoints that are gone would otherwise
    // keep going there.
    let stale = match conntrack::clear_stale(desired, &engine.node_context().node_ips) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: could not clear stale UDP conntrack entries: {e}");
            0
        }
    };
    let ports = |f: IpFamily| desired.family(f).service_ports.len();
    if let Dataplane::Ipvs(ipvs) = &backend {
        println!(
            "kproxy: synced {} service ports (IPv4 {}, IPv6 {}) for node {} into IPVS and table {}: {} IPVS operations, {} operations in all, {:.1} ms; {} stale UDP flow(s) cleared; {} problem(s)",
            desired.service_port_count(),
            ports(IpFamily::V4),
            ports(IpFamily::V6),
            engine.node_context().node_name,
            config.table,
            ipvs.last_ops().len(),
            stats.operations,
            start.elapsed().as_secs_f64() * 1e3,
            stale,
            problems.len(),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let nft = backend.nft().expect("nftables mode");
    println!(
        "kproxy: synced {} service ports (IPv4 {}, IPv6 {}) for node {} into table {}: {} netlink messages, {} bytes, {:.1} ms; {} stale UDP flow(s) cleared; {} problem(s)",
        desired.service_port_count(),
        ports(IpFamily::V4),
        ports(IpFamily::V6),
        engine.node_context().node_name,
        config.table,
        stats.operations,
        nft.last_transaction_bytes(),
        start.elapsed().as_secs_f64() * 1e3,
        stale,
        problems.len(),
    );
    Ok(ExitCode::SUCCESS)
}

fn plan(paths: &[PathBuf], flags: &NodeFlags) -> Result<ExitCode> {
    init_logging(flags, 0);
    let config = flags.resolve()?;
    let loaded = manifests::load(paths)?;
    let mut problems = loaded.problems;
    let engine = manifests::engine(&config, &loaded.objects, &mut problems)?;
    report(&problems);
    print!("{}", Dataplane::new(&config).plan(engine.desired()));
    Ok(ExitCode::SUCCESS)
}

fn cleanup(table: &str, include_kube_proxy: bool) -> Result<ExitCode> {
    // IPVS mode's virtual services and dummy interface, where the kernel has IPVS.
    let ipvs_config = ipvs_backend::Config { table: table.to_string(), ..Default::default() };
    match ipvs_backend::IpvsBackend::new(ipvs_config).cleanup() {
        Ok(()) => println!("kproxy: removed IPVS services bound to {}", ipvs_backend::link::DEFAULT_NAME),
        Err(ipvs_backend::Error::NoIpvs) => {}
        Err(e) => return Err(e).context("removing IPVS services"),
    }
    NftBackend::new(table).cleanup().with_context(|| format!("removing table {table}"))?;
    println!("kproxy: removed tables ip {table} and ip6 {table}");
    if include_kube_proxy {
        NftBackend::new("kube-proxy").cleanup().context("removing kube-proxy's tables")?;
        println!("kproxy: removed tables ip kube-proxy and ip6 kube-proxy");
    }
    Ok(ExitCode::SUCCESS)
}
