"""Straightforward PyTorch reference of Transformer-XL + TRAMS inference (float64).

Independent of the C++ engine on purpose: it keeps the memory pool as per-layer HIDDEN STATES
(layer inputs) and recomputes K/V (and TRAMS scores) for the whole pool at every segment, like
the authors' code, and it builds relative positions with an explicit distance gather instead of
the rel-shift trick. Semantics follow engine/DESIGN.md.

Usage:
    model = TransfoXLReference.from_dir("tests/golden/models/plain_postln")
    out = model.run(inputs, mode="trams", mem_len=24, topk=4, remain=8, tgt_len=8)
"""
import json
import math
import os

import numpy as np
import torch

from safetensors_io import load_file

DTYPE = torch.float64

# HF TransfoXLConfig defaults (used only for keys missing from config.json)
HF_DEFAULTS = dict(
    cutoffs=[20000, 40000, 200000], div_val=4, proj_share_all_but_first=True, tie_projs=None,
    tie_word_embeddings=True, untie_r=True, pre_lnorm=False, same_length=True, clamp_len=1000,
    layer_norm_epsilon=1e-5,
)


def load_config(cfg):
    c = dict(HF_DEFAULTS)
    c.update(cfg)
    if "vocab_size" not in c:
        c["vocab_size"] = c["n_token"]
    c["cutoffs"] = list(c["cutoffs"])
    if c["tie_projs"] is None:
        c["tie_projs"] = [False] + [bool(c["proj_share_all_but_first"])] * len(c["cutoffs"])
    if c.get("d_embed") is None:
        c["d_embed"] = c["d_model"]
    assert len(c["tie_projs"]) == len(c["cutoffs"]) + 1, "tie_projs needs len(cutoffs)+1 entries"
    return c


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


class TransfoXLReference:
    def __init__(self, config, state):
        """config: HF-style dict; state: dict name -> numpy array of the STORED values (any float dtype)."""
        c = load_config(config)
        self.c = c
        T = {k: torch.tensor(np.asarray(v, dtype=np.float64), dtype=DTYPE) for k, v in state.items()
             if k != "transformer.pos_emb.inv_freq"}
        self.V, self.d, self.de = c["vocab_size"], c["d_model"], c["d_embed"]
        self.H, self.dh, self.n_layer = c["n_head"], c["d_head"], c["n_layer"]
        self.eps = c["layer_norm_epsilon"]
        self.cutoffs = c["cutoffs"]
        self.ends = [0] + self.cutoffs + [self.V]
        self.div_val = c["div_val"]
        nclus = len(self.cutoffs) + 1
        self.d_emb = [self.de // (self.div_val ** i) for i in range(nclus)]

        # --- adaptive embedding
        if self.div_val == 1:
            self.emb_layers = [T["transformer.word_emb.emb_layers.0.weight"]]
            self.emb_projs = [T.get("transformer.word_emb.emb_projs.0")]
            if self.d != self.de:
                assert self.emb_projs[0] is not None
        else:
            self.emb_layers = [T["transformer.word_emb.emb_layers.%d.weight" % i] for i in range(nclus)]
            self.emb_projs = [T["transformer.word_emb.emb_projs.%d" % i] for i in range(nclus)]

        # --- layers
        self.layers = []
        for l in range(self.n_layer):
            p = "transformer.layers.%d." % l
            L = dict(
                qkv=T[p + "dec_attn.qkv_net.weight"], r_net=T[p + "dec_attn.r_net.weight"],
                o_net=T[p + "dec_attn.o_net.weight"],
                ln_a_w=T[p + "dec_attn.layer_norm.weight"], ln_a_b=T[p + "dec_attn.layer_norm.bias"],
                ff1_w=T[p + "pos_ff.CoreNet.0.weight"], ff1_b=T[p + "pos_ff.CoreNet.0.bias"],
                ff2_w=T[p + "pos_ff.CoreNet.3.weight"], ff2_b=T[p + "pos_ff.CoreNet.3.bias"],
                ln_f_w=T[p + "pos_ff.layer_norm.weight"], ln_f_b=T[p + "pos_ff.layer_norm.bias"],
            )
            if c["untie_r"]:
                L["r_w_bias"], L["r_r_bias"] = T[p + "dec_attn.r_w_bias"], T[p + "dec_attn.r_r_bias"]
            else:
                L["r_w_bias"], L["r_r_bias"] = T["transformer.r_w_bias"], T["transformer.r_r_bias"]
            self.layers.append(L)

        # --- output layer (HF ProjectedAdaptiveLogSoftmax). Ties as HF applies them at load time:
        # tied weights/projections ARE the embedding's, whatever the file holds under crit.*
        n_out = 1 if self.div_val == 1 else nclus
        self.out_w, self.out_b = [], []
        for i in range(n_out):
            if c["tie_word_embeddings"]:
                w = self.emb_layers[i]
            else:
                w = T["crit.out_layers.%d.weight" % i]
            self.out_w.append(w)
            self.out_b.append(T["crit.out_layers.%d.bias" % i])
        n_proj = 1 if not self.cutoffs else nclus
        self.out_projs = []
        for i in range(n_proj):
            d_i = self.de if self.div_val == 1 else self.d_emb[i]
            if c["tie_projs"][i] and self.div_val == 1 and self.d != self.de:
                p = self.emb_projs[0]
            elif c["tie_projs"][i] and self.div_val != 1:
                p = self.emb_projs[i]
            else:
                p = T.get("crit.out_projs.%d" % i)
                assert p is not None or d_i == self.d, "crit.out_projs.%d missing but d_emb != d_model" % i
            self.out_projs.append(p)
        if self.cutoffs:
            self.cluster_w, self.cluster_b = T["crit.cluster_weight"], T["crit.cluster_bias"]
        self.inv_freq = 1.0 / (10000.0 ** (torch.arange(0.0, self.d, 2.0, dtype=DTYPE) / self.d))

    @classmethod
    def from_dir(cls, path):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        state = load_file(os.path.join(path, "model.safetensors"))
        return cls(cfg, state)

    # ------------------------------------------------------------------ pieces
    def embed(self, ids):
        out = torch.zeros(len(ids), self.d, dtype=DTYPE)
        for t, x in enumerate(ids):
            x = int(x)
            if self.div_val == 1:
                e = self.emb_layers[0][x]
                if self.emb_projs[0] is not None:
                    e = self.emb_projs[0] @ e
            else:
                i = max(k for k in range(len(self.ends) - 1) if self.ends[k] <= x)
                e = self.emb_projs[i] @ self.emb_layers[i][x - self.ends[i]]
            out[t] = e
        return out * math.sqrt(self.d)

    def pos_emb(self, p):
        """p: integer tensor of positions -> [..., d_model]"""
        s = p.to(DTYPE)[..., None] * self.inv_freq
        return torch.cat([torch.sin(s), torch.cos(s)], dim=-1)

    def _logit(self, h, w, b, proj):
        if proj is not None:
            h = h @ proj  # [N, d_model] @ [d_model, d_emb] (HF: linear(hidden, proj.t()))
        return h @ w.T + b

    def log_probs(self, h):
        """h: [N, d_model] -> full log-probabilities [N, vocab]."""
        if not self.cutoffs:
            return torch.log_softmax(self._logit(h, self.out_w[0], self.out_b[0], self.out_projs[0]), dim=-1)
        ws, bs = [], []
        for i in range(len(self.cutoffs) + 1):
            if self.div_val == 1:
                w, b = self.out_w[0][self.ends[i]:self.ends[i + 1]], self.out_b[0][self.ends[i]:self.ends[i + 1]]
            else:
                w, b = self.out_w[i], self.out_b[i]
            ws.append(w)
            bs.append(b)
        head_w = torch.cat([ws[0], self.cluster_w], dim=0)
        head_b = torch.cat([bs[0], self.cluster_b], dim=0)
        head_lp = torch.log_softmax(self._logit(h, head_w, head_b, self.out_projs[0]), dim=-1)
        out = torch.empty(h.shape[0], self.V, dtype=DTYPE)
        c0 = self.cutoffs[0]
        out[:, :c0] = head_lp[:, :c0]
        for i in range(1, len(self.cutoffs) + 1):
            tail = torch.log_softmax(self._logit(h, ws[i], bs[i], self.out_projs[i]), dim=-1)
            out[:, self.ends[i]:self.ends[i + 1]] = head_lp[:, c0 + i - 1, None] + tail
        return out

    def trams_scores(self, l, k_pool, metric):
        """k_pool: [L, H, d_head] keys of pool tokens -> scores [H, L]."""
        Wq = self.layers[l]["qkv"][: self.H * self.dh].view(self.H, self.dh, self.d)
        scores = torch.empty(self.H, k_pool.shape[0], dtype=DTYPE)
        for h in range(self.H):
            Kp = k_pool[:, h, :] @ Wq[h]  # K'_j = W_Q,h^T k_{j,h}  -> [L, d_model]
            if metric == "code":
                scores[h] = Kp.norm(dim=-1) * Kp.sum(dim=-1).abs()
            elif metric == "paper":
                scores[h] = Kp.sum(dim=-1) / math.sqrt(self.d)
            else:
                raise ValueError(metric)
        return scores

    def layer(self, l, h, pool, attend, W):
        """h: [n, d] layer input of the segment; pool: [L, d] pooled layer inputs;
        attend: list (per head) of pool-index lists to attend (ascending); W: same_length window."""
        P, H, dh = self.layers[l], self.H, self.dh
        n, L = h.shape[0], pool.shape[0]
        cat = torch.cat([pool, h], dim=0)
        x = layer_norm(cat, P["ln_a_w"], P["ln_a_b"], self.eps) if self.c["pre_lnorm"] else cat
        qkv = x @ P["qkv"].T
        q, k, v = qkv[:, : H * dh], qkv[:, H * dh: 2 * H * dh], qkv[:, 2 * H * dh:]
        q = q[L:].view(n, H, dh)
        k = k.view(L + n, H, dh)
        v = v.view(L + n, H, dh)
        vec = torch.empty(n, H, dh, dtype=DTYPE)
        for hd in range(H):
            idx = torch.tensor(list(attend[hd]) + list(range(L, L + n)), dtype=torch.long)
            a = len(attend[hd])
            kh, vh = k[idx, hd], v[idx, hd]
            klen = a + n
            dist = a + torch.arange(n)[:, None] - torch.arange(klen)[None, :]
            mask = dist < 0
            if self.c["same_length"] and W > 0:
                mask = mask | (dist >= W)
            pos = dist.clamp(min=0)
            if self.c["clamp_len"] > 0:
                pos = pos.clamp(max=self.c["clamp_len"])
            r = (self.pos_emb(pos) @ P["r_net"].T).view(n, klen, H, dh)[:, :, hd]  # [n, klen, dh]
            ac = (q[:, hd] + P["r_w_bias"][hd]) @ kh.T
            bd = torch.einsum("id,ijd->ij", q[:, hd] + P["r_r_bias"][hd], r)
            score = (ac + bd) / math.sqrt(dh)
            score = score.masked_fill(mask, float("-inf"))
            prob = torch.softmax(score, dim=-1)
            vec[:, hd] = prob @ vh
        attn_out = vec.reshape(n, H * dh) @ P["o_net"].T
        if self.c["pre_lnorm"]:
            h1 = h + attn_out
            ff = torch.relu(layer_norm(h1, P["ln_f_w"], P["ln_f_b"], self.eps) @ P["ff1_w"].T + P["ff1_b"])
            return h1 + ff @ P["ff2_w"].T + P["ff2_b"]
        h1 = layer_norm(h + attn_out, P["ln_a_w"], P["ln_a_b"], self.eps)
        ff = torch.relu(h1 @ P["ff1_w"].T + P["ff1_b"]) @ P["ff2_w"].T + P["ff2_b"]
        return layer_norm(h1 + ff, P["ln_f_w"], P["ln_f_b"], self.eps)

    # ------------------------------------------------------------------ driver
    def run(self, inputs, mode="xl", mem_len=0, topk=0, remain=0, tgt_len=8, trams_layers=None,
            metric="code", reference_compat=False):
        """inputs: [B][T] token ids. Returns dict with logprobs/entropy/top_ids [B][T] (None where not
        scored), selections [segments][layers][B][H][...], loss, and `selection_events` (for gap checks:
        (segment, layer, stream, head, sorted candidate scores descending, k))."""
        assert mode in ("none", "xl", "trams")
        M = 0 if mode == "none" else mem_len
        m = M if mode == "xl" else (topk + remain if mode == "trams" else 0)
        W = m  # same_length window
        sel_layers = set(range(self.n_layer)) if trams_layers is None else set(trams_layers)
        B, n = len(inputs), tgt_len
        Tlen = len(inputs[0])
        nseg = (Tlen + n - 1) // n
        res = dict(logprobs=[], entropy=[], top_ids=[], top_lp=[],
                   selections=[[[[[] for _ in range(self.H)] for _ in range(B)] for _ in range(self.n_layer)]
                               for _ in range(nseg)],
                   selection_events=[])
        nll, nscored = 0.0, 0
        for b in range(B):
            ids = list(inputs[b])
            assert len(ids) == Tlen
            pools = [torch.zeros(M if reference_compat else 0, self.d, dtype=DTYPE) for _ in range(self.n_layer)]
            outs = []
            for s in range(nseg):
                seg = ids[s * n:(s + 1) * n]
                h = self.embed(seg)
                for l in range(self.n_layer):
                    pool = pools[l]
                    L = pool.shape[0]
                    if mode == "none" or L == 0:
                        attend = [[] for _ in range(self.H)]
                    elif mode == "xl":
                        attend = [list(range(L)) for _ in range(self.H)]
                    elif L <= m:
                        attend = [list(range(L)) for _ in range(self.H)]
                    elif l not in sel_layers:
                        attend = [list(range(L - m, L)) for _ in range(self.H)]
                    else:
                        # keys of the pool tokens (recomputed from hidden states)
                        x = layer_norm(pool, self.layers[l]["ln_a_w"], self.layers[l]["ln_a_b"], self.eps) \
                            if self.c["pre_lnorm"] else pool
                        kp = (x @ self.layers[l]["qkv"][self.H * self.dh: 2 * self.H * self.dh].T).view(L, self.H, self.dh)
                        sc = self.trams_scores(l, kp[: L - remain], metric)
                        attend = []
                        for hd in range(self.H):
                            # highest score first; ties broken by lower pool index (older first)
                            order = sorted(range(L - remain), key=lambda j: (-float(sc[hd, j]), j))
                            chosen = sorted(order[:topk])
                            res["selections"][s][l][b][hd] = chosen
                            res["selection_events"].append(
                                (s, l, b, hd, [float(sc[hd, j]) for j in order], topk))
                            attend.append(chosen + list(range(L - remain, L)))
                    h_next = self.layer(l, h, pool, attend, W)
                    if M > 0:
                        pools[l] = torch.cat([pool, h], dim=0)[-M:]
                    h = h_next
                outs.append(h)
            hid = torch.cat(outs, dim=0)  # [T, d]
            lp = self.log_probs(hid)  # row t predicts token t+1
            row_lp, row_ent, row_top, row_toplp = [None], [None], [None], [None]
            for t in range(1, Tlen):
                if reference_compat and t % n == 0:
                    row_lp.append(None); row_ent.append(None); row_top.append(None); row_toplp.append(None)
                    continue
                d = lp[t - 1]
                row_lp.append(float(d[ids[t]]))
                row_ent.append(float(-(d.exp() * d).sum()))
                order = sorted(range(self.V), key=lambda j: (-float(d[j]), j))[:6]
                row_top.append(order[:5])
                row_toplp.append([float(d[j]) for j in order])
                nll -= float(d[ids[t]])
                nscored += 1
            res["logprobs"].append(row_lp)
            res["entropy"].append(row_ent)
            res["top_ids"].append(row_top)
            res["top_lp"].append(row_toplp)
        res["loss"] = nll / max(nscored, 1)
        res["n_scored"] = nscored
        return res
