#!/usr/bin/env python3
"""PyTorch reference evaluation of an exported byte-level model directory (config.json + model.safetensors,
as written by train.py) with plain Transformer-XL memory, following engine/DESIGN.md "Scoring": the byte
stream is cut into --streams equal contiguous streams (remainder dropped), processed in segments of --tgt-len
with an empty memory at the start and a memory of the last --mem-len layer inputs; the first byte of every
stream is not scored. Prints JSON {"bpc", "loss", "tokens", "scored", ...}.

Useful to cross-check `trams-eval` in XL mode (mode xl, M = m = mem_len, n = tgt_len) and to see how the
model behaves with more memory than it was trained with (--clamp-len caps relative distances).

  /usr/bin/python3 tools/train/eval_xl.py /work/train_run/export --tgt-len 64 --mem-len 200 \
      --files /work/shared/data/books/valid/*.txt --bytes-per-book 40000 --streams 4
"""
import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "convert"))
import st_io  # noqa: E402
from train import TransfoXLLMHead  # noqa: E402


def load_model(model_dir, mem_len, clamp_len):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    if c.get("cutoffs") or c.get("div_val", 1) != 1 or c.get("pre_lnorm") or c.get("untie_r") \
            or c.get("d_embed", c["d_model"]) != c["d_model"]:
        raise SystemExit("eval_xl.py only handles train.py's architecture (plain softmax, div_val 1, post-LN, "
                         "shared r biases, d_embed == d_model)")
    a = SimpleNamespace(vocab_size=c.get("vocab_size", c.get("n_token")), n_layer=c["n_layer"], d_model=c["d_model"],
                        n_head=c["n_head"], d_head=c["d_head"], d_inner=c["d_inner"], dropout=0.0, dropatt=0.0,
                        mem_len=mem_len, init_std=0.02, clamp_len=clamp_len)
    model = TransfoXLLMHead(a)
    tensors, _, _ = st_io.load_file(os.path.join(model_dir, "model.safetensors"), bf16_to_f32=True)
    sd = {k: torch.from_numpy(v.astype(np.float32)) for k, v in tensors.items() if k != "transformer.pos_emb.inv_freq"}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "crit.out_layers.0.weight"]  # tied
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model


@torch.no_grad()
def evaluate(model, data, streams, tgt_len):
    S = len(data) // streams
    x = torch.from_numpy(data[: S * streams].astype(np.int64).reshape(streams, S))
    mems, tot, n = None, 0.0, 0
    for i in range(0, S - 1, tgt_len):
        j = min(i + tgt_len, S - 1)
        loss, mems = model(x[:, i:j], x[:, i + 1:j + 1], mems)
        tot += loss.double().sum().item()
        n += loss.numel()
    return tot / n, S * streams, n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--files", nargs="+", default=None, help="text files (default: shared/data/books/valid/*.txt)")
    p.add_argument("--bytes-per-book", type=int, default=0, help="use only the first N bytes of each file (0 = all)")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--tgt-len", type=int, default=64)
    p.add_argument("--mem-len", type=int, default=128)
    p.add_argument("--clamp-len", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    files = a.files or sorted(__import__("glob").glob("/work/shared/data/books/valid/*.txt"))
    chunks = []
    for fn in files:
        with open(fn, "rb") as f:
            b = f.read()
        chunks.append(b[: a.bytes_per_book] if a.bytes_per_book else b)
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    model = load_model(a.model_dir, a.mem_len, a.clamp_len)
    t0 = time.time()
    loss, tokens, scored = evaluate(model, data, a.streams, a.tgt_len)
    print(json.dumps({"model": a.model_dir, "bpc": round(loss / math.log(2), 5), "loss": round(loss, 6),
                      "ppl": round(math.exp(loss), 5), "tokens": tokens, "scored": scored, "streams": a.streams,
                      "tgt_len": a.tgt_len, "mem_len": a.mem_len, "clamp_len": a.clamp_len,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
