#!/usr/bin/env python3
"""kube-proxy and kproxy side by side: configurations and metrics.

  compat.py config UPSTREAM.yaml KPROXY.yaml [--mode-swapped]
      The effective configurations (--write-config-to, or /configz bodies) must be equal,
      field by field. With --mode-swapped (upstream ran iptables mode, kproxy runs
      nftables, as docs/kube-proxy-compatibility.md says), only the documented differences
      are allowed: mode, the periods moving from the iptables section to the nftables one,
      and nodePortAddresses defaulting to [primary].

  compat.py metrics UPSTREAM.txt KPROXY.txt
      Every kubeproxy_* family upstream exposes must be in kproxy's, with the same type
      and label names. Prints the families compared.

  compat.py kubeadm KUBEADM_OUTPUT.yaml FIXTURE.yaml
      kubeadm's KubeProxyConfiguration document must equal the fixture.
"""
import json
import re
import sys

import yaml


def flat(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: value}


def load(path):
    text = open(path).read()
    doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    # A /configz body holds the configuration under the group name.
    return doc.get("kubeproxy.config.k8s.io", doc)


def config(upstream, kproxy, swapped):
    a, b = flat(load(upstream)), flat(load(kproxy))
    diffs = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    if swapped:
        assert diffs.pop("mode", None) == ("iptables", "nftables"), "mode"
        for p in ("syncPeriod", "minSyncPeriod"):
            up, kp = diffs.pop(f"iptables.{p}", (None, None)), diffs.pop(f"nftables.{p}", (None, None))
            assert up[0] == kp[1] and up[1] == kp[0] == "0s", f"{p} moved: {up} {kp}"
        npa = diffs.pop("nodePortAddresses", (None, ["primary"]))
        assert npa[0] in (None, []) and npa[1] == ["primary"], f"nodePortAddresses {npa}"
    if diffs:
        for k, (x, y) in sorted(diffs.items()):
            print(f"  {k}: kube-proxy {x!r}, kproxy {y!r}", file=sys.stderr)
        sys.exit(f"configurations differ in {len(diffs)} field(s)")


def families(path):
    """name -> (type, {frozenset of label names}) from the text or OpenMetrics format."""
    types, labels = {}, {}
    for line in open(path):
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            # OpenMetrics names counters without _total; the text format with it.
            types[name.removesuffix("_total") if kind == "counter" else name] = kind
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?", line)
            if not m:
                continue
            names = frozenset(re.findall(r'([a-zA-Z_]+)="', m.group(3) or "")) - {"le"}
            sample = m.group(1)
            family = next((f for f in (sample, re.sub(r"_(bucket|count|sum|total)$", "", sample)) if f in types), None)
            if family:
                labels.setdefault(family, set()).add(names)
    return {f: (t, labels.get(f, set())) for f, t in types.items()}


def metrics(upstream, kproxy):
    up, kp = families(upstream), families(kproxy)
    wanted = sorted(f for f in up if f.startswith("kubeproxy_"))
    problems = []
    for f in wanted:
        if f not in kp:
            problems.append(f"{f}: missing")
        elif kp[f][0] != up[f][0]:
            problems.append(f"{f}: type {kp[f][0]}, upstream {up[f][0]}")
        elif not up[f][1] <= kp[f][1]:
            problems.append(f"{f}: labels {sorted(map(sorted, kp[f][1]))}, upstream {sorted(map(sorted, up[f][1]))}")
    if problems:
        sys.exit("metrics differ:\n  " + "\n  ".join(problems))
    print(" ".join(wanted))


def kubeadm(output, fixture):
    docs = [d for d in yaml.safe_load_all(open(output)) if d and d.get("kind") == "KubeProxyConfiguration"]
    assert len(docs) == 1, "kubeadm printed no KubeProxyConfiguration"
    if docs[0] != yaml.safe_load(open(fixture)):
        sys.exit(f"kubeadm's KubeProxyConfiguration differs from {fixture}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "config":
        config(args[0], args[1], "--mode-swapped" in args)
    elif cmd == "metrics":
        metrics(*args)
    elif cmd == "kubeadm":
        kubeadm(*args)
    else:
        sys.exit(__doc__)
