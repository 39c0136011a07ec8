#!/usr/bin/env python3
"""Plot TRAMS ablations from `trams-eval --json` results.

Input: a JSON file holding a list of rows {"M": pool size, "m": attended memory (topk + remain), "bpc": ...}
(other keys such as "mode", "topk", "remain", "loss", "ppl", "tokens" are allowed; rows may also be wrapped as
{"results": [...]}). Rows with mode "xl" (or topk == 0) are drawn as the Transformer-XL baseline.

Output (--out-dir, default: next to the input):
  bpc_vs_M.png      bpc against pool size M at m = --m (default 200); XL with memory m as a horizontal line
  bpc_vs_ratio.png  bpc against m / M at M = --M (default 400); XL at the same m values for comparison

Usage: /usr/bin/python3 tools/train/plot_ablations.py results.json [--out-dir DIR] [--m 200] [--M 400]
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_rows(path):
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("ablations", data.get("results", data.get("rows", [])))
    rows = []
    for r in data:
        if not all(k in r for k in ("M", "m", "bpc")):
            print(f"skipping row without M/m/bpc: {r}", file=sys.stderr)
            continue
        rows.append(r)
    if not rows:
        raise SystemExit(f"{path}: no rows with M, m and bpc")
    return rows


def is_xl(r):
    return r.get("mode") == "xl" or (r.get("mode") is None and r.get("topk") == 0) or r["M"] == r["m"]


def series(rows, key_filter, x_of):
    pts = sorted((x_of(r), r["bpc"]) for r in rows if key_filter(r))
    # average duplicates (same x)
    out = {}
    for x, y in pts:
        out.setdefault(x, []).append(y)
    xs = sorted(out)
    return xs, [sum(out[x]) / len(out[x]) for x in xs]


def plot_vs_M(rows, m, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = series(rows, lambda r: r["m"] == m and not is_xl(r), lambda r: r["M"])
    if xs:
        ax.plot(xs, ys, "o-", label=f"TRAMS (m = {m})")
    xl = [r["bpc"] for r in rows if r["m"] == m and is_xl(r)]
    if xl:
        ax.axhline(sum(xl) / len(xl), color="gray", ls="--", label=f"Transformer-XL (memory {m})")
    ax.set_xlabel("memory pool size M")
    ax.set_ylabel("bpc")
    ax.set_title(f"bpc vs pool size M (attended m = {m})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(xs) + len(xl)


def plot_vs_ratio(rows, M, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = series(rows, lambda r: r["M"] == M and not is_xl(r), lambda r: r["m"] / M)
    if xs:
        ax.plot(xs, ys, "o-", label=f"TRAMS (M = {M})")
    xl_ms = sorted({r["m"] for r in rows if is_xl(r)})
    xxs, xys = series(rows, lambda r: is_xl(r) and r["m"] <= M, lambda r: r["m"] / M)
    if xxs:
        ax.plot(xxs, xys, "s--", color="gray", label="Transformer-XL (memory m)")
    ax.set_xlabel(f"selected fraction m / M (M = {M})")
    ax.set_ylabel("bpc")
    ax.set_title(f"bpc vs m / M (pool M = {M})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(xs) + len(xl_ms)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    p.add_argument("--out-dir")
    p.add_argument("--m", type=int, default=200, help="attended memory for the bpc-vs-M plot")
    p.add_argument("--M", type=int, default=400, help="pool size for the bpc-vs-m/M plot")
    a = p.parse_args()
    rows = load_rows(a.results)
    out = a.out_dir or os.path.dirname(os.path.abspath(a.results))
    os.makedirs(out, exist_ok=True)
    n1 = plot_vs_M(rows, a.m, os.path.join(out, "bpc_vs_M.png"))
    n2 = plot_vs_ratio(rows, a.M, os.path.join(out, "bpc_vs_ratio.png"))
    if n1 == 0:
        print(f"warning: no rows with m = {a.m}", file=sys.stderr)
    if n2 == 0:
        print(f"warning: no rows with M = {a.M}", file=sys.stderr)
    print(f"wrote {os.path.join(out, 'bpc_vs_M.png')} ({n1} points), {os.path.join(out, 'bpc_vs_ratio.png')} ({n2} points)")


if __name__ == "__main__":
    main()
