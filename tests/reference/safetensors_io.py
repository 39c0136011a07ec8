"""Minimal safetensors reader/writer using numpy only.

Format: 8-byte little-endian u64 header length N, then N bytes of JSON header
({name: {"dtype", "shape", "data_offsets": [begin, end]}, optional "__metadata__": {str: str}}),
then the raw little-endian tensor data; offsets are relative to the start of the data block.
Supported dtypes: F32, F16, BF16, I64. BF16 is stored as uint16 (upper 16 bits of the f32 bit
pattern, rounded to nearest even) and read back as float32.
"""
import json
import struct

import numpy as np

_NP_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8"), "BF16": np.dtype("<u2")}


def f32_to_bf16_bits(x):
    """float array -> uint16 bf16 bit patterns, round to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    out = ((u + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)  # keep a quiet NaN
    return out


def bf16_bits_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_stored(x, dtype):
    """The values a tensor has after being stored as `dtype` (as float64 for floats)."""
    x = np.asarray(x)
    if dtype == "F32":
        return x.astype(np.float32).astype(np.float64)
    if dtype == "F16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "BF16":
        return bf16_bits_to_f32(f32_to_bf16_bits(x)).astype(np.float64)
    if dtype == "I64":
        return x.astype(np.int64)
    raise ValueError(dtype)


def save_file(tensors, path, dtype="F32", metadata=None):
    """tensors: dict name -> numpy array. `dtype` is a str applied to every float tensor, or a dict name -> dtype.
    Integer arrays are stored as I64."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        if np.issubdtype(arr.dtype, np.integer):
            dt = "I64"
        else:
            dt = dtype[name] if isinstance(dtype, dict) else dtype
        if dt == "BF16":
            raw = f32_to_bf16_bits(arr).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(arr.astype(_NP_DTYPES[dt])).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)  # pad with spaces to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def load_file(path, with_dtypes=False):
    """Returns dict name -> numpy array (F32/F16 as stored, BF16 widened to float32, I64 int64);
    with_dtypes=True also returns (dtypes dict, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", {}) or {}
    out, dtypes = {}, {}
    for name, info in header.items():
        dt = info["dtype"]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        arr = np.frombuffer(data, dtype=_NP_DTYPES[dt], count=count, offset=base + b)
        assert arr.nbytes == e - b, (name, arr.nbytes, e - b)
        if dt == "BF16":
            arr = bf16_bits_to_f32(arr)
        out[name] = arr.reshape(shape).copy()
        dtypes[name] = dt
    if with_dtypes:
        return out, dtypes, meta
    return out
