#!/usr/bin/env python3
"""Tests for tools/convert/convert.py: random-weight Transformer-XL checkpoints in the Hugging Face layout
(pytorch_model.bin + config.json + vocab.pkl) and the TRAMS .ckpt layout are converted, and the engine-format
output is read back and compared (names, shapes, values, config, tokenizer).

Run: /usr/bin/python3 -m unittest tools/convert/test_convert.py  (or python3 tools/convert/test_convert.py)
Skips (with a message) when torch is not importable.
"""
import collections
import io
import json
import os
import pickle
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import numpy as np
    import convert  # noqa: E402
    import st_io  # noqa: E402
    HAVE_NUMPY = True
except ImportError:
    HAVE_NUMPY = False
try:
    import torch
    HAVE_TORCH = HAVE_NUMPY
except ImportError:
    HAVE_TORCH = False
SKIP_MSG = ("torch (and numpy) are not importable in this Python (%s); the converter tests need torch to write "
            ".bin/.ckpt pickles -- run them with a Python that has torch, e.g. /usr/bin/python3" % sys.executable)
NUMPY_SKIP_MSG = "numpy is not importable in this Python (%s); safetensors I/O test skipped" % sys.executable


class SomeTokenizerObject:
    """Stands for objects a real TransfoXLTokenizer pickle carries (e.g. sacremoses normalizers)."""
    def __init__(self):
        self.lang = "en"


def make_state_dict(cfg, rng, include_tied=True):
    """Random HF TransfoXLLMHeadModel state dict (names/shapes from the HF module layout)."""
    req, opt = convert.expected_tensors(convert.normalize_config(cfg))
    sd = {}
    for name, shape in req.items():
        sd[name] = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    D = cfg["d_model"]
    sd["transformer.pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0.0, D, 2.0) / D))
    if include_tied:  # HF state_dict() lists tied parameters under both names
        for name in opt:
            if name.startswith("crit.out_layers."):
                i = name.split(".")[2]
                sd[name] = sd[f"transformer.word_emb.emb_layers.{i}.weight"]
            elif name.startswith("crit.out_projs."):
                i = int(name.split(".")[2])
                src = "transformer.word_emb.emb_projs." + ("0" if cfg.get("div_val", 1) == 1 else str(i))
                sd[name] = sd[src]
    return sd


def vocab_symbols(n):
    syms = ["<eos>", "<unk>", "the", ",", "."] + [f"w{i}" for i in range(n - 5)]
    return syms[:n]


def write_vocab_pkl(path, syms):
    state = {"special": ["<eos>"], "min_freq": 0, "max_size": None, "lower_case": False, "delimiter": None,
             "vocab_file": None, "never_split": [], "counter": collections.Counter({s: 3 for s in syms}),
             "idx2sym": list(syms), "sym2idx": collections.OrderedDict((s, i) for i, s in enumerate(syms)),
             "moses_punct_normalizer": SomeTokenizerObject()}
    with open(path, "wb") as f:
        pickle.dump(state, f)


def run_convert(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = convert.main(argv)
    return rc, out.getvalue(), err.getvalue()


HF_CFG = {  # adaptive embedding/softmax with div_val 2, untie_r (like transfo-xl-wt103, tiny)
    "architectures": ["TransfoXLLMHeadModel"], "model_type": "transfo-xl",
    "vocab_size": 50, "cutoffs": [10, 30], "d_model": 16, "d_embed": 16, "n_head": 2, "d_head": 8,
    "d_inner": 32, "div_val": 2, "pre_lnorm": False, "n_layer": 2, "mem_len": 32, "clamp_len": 1000,
    "same_length": True, "proj_share_all_but_first": True, "untie_r": True, "tie_projs": [False, True, True],
    "tie_word_embeddings": True, "layer_norm_epsilon": 1e-5, "adaptive": True,
}


@unittest.skipUnless(HAVE_TORCH, SKIP_MSG)
class TestConvert(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        self.rng = np.random.default_rng(0)

    def tearDown(self):
        self.tmp.cleanup()

    def read_out(self, out):
        tensors, dtypes, _ = st_io.load_file(os.path.join(out, "model.safetensors"))
        with open(os.path.join(out, "config.json")) as f:
            cfg = json.load(f)
        with open(os.path.join(out, "tokenizer.json")) as f:
            tok = json.load(f)
        return tensors, dtypes, cfg, tok

    def make_hf_dir(self, cfg=HF_CFG, old_keys=False):
        src = os.path.join(self.d, "hf")
        os.makedirs(src, exist_ok=True)
        sd = make_state_dict(cfg, self.rng)
        torch.save(sd, os.path.join(src, "pytorch_model.bin"))
        c = dict(cfg)
        if old_keys:  # pre-4.x transformers config keys
            c["n_token"] = c.pop("vocab_size")
            c["tie_weight"] = c.pop("tie_word_embeddings")
        with open(os.path.join(src, "config.json"), "w") as f:
            json.dump(c, f)
        syms = vocab_symbols(cfg["vocab_size"])
        write_vocab_pkl(os.path.join(src, "vocab.pkl"), syms)
        return src, sd, syms

    def check_tensors(self, tensors, dtypes, sd, dtype):
        self.assertEqual(set(tensors), set(sd))
        for name, t in sd.items():
            ref = t.numpy()
            got = tensors[name]
            self.assertEqual(list(got.shape), list(ref.shape), name)
            if dtype == "f32":
                self.assertEqual(dtypes[name], "F32", name)
                np.testing.assert_array_equal(got, ref, err_msg=name)
            elif dtype == "f16":
                self.assertEqual(dtypes[name], "F16", name)
                np.testing.assert_array_equal(got, ref.astype(np.float16), err_msg=name)
            else:
                self.assertEqual(dtypes[name], "BF16", name)
                np.testing.assert_array_equal(got, st_io.f32_to_bf16_bits(ref), err_msg=name)
                back = st_io.bf16_bits_to_f32(got).reshape(ref.shape)
                np.testing.assert_allclose(back, ref, rtol=1 / 128, atol=1e-30, err_msg=name)
                # and it must agree with torch's own bf16 rounding
                np.testing.assert_array_equal(back, torch.from_numpy(ref).bfloat16().float().numpy(), err_msg=name)

    def test_hf_roundtrip_all_dtypes(self):
        src, sd, syms = self.make_hf_dir()
        for dtype in ("f32", "f16", "bf16"):
            out = os.path.join(self.d, "out_" + dtype)
            rc, so, se = run_convert(["hf", "--model-dir", src, "--out", out, "--dtype", dtype])
            self.assertEqual(rc, 0, se)
            tensors, dtypes, cfg, tok = self.read_out(out)
            self.check_tensors(tensors, dtypes, sd, dtype)
            self.assertEqual(cfg["vocab_size"], 50)
            self.assertEqual(cfg["n_token"], 50)
            self.assertEqual(cfg["cutoffs"], [10, 30])
            self.assertEqual(cfg["div_val"], 2)
            self.assertTrue(cfg["untie_r"])
            self.assertEqual(cfg["tie_projs"], [False, True, True])
            self.assertEqual(tok, {"type": "word", "vocab_file": "vocab.txt", "unk": "<unk>", "eos": "<eos>",
                                   "add_eos": True})
            with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
                self.assertEqual(f.read().split("\n")[:-1], syms)

    def test_hf_old_config_keys(self):
        src, sd, _ = self.make_hf_dir(old_keys=True)
        out = os.path.join(self.d, "out")
        rc, _, se = run_convert(["hf", "--model-dir", src, "--out", out])
        self.assertEqual(rc, 0, se)
        _, _, cfg, _ = self.read_out(out)
        self.assertEqual(cfg["vocab_size"], 50)
        self.assertTrue(cfg["tie_word_embeddings"])

    def test_hf_shape_mismatch_names_tensor(self):
        src, sd, _ = self.make_hf_dir()
        sd["transformer.layers.1.pos_ff.CoreNet.0.weight"] = torch.zeros(33, 16)
        torch.save(sd, os.path.join(src, "pytorch_model.bin"))
        rc, _, se = run_convert(["hf", "--model-dir", src, "--out", os.path.join(self.d, "bad")])
        self.assertEqual(rc, 2)
        self.assertIn("transformer.layers.1.pos_ff.CoreNet.0.weight", se)
        self.assertIn("[33, 16]", se)
        self.assertIn("[32, 16]", se)

    def test_hf_missing_and_unknown_tensor(self):
        src, sd, _ = self.make_hf_dir()
        del sd["transformer.layers.0.dec_attn.r_w_bias"]
        sd["transformer.extra_thing"] = torch.zeros(3)
        torch.save(sd, os.path.join(src, "pytorch_model.bin"))
        rc, _, se = run_convert(["hf", "--model-dir", src, "--out", os.path.join(self.d, "bad")])
        self.assertEqual(rc, 2)
        self.assertIn("missing tensor 'transformer.layers.0.dec_attn.r_w_bias'", se)
        self.assertIn("transformer.extra_thing", se)

    def test_vocab_size_mismatch(self):
        src, _, _ = self.make_hf_dir()
        write_vocab_pkl(os.path.join(src, "vocab.pkl"), vocab_symbols(49))
        rc, _, se = run_convert(["hf", "--model-dir", src, "--out", os.path.join(self.d, "bad")])
        self.assertEqual(rc, 2)
        self.assertIn("49 symbols", se)

    def trams_cfg(self):
        # the TRAMS wt103 setup in miniature: adaptive softmax, div_val 1, d_embed == d_model, shared r biases
        return {"vocab_size": 50, "cutoffs": [10, 30], "d_model": 16, "d_embed": 16, "n_head": 2, "d_head": 8,
                "d_inner": 32, "div_val": 1, "n_layer": 3, "untie_r": False, "tie_projs": [False, True, True],
                "tie_word_embeddings": True}

    def test_trams_wrapped_prefixed_inferred(self):
        cfg = self.trams_cfg()
        sd = make_state_dict(cfg, self.rng, include_tied=False)
        self.assertNotIn("crit.out_layers.0.weight", sd)
        ckpt = os.path.join(self.d, "best_xl_finetune_model.ckpt")
        for wrap in ("model_state_dict", "state_dict", None):
            body = {"module." + k: v for k, v in sd.items()}
            torch.save(body if wrap is None else {wrap: body, "epoch": 3}, ckpt)
            syms = vocab_symbols(50)
            write_vocab_pkl(os.path.join(self.d, "vocab.pkl"), syms)
            out = os.path.join(self.d, f"out_{wrap}")
            # without --cutoffs the clusters cannot be placed: clear error
            rc, _, se = run_convert(["trams", "--ckpt", ckpt, "--out", out, "--vocab-pkl",
                                     os.path.join(self.d, "vocab.pkl")])
            self.assertEqual(rc, 2)
            self.assertIn("--cutoffs", se)
            rc, _, se = run_convert(["trams", "--ckpt", ckpt, "--out", out, "--cutoffs", "10", "30",
                                     "--clamp-len", "1000", "--vocab-pkl", os.path.join(self.d, "vocab.pkl"),
                                     "--dtype", "f16"])
            self.assertEqual(rc, 0, se)
            tensors, dtypes, c, tok = self.read_out(out)
            self.check_tensors(tensors, dtypes, sd, "f16")
            for k in ("n_layer", "d_model", "n_head", "d_head", "d_inner", "vocab_size", "div_val", "cutoffs",
                      "untie_r"):
                self.assertEqual(c[k], cfg[k], k)
            self.assertEqual(c["tie_projs"], [False, True, True])
            self.assertEqual(c["clamp_len"], 1000)
            self.assertFalse(c["pre_lnorm"])
            self.assertEqual(tok["type"], "word")

    def test_trams_embedded_config_and_flag_conflict(self):
        cfg = self.trams_cfg()
        sd = make_state_dict(cfg, self.rng, include_tied=False)
        ckpt = os.path.join(self.d, "m.ckpt")
        torch.save({"state_dict": sd, "config": cfg}, ckpt)
        vtxt = os.path.join(self.d, "vocab.txt")
        with open(vtxt, "w") as f:
            f.write("\n".join(vocab_symbols(50)) + "\n")
        out = os.path.join(self.d, "out")
        rc, _, se = run_convert(["trams", "--ckpt", ckpt, "--out", out, "--vocab-txt", vtxt])
        self.assertEqual(rc, 0, se)
        tensors, dtypes, c, _ = self.read_out(out)
        self.check_tensors(tensors, dtypes, sd, "f32")
        self.assertEqual(c["n_layer"], 3)
        # a flag that contradicts the tensors fails and names a tensor
        rc, _, se = run_convert(["trams", "--ckpt", ckpt, "--out", out + "2", "--vocab-txt", vtxt,
                                 "--d-inner", "64"])
        self.assertEqual(rc, 2)
        self.assertIn("pos_ff.CoreNet.0.weight", se)

    def test_trams_plain_softmax_byte(self):
        cfg = {"vocab_size": 256, "cutoffs": [], "d_model": 24, "d_embed": 24, "n_head": 3, "d_head": 8,
               "d_inner": 48, "div_val": 1, "n_layer": 2, "untie_r": False, "tie_projs": [False],
               "tie_word_embeddings": True}
        sd = make_state_dict(cfg, self.rng, include_tied=True)
        ckpt = os.path.join(self.d, "byte.ckpt")
        torch.save(sd, ckpt)
        out = os.path.join(self.d, "out")
        rc, _, se = run_convert(["trams", "--ckpt", ckpt, "--out", out, "--byte", "--dtype", "bf16"])
        self.assertEqual(rc, 0, se)
        tensors, dtypes, c, tok = self.read_out(out)
        self.check_tensors(tensors, dtypes, sd, "bf16")
        self.assertEqual(c["cutoffs"], [])
        self.assertEqual(c["tie_projs"], [False])
        self.assertEqual(tok, {"type": "byte"})
        self.assertFalse(os.path.exists(os.path.join(out, "vocab.txt")))

    def test_f16_overflow_is_reported(self):
        cfg = {"vocab_size": 256, "cutoffs": [], "d_model": 8, "d_embed": 8, "n_head": 2, "d_head": 4,
               "d_inner": 16, "div_val": 1, "n_layer": 1, "untie_r": False}
        sd = make_state_dict(cfg, self.rng)
        sd["transformer.layers.0.pos_ff.CoreNet.3.bias"][0] = 1e6
        ckpt = os.path.join(self.d, "x.ckpt")
        torch.save(sd, ckpt)
        rc, _, se = run_convert(["trams", "--ckpt", ckpt, "--out", os.path.join(self.d, "o"), "--byte",
                                 "--dtype", "f16"])
        self.assertEqual(rc, 2)
        self.assertIn("transformer.layers.0.pos_ff.CoreNet.3.bias", se)


@unittest.skipUnless(HAVE_NUMPY, NUMPY_SKIP_MSG)
class TestSafetensorsIO(unittest.TestCase):  # numpy only: runs without torch too
    def test_roundtrip_and_header(self):
        import struct
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "t.safetensors")
            a = np.arange(6, dtype=np.float32).reshape(2, 3)
            b = np.array([1.5, -2.25], dtype=np.float16)
            c = st_io.f32_to_bf16_bits(np.array([1.0, 3.140625, -0.5], dtype=np.float32))
            st_io.save_file({"a": a, "b": b, "c": c}, p, metadata={"k": "v"}, bf16_names={"c"})
            with open(p, "rb") as f:
                raw = f.read()
            (n,) = struct.unpack("<Q", raw[:8])
            hdr = json.loads(raw[8:8 + n])
            self.assertEqual(hdr["a"]["dtype"], "F32")
            self.assertEqual(hdr["b"]["dtype"], "F16")
            self.assertEqual(hdr["c"]["dtype"], "BF16")
            self.assertEqual(hdr["a"]["shape"], [2, 3])
            self.assertEqual(hdr["__metadata__"], {"k": "v"})
            self.assertEqual(len(raw), 8 + n + 24 + 4 + 6)
            t, dt, meta = st_io.load_file(p, bf16_to_f32=True)
            np.testing.assert_array_equal(t["a"], a)
            np.testing.assert_array_equal(t["b"], b)
            np.testing.assert_array_equal(t["c"], np.array([1.0, 3.140625, -0.5], dtype=np.float32))


if __name__ == "__main__":
    if not HAVE_TORCH:
        print(f"NOTE: {SKIP_MSG}", file=sys.stderr)
    unittest.main(verbosity=2)
