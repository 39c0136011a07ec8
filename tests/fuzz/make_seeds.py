#!/usr/bin/env python3
"""Writes the small seed corpora of tests/fuzz/corpus/<target>/ (run from anywhere; standard library only).

Seeds are valid inputs the fuzzers mutate from: tiny model configs, safetensors files holding every
tensor those configs call for, tokenizer configs with vocabularies, and settings bytes.
corpus/fuzz_snapshot/ is not written here: its three seeds (raw, zstd, one_section) are a 0x01 byte (the
fuzzer then fixes the checksum up) followed by blobs that
engine/snapshot_file.cc's EncodeSnapshot wrote (xxHash3 and zstd are not in Python's standard library).
Files named regression-* are inputs that once crashed a fuzzer, kept as seeds so every run tries them.
"""
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def safetensors(tensors, dtype="F32", metadata=None):
    """tensors: name -> (shape, [float values]); every tensor stored as `dtype` (F32 or F16)."""
    header, data = {}, b""
    for name, (shape, values) in sorted(tensors.items()):
        blob = struct.pack("<%d%s" % (len(values), "f" if dtype == "F32" else "e"), *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def tensor(*shape):
    n = 1
    for d in shape:
        n *= d
    return (list(shape), [((i * 7) % 11 - 5) / 8 for i in range(n)])


def model_tensors(c):
    """Every tensor engine/model_weights.cc reads for config `c` (mirrors LoadModelWeights)."""
    d, de, V, H, Dh, di = c["d_model"], c["d_embed"], c["vocab_size"], c["n_head"], c["d_head"], c["d_inner"]
    hd, div = H * Dh, c["div_val"]
    ends = [0] + c["cutoffs"] + [V]
    nc = len(c["cutoffs"])
    dims = [de // div ** i for i in range(nc + 1)]
    t = {}
    for i in range(1 if div == 1 else nc + 1):
        ids = V if div == 1 else ends[i + 1] - ends[i]
        t["transformer.word_emb.emb_layers.%d.weight" % i] = tensor(ids, dims[i])
        if div != 1 or dims[i] != d:
            t["transformer.word_emb.emb_projs.%d" % i] = tensor(d, dims[i])
    if not c["untie_r"]:
        t["transformer.r_w_bias"] = tensor(H, Dh)
        t["transformer.r_r_bias"] = tensor(H, Dh)
    for l in range(c["n_layer"]):
        p = "transformer.layers.%d." % l
        t[p + "dec_attn.qkv_net.weight"] = tensor(3 * hd, d)
        t[p + "dec_attn.r_net.weight"] = tensor(hd, d)
        t[p + "dec_attn.o_net.weight"] = tensor(d, hd)
        t[p + "dec_attn.layer_norm.weight"] = tensor(d)
        t[p + "dec_attn.layer_norm.bias"] = tensor(d)
        t[p + "pos_ff.CoreNet.0.weight"] = tensor(di, d)
        t[p + "pos_ff.CoreNet.0.bias"] = tensor(di)
        t[p + "pos_ff.CoreNet.3.weight"] = tensor(d, di)
        t[p + "pos_ff.CoreNet.3.bias"] = tensor(d)
        t[p + "pos_ff.layer_norm.weight"] = tensor(d)
        t[p + "pos_ff.layer_norm.bias"] = tensor(d)
        if c["untie_r"]:
            t[p + "dec_attn.r_w_bias"] = tensor(H, Dh)
            t[p + "dec_attn.r_r_bias"] = tensor(H, Dh)
    for i in range(nc + 1):
        ids = ends[i + 1] - ends[i]
        dim = dims[0 if div == 1 else i]
        if div == 1:
            if i == 0:
                if not c["tie_word_embeddings"]:
                    t["crit.out_layers.0.weight"] = tensor(V, de)
                t["crit.out_layers.0.bias"] = tensor(V)
        else:
            if not c["tie_word_embeddings"]:
                t["crit.out_layers.%d.weight" % i] = tensor(ids, dim)
            t["crit.out_layers.%d.bias" % i] = tensor(ids)
        tied = c["tie_projs"][i] and (div != 1 or d != de)
        if not tied and (dim != d or div != 1):
            t["crit.out_projs.%d" % i] = tensor(d, dim)
    if nc:
        t["crit.cluster_weight"] = tensor(nc, de)
        t["crit.cluster_bias"] = tensor(nc)
    return t


PLAIN = {"n_layer": 1, "d_model": 2, "d_embed": 2, "n_head": 1, "d_head": 2, "d_inner": 2, "vocab_size": 4,
         "cutoffs": [], "div_val": 1, "untie_r": False, "tie_word_embeddings": True, "tie_projs": [False],
         "clamp_len": 0, "same_length": False, "pre_lnorm": False}
ADAPTIVE = {"n_layer": 2, "d_model": 2, "d_embed": 4, "n_head": 1, "d_head": 2, "d_inner": 3, "vocab_size": 6,
            "cutoffs": [2, 4], "div_val": 2, "untie_r": True, "tie_word_embeddings": False,
            "tie_projs": [False, True, False], "clamp_len": 3, "same_length": True, "pre_lnorm": True}


SESSION_NAMES = ["session", "session.tail", "session.tail_logprobs", "session.recent_ids",
                 "session.selection_scores", "stream", "stream.hidden", "pool.keys", "pool.values", "pool.scores"]


def session_sections(mode="trams", size=3, position=5, tail=(7,), selection=True):
    """fuzz_session_snapshot's input: sections of a valid session of its model (2 layers, d_model 8, 2 heads
    of 4, vocab 64; fingerprint xxh3:00000000000000f5, byte tokenizer). Each: name index, u32 length, bytes."""
    layers, width, heads = 2, 8, 2
    selects = mode == "trams"
    selected = [[[1], [0]], [[2], [1]]] if selection and selects else []
    recent_kept = 4 + 8
    recent = [(i * 5) % 64 for i in range(position + len(tail))]
    session = {"id": "doc", "tokenizer": "byte", "segment_len": 4, "created_ms": 1, "last_used_ms": 2,
               "tokens_scored": position, "nll_sum": 12.5, "recent_first": 0, "recent_ids_kept": recent_kept,
               "selection": {"segment_start": position - 4 if selected else -1, "segment_len": 4 if selected else 0,
                             "recent_from": max(0, position - 2), "selected": selected}}
    mem_len = 4 if mode != "none" else 0
    size = min(size, mem_len)
    stream = {"model": "xxh3:00000000000000f5", "pool_dtype": "f32", "size": size, "position": position,
              "settings": {"mode": mode, "mem_len": mem_len, "topk": 1 if selects else 0, "remain": 2 if selects else 0,
                           "layers": [], "metric": "code"}}
    floats = lambda n: struct.pack("<%df" % n, *[((i * 3) % 7 - 3) / 4 for i in range(n)])
    parts = [
        ("session", json.dumps(session).encode()),
        ("session.tail", struct.pack("<%di" % len(tail), *tail)),
        ("session.tail_logprobs", floats(len(tail))),
        ("session.recent_ids", struct.pack("<%di" % len(recent), *recent)),
        ("session.selection_scores", floats(sum(len(h) for l in selected for h in l))),
        ("stream", json.dumps(stream).encode()),
        ("stream.hidden", floats(8 if position > 0 else 0)),
        ("pool.keys", floats(layers * size * width)),
        ("pool.values", floats(layers * size * width)),
        ("pool.scores", floats((layers if selects else 0) * size * heads)),
    ]
    return b"".join(bytes([SESSION_NAMES.index(n)]) + struct.pack("<I", len(b)) + b for n, b in parts)


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def main():
    for name, c, dtype in (("plain", PLAIN, "F32"), ("adaptive", ADAPTIVE, "F16")):
        cfg = json.dumps(c)
        st = safetensors(model_tensors(c), dtype, {"format": "pt"})
        write("fuzz_config", name + ".json", cfg)
        write("fuzz_safetensors", name + ".safetensors", st)
        write("fuzz_weights", name, cfg.encode() + b"\0" + st)
    write("fuzz_config", "hf_defaults.json", json.dumps({"n_layer": 2, "d_model": 8, "n_head": 2, "d_head": 4,
                                                         "d_inner": 16, "n_token": 300000}))
    write("fuzz_safetensors", "empty.safetensors", safetensors({}))
    write("fuzz_tokenizer", "byte", '{"type": "byte"}')
    write("fuzz_tokenizer", "none", '{"type": "none"}')
    write("fuzz_tokenizer", "word", '{"type": "word", "vocab_file": "vocab.txt", "unk": "<unk>", "eos": "<eos>", '
                                    '"add_eos": true}\0<unk>\n<eos>\nthe\ncat\r\nsat\n')
    write("fuzz_tokenizer", "word_defaults", '{"type": "word", "vocab_file": "sub/words.lst", "add_eos": false}\0'
                                             'EOS\nUNK\nx\ny\n')
    # fuzz_trams_settings reads bytes through FuzzedDataProvider: a few arbitrary starting points.
    write("fuzz_trams_settings", "zeros", bytes(32))
    write("fuzz_trams_settings", "ones", bytes([0xff] * 32))
    write("fuzz_trams_settings", "mixed", bytes(range(1, 64, 2)))
    key_hash = hashlib.sha256(b"alice-key").hexdigest()
    write("fuzz_auth_keys", "match", "Bearer alice-key\n# tenants\nalice sha256:%s\nbob\tsha256:%s  # x\n"
          % (key_hash, hashlib.sha256(b"bob").hexdigest()))
    write("fuzz_auth_keys", "no_match", "Bearer nope\nalice sha256:%s\n" % key_hash)
    write("fuzz_auth_keys", "quotas", "Bearer alice-key\nalice sha256:%s max_sessions=4 max_pool_bytes=1048576\n"
          "bob sha256:%s tokens_per_second=500 max_concurrent_calls=2\n" % (key_hash, hashlib.sha256(b"bob").hexdigest()))
    write("fuzz_session_snapshot", "trams", session_sections())
    write("fuzz_session_snapshot", "xl_no_selection", session_sections("xl", selection=False))
    write("fuzz_session_snapshot", "no_memory", session_sections("none", size=0, position=3, tail=()))
    write("fuzz_session_snapshot", "fresh", session_sections(size=0, position=0, tail=(), selection=False))


if __name__ == "__main__":
    main()
