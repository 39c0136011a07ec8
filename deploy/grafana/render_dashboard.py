#!/usr/bin/env python3
"""Renders the panels of a Grafana dashboard (trams-serve.json) from a real Prometheus into one PNG: one subplot
per panel, its title, its queries over the last --minutes (query_range), a legend from each target's
legendFormat. A picture of the dashboard without a Grafana, for READMEs and reviews; not a test (CI has no
matplotlib). Needs Debian's python3-matplotlib.

  /usr/bin/python3 deploy/grafana/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 10

Grafana's variables become: $job, $instance -> --job, --instance (regexes), $__rate_interval -> --rate_interval.
"""

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def substitute(expr, values):
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)


def query_range(prometheus, expr, start, end, step):
    url = prometheus.rstrip("/") + "/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    try:
        body = json.loads(urllib.request.urlopen(url, timeout=30).read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    if body.get("status") != "success":
        raise RuntimeError("%s: %s" % (expr, body.get("error", body)))
    return body["data"]["result"]


def legend(fmt, labels):
    if not fmt:
        return "{" + ", ".join("%s=%s" % kv for kv in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def scale_for(unit, peak):
    """(divisor, axis label) so the axis reads in a sensible unit."""
    if unit == "bytes":
        for div, name in ((2 ** 40, "TiB"), (2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
            if peak >= div:
                return div, name
        return 1, "bytes"
    if unit == "s":
        if 0 < peak < 1e-3:
            return 1e-6, "µs"
        if 0 < peak < 1:
            return 1e-3, "ms"
        return 1, "s"
    if unit == "percentunit":
        return 0.01, "%"
    return 1, {"reqps": "req/s", "ops": "/s", "short": ""}.get(unit, unit or "")


def panels_of(dashboard):
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(c for c in p.get("panels", []) if c.get("type") != "row")
        else:
            out.append(p)
    return sorted(out, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--dashboard", default=os.path.join(HERE, "trams-serve.json"))
    ap.add_argument("--out", default=os.path.join(HERE, "trams-serve.png"))
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--end", type=float, default=0, help="end of the window, Unix seconds (default: now)")
    ap.add_argument("--job", default=".*")
    ap.add_argument("--instance", default=".*")
    ap.add_argument("--rate_interval", default="1m")
    ap.add_argument("--columns", type=int, default=4)
    ap.add_argument("--dpi", type=int, default=72)
    args = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.dates as mdates
    from datetime import datetime

    dashboard = json.load(open(args.dashboard, encoding="utf-8"))
    values = {"job": args.job, "instance": args.instance, "__rate_interval": args.rate_interval,
              "__interval": "15s", "__range": "%dm" % max(1, int(args.minutes))}
    end = args.end or time.time()
    start = end - args.minutes * 60
    step = max(1, int(args.minutes * 60 / 240))
    panels = panels_of(dashboard)
    cols = args.columns
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.3 * rows), squeeze=False)
    fig.suptitle("%s: last %g minutes (job=~\"%s\"), rendered from Prometheus by render_dashboard.py"
                 % (dashboard.get("title", "dashboard"), args.minutes, args.job), fontsize=14)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    for ax, panel in zip(axes.flat, panels):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        series = []
        for t in panel.get("targets", []):
            try:
                result = query_range(args.prometheus, substitute(t["expr"], values), start, end, step)
            except RuntimeError as e:
                print("panel '%s': %s" % (panel.get("title"), e), file=sys.stderr)
                continue
            for r in result:
                pts = [(float(ts), float(v)) for ts, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if pts:
                    series.append((legend(t.get("legendFormat"), r["metric"]), pts))
        ax.set_title(panel.get("title", ""), fontsize=10, fontweight="bold", loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        peak = max(abs(v) for _, pts in series for _, v in pts)
        div, label = scale_for(unit, peak)
        if panel.get("type") == "stat":
            name, pts = series[0]
            last = pts[-1][1] / div
            ax.plot([datetime.fromtimestamp(x) for x, _ in pts], [v / div for _, v in pts], color=colors[0], alpha=0.4)
            ax.text(0.5, 0.5, ("%.0f" % last if abs(last) >= 100 or last == int(last) else "%.2f" % last) +
                    (" " + label if label else ""), ha="center", va="center", transform=ax.transAxes,
                    fontsize=26, fontweight="bold", color="#1a7f37")
            ax.set_yticks([])
        else:
            for i, (name, pts) in enumerate(series):
                ax.plot([datetime.fromtimestamp(x) for x, _ in pts], [v / div for _, v in pts], linewidth=1.2,
                        color=colors[i % len(colors)], label=name)
            ax.set_ylabel(label, fontsize=8)
            lo = panel.get("fieldConfig", {}).get("defaults", {}).get("min")
            if lo is not None:
                ax.set_ylim(bottom=lo / div)
            ax.legend(fontsize=6, loc="upper left", ncol=2 if len(series) > 4 else 1, framealpha=0.7,
                      handlelength=1.5)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(args.out, dpi=args.dpi)
    print("wrote %s (%d panels, %d KB)" % (args.out, len(panels), os.path.getsize(args.out) // 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
