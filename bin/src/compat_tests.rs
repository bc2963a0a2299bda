//! kube-proxy's command line and file against kproxy's: every flag of the captured
//! `kube-proxy --help` (v1.37.2, `bin/testdata/kube-proxy-help.txt`; the e2e checks the
//! capture against the test bed's binary) parses with a valid value, and every flag and
//! every field of kubeadm's file has a row in docs/kube-proxy-compatibility.md.

use super::*;

const HELP: &str = include_str!("../testdata/kube-proxy-help.txt");
const DOC: &str = include_str!("../../docs/kube-proxy-compatibility.md");
const KUBEADM: &str = include_str!("../testdata/kubeadm-kube-proxy-config.yaml");

/// (name, type) of each flag in `--help`: the type is empty for booleans.
fn upstream_flags() -> Vec<(String, String)> {
    HELP.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-h, ").or_else(|| line.strip_prefix("-v, ")).unwrap_or(line);
            let rest = line.strip_prefix("--")?;
            let name_end = rest.find(' ').unwrap_or(rest.len());
            let (name, after) = rest.split_at(name_end);
            // A type follows after one space; a description after several.
            let kind = if after.starts_with("  ") { "" } else { after.split_whitespace().next().unwrap_or("") };
            Some((name.to_string(), kind.to_string()))
        })
        .collect()
}

/// A valid value for a flag, by name where the type says too little.
fn sample(name: &str, kind: &str) -> Option<&'static str> {
    Some(match (name, kind) {
        (_, "") => return None,
        ("bind-address", _) => "10.0.0.1",
        ("healthz-bind-address" | "metrics-bind-address", _) => "127.0.0.1:10999",
        ("cluster-cidr", _) => "10.244.0.0/16",
        ("ipvs-exclude-cidrs", _) => "10.0.0.0/8",
        ("nodeport-addresses", _) => "primary,localhost",
        ("detect-local-mode", _) => "ClusterCIDR",
        ("proxy-mode", _) => "nftables",
        ("feature-gates", _) => "KubeProxyNFTablesLocalhostNodePorts=true",
        ("logging-format", _) => "text",
        ("show-hidden-metrics-for-version", _) => "1.36",
        ("vmodule", _) => "proxier=4",
        ("v", _) => "2",
        ("config", _) => "CONFIG",
        ("version", _) => "raw",
        ("iptables-masquerade-bit", _) => "14",
        ("oom-score-adj", _) => "-999",
        (_, "duration") => "10s",
        (_, "int32" | "float32") => "20",
        (_, "quantity") => "0",
        (_, "string") => "value",
        (_, other) => panic!("--{name}: no sample for type {other}"),
    })
}

#[test]
fn the_capture_has_every_flag() {
    let flags = upstream_flags();
    assert_eq!(flags.len(), 55, "{flags:?}");
    assert!(flags.contains(&("cleanup".into(), String::new())));
    assert!(flags.contains(&("nodeport-addresses".into(), "strings".into())));
}

#[test]
fn every_kube_proxy_flag_is_accepted() {
    let config = std::env::temp_dir().join(format!("kproxy-compat-{}.yaml", std::process::id()));
    std::fs::write(&config, KUBEADM).unwrap();
    for (name, kind) in upstream_flags() {
        if name == "help" {
            continue;
        }
        let arg = match sample(&name, &kind) {
            None => format!("--{name}"),
            Some("CONFIG") => format!("--{name}={}", config.display()),
            Some(value) => format!("--{name}={value}"),
        };
        // As the daemon's flags, and as `sync`'s (the acceptance tests' contract).
        let daemon = ["kproxy", &arg].map(std::ffi::OsString::from);
        let cli = Cli::try_parse_from(config::flags::normalize_args(daemon)).unwrap_or_else(|e| panic!("{arg}: {e}"));
        cli.daemon.flags().resolve().unwrap_or_else(|e| panic!("{arg}: {e:#}"));
        let sync = ["kproxy", "sync", "--manifests", "x.yaml", &arg].map(std::ffi::OsString::from);
        Cli::try_parse_from(config::flags::normalize_args(sync)).unwrap_or_else(|e| panic!("sync {arg}: {e}"));
    }
    std::fs::remove_file(config).ok();
}

#[test]
fn every_flag_and_field_has_a_row_in_the_compatibility_table() {
    for (name, _) in upstream_flags() {
        assert!(DOC.contains(&format!("`--{name}`")), "--{name} has no row in docs/kube-proxy-compatibility.md");
    }
    for hidden in ["healthz-port", "metrics-port"] {
        assert!(DOC.contains(&format!("`--{hidden}`")), "--{hidden}");
    }
    // kubeadm's file holds every field: each top-level key, and each key of a section.
    let file: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(KUBEADM).unwrap();
    let mut fields = Vec::new();
    for (key, value) in &file {
        let key = key.as_str().unwrap();
        match value.as_mapping() {
            Some(section) => fields.extend(section.keys().map(|sub| format!("{key}.{}", sub.as_str().unwrap()))),
            None => fields.push(key.to_string()),
        }
    }
    for field in fields {
        let (section, leaf) = field.split_once('.').unwrap_or(("", &field));
        // `logging.options` covers its children; `winkernel` (`networkName`, …) lists them.
        let listed = DOC.contains(&format!("`{field}"))
            || (!section.is_empty() && DOC.contains(&format!("`{section}` (")) && DOC.contains(&format!("`{leaf}`")));
        assert!(listed, "file field {field} has no row in docs/kube-proxy-compatibility.md");
    }
    for field in ["apiVersion", "kind", "mode", "bindAddress", "oomScoreAdj", "portRange", "windowsRunAsService"] {
        assert!(DOC.contains(&format!("`{field}`")), "{field}");
    }
}
