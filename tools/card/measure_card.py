#!/usr/bin/env python3
"""Measures the model card's tables with trams-eval (the engine), as the paper's Table 1 and Figures 4-5.

Table 1 (n 64, batch 10): no memory, XL m=200, TRAMS M=400 m=200 (topk 50 + remain 150), on
books/valid (the three books concatenated, as bytes) and on WikiText-103 test (as bytes).
Ablations on the first --ablation-bytes of books/valid: bpc against M in {200,300,400,600,800} at
m = 200 (50 + 150), and against m in {50,100,150,200,300} at M = 400 (topk = m/4, remain = 3m/4),
with XL at the same m for comparison.

Writes <out>/card_results.json ({"table1": [...], "ablations": [...]}); plot the ablations with
tools/train/plot_ablations.py.

Usage: /usr/bin/python3 tools/card/measure_card.py --model models/NAME --eval build/engine/trams-eval
         [--data ../shared/data] [--out models/NAME] [--ablation-bytes 400000] [--threads 0]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time


def run_eval(args, text_path, mode, mem_len, topk=0, remain=0, max_tokens=-1):
    cmd = [args.eval, "--model", args.model, "--input", text_path, "--mode", mode, "--mem_len", str(mem_len),
           "--topk", str(topk), "--remain", str(remain), "--tgt_len", "64", "--batch", "10",
           "--max_tokens", str(max_tokens), "--threads", str(args.threads), "--json"]
    t0 = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = json.loads(out)
    row["M"] = mem_len
    row["m"] = mem_len if mode == "xl" else topk + remain
    print("%-6s M %4d m %4d topk %3d remain %3d: bpc %.4f (%d tokens, %.0f s)" %
          (mode, mem_len, row["m"], topk, remain, row["bpc"], row["tokens"], time.time() - t0), flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--eval", default="build/engine/trams-eval")
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "../../../shared/data"))
    p.add_argument("--out", default=None)
    p.add_argument("--ablation-bytes", type=int, default=400000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skip-table1", action="store_true")
    args = p.parse_args()
    out_dir = args.out or args.model

    books = sorted(glob.glob(os.path.join(args.data, "books/valid/*.txt")))
    wt103 = os.path.join(args.data, "wikitext/wikitext-103/test.txt")
    if not books or not os.path.exists(wt103):
        sys.exit("measure_card: data not found under %s (books/valid, wikitext/wikitext-103/test.txt)" % args.data)
    tmp = tempfile.NamedTemporaryFile(prefix="books_valid_", suffix=".txt", delete=False)
    for b in books:
        with open(b, "rb") as f:
            tmp.write(f.read())
    tmp.close()

    results = {"model": args.model, "books_valid": [os.path.basename(b) for b in books], "table1": [],
               "ablations": []}
    paper_configs = [("none", 0, 0, 0), ("xl", 200, 0, 0), ("trams", 400, 50, 150)]
    if not args.skip_table1:
        for name, path in (("books_valid", tmp.name), ("wikitext103_test_bytes", wt103)):
            for mode, M, k, r in paper_configs:
                row = run_eval(args, path, mode, M, k, r)
                row["data"] = name
                results["table1"].append(row)
    cap = args.ablation_bytes
    for M in (200, 300, 400, 600, 800):
        results["ablations"].append(run_eval(args, tmp.name, "trams", M, 50, 150, cap))
    for m in (50, 100, 150, 200, 300):
        results["ablations"].append(run_eval(args, tmp.name, "trams", 400, m // 4, m - m // 4, cap))
        results["ablations"].append(run_eval(args, tmp.name, "xl", m, 0, 0, cap))
    os.unlink(tmp.name)
    with open(os.path.join(out_dir, "card_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("wrote", os.path.join(out_dir, "card_results.json"))


if __name__ == "__main__":
    main()
