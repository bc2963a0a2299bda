//! kube-proxy's feature gates: the names it knows, which are locked, which are
//! deprecated, checked as upstream's `SetFromMap` checks them. An unknown gate or a locked
//! gate set against its default makes kube-proxy exit; kproxy does the same, with the same
//! words, so a configuration that kube-proxy refuses is not silently accepted.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// The gates of kube-proxy v1.37.2 (see the file's header for where they come from).
const GATES: &str = include_str!("feature_gates.tsv");

/// One known gate.
struct Gate<'a> {
    default: bool,
    locked: bool,
    stage: &'a str,
}

fn lookup(name: &str) -> Option<Gate<'static>> {
    GATES.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let mut fields = line.split('\t');
        (fields.next()? == name).then_some(())?;
        Some(Gate { default: fields.next()? == "true", locked: fields.next()? == "true", stage: fields.next()? })
    })
}

/// Checks gates as kube-proxy does: unknown names and locked gates set against their
/// default are errors; deprecated gates give a warning each.
pub fn check(gates: &BTreeMap<String, bool>, warnings: &mut Vec<String>) -> Result<()> {
    for (name, value) in gates {
        let Some(gate) = lookup(name) else { bail!("unrecognized feature gate: {name}") };
        if gate.locked && *value != gate.default {
            bail!("cannot set feature gate {name} to {value}, feature is locked to {}", gate.default);
        }
        if gate.stage == "DEPRECATED" {
            warnings.push(format!(
                "setting deprecated feature gate {name}={value}: it will be removed in a future release"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates(pairs: &[(&str, bool)]) -> BTreeMap<String, bool> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn known_gates_pass_unknown_and_locked_ones_fail_as_upstream() {
        let mut warnings = Vec::new();
        assert!(
            check(&gates(&[("KubeProxyNFTablesLocalhostNodePorts", true), ("AllAlpha", false)]), &mut warnings).is_ok()
        );
        assert!(warnings.is_empty());
        // Locked GA gates are known though `kube-proxy --help` does not list them.
        assert!(check(&gates(&[("NFTablesProxyMode", true)]), &mut warnings).is_ok());
        // The messages are kube-proxy v1.37.2's, as it printed them here.
        let err = check(&gates(&[("Foo", true)]), &mut warnings).unwrap_err();
        assert_eq!(err.to_string(), "unrecognized feature gate: Foo");
        let err = check(&gates(&[("NFTablesProxyMode", false)]), &mut warnings).unwrap_err();
        assert_eq!(err.to_string(), "cannot set feature gate NFTablesProxyMode to false, feature is locked to true");
        check(&gates(&[("KubeProxyIPVS", false)]), &mut warnings).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    /// Every gate `kube-proxy --help` lists is known.
    #[test]
    fn every_gate_of_the_help_is_known() {
        let help = include_str!("../../testdata/kube-proxy-help.txt");
        let listed: Vec<&str> = help
            .lines()
            .filter_map(|l| l.trim().split_once("=true|false").map(|(name, _)| name))
            .filter(|name| !name.contains(' '))
            .collect();
        assert!(listed.len() > 150, "{}", listed.len());
        for name in listed {
            assert!(lookup(name).is_some(), "{name}");
        }
    }
}
