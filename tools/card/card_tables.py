#!/usr/bin/env python3
"""Prints the model card's tables (markdown) from measure_card.py's card_results.json."""
import json
import sys


def main():
    r = json.load(open(sys.argv[1]))
    names = {"none": "Transformer+RPE (no memory)", "xl": "Transformer-XL", "trams": "TRAMS"}
    print("| data | model | M | m | n | bpc | loss (nats) | tokens | tokens/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in r["table1"]:
        M = "-" if row["mode"] != "trams" else row["mem_len"]
        m = "-" if row["mode"] == "none" else row["m"]
        print("| %s | %s | %s | %s | %d | %.4f | %.4f | %d | %.0f |" % (
            row["data"], names[row["mode"]], M, m, row["tgt_len"], row["bpc"], row["loss"], row["tokens"],
            row["tokens_per_second"]))
    print()
    print("| M | m (topk + remain) | TRAMS bpc | XL bpc at the same m |")
    print("|---:|---|---:|---:|")
    xl = {row["m"]: row["bpc"] for row in r["ablations"] if row["mode"] == "xl"}
    for row in r["ablations"]:
        if row["mode"] != "trams":
            continue
        print("| %d | %d (%d + %d) | %.4f | %s |" % (row["mem_len"], row["m"], row["topk"], row["remain"], row["bpc"],
                                                   "%.4f" % xl[row["m"]] if row["m"] in xl else "-"))


if __name__ == "__main__":
    main()
