"""MNIST from the standard IDX files (LeCun et al.), for the toy experiment of Sec. 3.1.

IDX format: a 4-byte big-endian magic number 0x0000TTNN (TT = element type, 0x08 = unsigned byte; NN = number
of dimensions), then NN big-endian uint32 sizes, then the elements in C order. MNIST uses 0x00000803 for images
(N, 28, 28) and 0x00000801 for labels (N,). Files may be gzipped (the usual *.gz) or raw.

The 60k train images are not always at hand (the project's shared copy only has t10k), so `load_mnist` falls
back to a deterministic split of the t10k set into train/test and says so in the returned info.
"""
import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib

import numpy as np

from misc.errors import DataError
from misc.fileio import atomic_path

IDX_UBYTE = 0x08
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# md5 of the official gzipped files; checked on download only (a local raw file has no reference hash).
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Public mirrors of the gzipped IDX files, tried in order (the original yann.lecun.com host is often down).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def parse_idx(data, name="<bytes>", expect_magic=None):
    """Decode the bytes of one (already gunzipped) IDX file into a numpy array; `name` is used in errors."""
    if len(data) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(data)} bytes); re-download it")
    magic = int.from_bytes(data[:4], "big")
    zero, dtype_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or dtype_code != IDX_UBYTE or ndim == 0:
        raise DataError(f"{name}: bad IDX magic number 0x{magic:08x} (expected 0x000008NN); "
                        "the file is corrupt or not an MNIST IDX file, re-download it")
    if expect_magic is not None and magic != expect_magic:
        raise DataError(f"{name}: IDX magic 0x{magic:08x}, expected 0x{expect_magic:08x} "
                        "(images and labels swapped?); check the file names")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header; re-download it")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count:
        raise DataError(f"{name}: header announces {count} bytes of data for shape {shape} but the file has "
                        f"{len(data) - header}; the file is truncated or corrupt, re-download it")
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(shape).copy()


def find_idx_file(mnist_dir, base):
    """Path of `base` or `base.gz` in mnist_dir (the raw file wins when both exist), or None."""
    for name in (base, base + ".gz"):
        path = os.path.join(mnist_dir, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path, expect_magic=None):
    """Read one IDX file from disk, gunzipping when the name ends with .gz."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read ({e}); the file is corrupt, re-download it") from None
    return parse_idx(data, name=path, expect_magic=expect_magic)


def _read_pair(mnist_dir, split):
    img_path = find_idx_file(mnist_dir, FILES[f"{split}_images"])
    lbl_path = find_idx_file(mnist_dir, FILES[f"{split}_labels"])
    if img_path is None or lbl_path is None:
        return None
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lbl_path, LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{img_path}: expected (N, H, W) images and (N,) labels, got {images.shape} and "
                        f"{labels.shape}; check the files")
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels; "
                        "the pair does not match, re-download it")
    return images, labels, (img_path, lbl_path)


def t10k_split(n, test_every):
    """Deterministic train/test split of the t10k indices: every `test_every`-th image (index % test_every == 0)
    goes to test, the rest to train. A stride rather than a random permutation: it needs no seed, and it takes
    test images evenly from both halves of t10k (the two halves come from different writer populations)."""
    if test_every < 2:
        raise ValueError(f"--t10k_test_every must be >= 2, got {test_every}")
    idx = np.arange(n)
    is_test = idx % test_every == 0
    return idx[~is_test], idx[is_test]


def load_mnist(mnist_dir, t10k_test_every=5, download=False):
    """Return (train_images, train_labels, test_images, test_labels, info); images uint8 (N, 28, 28).

    With the train images present, train = the 60k set and test = t10k. Without them, t10k is split by
    `t10k_split` and info['split'] says so.
    """
    if not mnist_dir:
        raise DataError("--mnist_dir is required: pass the folder with the MNIST IDX files "
                        "(t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz], optionally the train pair)")
    if download:
        download_mnist(mnist_dir)
    if not os.path.isdir(mnist_dir):
        raise DataError(f"--mnist_dir {mnist_dir!r} is not a folder: pass the folder with the MNIST IDX files "
                        "(t10k-images-idx3-ubyte[.gz] ...) or add --download to fetch them")
    test = _read_pair(mnist_dir, "test")
    if test is None:
        raise DataError(f"--mnist_dir {mnist_dir!r} lacks t10k-images-idx3-ubyte[.gz] or "
                        "t10k-labels-idx1-ubyte[.gz]: put the MNIST test IDX files there or add --download")
    train = _read_pair(mnist_dir, "train")
    if train is not None:
        info = {"split": "official", "train_source": "train-images (60k)", "test_source": "t10k",
                "files": list(train[2]) + list(test[2])}
        return train[0], train[1], test[0], test[1], info
    tr, te = t10k_split(len(test[0]), t10k_test_every)
    info = {"split": "t10k_only",
            "note": f"train images absent: t10k split deterministically, index % {t10k_test_every} == 0 -> "
                    f"test ({len(te)}), the rest -> train ({len(tr)})",
            "t10k_test_every": t10k_test_every, "files": list(test[2])}
    return test[0][tr], test[1][tr], test[0][te], test[1][te], info


def download_mnist(mnist_dir, mirrors=MIRRORS, timeout=30):
    """Fetch the missing gzipped IDX files into mnist_dir (md5-checked, written atomically). Needs network."""
    os.makedirs(mnist_dir, exist_ok=True)
    for gz_name, md5 in MD5.items():
        if find_idx_file(mnist_dir, gz_name[:-len(".gz")]) is not None:
            continue
        errors = []
        for base_url in mirrors:
            url = base_url + gz_name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    data = r.read()
            except (urllib.error.URLError, OSError) as e:
                errors.append(f"{url}: {e}")
                continue
            if hashlib.md5(data).hexdigest() != md5:
                errors.append(f"{url}: md5 mismatch")
                continue
            with atomic_path(os.path.join(mnist_dir, gz_name)) as tmp:
                with open(tmp, "wb") as f:
                    f.write(data)
            break
        else:
            raise DataError(f"--download could not fetch {gz_name} ({'; '.join(errors)}); are you offline? "
                            f"copy the MNIST IDX files into --mnist_dir {mnist_dir!r} by hand instead")
