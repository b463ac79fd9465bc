"""The compact CAM record (misc/cam_format.py): the same float32 bits as the plain record, old records still read."""
import os
import zipfile

import numpy as np
import pytest
import torch

from misc import cam_format
from misc.cams import cam_record, resize_and_sum, write_cam_record
from misc.fileio import DataError, load_cam_npz, load_npz, save_cam_npz


def class_maps(size, num_classes, seed, scales=(1.0, 0.5, 1.5, 2.0), zero_share=0.5):
    """ReLU maps at stride 16 of each scale, as the classifier gives them (a share of zeros, smooth-ish)."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for s in scales:
        h, w = -(-round(size[0] * s) // 16), -(-round(size[1] * s) // 16)
        m = torch.randn(num_classes, h, w, generator=g) - zero_share
        maps.append(torch.relu(m) * 7.3)
    return maps


def plain_arrays(maps, size, label):
    strided, high_res = resize_and_sum(maps, size)
    return cam_record(strided, high_res, label)


def bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def assert_bit_equal(record, keys, cam, high_res):
    assert record["keys"].dtype == np.int64 and record["keys"].tolist() == keys.tolist()
    assert record["cam"].dtype == np.float32 and record["high_res"].dtype == np.float32
    assert record["cam"].shape == cam.shape and record["high_res"].shape == high_res.shape
    assert np.array_equal(bits(record["cam"]), bits(cam))
    assert np.array_equal(bits(record["high_res"]), bits(high_res))


CASES = [((375, 500), [3], 0), ((333, 500), [0, 14], 1), ((480, 640), [2, 5, 17], 2), ((97, 131), [1, 2, 3, 4], 3),
         ((64, 64), [], 4)]


@pytest.mark.parametrize("size,classes,seed", CASES)
def test_compact_record_is_the_plain_record_bit_for_bit(tmp_path, size, classes, seed):
    maps = class_maps(size, 20, seed)
    label = torch.zeros(20)
    label[classes] = 1
    keys, cam, high_res = plain_arrays(maps, size, label)
    compact, plain = str(tmp_path / "compact.npz"), str(tmp_path / "plain.npz")
    strided_sum, high_sum = resize_and_sum(maps, size)
    write_cam_record(compact, strided_sum, high_sum, label, maps)
    save_cam_npz(plain, keys, cam, high_res, fmt="plain")  # the layout every earlier run wrote
    assert set(load_npz(plain)) == {"keys", "cam", "high_res"}
    assert int(load_npz(compact)["format"]) == cam_format.FORMAT_COMPACT
    assert_bit_equal(load_cam_npz(plain), keys, cam, high_res)
    assert_bit_equal(load_cam_npz(compact), keys, cam, high_res)
    if classes:
        # the point of the format: a small fraction of the plain bytes (random maps compress worst)
        assert os.path.getsize(compact) * 10 < os.path.getsize(plain)
        # written and read on a CPU, the prediction of image-sized maps is exact: no correction needed (small
        # maps take other loops of the kernel, whose rounding depends on the channel count: a small fix)
        assert size[1] < 500 or load_npz(compact)["high_res_fix"].size == 0 and load_npz(compact)["cam_fix"].size == 0


def test_reader_with_another_kernel_falls_back_to_numpy(tmp_path, monkeypatch):
    """A reader whose PyTorch kernel rounds otherwise than the writer's (simulated: last bits flipped) decodes
    through the portable numpy prediction, bit for bit; a record no prediction reproduces is a clear error."""
    size, maps = (281, 500), class_maps((281, 500), 20, 7)
    label = torch.zeros(20)
    label[[4, 9]] = 1
    keys, cam, high_res = plain_arrays(maps, size, label)
    path = str(tmp_path / "r.npz")
    save_cam_npz(path, keys, cam, high_res, maps=[m[keys].numpy() for m in maps])
    real = cam_format.predict_torch

    def other_kernel(*a):
        return tuple((bits(x) ^ np.uint32(1)).view(np.float32) for x in real(*a))

    monkeypatch.setattr(cam_format, "predict_torch", other_kernel)
    assert_bit_equal(load_cam_npz(path), keys, cam, high_res)
    monkeypatch.setattr(cam_format, "predict_numpy", other_kernel)
    with pytest.raises(DataError, match="fail their check.*--cam_format plain"):
        load_cam_npz(path)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="the numpy predictor re-implements the FMA kernel of x86-64 AVX2/AVX-512 builds")
def test_numpy_bilinear_matches_torch_kernel_on_large_maps():
    """The portable predictor is PyTorch's CPU bilinear kernel (FMA build) re-done in numpy: the same bits on
    maps of CAM sizes (smaller outputs go through another loop of the kernel; their fix holds the difference)."""
    rng = np.random.default_rng(0)
    for (h, w), (out_h, out_w) in (((24, 32), (375, 500)), ((47, 63), (752, 1008)), ((24, 32), (96, 128)),
                                   ((30, 40), (30, 40)), ((30, 40), (480, 640))):
        x = rng.standard_normal((2, h, w)).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], (out_h, out_w), mode="bilinear",
                                              align_corners=False)[0].numpy()
        assert np.array_equal(bits(cam_format.resize_bilinear(x, (out_h, out_w))), bits(ref)), (h, w, out_h, out_w)


def test_other_writer_kernel_is_corrected(tmp_path):
    """Maps computed elsewhere (CUDA, another CPU kernel) differ from the prediction in low bits: the record keeps
    the difference and still decodes bit for bit."""
    size, maps = (200, 300), class_maps((200, 300), 20, 11)
    label = torch.zeros(20)
    label[[0, 19]] = 1
    keys, cam, high_res = plain_arrays(maps, size, label)
    other = bits(high_res).copy()
    other[:, ::3, ::5] ^= np.uint32(1)  # last-bit differences, as a different rounding gives
    other = other.view(np.float32)
    path = str(tmp_path / "r.npz")
    save_cam_npz(path, keys, cam, other, maps=[m[keys].numpy() for m in maps])
    assert load_npz(path)["high_res_fix"].size > 0
    assert_bit_equal(load_cam_npz(path), keys, cam, other)


def test_record_without_maps_is_lossless(tmp_path):
    rng = np.random.default_rng(3)
    high_res = np.maximum(rng.standard_normal((2, 50, 60)).astype(np.float32), 0)
    cam = high_res[:, ::4, ::4].copy()
    keys = np.array([1, 5])
    path = str(tmp_path / "r.npz")
    save_cam_npz(path, keys, cam, high_res)
    assert_bit_equal(load_cam_npz(path), keys, cam, high_res)


def test_float16_is_the_rounded_record(tmp_path):
    size, maps = (120, 160), class_maps((120, 160), 20, 5)
    label = torch.zeros(20)
    label[[2]] = 1
    keys, cam, high_res = plain_arrays(maps, size, label)
    path = str(tmp_path / "r.npz")
    save_cam_npz(path, keys, cam, high_res, fmt="float16")
    record = load_cam_npz(path)
    assert np.array_equal(record["high_res"], high_res.astype(np.float16).astype(np.float32))
    assert np.array_equal(record["cam"], cam.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="float16"):
        cam_format.encode(keys, cam, high_res, dtype="int8")


def test_damaged_record_is_a_clear_error(tmp_path):
    size, maps = (100, 100), class_maps((100, 100), 20, 9)
    label = torch.zeros(20)
    label[[6]] = 1
    keys, cam, high_res = plain_arrays(maps, size, label)
    path = str(tmp_path / "r.npz")
    save_cam_npz(path, keys, cam, high_res, maps=[m[keys].numpy() for m in maps])
    arrays = load_npz(path)
    arrays["check"] = arrays["check"] ^ np.uint32(1)  # a flipped bit anywhere fails the check
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="unreadable.*check.*rerun"):
        load_cam_npz(path)
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="unreadable"):
        load_cam_npz(path)
    assert not zipfile.is_zipfile(path)
