"""Minimal safetensors reader/writer built on numpy only (no `safetensors` package needed).

File layout: 8-byte little-endian u64 header length N, then N bytes of JSON
{name: {"dtype": "F32"|"F16"|"BF16"|..., "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
then the raw little-endian tensor bytes (offsets are relative to the end of the header).
BF16 is stored/returned as raw uint16 bit patterns (numpy has no bfloat16); see f32_to_bf16_bits / bf16_bits_to_f32.
"""
import json
import os
import struct

import numpy as np

_NP_TO_ST = {
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("float64"): "F64",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}
_ST_TO_NP = {v: k for k, v in _NP_TO_ST.items()}
_ST_TO_NP["BF16"] = np.dtype("uint16")


def f32_to_bf16_bits(a):
    """float32 array -> uint16 bf16 bit patterns, round-to-nearest-even (NaN kept quiet)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    out = ((u + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def bf16_bits_to_f32(b):
    b = np.ascontiguousarray(b, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def save_file(tensors, path, metadata=None, bf16_names=()):
    """tensors: dict name -> numpy array. Arrays whose name is in bf16_names must be uint16 bf16 bits.
    Written atomically (tmp file + rename)."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if name in bf16_names:
            if arr.dtype != np.uint16:
                raise ValueError(f"{name}: bf16 tensor must be given as uint16 bits")
            dt = "BF16"
        else:
            if arr.dtype not in _NP_TO_ST:
                raise ValueError(f"{name}: unsupported dtype {arr.dtype}")
            dt = _NP_TO_ST[arr.dtype]
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)  # align data start to 8 bytes
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_file(path, bf16_to_f32=False):
    """Returns (dict name -> numpy array, dict name -> dtype string, metadata)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out, dtypes = {}, {}
    for name, info in header.items():
        dt = info["dtype"]
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw[base + b:base + e], dtype=_ST_TO_NP[dt].newbyteorder("<")).reshape(info["shape"])
        if dt == "BF16" and bf16_to_f32:
            arr = bf16_bits_to_f32(arr).reshape(info["shape"])
        out[name] = arr.copy()
        dtypes[name] = dt
    return out, dtypes, meta
