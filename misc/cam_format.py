"""The compact CAM record: the same float32 values as the plain record, in a small fraction of the bytes.

A plain record (format 1, the official layout) stores `cam` [n, ceil(H/4), ceil(W/4)] and `high_res` [n, H, W]
as raw float32: 3.7 MB for a 640 x 480 image with 3 classes. Both arrays are a deterministic function of the
per-scale class maps they are made from (misc/cams.resize_and_sum: bilinear resize, sum over scales, divide by
the max), and those maps are ~35x smaller than `high_res`. A compact record (format 2) stores

  keys      int64 [n]
  format    int64 [] = 2
  size      int64 [2]              (H, W) of the image
  cam_size  int64 [2]              (h, w) of `cam`
  map_shapes int64 [S, 2]          the per-scale maps' spatial shapes (S = 0: no maps, see below)
  maps      uint8 [*]              zlib of the byte-shuffled float32 maps [n, h_s, w_s] of the image's classes
  cam_fix, high_res_fix  uint8 [*] zlib of the sparse XOR between the true float32 bits and the prediction
  crc       uint32 [2]             CRC-32 of the decoded `cam` and `high_res` bytes, checked on every read

The reader recomputes both arrays from `maps` with the PyTorch CPU code the writer ran (`predict_torch`) and
applies the XOR fix: the result is the writer's array bit for bit whatever device computed it; where the writer
ran on a CPU the fix is empty, elsewhere (CUDA) it holds the few differing low bits. A 64-bit check of the decoded
bytes is verified on every read, so a mismatch is an error, never a silently different map. A record is read
where PyTorch's CPU kernel rounds as on the writer's machine (same kernel family); `predict_numpy`, an IEEE-exact
numpy re-implementation of the FMA kernel (x86-64 AVX2/AVX-512) on the maps make_cam resizes, is the fallback
that makes records portable where the kernels differ; --cam_format plain writes the portable plain layout.
Without maps (save_cam_npz called on finished arrays) the prediction is zero and the fix is the byte-shuffled
array itself: still lossless, ~2x smaller.

`dtype="float16"` (--cam_format float16) is the one lossy option: both arrays rounded to float16 and stored
byte-shuffled + zlib (format 3); readers return float32. Its effect on seed mIoU is measured in docs/benchmarks.md.
"""
import math
import zlib

import numpy as np

FORMAT_PLAIN, FORMAT_COMPACT, FORMAT_FLOAT16 = 1, 2, 3
_EPS = np.float32(1e-5)  # misc/cams.normalize_per_class
_LEVEL = 6


# --- byte packing --------------------------------------------------------------------------------------------

def _pack(array):
    """zlib of the byte-shuffled array: the bytes of equal significance side by side (exponents and high
    mantissa bytes repeat, low bytes are noise)."""
    a = np.ascontiguousarray(array)
    shuffled = a.view(np.uint8).reshape(-1, a.dtype.itemsize).T
    return np.frombuffer(zlib.compress(np.ascontiguousarray(shuffled).tobytes(), _LEVEL), np.uint8)


def _unpack(blob, dtype, count=None):
    raw = np.frombuffer(zlib.decompress(blob.tobytes()), np.uint8)
    size = np.dtype(dtype).itemsize
    count = raw.size // size if count is None else count
    if raw.size != count * size:
        raise ValueError(f"packed array holds {raw.size} bytes, expected {count * size}")
    return np.ascontiguousarray(raw.reshape(size, count).T).view(dtype).reshape(-1)


def _pack_fix(true, pred):
    """Sparse XOR of the float32 bit patterns: (gaps between differing positions, xor values), packed."""
    diff = true.view(np.uint32).ravel() ^ pred.view(np.uint32).ravel()
    where = np.flatnonzero(diff)
    if where.size == 0:
        return np.zeros(0, np.uint8)
    gaps = np.diff(where, prepend=0).astype(np.uint32)
    return _pack(np.concatenate([gaps, diff[where]]))


def _apply_fix(blob, pred):
    if blob.size == 0:
        return pred
    pairs = _unpack(blob, np.uint32)
    half = pairs.size // 2
    where = np.cumsum(pairs[:half].astype(np.int64))
    bits = pred.view(np.uint32).reshape(-1).copy()
    bits[where] ^= pairs[half:]
    return bits.view(np.float32).reshape(pred.shape)


# --- the prediction: PyTorch's CPU bilinear resize (align_corners=False), in numpy -----------------------------

def _fma(a, b, c):
    """float32 a*b + c rounded once (the FMA the CPU kernel is compiled to): the float64 product of two float32
    is exact."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def _axis(in_size, out_size):
    """Source indices and weights of one axis, as PyTorch's HelperInterpLinear computes them in float32."""
    scale = np.float32(np.float32(in_size) / np.float32(out_size))
    src = _fma(np.full(out_size, scale, np.float32), np.arange(out_size, dtype=np.float32) + np.float32(0.5),
               np.float32(-0.5))
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = i0 + (i0 < in_size - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, i1, np.float32(1) - l1, l1


def resize_bilinear(x, size, crop=None):
    """(n, h, w) float32 -> (n, *size) float32, then cropped to `crop` (rows, cols); same as F.interpolate(...,
    mode="bilinear", align_corners=False) on an FMA CPU. Only the kept rows/columns are computed."""
    n, h, w = x.shape
    out_h, out_w = size
    keep_h, keep_w = crop or size
    if (h, w) == (out_h, out_w):
        return np.ascontiguousarray(x[:, :keep_h, :keep_w])
    r0, r1, a0, a1 = (v[:keep_h] for v in _axis(h, out_h))
    c0, c1, b0, b1 = (v[:keep_w] for v in _axis(w, out_w))
    if w == out_w:
        rows = x[:, :, :keep_w]
    else:  # width pass on the few source rows: fma(x0, w0, x1 * w1)
        rows = _fma(x[:, :, c0], b0, x[:, :, c1] * b1)
    if h == out_h:
        return np.ascontiguousarray(rows[:, :keep_h])
    return _fma(rows[:, r0], a0[:, None], rows[:, r1] * a1[:, None])


def _normalize(total):
    peak = total.reshape(total.shape[0], -1).max(axis=1) if total.size else np.zeros(0, np.float32)
    return total / (peak + _EPS)[:, None, None]


def _targets(size):
    h, w = size
    return {"cam": ((math.ceil(h / 4), math.ceil(w / 4)), None),  # misc/cams.resize_and_sum
            "high_res": ((math.ceil(h / 16) * 16, math.ceil(w / 16) * 16), (h, w))}


def predict_numpy(maps, size, part):
    """The record's array `part` (cam or high_res) from the per-scale maps of its classes, as
    misc/cams.resize_and_sum + cam_record compute it on an FMA CPU, in IEEE-exact numpy: the same bits on every
    machine (slow)."""
    out, crop = _targets(size)[part]
    total = None
    for m in maps:
        r = resize_bilinear(m, out, crop)
        total = r if total is None else total + r
    return _normalize(total)


def predict_torch(maps, size, part):
    """The same with PyTorch's CPU kernel, as make_cam and rib run it on a CPU: the prediction records are written
    and read with (~10x faster than predict_numpy, whose bits it gives on image-sized maps)."""
    import torch
    import torch.nn.functional as F
    from misc.cams import normalize_per_class
    out, crop = _targets(size)[part]
    n = maps[0].shape[0]
    # a 3-channel input on 1 thread takes PyTorch's channels-last kernel; the record's maps never did (they were
    # resized with all the dataset's classes), so pad to 4 channels
    pad = 1 if n == 3 else 0
    tensors = [torch.from_numpy(np.concatenate([m, np.zeros((pad,) + m.shape[1:], np.float32)]) if pad else m)
               for m in maps]
    # one thread: on these small inputs PyTorch's thread pool costs more than it saves (10x on a busy machine);
    # the generic kernel's values do not depend on the thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            if crop is None:
                total = sum(F.interpolate(m[None], out, mode="bilinear", align_corners=False)[0] for m in tensors)
            else:
                total = sum(F.interpolate(m[None], out, mode="bilinear", align_corners=False)[0, :, :crop[0],
                                                                                             :crop[1]]
                            for m in tensors)
            return normalize_per_class(total[:n]).numpy()
    finally:
        torch.set_num_threads(threads)


# --- encode / decode -----------------------------------------------------------------------------------------

def _check(*arrays):
    """64-bit check of the decoded arrays (CRC-32 and Adler-32 of their bytes)."""
    out = []
    for a in arrays:
        b = np.ascontiguousarray(a).view(np.uint8)
        out += [zlib.crc32(b), zlib.adler32(b)]
    return np.array(out, np.uint32)


def encode(keys, cam, high_res, maps=None, dtype="float32"):
    """The arrays of a compact record (a dict for np.savez). `maps`: the per-scale maps of the image's classes
    (list of float32 [n, h_s, w_s]) that cam and high_res were computed from, or None."""
    n, h, w = high_res.shape
    base = {"keys": keys, "size": np.array([h, w], np.int64), "cam_size": np.array(cam.shape[1:], np.int64)}
    if dtype == "float16":
        return {**base, "format": np.int64(FORMAT_FLOAT16),
                "cam16": _pack(cam.astype(np.float16)), "high_res16": _pack(high_res.astype(np.float16))}
    if dtype != "float32":
        raise ValueError(f"CAM dtype {dtype!r}: expected float32 (lossless) or float16")
    pred = None
    if maps is not None and len(maps) and n:
        maps = [np.ascontiguousarray(m, dtype=np.float32) for m in maps]
        pred = predict_torch(maps, (h, w), "cam"), predict_torch(maps, (h, w), "high_res")
        if pred[0].shape != cam.shape or pred[1].shape != high_res.shape:
            pred = None
    if pred is None:
        maps, pred = [], (np.zeros_like(cam), np.zeros_like(high_res))
    shapes = np.array([m.shape[1:] for m in maps], np.int64).reshape(-1, 2)
    packed = _pack(np.concatenate([m.ravel() for m in maps])) if maps else np.zeros(0, np.uint8)
    return {**base, "format": np.int64(FORMAT_COMPACT), "map_shapes": shapes, "maps": packed,
            "cam_fix": _pack_fix(cam, pred[0]), "high_res_fix": _pack_fix(high_res, pred[1]),
            "check": _check(cam, high_res)}


def decode(data):
    """{keys, cam, high_res} of a record read from an .npz (any format; format 1 is returned as stored)."""
    if "high_res" in data:
        return data
    fmt = int(data["format"])
    keys = data["keys"]
    n = keys.shape[0]
    h, w = (int(v) for v in data["size"])
    ch, cw = (int(v) for v in data["cam_size"])
    if fmt == FORMAT_FLOAT16:
        cam = _unpack(data["cam16"], np.float16, n * ch * cw).astype(np.float32).reshape(n, ch, cw)
        high_res = _unpack(data["high_res16"], np.float16, n * h * w).astype(np.float32).reshape(n, h, w)
        return {"keys": keys, "cam": cam, "high_res": high_res}
    if fmt != FORMAT_COMPACT:
        raise ValueError(f"unknown CAM record format {fmt} (this code reads formats 1-3)")
    shapes = [tuple(int(v) for v in s) for s in data["map_shapes"]]
    shape = {"cam": (n, ch, cw), "high_res": (n, h, w)}
    maps = []
    if shapes and n:
        flat, at = _unpack(data["maps"], np.float32, n * sum(a * b for a, b in shapes)), 0
        for a, b in shapes:
            maps.append(flat[at:at + n * a * b].reshape(n, a, b))
            at += n * a * b

    def part(name):
        index = 0 if name == "cam" else 2
        fix, check = data[name + "_fix"], data["check"][index:index + 2]
        if not maps:
            value = _apply_fix(fix, np.zeros(shape[name], np.float32))
            if np.array_equal(_check(value), check):
                return value
            raise ValueError("its maps fail their check (a damaged file)")
        for predict in (predict_torch, predict_numpy):  # numpy: written where PyTorch's kernel rounds otherwise
            value = _apply_fix(fix, predict(maps, (h, w), name))
            if np.array_equal(_check(value), check):
                return value
        raise ValueError("its maps fail their check: a damaged file, or one written where PyTorch's CPU bilinear "
                         "kernel rounds differently from here (another CPU family or PyTorch version: read it "
                         "there, or write portable plain records with --cam_format plain)")

    return CamRecord(keys=keys, high_res=part("high_res"), _cam=lambda: part("cam"))


class CamRecord(dict):
    """{keys, cam, high_res}; `cam` (the stride-4 map, which most readers never use) is decoded on first use."""

    def __init__(self, _cam=None, **arrays):
        super().__init__(**arrays)
        self._cam = _cam

    def __missing__(self, key):
        if key == "cam" and self._cam is not None:
            self["cam"] = value = self._cam()
            return value
        raise KeyError(key)

    def __contains__(self, key):
        return super().__contains__(key) or (key == "cam" and self._cam is not None)
