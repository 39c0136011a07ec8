#!/usr/bin/env python3
"""Convert Transformer-XL checkpoints into the engine's model directory (engine/DESIGN.md):
config.json (HF TransfoXLConfig keys), model.safetensors (HF TransfoXLLMHeadModel tensor names; f32/f16/bf16),
tokenizer.json (+ vocab.txt for word-level models).

Two input layouts:
  hf     a Hugging Face Transformer-XL directory: pytorch_model.bin (or model.safetensors) + config.json +
         vocab.pkl / vocab.bin (pickled TransfoXLTokenizer state; its 'idx2sym' list is the vocabulary),
         e.g. the published transfo-xl-wt103.
  trams  a TRAMS authors' .ckpt: torch.save of a TransfoXLLMHeadModel state dict (same HF names), possibly
         wrapped under 'model_state_dict' / 'state_dict' / 'model' and/or prefixed with 'module.'.
         Its config is taken from --config, else from a config embedded in the file, else inferred from the
         tensor shapes, with --n-layer/--d-model/... flags overriding. Vocabulary from --vocab-pkl,
         --vocab-txt or --byte.

Examples:
  python3 tools/convert/convert.py hf --model-dir transfo-xl-wt103/ --out models/wt103 --dtype f16
  python3 tools/convert/convert.py trams --ckpt best_xl_finetune_model.ckpt --cutoffs 20000 40000 200000 \
      --clamp-len 1000 --vocab-pkl vocab.pkl --out models/wt103-trams
  python3 tools/convert/convert.py trams --ckpt enwik8.ckpt --vocab-txt enwik8_vocab.txt --out models/enwik8

Requires torch only to read .bin/.ckpt pickles (torch.load(map_location='cpu')); everything else is numpy.
"""
import argparse
import json
import os
import pickle
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402


class ConvertError(Exception):
    pass


# HF TransfoXLConfig defaults (transformers 4.x) for keys missing from a config.json
HF_DEFAULTS = {
    "vocab_size": 267735, "cutoffs": [20000, 40000, 200000], "d_model": 1024, "d_embed": 1024, "n_head": 16,
    "d_head": 64, "d_inner": 4096, "div_val": 4, "pre_lnorm": False, "n_layer": 18, "mem_len": 1600,
    "clamp_len": 1000, "same_length": True, "proj_share_all_but_first": True, "attn_type": 0,
    "sample_softmax": -1, "adaptive": True, "dropout": 0.1, "dropatt": 0.0, "untie_r": True, "init": "normal",
    "init_range": 0.01, "proj_init_std": 0.01, "init_std": 0.02, "layer_norm_epsilon": 1e-5, "eos_token_id": 0,
    "tie_word_embeddings": True,
}
IGNORED = {"transformer.pos_emb.inv_freq"}


# ------------------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------------------
def normalize_config(cfg):
    c = dict(cfg)
    if "vocab_size" not in c and "n_token" in c:
        c["vocab_size"] = c["n_token"]
    if "tie_word_embeddings" not in c and "tie_weight" in c:  # pre-4.x key
        c["tie_word_embeddings"] = bool(c["tie_weight"])
    for k, v in HF_DEFAULTS.items():
        c.setdefault(k, v)
    c.setdefault("d_embed", c["d_model"])
    c["n_token"] = c["vocab_size"]
    c["cutoffs"] = [int(x) for x in c["cutoffs"]]
    if c["cutoffs"] and c["cutoffs"][-1] == c["vocab_size"]:  # some old configs list vocab_size last
        c["cutoffs"] = c["cutoffs"][:-1]
    if "tie_projs" not in c:
        n = len(c["cutoffs"])
        c["tie_projs"] = [False] + [bool(c["proj_share_all_but_first"])] * n
    c.setdefault("architectures", ["TransfoXLLMHeadModel"])
    c.setdefault("model_type", "transfo-xl")
    cut = c["cutoffs"]
    if any(b <= a for a, b in zip([0] + cut, cut + [c["vocab_size"]])):
        raise ConvertError(f"config: cutoffs {cut} must be strictly increasing, > 0 and < vocab_size {c['vocab_size']}")
    if len(c["tie_projs"]) != len(cut) + 1:
        raise ConvertError(f"config: tie_projs has {len(c['tie_projs'])} entries, expected len(cutoffs)+1 = {len(cut) + 1}")
    if c["div_val"] > 1:
        for i in range(len(cut) + 1):
            if c["d_embed"] // (c["div_val"] ** i) < 1:
                raise ConvertError(f"config: d_embed {c['d_embed']} / div_val^{i} < 1")
    return c


def expected_tensors(c):
    """Returns (required, optional) dicts name -> shape for the HF TransfoXLLMHeadModel state dict of config c.
    Optional = tensors that may be absent (tied output weights/projections, ignored buffers)."""
    V, D, E, dv = c["vocab_size"], c["d_model"], c["d_embed"], c["div_val"]
    H, Dh, Di, L = c["n_head"], c["d_head"], c["d_inner"], c["n_layer"]
    cut = list(c["cutoffs"])
    ends = [0] + cut + [V]
    n_clusters = len(cut)
    tie_w, tie_p = bool(c["tie_word_embeddings"]), list(c["tie_projs"])
    req, opt = {}, {}
    t = "transformer."
    if dv == 1:
        req[t + "word_emb.emb_layers.0.weight"] = [V, E]
        if D != E:
            req[t + "word_emb.emb_projs.0"] = [D, E]
    else:
        for i in range(n_clusters + 1):
            d_i = E // dv ** i
            req[t + f"word_emb.emb_layers.{i}.weight"] = [ends[i + 1] - ends[i], d_i]
            req[t + f"word_emb.emb_projs.{i}"] = [D, d_i]
    if c["untie_r"]:
        for l in range(L):
            req[t + f"layers.{l}.dec_attn.r_w_bias"] = [H, Dh]
            req[t + f"layers.{l}.dec_attn.r_r_bias"] = [H, Dh]
    else:
        req[t + "r_w_bias"] = [H, Dh]
        req[t + "r_r_bias"] = [H, Dh]
    for l in range(L):
        p = t + f"layers.{l}."
        req[p + "dec_attn.qkv_net.weight"] = [3 * H * Dh, D]
        req[p + "dec_attn.r_net.weight"] = [H * Dh, D]
        req[p + "dec_attn.o_net.weight"] = [D, H * Dh]
        req[p + "dec_attn.layer_norm.weight"] = [D]
        req[p + "dec_attn.layer_norm.bias"] = [D]
        req[p + "pos_ff.CoreNet.0.weight"] = [Di, D]
        req[p + "pos_ff.CoreNet.0.bias"] = [Di]
        req[p + "pos_ff.CoreNet.3.weight"] = [D, Di]
        req[p + "pos_ff.CoreNet.3.bias"] = [D]
        req[p + "pos_ff.layer_norm.weight"] = [D]
        req[p + "pos_ff.layer_norm.bias"] = [D]
    if dv == 1:
        (opt if tie_w else req)["crit.out_layers.0.weight"] = [V, E]
        req["crit.out_layers.0.bias"] = [V]
        if D != E:
            for i in range(n_clusters + 1):
                (opt if tie_p[i] else req)[f"crit.out_projs.{i}"] = [D, E]
    else:
        for i in range(n_clusters + 1):
            d_i, n_i = E // dv ** i, ends[i + 1] - ends[i]
            (opt if tie_w else req)[f"crit.out_layers.{i}.weight"] = [n_i, d_i]
            req[f"crit.out_layers.{i}.bias"] = [n_i]
            (opt if tie_p[i] else req)[f"crit.out_projs.{i}"] = [D, d_i]
    if n_clusters > 0:
        req["crit.cluster_weight"] = [n_clusters, E]
        req["crit.cluster_bias"] = [n_clusters]
    opt["transformer.pos_emb.inv_freq"] = [D // 2]
    return req, opt


def validate(tensors, c, drop_unknown=False):
    """Checks names and shapes; returns the dict to write (unknown tensors dropped if drop_unknown)."""
    req, opt = expected_tensors(c)
    errors = []
    for name, shape in req.items():
        if name not in tensors:
            errors.append(f"missing tensor '{name}' (expected shape {shape})")
    out = {}
    for name, arr in tensors.items():
        shape = req.get(name, opt.get(name))
        if shape is None:
            if drop_unknown:
                print(f"warning: dropping unknown tensor '{name}' {list(arr.shape)}", file=sys.stderr)
                continue
            errors.append(f"unexpected tensor '{name}' {list(arr.shape)} (not part of a TransfoXLLMHeadModel with "
                          f"this config; pass --drop-unknown to drop it)")
            continue
        if list(arr.shape) != list(shape):
            errors.append(f"tensor '{name}' has shape {list(arr.shape)}, config expects {list(shape)}")
            continue
        out[name] = arr
    if errors:
        raise ConvertError("checkpoint does not match the config:\n  " + "\n  ".join(errors))
    return out


def infer_config(sd, overrides):
    """Config for a bare state dict: tensor shapes + explicit overrides (overrides win)."""
    c = {}

    def has(n):
        return n in sd
    layers = {int(m.group(1)) for n in sd for m in [re.match(r"transformer\.layers\.(\d+)\.", n)] if m}
    if layers:
        c["n_layer"] = max(layers) + 1
    q = sd.get("transformer.layers.0.dec_attn.qkv_net.weight")
    if q is not None:
        c["d_model"] = int(q.shape[1])
    c["untie_r"] = has("transformer.layers.0.dec_attn.r_w_bias") and not has("transformer.r_w_bias")
    rw = sd.get("transformer.r_w_bias", sd.get("transformer.layers.0.dec_attn.r_w_bias"))
    if rw is not None:
        c["n_head"], c["d_head"] = int(rw.shape[0]), int(rw.shape[1])
    ff = sd.get("transformer.layers.0.pos_ff.CoreNet.0.weight")
    if ff is not None:
        c["d_inner"] = int(ff.shape[0])
    embs = []
    i = 0
    while f"transformer.word_emb.emb_layers.{i}.weight" in sd:
        embs.append(sd[f"transformer.word_emb.emb_layers.{i}.weight"].shape)
        i += 1
    if embs:
        c["d_embed"] = int(embs[0][1])
        c["vocab_size"] = int(sum(s[0] for s in embs))
        if len(embs) > 1:
            c["div_val"] = int(round(embs[0][1] / embs[1][1]))
            c["cutoffs"] = [int(x) for x in np.cumsum([s[0] for s in embs])[:-1]]
        else:
            c["div_val"] = 1
    n_clusters = int(sd["crit.cluster_bias"].shape[0]) if has("crit.cluster_bias") else 0
    if "cutoffs" not in c and n_clusters == 0:
        c["cutoffs"] = []
    c.update({k: v for k, v in overrides.items() if v is not None})
    if "cutoffs" not in c:
        raise ConvertError(f"the checkpoint has an adaptive softmax with {n_clusters} tail clusters and one "
                           f"embedding table (div_val 1): pass --cutoffs (e.g. --cutoffs 20000 40000 200000)")
    if len(c["cutoffs"]) != n_clusters:
        raise ConvertError(f"cutoffs {c['cutoffs']} give {len(c['cutoffs'])} clusters but crit.cluster_bias has {n_clusters}")
    c.setdefault("adaptive", n_clusters > 0)
    c.setdefault("tie_projs", [False] + [True] * len(c["cutoffs"]))
    # TRAMS train.py defaults for what the tensors cannot tell
    c.setdefault("pre_lnorm", False)
    c.setdefault("same_length", False)
    c.setdefault("clamp_len", 1000)
    c.setdefault("tie_word_embeddings", True)
    missing = [k for k in ("n_layer", "d_model", "n_head", "d_head", "d_inner", "vocab_size") if k not in c]
    if missing:
        raise ConvertError(f"cannot infer {missing} from the checkpoint; pass them as flags or --config")
    return c


# ------------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------------
def _torch():
    try:
        import torch
        return torch
    except ImportError:
        raise ConvertError("reading .bin/.ckpt pickles needs torch (use /usr/bin/python3 with torch installed)")


def _to_numpy(t):
    torch = _torch()
    if isinstance(t, np.ndarray):
        return t
    if not torch.is_tensor(t):
        raise ConvertError(f"not a tensor: {type(t)}")
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16, torch.float64):
        t = t.float()
    return t.numpy()


def load_state_dict(path):
    """Returns (state dict name -> numpy, embedded config dict or None)."""
    if path.endswith(".safetensors"):
        sd, dtypes, _ = st_io.load_file(path, bf16_to_f32=True)
        return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in sd.items()}, None
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"torch.load({path}) failed: {e}")
    cfg = None
    if isinstance(obj, dict):
        for key in ("config", "model_config", "hf_config"):
            if key in obj:
                v = obj[key]
                cfg = v.to_dict() if hasattr(v, "to_dict") else (dict(v) if isinstance(v, dict) else vars(v))
        for key in ("model_state_dict", "state_dict", "model"):
            if key in obj and (isinstance(obj[key], dict) or hasattr(obj[key], "state_dict")):
                obj = obj[key]
                break
    if hasattr(obj, "state_dict") and not isinstance(obj, dict):
        if cfg is None and hasattr(obj, "config") and hasattr(obj.config, "to_dict"):
            cfg = obj.config.to_dict()
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: no state dict found (got {type(obj).__name__})")
    sd = {}
    for k, v in obj.items():
        if not torch.is_tensor(v):
            continue
        for pre in ("module.", "model."):
            if k.startswith(pre) and not k.startswith("transformer.") and not k.startswith("crit."):
                k = k[len(pre):]
        sd[k] = _to_numpy(v)
    if not sd:
        raise ConvertError(f"{path}: the state dict holds no tensors")
    return sd, cfg


class _Stub:
    """Stand-in for classes a vocabulary pickle references but we do not have (sacremoses, the TRAMS Vocab)."""
    def __init__(self, *a, **k):
        pass

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif isinstance(state, tuple) and state and isinstance(state[0], dict):
            self.__dict__.update(state[0])


class _VocabUnpickler(pickle.Unpickler):
    SAFE = {"collections", "builtins", "copy_reg", "copyreg", "__builtin__", "_codecs"}

    def find_class(self, module, name):
        if module.split(".")[0] in self.SAFE:
            return super().find_class(module, name)
        return _Stub


def load_vocab_pkl(path):
    try:
        with open(path, "rb") as f:
            obj = _VocabUnpickler(f).load()
    except Exception:  # noqa: BLE001  (vocab.bin of old HF versions is a torch.save)
        obj = _torch().load(path, map_location="cpu")
    d = obj if isinstance(obj, dict) else getattr(obj, "__dict__", {})
    if "idx2sym" not in d:
        raise ConvertError(f"{path}: no 'idx2sym' in the pickled vocabulary (keys: {sorted(d)[:20]})")
    return [str(s) for s in d["idx2sym"]]


def load_vocab_txt(path):
    syms = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split()
            if parts:
                syms.append(parts[0])
    return syms


# ------------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------------
def write_model(out_dir, tensors, cfg, dtype, vocab=None, byte=False, unk="<unk>", eos="<eos>", add_eos=True):
    os.makedirs(out_dir, exist_ok=True)
    out, bf16 = {}, set()
    for name, arr in tensors.items():
        a = np.asarray(arr)
        if a.dtype.kind != "f":
            out[name] = a
            continue
        a = a.astype(np.float32)
        if dtype == "f32":
            out[name] = a
        elif dtype == "f16":
            big = np.abs(a[np.isfinite(a)]).max(initial=0.0)
            if big > 65504:
                raise ConvertError(f"tensor '{name}' has |value| {big:g} > 65504, not representable in f16; use --dtype bf16 or f32")
            out[name] = a.astype(np.float16)
        else:
            out[name] = st_io.f32_to_bf16_bits(a)
            bf16.add(name)
    st_io.save_file(out, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"}, bf16_names=bf16)
    cfg = dict(cfg)
    cfg["torch_dtype"] = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if byte:
        if cfg["vocab_size"] < 256:
            raise ConvertError(f"--byte needs vocab_size >= 256 (config has {cfg['vocab_size']})")
        tok = {"type": "byte"}
    else:
        if vocab is None:
            raise ConvertError("no vocabulary: pass --vocab-pkl, --vocab-txt or --byte")
        if len(vocab) != cfg["vocab_size"]:
            raise ConvertError(f"vocabulary has {len(vocab)} symbols but the model's vocab_size is {cfg['vocab_size']}")
        for i, s in enumerate(vocab):
            if not s or any(ch.isspace() for ch in s):
                raise ConvertError(f"vocabulary symbol {i} {s!r} is empty or contains whitespace; vocab.txt cannot hold it")
        for special in (unk, eos):
            if special not in vocab:
                print(f"warning: {special!r} is not in the vocabulary", file=sys.stderr)
        with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(vocab) + "\n")
        tok = {"type": "word", "vocab_file": "vocab.txt", "unk": unk, "eos": eos, "add_eos": bool(add_eos)}
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(tok, f, indent=2)


def convert_hf(a):
    d = a.model_dir
    wpath = next((os.path.join(d, n) for n in ("pytorch_model.bin", "model.safetensors")
                  if os.path.exists(os.path.join(d, n))), None)
    if wpath is None:
        raise ConvertError(f"{d}: neither pytorch_model.bin nor model.safetensors found")
    cpath = os.path.join(d, "config.json")
    if not os.path.exists(cpath):
        raise ConvertError(f"{d}: config.json not found")
    with open(cpath) as f:
        cfg = normalize_config(json.load(f))
    sd, _ = load_state_dict(wpath)
    vocab = None
    if not a.byte:
        if a.vocab_txt:
            vocab = load_vocab_txt(a.vocab_txt)
        else:
            vp = a.vocab_pkl or next((os.path.join(d, n) for n in ("vocab.pkl", "vocab.bin")
                                      if os.path.exists(os.path.join(d, n))), None)
            if vp is None:
                raise ConvertError(f"{d}: no vocab.pkl / vocab.bin (or pass --vocab-pkl/--vocab-txt/--byte)")
            vocab = load_vocab_pkl(vp)
    return sd, cfg, vocab


def convert_trams(a):
    sd, embedded = load_state_dict(a.ckpt)
    if a.config:
        with open(a.config) as f:
            base = json.load(f)
    elif embedded:
        base = embedded
    else:
        base = None
    overrides = {"n_layer": a.n_layer, "d_model": a.d_model, "d_embed": a.d_embed, "n_head": a.n_head,
                 "d_head": a.d_head, "d_inner": a.d_inner, "vocab_size": a.vocab_size, "div_val": a.div_val,
                 "cutoffs": a.cutoffs, "clamp_len": a.clamp_len, "mem_len": a.mem_len, "tgt_len": a.tgt_len,
                 "untie_r": a.untie_r, "pre_lnorm": a.pre_lnorm, "same_length": a.same_length,
                 "tie_word_embeddings": a.tie_word_embeddings}
    if base is not None:
        cfg = dict(base)
        cfg.update({k: v for k, v in overrides.items() if v is not None})
    else:
        cfg = infer_config(sd, overrides)
    cfg = normalize_config(cfg)
    vocab = None
    if not a.byte:
        if a.vocab_txt:
            vocab = load_vocab_txt(a.vocab_txt)
        elif a.vocab_pkl:
            vocab = load_vocab_pkl(a.vocab_pkl)
        else:
            raise ConvertError("trams: pass --vocab-pkl, --vocab-txt or --byte")
    return sd, cfg, vocab


def str2bool(s):
    if s.lower() in ("1", "true", "yes", "y"):
        return True
    if s.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="layout", required=True)
    ph = sub.add_parser("hf", help="Hugging Face Transformer-XL directory")
    ph.add_argument("--model-dir", required=True)
    pt = sub.add_parser("trams", help="TRAMS authors' .ckpt (HF state dict)")
    pt.add_argument("--ckpt", required=True)
    pt.add_argument("--config", help="config.json to use (else embedded, else inferred + flags)")
    for name, typ in (("n-layer", int), ("d-model", int), ("d-embed", int), ("n-head", int), ("d-head", int),
                      ("d-inner", int), ("vocab-size", int), ("div-val", int), ("clamp-len", int),
                      ("mem-len", int), ("tgt-len", int)):
        pt.add_argument("--" + name, type=typ)
    pt.add_argument("--cutoffs", type=int, nargs="*", help="adaptive softmax cutoffs without vocab_size ([] = none)")
    pt.add_argument("--untie-r", type=str2bool)
    pt.add_argument("--pre-lnorm", type=str2bool)
    pt.add_argument("--same-length", type=str2bool)
    pt.add_argument("--tie-word-embeddings", type=str2bool)
    for sp in (ph, pt):
        sp.add_argument("--out", required=True, help="output model directory")
        sp.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
        sp.add_argument("--vocab-pkl", help="pickled TransfoXLTokenizer state (dict with 'idx2sym')")
        sp.add_argument("--vocab-txt", help="one symbol per line (first field), line i = id i")
        sp.add_argument("--byte", action="store_true", help="byte tokenizer instead of a word vocabulary")
        sp.add_argument("--unk", default="<unk>")
        sp.add_argument("--eos", default="<eos>")
        sp.add_argument("--no-add-eos", action="store_true")
        sp.add_argument("--drop-unknown", action="store_true", help="drop tensors that are not model weights")
    a = p.parse_args(argv)
    try:
        sd, cfg, vocab = convert_hf(a) if a.layout == "hf" else convert_trams(a)
        tensors = validate(sd, cfg, drop_unknown=a.drop_unknown)
        write_model(a.out, tensors, cfg, a.dtype, vocab=vocab, byte=a.byte, unk=a.unk, eos=a.eos,
                    add_eos=not a.no_add_eos)
    except ConvertError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    n = sum(int(np.prod(t.shape)) for t in tensors.values())
    print(f"wrote {a.out}: {len(tensors)} tensors, {n} values, dtype {a.dtype}, n_layer {cfg['n_layer']}, "
          f"d_model {cfg['d_model']}, vocab {cfg['vocab_size']}, cutoffs {cfg['cutoffs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
