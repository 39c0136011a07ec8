#!/usr/bin/env python3
"""Tests for tools/train/train.py (needs torch + numpy; skips otherwise):
- the batched relative-position attention equals a direct per-(query, key) implementation of engine/DESIGN.md;
- a run interrupted and resumed gives bit-identical weights to an uninterrupted one (dropout on);
- the export is a valid engine model directory (convert.validate) and eval_xl.py reproduces the logged bpc.

Run: /usr/bin/python3 -m unittest tools/train/test_train.py
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "convert"))
try:
    import numpy as np
    import torch
    import train
    HAVE = True
except ImportError:
    HAVE = False
MSG = f"torch/numpy not importable in {sys.executable}; run with /usr/bin/python3"

TINY = ["--n-layer", "2", "--d-model", "32", "--n-head", "2", "--d-head", "16", "--d-inner", "64",
        "--tgt-len", "16", "--mem-len", "16", "--batch", "3", "--max-steps", "12", "--log-every", "4",
        "--dropout", "0.1", "--dropatt", "0.1", "--valid-bytes-per-book", "1500", "--valid-streams", "2"]


def run_train(args):
    r = subprocess.run([sys.executable, os.path.join(HERE, "train.py")] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(r.stdout + r.stderr)
    return r.stdout


@unittest.skipUnless(HAVE, MSG)
class TestTrain(unittest.TestCase):
    def test_attention_matches_direct_formula(self):
        torch.manual_seed(0)
        a = SimpleNamespace(vocab_size=256, d_model=32, n_head=2, d_head=16, d_inner=64, n_layer=1, dropout=0.0,
                            dropatt=0.0, mem_len=5, init_std=0.1)
        m = train.TransfoXLLMHead(a)
        att, core = m.transformer.layers[0].dec_attn, m.transformer
        B, q, ml, H, Dh = 2, 4, 5, 2, 16
        h, mem = torch.randn(B, q, 32), torch.randn(B, ml, 32)
        klen = q + ml
        mask = torch.triu(torch.ones(q, klen, dtype=torch.bool), diagonal=1 + ml)
        out = att(h, core.pos_emb(klen), core.r_w_bias, core.r_r_bias, mask, mem)
        W = att.qkv_net.weight
        cat = torch.cat([mem, h], 1)
        Q = (h @ W[:32].T).view(B, q, H, Dh)
        K = (cat @ W[32:64].T).view(B, klen, H, Dh)
        V = (cat @ W[64:].T).view(B, klen, H, Dh)
        res = torch.zeros(B, q, H, Dh)
        for b in range(B):
            for i in range(q):
                for hh in range(H):
                    keys, scores = [], []
                    for j in range(klen):
                        d = ml + i - j
                        if d < 0:
                            continue
                        pe = torch.cat([torch.sin(d * core.inv_freq), torch.cos(d * core.inv_freq)])
                        r = (att.r_net.weight @ pe).view(H, Dh)[hh]
                        s = ((Q[b, i, hh] + core.r_w_bias[hh]) @ K[b, j, hh]
                             + (Q[b, i, hh] + core.r_r_bias[hh]) @ r) / math.sqrt(Dh)
                        keys.append(j)
                        scores.append(s)
                    p = torch.softmax(torch.stack(scores), 0)
                    res[b, i, hh] = p @ V[b, keys, hh]
        ref = att.layer_norm(h + att.o_net(res.reshape(B, q, H * Dh)))
        self.assertLess((out - ref).abs().max().item(), 1e-5)

    def test_resume_is_exact_and_export_valid(self):
        import convert
        import st_io
        with tempfile.TemporaryDirectory() as d:
            run_train(["--run-dir", os.path.join(d, "a")] + TINY)
            run_train(["--run-dir", os.path.join(d, "b")] + TINY + ["--stop-after-steps", "5"])
            run_train(["--run-dir", os.path.join(d, "b")] + TINY + ["--resume"])
            ca = torch.load(os.path.join(d, "a", "ckpt.pt"))
            cb = torch.load(os.path.join(d, "b", "ckpt.pt"))
            self.assertEqual(ca["step"], 12)
            self.assertEqual(cb["step"], 12)
            for k in ca["model"]:
                self.assertTrue(torch.equal(ca["model"][k], cb["model"][k]), k)
            exp = os.path.join(d, "a", "export")
            with open(os.path.join(exp, "config.json")) as f:
                cfg = convert.normalize_config(json.load(f))
            with open(os.path.join(exp, "tokenizer.json")) as f:
                self.assertEqual(json.load(f), {"type": "byte"})
            tensors, dtypes, meta = st_io.load_file(os.path.join(exp, "model.safetensors"))
            convert.validate(tensors, cfg)
            self.assertEqual(set(dtypes.values()), {"F16"})
            out = subprocess.run([sys.executable, os.path.join(HERE, "eval_xl.py"), exp, "--tgt-len", "16",
                                  "--mem-len", "16", "--bytes-per-book", "1500", "--streams", "2"],
                                 capture_output=True, text=True, check=True).stdout
            self.assertAlmostEqual(json.loads(out)["bpc"], float(meta["valid_bpc"]), delta=2e-3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
