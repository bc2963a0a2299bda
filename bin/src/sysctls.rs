//! kube-proxy's conntrack settings (`--conntrack-*` flags, `conntrack:` in `--config`):
//! the size of the conntrack table and its timeouts, written to sysctls when the daemon
//! starts, with kube-proxy's defaults.
//!
//! kube-proxy exits when it cannot write one; kproxy warns and goes on, because a proxy
//! that programs Services with the kernel's default timeouts is better than none (and in
//! a container with a read-only `/sys`, kube-proxy itself only warns for the table size).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// The settings, resolved from flags and file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conntrack {
    /// Table entries per CPU; 0 leaves the table size alone.
    pub max_per_core: u64,
    /// The smallest table size to set.
    pub min: u64,
    /// `nf_conntrack_tcp_timeout_established`; zero leaves it alone.
    pub tcp_established: Duration,
    /// `nf_conntrack_tcp_timeout_close_wait`; zero leaves it alone.
    pub tcp_close_wait: Duration,
    /// Sets `nf_conntrack_tcp_be_liberal`, which nftables mode benefits from: it does not
    /// drop `ct state invalid` packets the way iptables mode does.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`; zero leaves it alone.
    pub udp: Duration,
    /// `nf_conntrack_udp_timeout_stream`; zero leaves it alone.
    pub udp_stream: Duration,
}

impl Default for Conntrack {
    /// kube-proxy's defaults.
    fn default() -> Conntrack {
        Conntrack {
            max_per_core: 32768,
            min: 131072,
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_close_wait: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp: Duration::ZERO,
            udp_stream: Duration::ZERO,
        }
    }
}

/// Where sysctls and module parameters live; a directory of the same shape in tests.
pub struct Roots {
    /// `/proc/sys`.
    pub proc_sys: PathBuf,
    /// `/sys/module`.
    pub sys_module: PathBuf,
}

impl Default for Roots {
    fn default() -> Roots {
        Roots { proc_sys: "/proc/sys".into(), sys_module: "/sys/module".into() }
    }
}

fn read_number(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim().parse().with_context(|| format!("{}: not a number: {:?}", path.display(), text.trim()))
}

/// Writes `value` unless the file already holds it, as kube-proxy does (a write of the
/// same value can still fail on a read-only file system).
fn set(path: &Path, value: u64) -> Result<bool> {
    if read_number(path).ok() == Some(value) {
        return Ok(false);
    }
    // Never create the file: a missing sysctl means the kernel lacks the setting.
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
        std::io::Write::write_all(&mut file, format!("{value}\n").as_bytes())
    };
    write().with_context(|| format!("writing {value} to {}", path.display()))?;
    Ok(true)
}

impl Conntrack {
    /// The table size to set for `cpus` CPUs: kube-proxy's max(per-core × CPUs, min), or
    /// none when per-core is 0.
    pub fn table_size(&self, cpus: u64) -> Option<u64> {
        (self.max_per_core > 0).then(|| (self.max_per_core * cpus).max(self.min))
    }

    /// Applies the settings. Returns one message per sysctl changed, and one warning per
    /// sysctl that could not be written.
    pub fn apply(&self, roots: &Roots, cpus: u64) -> (Vec<String>, Vec<String>) {
        let (mut changed, mut warnings) = (Vec::new(), Vec::new());
        let netfilter = roots.proc_sys.join("net/netfilter");
        let mut note = |what: &str, result: Result<bool>| match result {
            Ok(true) => changed.push(what.to_string()),
            Ok(false) => {}
            Err(e) => warnings.push(format!("{what}: {e:#}")),
        };
        if let Some(max) = self.table_size(cpus) {
            // Like kube-proxy: only ever raise the table size, and keep the hash table at
            // least a quarter of it (the table is slow when its buckets overflow).
            let path = netfilter.join("nf_conntrack_max");
            let current = read_number(&path).unwrap_or(0);
            if current < max {
                note(&format!("nf_conntrack_max={max}"), set(&path, max));
                let hashsize = roots.sys_module.join("nf_conntrack/parameters/hashsize");
                if read_number(&hashsize).is_ok_and(|h| h < max / 4) {
                    note(&format!("nf_conntrack hashsize={}", max / 4), set(&hashsize, max / 4));
                }
            }
        }
        let timeouts = [
            ("nf_conntrack_tcp_timeout_established", self.tcp_established),
            ("nf_conntrack_tcp_timeout_close_wait", self.tcp_close_wait),
            ("nf_conntrack_udp_timeout", self.udp),
            ("nf_conntrack_udp_timeout_stream", self.udp_stream),
        ];
        for (name, timeout) in timeouts {
            if !timeout.is_zero() {
                note(&format!("{name}={}", timeout.as_secs()), set(&netfilter.join(name), timeout.as_secs()));
            }
        }
        if self.tcp_be_liberal {
            note("nf_conntrack_tcp_be_liberal=1", set(&netfilter.join("nf_conntrack_tcp_be_liberal"), 1));
        }
        (changed, warnings)
    }
}

/// The sysctls IPVS mode needs, as upstream's IPVS proxier sets them: IPVS keeps
/// conntrack entries (so that nftables can masquerade its flows), drops flows whose real
/// server is gone on their next packet, and expires persistence templates of quiesced
/// (weight 0) servers. With `strict_arp` (`--ipvs-strict-arp`), the node also answers
/// ARP only for addresses on the interface asked (`arp_ignore=1`) and announces only
/// those (`arp_announce=2`): the Service addresses bound to `kproxy-ipvs0` stay unannounced.
/// Returns what changed and warnings, as [`Conntrack::apply`].
pub fn ipvs(roots: &Roots, strict_arp: bool) -> (Vec<String>, Vec<String>) {
    let (mut changed, mut warnings) = (Vec::new(), Vec::new());
    let mut wanted: Vec<(&str, u64)> =
        vec![("vs/conntrack", 1), ("vs/expire_nodest_conn", 1), ("vs/expire_quiescent_template", 1)];
    if strict_arp {
        wanted.extend([("conf/all/arp_ignore", 1), ("conf/all/arp_announce", 2)]);
    }
    for (name, value) in wanted {
        let dotted = format!("net.ipv4.{}", name.replace('/', "."));
        match set(&roots.proc_sys.join("net/ipv4").join(name), value) {
            Ok(true) => changed.push(format!("{dotted}={value}")),
            Ok(false) => {}
            Err(e) => warnings.push(format!("{dotted}: {e:#}")),
        }
    }
    (changed, warnings)
}

/// Sets the process's `oom_score_adj` (kube-proxy's `--oom-score-adj`, -999 by default).
/// Lowering it needs `CAP_SYS_RESOURCE`; without it, kproxy logs and goes on, as
/// kube-proxy does.
pub fn set_oom_score_adj(value: i32) {
    set_oom_score_adj_at(Path::new("/proc/self/oom_score_adj"), value);
}

fn set_oom_score_adj_at(path: &Path, value: i32) -> bool {
    match std::fs::write(path, value.to_string()) {
        Ok(()) => {
            tracing::info!("set oom_score_adj to {value}");
            true
        }
        Err(e) => {
            tracing::warn!("could not set oom_score_adj to {value}: {e}; going on");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(files: &[(&str, &str)]) -> (Roots, PathBuf) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kproxy-sysctls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, value) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        }
        (Roots { proc_sys: dir.join("proc/sys"), sys_module: dir.join("sys/module") }, dir)
    }

    #[test]
    fn table_size_is_per_core_times_cpus_at_least_min() {
        let c = Conntrack::default();
        assert_eq!(c.table_size(2), Some(131072));
        assert_eq!(c.table_size(8), Some(262144));
        assert_eq!(Conntrack { max_per_core: 0, ..c }.table_size(8), None);
    }

    #[test]
    fn writes_what_differs_and_only_raises_the_table_size() {
        let nf = "proc/sys/net/netfilter";
        let (r, dir) = roots(&[
            (&format!("{nf}/nf_conntrack_max"), "65536\n"),
            ("sys/module/nf_conntrack/parameters/hashsize", "16384\n"),
            (&format!("{nf}/nf_conntrack_tcp_timeout_established"), "432000\n"),
            (&format!("{nf}/nf_conntrack_tcp_timeout_close_wait"), "3600\n"),
            (&format!("{nf}/nf_conntrack_tcp_be_liberal"), "0\n"),
        ]);
        let c = Conntrack { tcp_be_liberal: true, ..Conntrack::default() };
        let (changed, warnings) = c.apply(&r, 2);
        assert_eq!(
            changed,
            [
                "nf_conntrack_max=131072",
                "nf_conntrack hashsize=32768",
                "nf_conntrack_tcp_timeout_established=86400",
                "nf_conntrack_tcp_be_liberal=1"
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap().trim().to_string();
        assert_eq!(read(&format!("{nf}/nf_conntrack_max")), "131072");
        assert_eq!(read(&format!("{nf}/nf_conntrack_tcp_timeout_established")), "86400");
        // A second run changes nothing; a larger table is never shrunk.
        assert!(c.apply(&r, 2).0.is_empty());
        std::fs::write(dir.join(format!("{nf}/nf_conntrack_max")), "1000000\n").unwrap();
        assert!(c.apply(&r, 2).0.is_empty());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_missing_sysctl_is_a_warning_not_a_failure() {
        let (r, dir) = roots(&[("proc/sys/net/netfilter/nf_conntrack_max", "262144\n")]);
        let c = Conntrack { udp: Duration::from_secs(30), ..Conntrack::default() };
        let (changed, warnings) = c.apply(&r, 2);
        assert!(changed.is_empty());
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("nf_conntrack_tcp_timeout_established=86400: writing"), "{warnings:?}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn ipvs_sets_arp_sysctls_only_with_strict_arp() {
        let ipv4 = "proc/sys/net/ipv4";
        let files: Vec<(String, &str)> = ["vs/conntrack", "vs/expire_nodest_conn", "vs/expire_quiescent_template"]
            .iter()
            .map(|n| (format!("{ipv4}/{n}"), "0\n"))
            .chain([(format!("{ipv4}/conf/all/arp_ignore"), "0\n"), (format!("{ipv4}/conf/all/arp_announce"), "0\n")])
            .collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(p, v)| (p.as_str(), *v)).collect();
        let (r, dir) = roots(&files);
        let read = |p: &str| std::fs::read_to_string(dir.join(ipv4).join(p)).unwrap().trim().to_string();
        let (changed, warnings) = ipvs(&r, false);
        assert_eq!(
            changed,
            ["net.ipv4.vs.conntrack=1", "net.ipv4.vs.expire_nodest_conn=1", "net.ipv4.vs.expire_quiescent_template=1"]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((read("conf/all/arp_ignore"), read("conf/all/arp_announce")), ("0".into(), "0".into()));
        let (changed, warnings) = ipvs(&r, true);
        assert_eq!(changed, ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((read("conf/all/arp_ignore"), read("conf/all/arp_announce")), ("1".into(), "2".into()));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn oom_score_adj_is_written_or_warned_about() {
        let (_, dir) = roots(&[("oom_score_adj", "0\n")]);
        assert!(set_oom_score_adj_at(&dir.join("oom_score_adj"), -999));
        assert_eq!(std::fs::read_to_string(dir.join("oom_score_adj")).unwrap(), "-999");
        assert!(!set_oom_score_adj_at(&dir.join("missing/oom_score_adj"), -999), "a failure is not fatal");
        std::fs::remove_dir_all(dir).ok();
    }
}
