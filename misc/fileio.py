"""Atomic output writing, the CAM file format, checkpoints and the one image loader of the project.

Every step writes through these helpers: a file appears complete (temp file + os.replace) or not at all, so a
killed step never leaves a truncated output and a rerun can skip what exists.
"""
import json
import os
import tempfile
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError


_UMASK = os.umask(0)
os.umask(_UMASK)


class DataError(RuntimeError):
    """Bad input (missing file, corrupt image, mismatched classes, ...). The message names the file and the fix."""


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the destination folder; rename it onto `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def save_npz(path, **arrays):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path):
    """Load a .npz written by this project (never pickled)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --- the CAM file format (a contract: later steps and outside checks read it) -----------------------------------
# <work_dir>/result/cam/<id>.npz (plain CAM) or result/cam_rib/<id>.npz (RIB):
#   keys     int64 [n]           0-based foreground class indices (the image's labels)
#   cam      float32 [n, ceil(H/4), ceil(W/4)]   stride-4 map, each class divided by its max (<= 1)
#   high_res float32 [n, H, W]   full-resolution map, same normalisation


def save_cam_npz(path, keys, cam, high_res):
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cam = np.asarray(cam, dtype=np.float32)
    high_res = np.asarray(high_res, dtype=np.float32)
    if not (cam.shape[0] == high_res.shape[0] == keys.shape[0]):
        raise ValueError(f"CAM arrays disagree on the class count: keys {keys.shape}, cam {cam.shape}, "
                         f"high_res {high_res.shape}")
    save_npz(path, keys=keys, cam=cam, high_res=high_res)


def load_cam_npz(path, made_by="make_cam or rib"):
    if not os.path.isfile(path):
        raise DataError(f"CAM file {path} is missing: run the step that makes it ({made_by}) first, "
                        f"e.g. --{made_by.split()[0]}_pass true")
    try:
        return load_npz(path)
    except (OSError, ValueError) as e:
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
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"image {path} is corrupt or not an image ({e}); replace the file or drop its id "
                        f"from the list") from e


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


# --- checkpoints ----------------------------------------------------------------------------------------------


def save_checkpoint(path, state_dict, **meta):
    import torch
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, **meta}, tmp)


def load_checkpoint(path, what="checkpoint", made_by=None):
    """Load a checkpoint written by save_checkpoint (weights_only: no pickled code is ever executed)."""
    import torch
    hint = f"; run --{made_by}_pass true to make it" if made_by else ""
    if not os.path.isfile(path):
        raise DataError(f"{what} {path} does not exist{hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for garbage files
        raise DataError(f"{path} is not a valid {what} ({type(e).__name__}: {e}){hint}") from e
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return ckpt
    if isinstance(ckpt, dict) and all(hasattr(v, "shape") for v in ckpt.values()):
        return {"state_dict": ckpt}  # a bare state dict (e.g. converted elsewhere)
    raise DataError(f"{path} is not a valid {what}: expected a state dict{hint}")


def check_writable_dir(path, flag="--work_dir"):
    """Fail early, before any work, when an output folder cannot be created or written."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
            pass
    except OSError as e:
        raise DataError(f"cannot write to {path} ({e.strerror}); pass a writable folder with {flag}") from e
