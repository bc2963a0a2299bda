//! `kproxy`: a drop-in replacement for kube-proxy, with kube-proxy's nftables-mode
//! semantics.

mod cleanup;
mod cluster;
mod config;
mod conntrack;
mod daemon;
mod dataplane;
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
use proxy_core::{Backend, IpFamily};

use crate::config::{Config, ProxyFlags};
use crate::dataplane::Dataplane;

/// kproxy: Kubernetes Services on a node, with kube-proxy's nftables semantics.
///
/// Without a subcommand, kproxy is the node daemon and takes kube-proxy's command line:
/// `kproxy --config /var/lib/kube-proxy/config.conf --hostname-override=$(NODE_NAME)`.
#[derive(Parser, Debug)]
#[command(name = "kproxy", about, args_conflicts_with_subcommands = true, disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    daemon: daemon::RunArgs,
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
        node: ProxyFlags,
    },
    /// Prints the nftables ruleset `sync` would write, without touching the kernel.
    Plan {
        /// Manifest files or directories.
        #[arg(long, num_args = 1.., required = true)]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        node: ProxyFlags,
    },
    /// Says where a packet would go: its possible endpoints, or REJECT / DROP, and whether
    /// it is masqueraded.
    Trace(trace_cmd::TraceArgs),
    /// Removes everything kproxy created (its nftables tables, IPVS services and dummy
    /// interface).
    Cleanup {
        /// Also remove what kube-proxy's modes left: its nftables tables, its iptables and
        /// IPVS modes' `KUBE-*` chains (with the iptables tools), `kube-ipvs0` and its ipsets.
        #[arg(long)]
        include_kube_proxy: bool,
        /// The nftables table kproxy owns.
        #[arg(long, default_value = nft_backend::DEFAULT_TABLE)]
        table: String,
    },
    /// Prints the version.
    Version,
}

/// Sets up logging as the configuration says (`-v`, `--logging-format`, `logging:` in the
/// file), then logs the configuration's warnings.
pub(crate) fn init_logging(config: &Config, min_verbosity: u32) {
    let level = match config.verbosity.max(min_verbosity) {
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
    let _ = if config.logging_format == "json" { builder.json().try_init() } else { builder.try_init() };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(config::flags::normalize_args(std::env::args_os()));
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
        None => daemon::run(&cli.daemon),
        Some(Command::Run(args)) => daemon::run(&args),
        Some(Command::Sync { manifests, node }) => sync(&manifests, &node),
        Some(Command::Plan { manifests, node }) => plan(&manifests, &node),
        Some(Command::Trace(args)) => trace_cmd::run(&args),
        Some(Command::Cleanup { include_kube_proxy, table }) => cleanup(&table, include_kube_proxy),
        Some(Command::Version) => {
            print_version();
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `kproxy version` and `--version`.
pub(crate) fn print_version() {
    println!("kproxy {} (kube-proxy v1.37 nftables mode)", env!("CARGO_PKG_VERSION"));
}

/// Prints the problems found in the manifests, one per line, on standard error.
pub(crate) fn report(problems: &[String]) {
    for p in problems {
        eprintln!("warning: skipped {p}");
    }
}

fn sync(paths: &[PathBuf], flags: &ProxyFlags) -> Result<ExitCode> {
    let config = flags.resolve()?;
    init_logging(&config, 0);
    let start = Instant::now();
    let loaded = manifests::load(paths)?;
    let mut problems = loaded.problems;
    let engine = manifests::engine(&config, &loaded.objects, &mut problems)?;
    report(&problems);
    let desired = engine.desired();
    let mut backend = Dataplane::new(&config);
    let stats = backend.sync_full(desired).context("applying the rules")?;
    if config.localhost_nodeports() {
        // The relay is a process of its own; a one-shot sync has none to leave behind.
        eprintln!("note: NodePorts on 127.0.0.1 and ::1 are served by `kproxy run` (its relay), not by `kproxy sync`");
    }
    if let Dataplane::Ipvs(_) = backend {
        // After the sync: the IPVS sysctls exist once the ip_vs module is in.
        let (_, warnings) = sysctls::ipvs(&sysctls::Roots::default(), config.ipvs_strict_arp);
        for w in warnings {
            eprintln!("warning: could not set an IPVS sysctl: {w}");
        }
    }
    // As after every sync: UDP flows pinned to endpoints that are gone would otherwise
    // keep going there.
    let stale = match conntrack::clear_stale(desired, &Default::default(), &engine.node_context().node_ips) {
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
        nft.client().last_transaction_bytes(),
        start.elapsed().as_secs_f64() * 1e3,
        stale,
        problems.len(),
    );
    Ok(ExitCode::SUCCESS)
}

fn plan(paths: &[PathBuf], flags: &ProxyFlags) -> Result<ExitCode> {
    let config = flags.resolve()?;
    init_logging(&config, 0);
    let loaded = manifests::load(paths)?;
    let mut problems = loaded.problems;
    let engine = manifests::engine(&config, &loaded.objects, &mut problems)?;
    report(&problems);
    print!("{}", Dataplane::new(&config).plan(engine.desired()));
    Ok(ExitCode::SUCCESS)
}

fn cleanup(table: &str, include_kube_proxy: bool) -> Result<ExitCode> {
    init_logging(&ProxyFlags { table: table.into(), ..ProxyFlags::default() }.resolve()?, 2);
    cleanup::own(table)?;
    if include_kube_proxy {
        anyhow::ensure!(
            cleanup::kube_proxy_leftovers(true) == 0,
            "encountered an error while removing kube-proxy's rules"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[path = "compat_tests.rs"]
mod compat_tests;
