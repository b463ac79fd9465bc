"""VOC12 data code on real VOC files (the shipped tests/data/voc12_sample; the tests taking `voc_data` also run on
the shared subset when present), and its bad-input errors."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SAMPLE_VOC, read_ids, train_subset_ids, write_list
from misc.fileio import DataError, load_image_rgb
from misc import datasets
from misc.imutils import classification_augment
from voc12 import dataloader as voc
from voc12.make_cls_labels import labels_from_mask


def test_shipped_lists_and_labels():
    sizes = {name: len(datasets.load_id_list(f"{voc.PACKAGE_DIR}/{name}.txt")) for name in
             ("train", "train_aug", "val", "test")}
    assert sizes == {"train": 1464, "train_aug": 10582, "val": 1449, "test": 1456}
    table = datasets.load_label_file(voc.DEFAULT_LABEL_FILE)[0]
    assert len(table) == 12031
    assert all(isinstance(k, str) and "_" in k for k in list(table)[:10])
    # 2007_000032 is two aeroplanes and two persons in VOC
    assert np.flatnonzero(table["2007_000032"]).tolist() == [voc.CLASS_NAMES.index("aeroplane"),
                                                             voc.CLASS_NAMES.index("person")]


def test_labels_match_real_masks(voc_data):
    """Every image + mask pair: the mask's classes are the image-level labels, the sizes agree, the values are
    0..20 or 255; every images-only id has labels and a decodable image but no mask."""
    spec = voc.make_spec(voc_data.root)
    for img_id in voc_data.train_ids:
        from_mask = labels_from_mask(f"{voc_data.root}/SegmentationClassAug/{img_id}.png")
        np.testing.assert_array_equal(from_mask, spec.label(img_id), err_msg=img_id)
        gt = spec.load_gt(img_id)
        assert gt.shape == load_image_rgb(spec.image_path(img_id)).shape[:2], img_id
        assert set(np.unique(gt).tolist()) <= set(range(21)) | {255}, img_id
    images_only = sorted(set(voc_data.train_aug_ids) - set(voc_data.train_ids))
    assert set(voc_data.train_ids) <= set(voc_data.train_aug_ids) and images_only
    for img_id in images_only[:: max(1, len(images_only) // 20)]:  # every one in the sample, 20 of the shared
        assert spec.label(img_id).sum() >= 1 and load_image_rgb(spec.image_path(img_id)).ndim == 3
        with pytest.raises(DataError, match=f"no ground-truth mask for {img_id}"):
            spec.load_gt(img_id)


def manifest(root):
    """{file: row} of a data folder's MANIFEST.tsv."""
    lines = (Path(root) / "MANIFEST.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {row[0]: dict(zip(header, row)) for row in (line.split("\t") for line in lines[1:])}


def git_blob_sha1(path):
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # what `git hash-object` prints


def test_files_are_the_manifest_files(voc_data):
    """The files are exactly the lists' files, each with the git blob SHA-1 its MANIFEST records."""
    rows = manifest(voc_data.root)
    expected = {f"JPEGImages/{i}.jpg" for i in voc_data.train_aug_ids} | \
               {f"SegmentationClassAug/{i}.png" for i in voc_data.train_ids}
    assert set(rows) == expected
    for sub in ("JPEGImages", "SegmentationClassAug"):
        assert {f"{sub}/{f}" for f in os.listdir(Path(voc_data.root) / sub)} == {f for f in expected if
                                                                                f.startswith(sub + "/")}
    check = sorted(rows) if voc_data.name == "sample" else sorted(rows)[::50]  # 41 of the shared 2,014
    for name in check:
        assert git_blob_sha1(Path(voc_data.root) / name) == rows[name]["git_blob_sha1"], name
    if voc_data.name == "shared":  # the shipped sample: the first 15 pairs of the shared subset, same bytes
        assert read_ids(SAMPLE_VOC, "train_subset.txt") == voc_data.train_ids[:15]
        sample = manifest(SAMPLE_VOC)
        assert all(rows[name] == row for name, row in sample.items())


def test_gt_falls_back_to_segmentation_class_aug(voc_root):
    spec = voc.make_spec(voc_root)
    img_id = train_subset_ids(1)[0]
    assert spec.gt_path(img_id).endswith(f"SegmentationClassAug/{img_id}.png")
    gt = spec.load_gt(img_id)
    img = load_image_rgb(spec.image_path(img_id))
    assert gt.shape == img.shape[:2]
    assert set(np.unique(gt)) <= set(range(21)) | {255}


def test_classification_augmentation_on_real_image(voc_root):
    spec = voc.make_spec(voc_root)
    ds = datasets.ClassificationDataset(spec, train_subset_ids(3), crop_size=96, resize_long=(320, 640))
    torch.manual_seed(0)
    a = ds[0]
    assert a["img"].shape == (3, 96, 96) and a["img"].dtype == torch.float32
    assert a["label"].shape == (20,) and a["label"].sum() >= 1
    torch.manual_seed(0)
    np.testing.assert_array_equal(ds[0]["img"], a["img"])  # reproducible through torch's seed
    # small image: padded with 0 (the mean colour after normalisation) around a random placement
    rng = np.random.default_rng(1)
    small = np.full((20, 30, 3), 255, np.uint8)
    out = classification_augment(small, 64, rng, resize_long=None, hflip=False)
    filled = np.abs(out).sum(axis=0) > 0
    assert filled.sum() == 20 * 30 and out.shape == (3, 64, 64)


def test_multiscale_pyramid_sizes_and_flip(voc_root):
    spec = voc.make_spec(voc_root)
    ds = datasets.MultiScaleDataset(spec, train_subset_ids(1), scales=(1.0, 0.5))
    s = ds[0]
    h, w = s["size"]
    assert s["img"][0].shape == (2, 3, h, w)
    assert s["img"][1].shape == (2, 3, round(h * 0.5), round(w * 0.5))
    np.testing.assert_array_equal(s["img"][0][1].numpy(), s["img"][0][0].numpy()[:, :, ::-1])


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_non_rgb_images_are_converted(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 9, 3), dtype=np.uint8))
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    rgb.convert(mode).save(path)
    img = load_image_rgb(str(path))
    assert img.shape == (12, 9, 3) and img.dtype == np.uint8


def test_corrupt_and_missing_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="bad.jpg.*corrupt"):
        load_image_rgb(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        load_image_rgb(str(tmp_path / "nope.jpg"))


def test_bad_lists_and_roots(tmp_path, voc_root):
    with pytest.raises(DataError, match="empty"):
        datasets.load_id_list(write_list(tmp_path / "empty.txt", [""]), "--train_list")
    with pytest.raises(DataError, match="no such list"):
        datasets.load_id_list(str(tmp_path / "missing.txt"), "--train_list")
    with pytest.raises(DataError, match="--voc12_root"):
        voc.make_spec(str(tmp_path / "no_root")).check_ids(["2007_000032"], "--train_list")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DataError, match="JPEGImages"):
        voc.make_spec(str(tmp_path / "empty_root")).check_ids(["2007_000032"], "--train_list")
    spec = voc.make_spec(voc_root)
    with pytest.raises(DataError, match="no image.*2007_000032.jpg"):  # in the label file, not in the subset
        spec.check_ids(["2007_000032"], "--train_list")
    with pytest.raises(DataError, match="no image-level labels"):
        spec.label("2099_999999")
