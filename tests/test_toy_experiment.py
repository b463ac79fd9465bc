"""Tests of the toy experiment (Sec. 3.1 / Fig. 1 / Fig. 2): shapes and masks, HGR, IDX reading, the CLI.

Tiny settings throughout (a synthetic 28x28 '2'/'8'/'1' IDX set written to tmp_path). The real MNIST test reads the
shipped tests/data/mnist_sample (the first 500 t10k records) and, when present, the shared MNIST files (conftest).
"""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from misc.fileio import DataError  # noqa: E402
from toy import experiment as toy_experiment  # noqa: E402
from toy.mnist import (IMAGES_MAGIC, LABELS_MAGIC, download_mnist, load_mnist, parse_idx, read_idx,  # noqa: E402
                        t10k_split)
from toy.shapes import (REGION_BG, REGION_D, REGION_ND, gradient_maps, hgr, logit_gradient_map,  # noqa: E402
                             make_toy_set, normalise_gradients, paint_shape, region_mean, shape_stamp)
from toy.net import ToyCNN  # noqa: E402



# ----------------------------------------------------------------------------------------------- helpers


def idx_bytes(array, magic):
    """Hand-written IDX encoding: big-endian magic, big-endian uint32 sizes, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def fake_digit(label, rng):
    """A crude 28x28 '2', '8' or '1' (uint8), shifted by up to 2 pixels, so the tiny runs have a learnable task."""
    img = np.zeros((28, 28), dtype=np.uint8)
    if label == 2:
        img[7:9, 9:19] = 255
        img[9:15, 17:19] = 255
        for i in range(6):
            img[15 + i, 16 - 2 * i: 18 - 2 * i] = 255
        img[20:22, 8:20] = 255
    elif label == 8:
        img[6:8, 10:18] = img[13:15, 10:18] = img[20:22, 10:18] = 255
        img[6:22, 10:12] = img[6:22, 16:18] = 255
    else:
        img[6:22, 13:15] = 255
    img[img > 0] = rng.integers(150, 256, size=int((img > 0).sum()))  # uneven stroke intensities, like MNIST
    dy, dx = rng.integers(-2, 3, size=2)
    return np.roll(img, (dy, dx), axis=(0, 1))


def write_fake_mnist(folder, n=150, gz=True, seed=0):
    """t10k files only (so the code takes the t10k split path), labels cycling 2, 8, 1."""
    rng = np.random.default_rng(seed)
    labels = np.array([(2, 8, 1)[i % 3] for i in range(n)], dtype=np.uint8)
    images = np.stack([fake_digit(int(l), rng) for l in labels])
    os.makedirs(folder, exist_ok=True)
    for name, arr, magic in (("t10k-images-idx3-ubyte", images, IMAGES_MAGIC),
                             ("t10k-labels-idx1-ubyte", labels, LABELS_MAGIC)):
        data = idx_bytes(arr, magic)
        if gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
    return images, labels


TINY = ["--epochs", "2", "--batch_size", "16", "--n_analysis", "4", "--n_examples", "2", "--rib_iters", "3",
        "--rib_batch", "4", "--rib_lr_sweep", "1e-4", "--no_progress", "--threads", "1"]


def tiny_args(mnist_dir, out_dir, *extra):
    return toy_experiment.get_args_parser().parse_args(
        ["--mnist_dir", str(mnist_dir), "--out_dir", str(out_dir)] + TINY + list(extra))


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_fake_mnist(str(folder))
    return folder


# ----------------------------------------------------------------------------------------------- shapes and masks


def test_shape_stamps():
    square = shape_stamp("square", 7, 2)
    expected = np.ones((7, 7), dtype=bool)
    expected[2:5, 2:5] = False  # a 2-pixel frame around a 3x3 hole
    assert np.array_equal(square, expected)
    circle = shape_stamp("circle", 7, 2)
    assert not circle[3, 3] and circle[0, 3] and circle[3, 0]  # hollow, touching the middle of each side
    assert not circle[0, 0] and not circle[6, 6]  # round: the corners stay empty
    assert np.array_equal(circle, circle.T) and np.array_equal(circle, circle[::-1])
    with pytest.raises(ValueError):
        shape_stamp("triangle", 7, 2)


def test_paint_shape_masks_match_painted_pixels():
    rng = np.random.default_rng(0)
    for label, kind in ((2, "circle"), (8, "square")):
        for _ in range(20):
            digit = fake_digit(label, rng) / 255.0
            painted, regions, overlapped = paint_shape(digit, kind, rng, size=7, thickness=2, gap=1)
            assert not overlapped
            changed = painted != digit
            assert np.array_equal(changed, regions == REGION_ND)  # R_ND is exactly the painted pixels
            assert np.all(painted[regions == REGION_ND] == 1.0)
            assert np.array_equal(regions == REGION_D, digit > 0)
            assert np.all(painted[regions == REGION_BG] == 0)
            # the painted pixels are one copy of the class's stamp, at least `gap` pixels away from the digit
            rows, cols = np.nonzero(regions == REGION_ND)
            top, left = rows.min(), cols.min()
            assert np.array_equal(regions[top:top + 7, left:left + 7] == REGION_ND, shape_stamp(kind, 7, 2))
            near = np.pad(digit > 0, 1)
            for r, c in zip(rows, cols):
                assert not near[r:r + 3, c:c + 3].any()


def test_paint_shape_overlap_rule():
    # a digit covering all but a thin border leaves no room: the shape overlaps, digit pixels stay untouched/R_D
    digit = np.zeros((14, 14))
    digit[2:12, 2:12] = 0.5
    painted, regions, overlapped = paint_shape(digit, "square", np.random.default_rng(0), size=7, thickness=2,
                                               gap=1)
    assert overlapped
    assert np.array_equal(painted[digit > 0], digit[digit > 0])
    assert np.array_equal(regions == REGION_D, digit > 0)
    assert np.array_equal(painted != digit, regions == REGION_ND)
    assert (regions == REGION_ND).sum() > 0


def test_make_toy_set_fraction_and_shape_per_class():
    rng = np.random.default_rng(1)
    labels = np.array([2, 8] * 100)
    images = np.stack([fake_digit(int(l), rng) for l in labels]) / 255.0
    toy = make_toy_set(images, labels, {2: "circle", 8: "square"}, 0.1, np.random.default_rng(2), size=7)
    assert toy["has_shape"].sum() == 20  # exactly 10 % of 200
    nd = (toy["regions"] == REGION_ND).reshape(len(labels), -1).any(1)
    assert np.array_equal(nd, toy["has_shape"])
    assert np.array_equal(toy["images"][~toy["has_shape"]], images[~toy["has_shape"]].astype(np.float32))
    for i in np.flatnonzero(toy["has_shape"]):
        rows, cols = np.nonzero(toy["regions"][i] == REGION_ND)
        box = toy["regions"][i][rows.min():rows.min() + 7, cols.min():cols.min() + 7] == REGION_ND
        kind = "circle" if labels[i] == 2 else "square"
        assert np.array_equal(box, shape_stamp(kind, 7, 2)), (i, kind)
    # a different seed picks a different subset
    other = make_toy_set(images, labels, {2: "circle", 8: "square"}, 0.1, np.random.default_rng(3))
    assert not np.array_equal(other["has_shape"], toy["has_shape"])


# ----------------------------------------------------------------------------------------------- HGR


def test_hgr_hand_computed():
    # regions: top row digit (4 px), 2nd row shape (4 px), bottom two rows background (8 px)
    regions = np.array([[1, 1, 1, 1], [2, 2, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    grad = np.array([[-10.0, 5.0, 2.0, 0.0],     # |G|/10: 1.0, 0.5, 0.2, 0   -> 2 of 4 above 0.3
                     [3.0, -3.1, 0.0, 0.0],      # 0.3 (not above), 0.31     -> 1 of 4
                     [0.0, 0.0, 0.0, 0.0],
                     [0.0, 0.0, 4.0, 0.0]])      # 0.4                       -> 1 of 8
    norm = normalise_gradients(grad, "max")
    assert norm.max() == 1.0 and norm[0, 1] == 0.5
    np.testing.assert_allclose(hgr(norm, regions, 0.3), [2 / 4, 1 / 4, 1 / 8])
    np.testing.assert_allclose(region_mean(norm, regions), [(1 + 0.5 + 0.2) / 4, (0.3 + 0.31) / 4, 0.4 / 8])
    # without normalisation the raw magnitudes are thresholded: 10, 5, 2 | 3, 3.1 | 4 all > 0.3
    np.testing.assert_allclose(hgr(normalise_gradients(grad, "none"), regions, 0.3), [3 / 4, 2 / 4, 1 / 8])
    # batched: (N, L, H, W) maps with (N, 1, H, W) regions; an empty region gives NaN, a zero map gives 0
    maps = np.stack([grad, np.zeros_like(grad)])[None]
    regions_nd_free = np.where(regions == REGION_ND, REGION_BG, regions)[None, None]
    out = hgr(normalise_gradients(maps, "max"), regions_nd_free, 0.3)
    assert out.shape == (1, 2, 3)
    assert np.isnan(out[0, 0, 1]) and np.all(out[0, 1, [0, 2]] == 0)
    with pytest.raises(ValueError):
        normalise_gradients(grad, "l2")


def test_gradient_maps_are_per_image():
    torch.manual_seed(0)
    model = ToyCNN().eval()
    x = torch.rand(3, 1, 28, 28)
    classes = torch.tensor([0, 1, 0])
    maps = gradient_maps(model, x, classes)
    assert maps.shape == (3, 6, 28, 28)
    # image 1 alone gives the same maps as inside the batch (no cross-sample layers)
    alone = gradient_maps(model, x[1:2], classes[1:2])
    # (batch and single-image convs may sum in another order: float32 round-off only)
    torch.testing.assert_close(maps[1:2], alone, rtol=1e-3, atol=1e-5)
    # G6 is the gradient of the class logit, G5 the gradient of the summed T_5
    x1 = x[1:2].clone().requires_grad_(True)
    feats, logits = model.forward_features(x1)
    (g6,) = torch.autograd.grad(logits[0, 1], x1, retain_graph=True)
    (g5,) = torch.autograd.grad(feats[4].sum(), x1)
    torch.testing.assert_close(maps[1, 5], g6[0, 0], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(maps[1, 4], g5[0, 0], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(logit_gradient_map(model, x, classes), maps[:, 5], rtol=1e-3, atol=1e-5)
    assert len(feats) == 5 and all(f.min() >= 0 for f in feats)  # T_l after ReLU


# ----------------------------------------------------------------------------------------------- IDX files


def test_parse_handwritten_idx(tmp_path):
    images = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    labels = np.array([2, 8], dtype=np.uint8)
    raw = idx_bytes(images, IMAGES_MAGIC)
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == b"\x00\x00\x00\x02"
    assert np.array_equal(parse_idx(raw, expect_magic=IMAGES_MAGIC), images)
    # from disk, raw and gzipped
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    with gzip.open(tmp_path / "b-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(labels, LABELS_MAGIC))
    assert np.array_equal(read_idx(str(tmp_path / "a-idx3-ubyte"), IMAGES_MAGIC), images)
    assert np.array_equal(read_idx(str(tmp_path / "b-idx1-ubyte.gz"), LABELS_MAGIC), labels)
    # corrupt inputs: bad magic, wrong kind, truncated data, broken gzip
    with pytest.raises(DataError, match="magic"):
        parse_idx(b"\x12\x34\x08\x03" + raw[4:])
    with pytest.raises(DataError, match="swapped"):
        parse_idx(raw, expect_magic=LABELS_MAGIC)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(raw[:-1])
    with pytest.raises(DataError, match="corrupt"):  # trailing bytes the header does not announce
        parse_idx(raw + b"\x00")
    (tmp_path / "c-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="corrupt"):
        read_idx(str(tmp_path / "c-idx3-ubyte.gz"))


def test_t10k_split_deterministic():
    tr, te = t10k_split(10000, 5)
    assert len(te) == 2000 and len(tr) == 8000
    assert np.all(te % 5 == 0) and not np.intersect1d(tr, te).size
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(10000))
    with pytest.raises(ValueError):
        t10k_split(10, 1)


def test_real_mnist_files(mnist_data):
    tr_img, tr_lbl, te_img, te_lbl, info = load_mnist(mnist_data.root, t10k_test_every=5)
    assert tr_img.dtype == np.uint8 and tr_img.shape[1:] == (28, 28) and len(tr_lbl) == len(tr_img)
    if info["split"] == "t10k_only":
        n = len(tr_img) + len(te_img)
        assert len(te_img) == n // 5 and "t10k split" in info["note"]
        t10k = np.empty(n, np.uint8)
        t10k[np.arange(n) % 5 != 0], t10k[::5] = tr_lbl, te_lbl  # undo t10k_split: index % 5 == 0 is test
    else:
        assert tr_img.shape == (60000, 28, 28)
        t10k = te_lbl
    # the first ten t10k labels, as every MNIST tutorial prints them
    assert t10k[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    if mnist_data.name == "sample":
        assert len(t10k) == 500 and np.bincount(t10k).tolist() == [42, 67, 55, 45, 55, 50, 43, 49, 40, 54]
    else:  # the full t10k file: its standard counts of the two toy digits; the sample is its first 500 records
        assert len(t10k) == 10000 and (t10k == 2).sum() == 1032 and (t10k == 8).sum() == 974
        sample = os.path.join(REPO_ROOT, "tests", "data", "mnist_sample")
        full = read_idx(os.path.join(mnist_data.root, "t10k-images-idx3-ubyte.gz"), IMAGES_MAGIC)
        assert np.array_equal(read_idx(os.path.join(sample, "t10k-images-idx3-ubyte.gz"), IMAGES_MAGIC), full[:500])
        assert np.array_equal(read_idx(os.path.join(sample, "t10k-labels-idx1-ubyte.gz"), LABELS_MAGIC), t10k[:500])
        train_labels = os.path.join(mnist_data.root, "train-labels-idx1-ubyte.gz")
        if os.path.isfile(train_labels):
            assert read_idx(train_labels, LABELS_MAGIC).shape == (60000,)


# ----------------------------------------------------------------------------------------------- the CLI


def test_end_to_end_and_determinism(fake_mnist, tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    toy_experiment.main(tiny_args(fake_mnist, out_a))
    toy_experiment.main(tiny_args(fake_mnist, out_b))
    res_a = json.loads((out_a / "toy_results.json").read_text())
    res_b = json.loads((out_b / "toy_results.json").read_text())
    for key in ("hgr_layers", "hgr_rib", "settings", "accuracy"):
        assert key in res_a
    for key in ("RD", "RND", "RBG"):
        assert len(res_a["hgr_layers"][key]) == 6 and len(res_a["hgr_rib"][key]) == 3
        # two code paths to one number: k = 0 of the RIB analysis is G6 of theta_0, taken image by image
        # (logit_gradient_map); the layer analysis takes G6 for the whole batch at once (gradient_maps)
        assert res_a["hgr_rib"][key][0] == pytest.approx(res_a["hgr_layers"][key][5], abs=1e-12), key
        assert res_a["mean_grad_rib"][key][0] == pytest.approx(res_a["mean_grad_layers"][key][5], rel=1e-5), key
    assert res_a["rib_k"] == [0, 1, 2] and len(res_a["rib_target_logit"]) == 4
    assert res_a["settings"]["split_info"]["split"] == "t10k_only"
    assert set(res_a["rib_lr_sweep"]) == {"3e-05", "0.0001"}
    # L_RIB pushes the target logit up
    assert res_a["rib_lr_sweep"]["0.0001"]["target_logit"][-1] > res_a["rib_lr_sweep"]["0.0001"]["target_logit"][0]
    for name in ("fig1a_toy_images.png", "fig1b_gradient_maps.png", "fig1c_hgr_layers.png",
                 "fig2a_rib_examples.png", "fig2a_rib_examples_sweep_max_lambda.png", "fig2b_hgr_rib.png",
                 "fig2c_rib_lr_sweep.png", "toy_summary.md"):
        assert (out_a / name).stat().st_size > 0, name
    assert (out_a / "fig1c_hgr_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| RND |" in (out_a / "toy_summary.md").read_text()
    assert not [p for p in os.listdir(out_a) if ".tmp" in p]  # atomic writes leave no temp files
    # same seed -> identical results (timings aside); another seed -> different ones
    res_a.pop("timings"), res_b.pop("timings")
    res_a["settings"].pop("out_dir"), res_b["settings"].pop("out_dir")
    assert res_a == res_b
    res_c = toy_experiment.main(tiny_args(fake_mnist, tmp_path / "c", "--seed", "1", "--rib_lr_sweep"))
    assert res_c["hgr_layers"] != res_a["hgr_layers"]


def test_bad_inputs(tmp_path, fake_mnist):
    no_dir = toy_experiment.get_args_parser().parse_args(["--out_dir", str(tmp_path / "out")] + TINY)
    with pytest.raises(DataError, match="--mnist_dir is required"):
        toy_experiment.main(no_dir)
    with pytest.raises(DataError, match="--mnist_dir"):
        toy_experiment.main(tiny_args(tmp_path / "missing", tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="t10k-images"):
        toy_experiment.main(tiny_args(empty, tmp_path / "out"))
    with pytest.raises(DataError, match="--n_analysis"):
        toy_experiment.main(tiny_args(fake_mnist, tmp_path / "out", "--n_analysis", "5000"))
    # a truncated image file: the command line prints one line naming the file, exit status 1, no traceback
    bad = tmp_path / "bad"
    write_fake_mnist(str(bad), n=30, gz=False)
    path = bad / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "toy_experiment.py"),
                           "--mnist_dir", str(bad), "--out_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "t10k-images-idx3-ubyte" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "toy_results.json").exists()


def test_download_offline_error(tmp_path):
    # a mirror on a closed local port stands in for "offline": a one-line DataError, nothing written
    with pytest.raises(DataError, match="offline"):
        download_mnist(str(tmp_path / "dl"), mirrors=("http://127.0.0.1:9/",), timeout=2)
    assert os.listdir(tmp_path / "dl") == []


def test_help_shows_defaults():
    text = toy_experiment.get_args_parser().format_help()
    assert "(default: 0.3)" in text and "--grad_norm" in text and "--rib_margin" in text
