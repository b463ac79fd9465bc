"""Atomic output writing, the CAM file format, checkpoints and the one image loader of the project.

Every step writes through these helpers: a file appears complete (temp file + os.replace) or not at all, so a
killed step never leaves a truncated output and a rerun can skip what exists.
"""
import json
import os
import re
import secrets
import socket
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from misc.errors import DataError

_TEMP_PID = os.getpid()


# Temporary files are named .<name>.<host>-<pid>.<random>.tmp<ext>: a run killed during a write leaves one behind,
# and the next run removes those whose process is gone (remove_stale_temps).
_TEMP_TAG = f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the destination folder; rename it onto `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    tag = _TEMP_TAG if os.getpid() == _TEMP_PID else f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"
    tmp = _new_temp_file(folder, f".{base}.{tag}.", f".tmp{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _new_temp_file(folder, prefix, suffix):
    """Create an empty file of a fresh name. Mode 0666 less the process umask, which the kernel applies (as for
    any output file; tempfile.mkstemp would make 0600)."""
    while True:
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


_TEMP_NAME = re.compile(r"^\.(?P<base>.+)\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.tmp[^/]*$")


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder, max_age_s=24 * 3600):
    """Delete the temporary files that killed runs left in `folder`: those of this host whose process is gone,
    and any older than max_age_s (another host's). Returns how many were removed."""
    if not os.path.isdir(folder):
        return 0
    host = socket.gethostname().replace(".", "_")
    removed = 0
    now = time.time()
    for name in os.listdir(folder):
        m = _TEMP_NAME.match(name)
        if not m:
            continue
        path = os.path.join(folder, name)
        try:
            stale = (m["host"] == host and not _process_alive(int(m["pid"]))) or \
                now - os.path.getmtime(path) > max_age_s
            if stale:
                os.remove(path)
                removed += 1
        except OSError:
            pass  # removed meanwhile by another process
    return removed


def save_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def save_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def save_png(path, array, palette=None):
    """uint8 (H, W) label map or (H, W, 3) image as PNG; `palette` (flat list of 768 ints) makes a palette PNG."""
    img = Image.fromarray(np.ascontiguousarray(array))
    if palette is not None:
        img = img.convert("P") if img.mode != "P" else img
        img.putpalette(palette)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


class PseudoMaskFiles:
    """The per-image files of a pseudo-mask step (IRN's or PSA's walk): <out_dir>/<id>.png (0..C), with
    save_palette also <id>_palette.png, and the walk's score <score_dir>/<id>.png. The plain mask is written last,
    so its presence marks the image as done."""

    def __init__(self, out_dir, score_dir, save_palette):
        self.out_dir, self.score_dir, self.save_palette = out_dir, score_dir, save_palette

    def mask(self, img_id):
        return os.path.join(self.out_dir, img_id + ".png")

    def palette(self, img_id):
        return os.path.join(self.out_dir, img_id + "_palette.png")

    def score(self, img_id):
        return os.path.join(self.score_dir, img_id + ".png")

    def paths(self, img_id):
        """The files of a finished image (misc/resume.pending), the mask last."""
        return [self.score(img_id)] + ([self.palette(img_id)] if self.save_palette else []) + [self.mask(img_id)]

    def write(self, img_id, mask, score, palette):
        mask = mask.astype(np.uint8)
        save_png(self.score(img_id), score)
        if self.save_palette:
            save_png(self.palette(img_id), mask, palette=palette)
        save_png(self.mask(img_id), mask)


def save_npz(path, **arrays):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path):
    """Load a .npz written by this project (never pickled)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --- the CAM file format (a contract: later steps and outside checks read it) -----------------------------------
# <work_dir>/result/cam/<id>.npz (plain CAM) or result/cam_rib/<id>.npz (RIB); load_cam_npz returns
#   keys     int64 [n]           0-based foreground class indices (the image's labels)
#   cam      float32 [n, ceil(H/4), ceil(W/4)]   stride-4 map, each class divided by its max (<= 1)
#   high_res float32 [n, H, W]   full-resolution map, same normalisation
# The file stores them compactly and losslessly (misc/cam_format.py, format 2: the per-scale maps they are computed
# from plus an exact correction); records of the plain layout (these three arrays as such, format 1, written before
# the compact format and by the official code) are read as they are. --cam_format float16 is the one lossy option.


def save_cam_npz(path, keys, cam, high_res, maps=None, fmt="compact"):
    """Write a CAM record. `maps`: the per-scale maps (list of [n, h_s, w_s], the image's classes) that cam and
    high_res were computed from (misc/cams.resize_and_sum), which makes the record ~50x smaller than the plain
    one; fmt: compact, plain (the layout of format 1) or float16 (lossy)."""
    from misc import cam_format
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cam = np.asarray(cam, dtype=np.float32)
    high_res = np.asarray(high_res, dtype=np.float32)
    if not (cam.shape[0] == high_res.shape[0] == keys.shape[0]):
        raise ValueError(f"CAM arrays disagree on the class count: keys {keys.shape}, cam {cam.shape}, "
                         f"high_res {high_res.shape}")
    if fmt == "plain":
        save_npz(path, keys=keys, cam=cam, high_res=high_res)
        return
    save_npz(path, **cam_format.encode(keys, cam, high_res, maps, "float16" if fmt == "float16" else "float32"))


def load_cam_npz(path, made_by="make_cam or rib"):
    """{keys, cam, high_res} of a CAM record of any format (see above)."""
    from misc import cam_format
    if not os.path.isfile(path):
        raise DataError(f"CAM file {path} is missing: run the step that makes it ({made_by}) first, "
                        f"e.g. --only {made_by.split()[0]}")
    try:
        return cam_format.decode(load_npz(path))
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"CAM file {path} is unreadable ({e}); delete it and rerun the step that makes it") from e


# --- images ---------------------------------------------------------------------------------------------------


def load_image_rgb(path):
    """The one image loader: any PIL-readable file -> uint8 (H, W, 3) RGB.

    Grayscale, palette, CMYK and RGBA images are converted (RGBA is composited on black, as PIL's convert does)
    rather than crashing a long run; missing and corrupt files raise DataError naming the file.
    """
    if not os.path.isfile(path):
        raise DataError(f"image {path} does not exist: check the dataset root (--voc12_root) and the id list")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} is corrupt or not an image ({e}); replace the file or drop its id "
                        f"from the list") from e


def check_image_file(path):
    """Cheap check of an image file, without decoding it: PIL recognises the header and the size is positive, and
    a JPEG ends with its end-of-image marker / a PNG with its IEND chunk (a truncated copy does not).
    Returns None when the file looks whole, else a description naming the file."""
    try:
        with Image.open(path) as img:
            fmt, (w, h) = img.format, img.size
        if w <= 0 or h <= 0:
            return f"{path} (empty image)"
        if fmt in ("JPEG", "PNG"):
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read()
            if (fmt == "JPEG" and b"\xff\xd9" not in tail) or (fmt == "PNG" and b"IEND" not in tail):
                return f"{path} (truncated {fmt} file)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"{path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'not an image'})"
    return None


def load_label_png(path):
    """Class-index PNG (palette or grayscale) -> int32 (H, W); values are read as stored (255 = void)."""
    if not os.path.isfile(path):
        raise DataError(f"label map {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DataError(f"label map {path} has mode {img.mode}; expected a palette or grayscale PNG "
                                f"of class indices")
            return np.asarray(img, dtype=np.int32).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"label map {path} is corrupt ({e})") from e


def load_step_label(path, img_id, image_size, made_by, what="label map", num_classes=None):
    """A class-index PNG that the step `made_by` wrote for image `img_id` (IR, PSA or training labels, pseudo masks,
    walk scores), checked before use: it exists, has the image's size and, given num_classes, holds only 0..C and
    255. Each failure is one line naming the file and the step to (re)run. Returns uint8 (H, W)."""
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} of image {img_id} is missing: run the {made_by} step first "
                        f"(--only {made_by})")
    label = load_label_png(path)
    h, w = image_size
    if label.shape != (h, w):
        raise DataError(f"{what} {path} is {label.shape[0]}x{label.shape[1]} but image {img_id} is {h}x{w}; "
                        f"remake it with --overwrite {made_by}")
    if num_classes is not None:
        bad = (label > num_classes) & (label != 255)
        if bad.any():
            raise DataError(f"{what} {path} has value {int(label[bad].max())}, above the {num_classes} classes "
                            f"(0..{num_classes}, 255 = ignore): a label of another dataset? Remake it with "
                            f"--overwrite {made_by}")
    return label.astype(np.uint8)


def check_label_files(label_dir, ids, what, made_by):
    """Before training: every id has its <label_dir>/<id>.png, else one DataError naming the step that makes them."""
    missing = [i for i in ids if not os.path.isfile(os.path.join(label_dir, i + ".png"))]
    if missing:
        raise DataError(f"{len(missing)} of {len(ids)} {what}(s) are missing in {label_dir}, e.g. for image "
                        f"{missing[0]}: run the {made_by} step on the same list first (--only {made_by})")


# --- checkpoints ----------------------------------------------------------------------------------------------


def save_checkpoint(path, state_dict, **meta):
    import torch
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, **meta}, tmp)


def load_checkpoint(path, what="checkpoint", made_by=None):
    """Load a checkpoint written by save_checkpoint (weights_only: no pickled code is ever executed)."""
    import torch
    make_hint = f"; run the {made_by} step first (--only {made_by})" if made_by else ""
    hint = f"; delete it, or remake it with --overwrite {made_by}" if made_by else "; delete or replace it"
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} does not exist{make_hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for garbage files, some with a page of advice
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise DataError(f"{path} is not a valid {what} ({type(e).__name__}: {first}){hint}") from e
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return ckpt
    if isinstance(ckpt, dict) and all(hasattr(v, "shape") for v in ckpt.values()):
        return {"state_dict": ckpt}  # a bare state dict (e.g. converted elsewhere)
    raise DataError(f"{path} is not a valid {what}: expected a state dict{hint}")


def load_weights(model, state_dict, path, what, made_by, fix=None):
    """model.load_state_dict(state_dict) for the network loaders (load_classifier, load_irnet, load_affinity_net,
    load_deeplab): a mismatch is one DataError, '<path> is not <what> of this project (<why>); <fix>'."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise DataError(f"{path} is not {what} of this project ({first}); "
                        f"{fix or f'remake it with --overwrite {made_by}'}") from e
    return model


def check_writable_dir(path, flag="--work_dir"):
    """Fail early, before any work, when an output folder cannot be created or written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
            pass
    except OSError as e:
        raise DataError(f"cannot write to {path} ({e.strerror}); pass a writable folder with {flag}") from e
