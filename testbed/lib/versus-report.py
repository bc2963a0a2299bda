#!/usr/bin/env python3
"""Turns testbed/versus.sh's results into a Markdown section and an SVG chart.

    versus-report.py RESULTS.tsv BENCHMARKS.md CHART.svg COMMAND STARTED

The section replaces whatever lies between the markers <!-- versus:begin --> and
<!-- versus:end --> in BENCHMARKS.md (it is appended when they are missing); it is written
only when upstream was run. With a baseline (KPROXY_VERSUS_BASELINE_REV, proxy
"baseline"), a second section between <!-- versus-baseline:begin --> and
<!-- versus-baseline:end --> compares this tree with kproxy at that revision.
"""
import math
import os
import platform
import sys

COLUMNS = ["services", "endpoints", "proxy", "status", "cold_ms", "endpoint_ms", "added_ms",
           "resync_s", "rss_kb", "cpu_s", "conn_p50_us", "conn_p99_us", "write_ms"]


def load(path):
    rows = {}
    for line in open(path):
        fields = line.rstrip("\n").split("\t")
        if len(fields) == len(COLUMNS) - 1:
            fields.append("")  # results written before the write's own time was recorded
        if len(fields) != len(COLUMNS):
            continue
        row = dict(zip(COLUMNS, fields))
        rows[(int(row["services"]), int(row["endpoints"]), row["proxy"])] = row
    return rows


def number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def machine():
    cpu = "unknown CPU"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) // (1024 * 1024)
    import os
    return f"Linux {platform.release()}, {os.cpu_count()} × {cpu}, {mem} GiB"


def cell(value, unit, digits=0):
    v = number(value)
    if v is None:
        return "—"
    return f"{v:,.{digits}f} {unit}"


def ratio(up, kp, higher_is_worse=True):
    u, k = number(up), number(kp)
    if u is None or k is None or k == 0:
        return "—"
    r = u / k if higher_is_worse else k / u
    return f"{r:,.1f}×"


# The API server's answer to a write and its watch events leave it within about a
# millisecond of each other, so a change seen sooner than this after the answer is noise.
FLOOR_MS = 1


def below_floor(ms):
    if ms is None:
        return "—"
    return f"< {FLOOR_MS} ms" if ms < FLOOR_MS else cell(ms, "ms", 1 if ms < 100 else 0)


def ratio_floor(up, kp):
    """upstream ÷ kproxy, with values under FLOOR_MS taken as FLOOR_MS (so the ratio is a
    lower bound, marked "≥")."""
    if up is None or kp is None:
        return "—"
    if up < FLOOR_MS:
        return "—"
    if kp < FLOOR_MS:
        return f"≥ {up / FLOOR_MS:,.0f}×"
    return f"{up / kp:,.1f}×"


def cold(r):
    """A cold start's cell: seconds, a timeout, or not run."""
    if not r:
        return "not run"
    if r["status"] != "ok":
        return f"timeout (> {number(r['cold_ms']) / 1000:,.0f} s)"
    return cell(number(r["cold_ms"]) / 1000, "s", 2)


def section(rows, command, started, timeout_note):
    scenarios = sorted({(n, e) for (n, e, _) in rows}, key=lambda s: (s[1] > 2, s[0], s[1]))
    out = ["<!-- versus:begin -->", "## Side by side with upstream kube-proxy", "",
           f"Measured {started} on {machine()}, one proxy at a time against the same "
           "kube-apiserver (the test bed's), each in its own network namespace with the same node "
           "identity. Upstream is kube-proxy v1.37.2 built from source, `--proxy-mode nftables`; "
           "kproxy is the release build. Command:", "", "```sh", command, "```", "",
           "Ratios are upstream ÷ kproxy (how many times faster or smaller kproxy is). "
           "Cold start: process start until every ClusterIP is in the kernel (upstream's `service-ips` "
           "map, kproxy's `to-cluster-endpoints` set), polled from the kernel, median of 3 cold starts on "
           "fresh nodes; each is started once the machine is idle (under 10% busy over half a "
           "second). One change: from the API "
           "server's answer to the write, timestamped by the writer (`testbed/lib/apiwrite.py`), until "
           "the change is in the kernel, median of 3 samples 2.2 s apart (two `--min-sync-period`s, so "
           "each finds the proxy's sync rate limit rested). One `nftprobe wait` process, started before the "
           "write, asks the kernel after every nf_tables commit (it listens to nf_tables' notifications) "
           "with one netlink request for the map upstream's service chain DNATs through or for the "
           "slots of kproxy's endpoint map (a Service added: for its ClusterIP). The answer and the "
           "watch events leave the API server within about a millisecond of each other, so under 1 ms "
           "the table says so rather than divide by noise, and the ratio is then a lower bound (≥). "
           "The API write row is the API server's own time for the endpoint change (sent → answered), "
           "which comes before either proxy hears of it. "
           "Full resync: the proxy's own "
           "`kubeproxy_sync_full_proxy_rules_duration_seconds` after a restart over its existing rules. "
           "RSS and CPU: the last process cold-started, from start through the changes; CPU includes the children it "
           "waited for (upstream's `nft` runs), peak RSS is the proxy process alone. " + timeout_note, "",
           "| Services × endpoints | measure | upstream kube-proxy | kproxy | ratio |",
           "|---|---|---|---|---|"]
    for n, e in scenarios:
        up = rows.get((n, e, "upstream"), {})
        kp = rows.get((n, e, "kproxy"), {})
        label = f"{n:,} × {e}"

        lines = [("cold start", cold(up), cold(kp),
                  ratio(up.get("cold_ms"), kp.get("cold_ms")) if up.get("status") == "ok" else
                  (f"> {number(up['cold_ms']) / number(kp['cold_ms']):,.0f}×" if up and kp and kp.get("status") == "ok" else "—")),
                 ("one endpoint change", below_floor(number(up.get("endpoint_ms"))),
                  below_floor(number(kp.get("endpoint_ms"))),
                  ratio_floor(number(up.get("endpoint_ms")), number(kp.get("endpoint_ms")))),
                 ("one Service added", below_floor(number(up.get("added_ms"))),
                  below_floor(number(kp.get("added_ms"))),
                  ratio_floor(number(up.get("added_ms")), number(kp.get("added_ms")))),
                 ("full resync (metric)", cell(up.get("resync_s"), "s", 3), cell(kp.get("resync_s"), "s", 3),
                  ratio(up.get("resync_s"), kp.get("resync_s"))),
                 ("peak RSS", cell((number(up.get("rss_kb")) or 0) / 1024 or None, "MiB"),
                  cell((number(kp.get("rss_kb")) or 0) / 1024 or None, "MiB"),
                  ratio(up.get("rss_kb"), kp.get("rss_kb"))),
                 ("CPU", cell(up.get("cpu_s"), "s", 1), cell(kp.get("cpu_s"), "s", 1),
                  ratio(up.get("cpu_s"), kp.get("cpu_s")))]
        if up.get("write_ms") or kp.get("write_ms"):
            lines.insert(2, ("API write itself (sent → answered)", cell(up.get("write_ms"), "ms", 1),
                             cell(kp.get("write_ms"), "ms", 1), "—"))
        if up.get("conn_p50_us") or kp.get("conn_p50_us"):
            lines.append(("new connection p50 / p99",
                          f"{cell(up.get('conn_p50_us'), 'µs')} / {cell(up.get('conn_p99_us'), 'µs')}",
                          f"{cell(kp.get('conn_p50_us'), 'µs')} / {cell(kp.get('conn_p99_us'), 'µs')}",
                          ratio(up.get("conn_p50_us"), kp.get("conn_p50_us"))))
        for i, (what, u, k, r) in enumerate(lines):
            out.append(f"| {label if i == 0 else ''} | {what} | {u} | {k} | {r} |")
    out += ["", "![cold start against the number of Services](versus.svg)", "", "<!-- versus:end -->"]
    return "\n".join(out) + "\n"


def baseline_section(rows, command, started, rev):
    """kproxy at revision REV against this tree, scenario by scenario in the same run."""
    scenarios = sorted({(n, e) for (n, e, p) in rows if p == "baseline"})
    out = ["<!-- versus-baseline:begin -->", f"## kproxy against its baseline {rev}", "",
           f"Measured {started} on {machine()}, one proxy at a time against the same API server, as in the "
           f"side-by-side section; the baseline is kproxy built at {rev}. Ratios are baseline ÷ this tree "
           "(above 1× this tree is faster or smaller). Command:", "", "```sh", command, "```", "",
           f"| Services × endpoints | measure | kproxy {rev} | this tree | ratio |", "|---|---|---|---|---|"]
    for n, e in scenarios:
        b = rows.get((n, e, "baseline"), {})
        k = rows.get((n, e, "kproxy"), {})

        lines = [("cold start (median of cold starts)", cold(b), cold(k), ratio(b.get("cold_ms"), k.get("cold_ms"))),
                 ("one endpoint change", below_floor(number(b.get("endpoint_ms"))),
                  below_floor(number(k.get("endpoint_ms"))),
                  ratio_floor(number(b.get("endpoint_ms")), number(k.get("endpoint_ms")))),
                 ("one Service added", below_floor(number(b.get("added_ms"))), below_floor(number(k.get("added_ms"))),
                  ratio_floor(number(b.get("added_ms")), number(k.get("added_ms")))),
                 ("full resync (metric)", cell(b.get("resync_s"), "s", 3), cell(k.get("resync_s"), "s", 3),
                  ratio(b.get("resync_s"), k.get("resync_s"))),
                 ("peak RSS", cell((number(b.get("rss_kb")) or 0) / 1024 or None, "MiB"),
                  cell((number(k.get("rss_kb")) or 0) / 1024 or None, "MiB"), ratio(b.get("rss_kb"), k.get("rss_kb"))),
                 ("CPU", cell(b.get("cpu_s"), "s", 1), cell(k.get("cpu_s"), "s", 1), ratio(b.get("cpu_s"), k.get("cpu_s")))]
        for i, (what, x, y, r) in enumerate(lines):
            out.append(f"| {f'{n:,} × {e}' if i == 0 else ''} | {what} | {x} | {y} | {r} |")
    out += ["", "<!-- versus-baseline:end -->"]
    return "\n".join(out) + "\n"


def replace_section(doc, text, name):
    """Puts TEXT between the markers of section NAME in DOC (appended when missing)."""
    begin, end = doc.find(f"<!-- {name}:begin -->"), doc.find(f"<!-- {name}:end -->")
    if begin >= 0 and end > begin:
        return doc[:begin] + text + doc[end + len(f"<!-- {name}:end -->") + 1:]
    return doc.rstrip("\n") + "\n\n" + text


def chart(rows, path):
    """Cold start against the number of Services (1–2 endpoints each), log–log."""
    series = {}
    for (n, e, proxy), r in rows.items():
        if e <= 2 and number(r["cold_ms"]):
            series.setdefault(proxy, []).append((n, number(r["cold_ms"]) / 1000, r["status"] == "ok"))
    width, height, left, bottom, top, right = 640, 400, 70, 50, 30, 130
    xs = [p[0] for s in series.values() for p in s] or [100, 100000]
    ys = [p[1] for s in series.values() for p in s] or [0.01, 1000]
    x0, x1 = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)

    def px(x):
        return left + (math.log10(x) - x0) / (x1 - x0) * (width - left - right)

    def py(y):
        return height - bottom - (math.log10(y) - y0) / (y1 - y0) * (height - bottom - top)

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
           'Cold start: process start → every ClusterIP in the kernel</text>']
    for d in range(x0, x1 + 1):
        x = px(10 ** d)
        svg.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{height - bottom}" stroke="#ddd"/>')
        svg.append(f'<text x="{x}" y="{height - bottom + 16}" text-anchor="middle">{10 ** d:,}</text>')
    for d in range(y0, y1 + 1):
        y = py(10 ** d)
        svg.append(f'<line x1="{left}" y1="{y}" x2="{width - right}" y2="{y}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{10.0 ** d:g} s</text>')
    svg.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">'
               'Services (log scale)</text>')
    colours = {"upstream": "#d62728", "kproxy": "#1f77b4"}
    names = {"upstream": "upstream kube-proxy", "kproxy": "kproxy"}
    for i, (proxy, points) in enumerate(sorted(series.items())):
        points.sort()
        colour = colours.get(proxy, "#555")
        svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                   + " ".join(f"{px(n):.1f},{py(s):.1f}" for n, s, _ in points) + '"/>')
        for n, s, ok in points:
            fill = colour if ok else "white"
            svg.append(f'<circle cx="{px(n):.1f}" cy="{py(s):.1f}" r="4" fill="{fill}" stroke="{colour}"/>')
            if not ok:
                svg.append(f'<text x="{px(n) + 6:.1f}" y="{py(s) - 6:.1f}" fill="{colour}">timeout</text>')
        y = top + 20 + 20 * i
        svg.append(f'<line x1="{width - right + 10}" y1="{y}" x2="{width - right + 30}" y2="{y}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        svg.append(f'<text x="{width - right + 35}" y="{y + 4}">{names.get(proxy, proxy)}</text>')
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


def main():
    results, markdown, svg, command, started = sys.argv[1:6]
    rows = load(results)
    timeout_note = ("A timeout means the proxy had not programmed every ClusterIP when the "
                    "script gave up (`KPROXY_VERSUS_TIMEOUT`); its other measures are then not taken.")
    try:
        doc = open(markdown).read()
    except FileNotFoundError:
        doc = ""
    texts = []
    if any(p == "upstream" for (_, _, p) in rows):
        texts.append(section(rows, command, started, timeout_note))
        doc = replace_section(doc, texts[-1], "versus")
        chart(rows, svg)
    rev = os.environ.get("KPROXY_VERSUS_BASELINE_REV")
    if rev and any(p == "baseline" for (_, _, p) in rows):
        texts.append(baseline_section(rows, command, started, rev))
        doc = replace_section(doc, texts[-1], "versus-baseline")
    with open(markdown, "w") as f:
        f.write(doc)
    print("\n".join(texts))


if __name__ == "__main__":
    main()
