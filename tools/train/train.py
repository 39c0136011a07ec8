#!/usr/bin/env python3
"""Train a small byte-level Transformer-XL (relative positions + segment memory) on CPU and export it in the
engine's model format (engine/DESIGN.md): config.json (HF TransfoXLConfig keys), model.safetensors (HF
TransfoXLLMHeadModel tensor names, f16 by default) and tokenizer.json ({"type": "byte"}).

Architecture = HF TransfoXLLMHeadModel with div_val 1, d_embed == d_model, cutoffs [] (plain softmax),
post-LN, untie_r false, tied output embedding, clamp_len 0, same_length false.

Typical use (see tools/train/README.md):
  nice -n 5 /usr/bin/python3 tools/train/train.py --run-dir /work/train_run/run1 \
      --export-dir /work/train_run/export --max-steps N ...
  ... --resume            # continue exactly from run-dir/ckpt.pt
  ... --bench-seconds 60  # throughput measurement only (no checkpoints)
"""
import argparse
import glob
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "convert"))
import st_io  # noqa: E402

LN_EPS = 1e-5


# ----------------------------------------------------------------------------------------------------------
# Model (module names mirror HF TransfoXLLMHeadModel so state_dict() keys are the export names)
# ----------------------------------------------------------------------------------------------------------
def rel_shift(x):
    """x [B, H, q, k] with column c = relative distance (k-1-c); returns x'[i, j] = x[i, j + q - 1 - i]
    (i.e. distance mlen + i - j), garbage only where j > mlen + i (masked)."""
    b, h, q, k = x.shape
    x = F.pad(x, (1, 0))
    x = x.view(b, h, k + 1, q)[:, :, 1:]
    return x.reshape(b, h, q, k)


class RelPartialLearnableMultiHeadAttn(nn.Module):
    def __init__(self, d_model, n_head, d_head, dropout, dropatt):
        super().__init__()
        self.n_head, self.d_head = n_head, d_head
        self.qkv_net = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.r_net = nn.Linear(d_model, n_head * d_head, bias=False)
        self.o_net = nn.Linear(n_head * d_head, d_model, bias=False)
        self.layer_norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)
        self.dropatt = nn.Dropout(dropatt)
        self.scale = 1.0 / math.sqrt(d_head)

    def forward(self, h, r, r_w_bias, r_r_bias, mask, mem):
        # h [B, q, D]; mem [B, m, D] or None; r [klen, D] (distances klen-1 .. 0); mask [q, klen] bool
        B, qlen, _ = h.shape
        H, Dh = self.n_head, self.d_head
        cat = h if mem is None else torch.cat([mem, h], 1)
        klen = cat.shape[1]
        W = self.qkv_net.weight
        q = F.linear(h, W[: H * Dh])                       # only segment queries are needed
        kv = F.linear(cat, W[H * Dh:])
        k, v = kv.chunk(2, dim=-1)
        q = q.view(B, qlen, H, Dh).transpose(1, 2)          # B H q Dh
        k = k.reshape(B, klen, H, Dh).permute(0, 2, 3, 1)  # B H Dh k
        v = v.reshape(B, klen, H, Dh).transpose(1, 2)      # B H k Dh
        rk = self.r_net(r).view(klen, H, Dh).permute(1, 2, 0)  # H Dh k
        AC = torch.matmul(q + r_w_bias[:, None, :], k)
        BD = rel_shift(torch.matmul(q + r_r_bias[:, None, :], rk))
        score = (AC + BD) * self.scale
        score = score.masked_fill(mask, float("-inf"))
        prob = self.dropatt(torch.softmax(score, dim=-1))
        out = torch.matmul(prob, v).transpose(1, 2).reshape(B, qlen, H * Dh)
        out = self.drop(self.o_net(out))
        return self.layer_norm(h + out)


class PositionwiseFF(nn.Module):
    def __init__(self, d_model, d_inner, dropout):
        super().__init__()
        self.CoreNet = nn.Sequential(nn.Linear(d_model, d_inner), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                     nn.Linear(d_inner, d_model), nn.Dropout(dropout))
        self.layer_norm = nn.LayerNorm(d_model, eps=LN_EPS)

    def forward(self, x):
        return self.layer_norm(x + self.CoreNet(x))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_head, d_head, d_inner, dropout, dropatt):
        super().__init__()
        self.dec_attn = RelPartialLearnableMultiHeadAttn(d_model, n_head, d_head, dropout, dropatt)
        self.pos_ff = PositionwiseFF(d_model, d_inner, dropout)

    def forward(self, h, r, rw, rr, mask, mem):
        return self.pos_ff(self.dec_attn(h, r, rw, rr, mask, mem))


class AdaptiveEmbedding(nn.Module):  # div_val 1, d_embed == d_model: a plain scaled embedding
    def __init__(self, n_token, d_model):
        super().__init__()
        self.emb_layers = nn.ModuleList([nn.Embedding(n_token, d_model)])
        self.scale = math.sqrt(d_model)

    def forward(self, x):
        return self.emb_layers[0](x) * self.scale


class Core(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.word_emb = AdaptiveEmbedding(a.vocab_size, a.d_model)
        self.r_w_bias = nn.Parameter(torch.zeros(a.n_head, a.d_head))
        self.r_r_bias = nn.Parameter(torch.zeros(a.n_head, a.d_head))
        self.layers = nn.ModuleList([DecoderLayer(a.d_model, a.n_head, a.d_head, a.d_inner, a.dropout, a.dropatt)
                                     for _ in range(a.n_layer)])
        self.drop = nn.Dropout(a.dropout)
        inv_freq = 1.0 / (10000 ** (torch.arange(0.0, a.d_model, 2.0) / a.d_model))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.mem_len = a.mem_len
        self.clamp_len = getattr(a, "clamp_len", 0)  # training uses 0 (no clamping); eval_xl.py may set it

    def pos_emb(self, klen):
        pos = torch.arange(klen - 1, -1, -1.0)
        if self.clamp_len > 0:
            pos = pos.clamp(max=self.clamp_len)
        s = torch.outer(pos, self.inv_freq)
        return torch.cat([s.sin(), s.cos()], dim=-1)

    def forward(self, x, mems):
        # x [B, q] int64; mems: list of n_layer tensors [B, m, D] or None
        qlen = x.shape[1]
        mlen = 0 if mems is None else mems[0].shape[1]
        klen = mlen + qlen
        h = self.drop(self.word_emb(x))
        r = self.drop(self.pos_emb(klen))
        mask = torch.triu(torch.ones(qlen, klen, dtype=torch.bool), diagonal=1 + mlen)
        hids = []
        for i, layer in enumerate(self.layers):
            hids.append(h)
            h = layer(h, r, self.r_w_bias, self.r_r_bias, mask, None if mems is None else mems[i])
        h = self.drop(h)
        new_mems = None
        if self.mem_len > 0:
            with torch.no_grad():
                new_mems = []
                for i, hid in enumerate(hids):
                    cat = hid if mems is None else torch.cat([mems[i], hid], 1)
                    new_mems.append(cat[:, -self.mem_len:].detach())
        return h, new_mems


class Crit(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.out_layers = nn.ModuleList([nn.Linear(a.d_model, a.vocab_size)])


class TransfoXLLMHead(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.transformer = Core(a)
        self.crit = Crit(a)
        self.crit.out_layers[0].weight = self.transformer.word_emb.emb_layers[0].weight  # tied
        self.reset_parameters(a.init_std)

    def reset_parameters(self, std):
        for name, p in self.named_parameters():
            if name.endswith("layer_norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("bias") and p.dim() == 1:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, x, y, mems):
        h, new_mems = self.transformer(x, mems)
        logits = self.crit.out_layers[0](h)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return loss.view_as(y), new_mems


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
def load_books(pattern):
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"no files match {pattern}")
    return files, [np.frombuffer(open(f, "rb").read(), dtype=np.uint8) for f in files]


def make_streams(data, B):
    S = len(data) // B
    return torch.from_numpy(data[: S * B].astype(np.int64).reshape(B, S))


# ----------------------------------------------------------------------------------------------------------
# Export (engine format)
# ----------------------------------------------------------------------------------------------------------
def hf_config(a):
    return {
        "architectures": ["TransfoXLLMHeadModel"],
        "model_type": "transfo-xl",
        "vocab_size": a.vocab_size,
        "n_token": a.vocab_size,
        "cutoffs": [],
        "d_model": a.d_model,
        "d_embed": a.d_model,
        "n_head": a.n_head,
        "d_head": a.d_head,
        "d_inner": a.d_inner,
        "div_val": 1,
        "pre_lnorm": False,
        "n_layer": a.n_layer,
        "mem_len": a.mem_len,
        "tgt_len": a.tgt_len,
        "ext_len": 0,
        "clamp_len": 0,
        "same_length": False,
        "proj_share_all_but_first": True,
        "attn_type": 0,
        "sample_softmax": -1,
        "adaptive": False,
        "dropout": a.dropout,
        "dropatt": a.dropatt,
        "untie_r": False,
        "init": "normal",
        "init_range": 0.01,
        "proj_init_std": 0.01,
        "init_std": a.init_std,
        "layer_norm_epsilon": LN_EPS,
        "tie_projs": [False],
        "tie_word_embeddings": True,
        "eos_token_id": 10,
        "torch_dtype": "float16" if a.export_dtype == "f16" else "float32",
    }


def export(model, a, out_dir, extra_meta):
    tmp = out_dir.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    tensors = {}
    for name, t in model.state_dict().items():
        arr = t.detach().cpu().float().numpy()
        tensors[name] = arr.astype(np.float16) if a.export_dtype == "f16" else arr
    st_io.save_file(tensors, os.path.join(tmp, "model.safetensors"),
                    metadata={"format": "pt", **{k: str(v) for k, v in extra_meta.items()}})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(a), f, indent=2)
    with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
        json.dump({"type": "byte"}, f)
    with open(os.path.join(tmp, "train_info.json"), "w") as f:
        json.dump(extra_meta, f, indent=2)
    # swap directories (old export removed only after the new one is complete)
    old = out_dir.rstrip("/") + ".old"
    if os.path.isdir(old):
        for fn in os.listdir(old):
            os.remove(os.path.join(old, fn))
        os.rmdir(old)
    if os.path.isdir(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if os.path.isdir(old):
        for fn in os.listdir(old):
            os.remove(os.path.join(old, fn))
        os.rmdir(old)


# ----------------------------------------------------------------------------------------------------------
# Evaluation: XL protocol with memory (B contiguous streams, segments of tgt_len, first token of each
# stream unscored, as in engine/DESIGN.md "Scoring")
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, vdata, tgt_len):
    model.eval()
    mems = None
    tot, n = 0.0, 0
    S = vdata.shape[1]
    for i in range(0, S - 1, tgt_len):
        j = min(i + tgt_len, S - 1)
        loss, mems = model(vdata[:, i:j], vdata[:, i + 1:j + 1], mems)
        tot += loss.double().sum().item()
        n += loss.numel()
    model.train()
    return tot / n / math.log(2)


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    prog = min(1.0, (step - a.warmup) / max(1, a.max_steps - a.warmup))
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


ARCH_KEYS = ["vocab_size", "n_layer", "d_model", "n_head", "d_head", "d_inner", "tgt_len", "mem_len", "batch",
             "dropout", "dropatt", "init_std", "seed", "lr", "warmup", "max_steps", "min_lr_ratio", "clip",
             "train_glob", "shuffle_books", "weight_decay"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="checkpoints + log go here")
    p.add_argument("--export-dir", default=None, help="engine-format export (default: RUN_DIR/export)")
    p.add_argument("--train-glob", default="/work/shared/data/books/train/*.txt")
    p.add_argument("--valid-glob", default="/work/shared/data/books/valid/*.txt")
    p.add_argument("--valid-bytes-per-book", type=int, default=40000, help="slice of each valid book for bpc")
    p.add_argument("--valid-streams", type=int, default=4)
    p.add_argument("--shuffle-books", type=int, default=1, help="shuffle the book order with the seed")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--d-inner", type=int, default=1024)
    p.add_argument("--tgt-len", type=int, default=128)
    p.add_argument("--mem-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--dropatt", type=float, default=0.0)
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--max-steps", type=int, default=10000)
    p.add_argument("--min-lr-ratio", type=float, default=0.02)
    p.add_argument("--clip", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-every-s", type=float, default=600.0, help="checkpoint + valid eval + export period")
    p.add_argument("--stop-after-steps", type=int, default=0, help="stop (with checkpoint) at this step (testing)")
    p.add_argument("--export-dtype", choices=["f16", "f32"], default="f16")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--new-max-steps", type=int, default=0,
                   help="with --resume: change the schedule's length (the cosine continues from the current step)")
    p.add_argument("--bench-seconds", type=float, default=0.0, help="only measure training tokens/s, then exit")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    os.makedirs(a.run_dir, exist_ok=True)
    export_dir = a.export_dir or os.path.join(a.run_dir, "export")
    ckpt_path = os.path.join(a.run_dir, "ckpt.pt")
    logf = open(os.path.join(a.run_dir, "log.txt"), "a")

    def log(msg):
        line = time.strftime("%Y-%m-%d %H:%M:%S ") + msg
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    ck = None
    if a.resume:
        if not os.path.exists(ckpt_path):
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        ck = torch.load(ckpt_path, map_location="cpu")
        saved = ck["args"]
        for k in ARCH_KEYS:
            if k in saved and getattr(a, k) != saved[k]:
                log(f"resume: using checkpoint value {k}={saved[k]!r} (command line had {getattr(a, k)!r})")
                setattr(a, k, saved[k])
        if a.new_max_steps > 0:
            log(f"resume: schedule length changed from {a.max_steps} to {a.new_max_steps} steps")
            a.max_steps = a.new_max_steps

    # ---- data
    files, books = load_books(a.train_glob)
    order = list(range(len(files)))
    if a.shuffle_books:
        order = list(np.random.RandomState(a.seed).permutation(len(files)))
    train = make_streams(np.concatenate([books[i] for i in order]), a.batch)
    S = train.shape[1]
    steps_per_epoch = (S - 1) // a.tgt_len
    _, vbooks = load_books(a.valid_glob)
    vdata = make_streams(np.concatenate([b[: a.valid_bytes_per_book] for b in vbooks]), a.valid_streams)

    torch.manual_seed(a.seed)
    model = TransfoXLLMHead(a)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    step, mems, best = 0, None, float("inf")
    tokens_seen = 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        step, mems, best, tokens_seen = ck["step"], ck["mems"], ck["best"], ck["tokens_seen"]
        torch.set_rng_state(ck["rng"])
        log(f"resumed from {ckpt_path} at step {step}")
    else:
        log(f"start: {json.dumps(vars(a))}")
    log(f"params {n_params} ({n_params * 2 / 1e6:.2f} MB f16); train {train.numel()} bytes in {a.batch} streams "
        f"({steps_per_epoch} steps/epoch); valid {vdata.numel()} bytes; books order {[os.path.basename(files[i]) for i in order]}")

    def save_ckpt(tag=""):
        nonlocal best
        t0 = time.time()
        vbpc = evaluate(model, vdata, a.tgt_len)
        best = min(best, vbpc)
        state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": step, "mems": mems,
                 "rng": torch.get_rng_state(), "best": best, "tokens_seen": tokens_seen, "args": vars(a)}
        tmp = ckpt_path + ".tmp"
        torch.save(state, tmp)
        if os.path.exists(ckpt_path):
            os.replace(ckpt_path, os.path.join(a.run_dir, "ckpt_prev.pt"))
        os.replace(tmp, ckpt_path)
        meta = {"step": step, "max_steps": a.max_steps, "tokens_seen": tokens_seen, "valid_bpc": round(vbpc, 5),
                "valid_bytes": int(vdata.numel()), "eval_tgt_len": a.tgt_len, "eval_mem_len": a.mem_len,
                "params": n_params}
        export(model, a, export_dir, meta)
        log(f"{tag}checkpoint step {step}: valid_bpc {vbpc:.4f} (best {best:.4f}) tokens_seen {tokens_seen} "
            f"[eval+save {time.time() - t0:.1f}s] export -> {export_dir}")

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    model.train()
    t_start = time.time()
    t_last_ckpt = time.time()
    t_log, tok_log, loss_acc, n_acc = time.time(), 0, 0.0, 0
    bench_tokens = 0
    while step < a.max_steps:
        pos = (step % steps_per_epoch) * a.tgt_len
        if pos == 0:
            mems = None  # new epoch: streams restart
        x = train[:, pos:pos + a.tgt_len]
        y = train[:, pos + 1:pos + 1 + a.tgt_len]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        loss, mems = model(x, y, mems)
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        step += 1
        tokens_seen += x.numel()
        loss_acc += loss.item()
        n_acc += 1
        tok_log += x.numel()
        if a.bench_seconds > 0:
            if step == 3:
                t_bench, bench_tokens = time.time(), 0
            elif step > 3:
                bench_tokens += x.numel()
                if time.time() - t_bench >= a.bench_seconds:
                    tps = bench_tokens / (time.time() - t_bench)
                    print(json.dumps({"bench": True, "params": n_params, "tok_per_s": round(tps, 1),
                                      "steps": step, "loss": round(loss.item(), 4), "args": vars(a)}), flush=True)
                    return
            continue
        if step % a.log_every == 0:
            dt = time.time() - t_log
            eta = (a.max_steps - step) * dt / a.log_every
            log(f"step {step}/{a.max_steps} loss {loss_acc / n_acc:.4f} bpc {loss_acc / n_acc / math.log(2):.4f} "
                f"lr {lr_at(step - 1, a):.2e} gnorm {gnorm:.3f} tok/s {tok_log / dt:.0f} eta {eta / 3600:.2f}h")
            t_log, tok_log, loss_acc, n_acc = time.time(), 0, 0.0, 0
        if a.stop_after_steps and step >= a.stop_after_steps:
            save_ckpt("stop-after-steps ")
            return
        if stop["flag"]:
            save_ckpt("signal ")
            return
        if time.time() - t_last_ckpt >= a.ckpt_every_s:
            save_ckpt()
            t_last_ckpt = time.time()
    save_ckpt("final ")
    log(f"done in {(time.time() - t_start) / 3600:.2f}h")


if __name__ == "__main__":
    main()
