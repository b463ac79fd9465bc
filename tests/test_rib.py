"""The RIB step (step/rib.py): what is updated, reset between images, early stops, output format, workers,
resume, bad inputs, and agreement with the straightforward reference loop of scripts/bench_rib.py.

Speed (2 shared CPU cores, ResNet-50): the images are real VOC images (the shipped sample, tests/data/voc12_sample) downscaled to 64x48 in
a temporary copy of the dataset, so one RIB step costs well under a second, and every target has the same shape,
which keeps oneDNN's per-shape kernels warm. Settings: --rib_iter 2, --rib_batch 2, --rib_crop_size 64,
--cam_scales 1.0,0.5, --rib_loss_scales 1.0, a random BN-calibrated classifier. The runs compared bit for bit
use OMP_NUM_THREADS=1: CPU convolutions round differently with another thread count (docs/rib.md).
"""
import logging
import os
import shutil
import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, make_args, miou_by_hand, save_random_classifier, train_subset_ids, write_list

sys.path.insert(0, str(REPO / "scripts"))

from misc.fileio import DataError, load_cam_npz, save_cam_npz  # noqa: E402
from step import rib  # noqa: E402

SIZE = (48, 64)  # H, W of the downscaled images
NOLABEL = "9999_nolabel"
CORRUPT = "9999_corrupt"
FAST = dict(rib_iter=2, rib_batch=2, rib_crop_size=64, cam_scales="1.0,0.5", rib_loss_scales="1.0",
            rib_explode_stop="false")


@contextmanager
def one_thread():
    """OMP_NUM_THREADS=1 for step.rib's workers (spawned ones inherit it) and one thread, denormals flushed (as in
    a RIB worker) in this process. One thread also avoids OpenMP spinning on the oversubscribed test machine."""
    old_env, old_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(old_threads)
        if old_env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old_env


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny(voc_root, tmp_path_factory):
    """A VOC-format copy of 8 real training images (and masks) at 64x48, plus an image without labels and a
    corrupt one; the classifier checkpoint; the ids."""
    root = tmp_path_factory.mktemp("tiny_voc")
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClassAug").mkdir()
    ids = train_subset_ids(8)
    for i in ids:
        Image.open(os.path.join(voc_root, "JPEGImages", f"{i}.jpg")).convert("RGB").resize(SIZE[::-1], Image.BICUBIC) \
            .save(root / "JPEGImages" / f"{i}.jpg", quality=95)
        Image.open(os.path.join(voc_root, "SegmentationClassAug", f"{i}.png")).resize(SIZE[::-1], Image.NEAREST) \
            .save(root / "SegmentationClassAug" / f"{i}.png")
    shutil.copy(root / "JPEGImages" / f"{ids[0]}.jpg", root / "JPEGImages" / f"{NOLABEL}.jpg")
    (root / "JPEGImages" / f"{CORRUPT}.jpg").write_bytes(b"not a jpeg")
    ckpt = root / "res50_cam.pth"
    save_random_classifier(ckpt, num_classes=20, seed=0)
    return types.SimpleNamespace(root=str(root), ids=ids, ckpt=str(ckpt),
                                 train_list=write_list(root / "train.txt", ids))


def rib_args(tiny, work_dir, infer_ids, with_checkpoint=True, **flags):
    work_dir.mkdir(parents=True, exist_ok=True)
    if with_checkpoint:
        (work_dir / "sess").mkdir(exist_ok=True)
        shutil.copy(tiny.ckpt, work_dir / "sess" / "res50_cam.pth")
    settings = dict(FAST, voc12_root=tiny.root, train_list=tiny.train_list,
                    infer_list=write_list(work_dir / "infer.txt", infer_ids), rib_loader_workers=0)
    settings.update(flags)
    return make_args(work_dir, **settings)


def cam_file(args, img_id):
    return load_cam_npz(rib.rib_path(args.rib_out_dir, img_id))


def assert_same_record(a, b):
    for key in ("keys", "cam", "high_res"):
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def base_run(tiny, tmp_path_factory):
    """Images A, B and one without labels through run_sample (the CLI path), one worker with 2 DataLoader
    workers, --rib_save_iters true."""
    import run_sample
    work = tmp_path_factory.mktemp("base_run")
    args = rib_args(tiny, work, tiny.ids[:2] + [NOLABEL], rib_loader_workers=2, rib_save_iters="true")
    argv = ["--work_dir", str(work), "--device", "cpu", "--backbone_weights", "none", "--only", "rib",
            "--voc12_root", tiny.root, "--train_list", tiny.train_list, "--infer_list", args.infer_list,
            "--rib_loader_workers", "2", "--rib_save_iters", "true"]
    for k, v in FAST.items():
        argv += [f"--{k}", str(v)]
    with one_thread():  # module fixture: the autouse one is function-scoped
        run_sample.main(argv)
    return args


# --- the class index and the draw ------------------------------------------------------------------------------


def test_pool_draws_disjoint_images_never_the_target_and_is_deterministic():
    labels = {"t": [1, 0, 0], "a": [0, 1, 0], "b": [0, 0, 1], "c": [1, 1, 0], "d": [0, 1, 1], "e": [1, 0, 1]}
    spec = types.SimpleNamespace(num_classes=3, label=lambda i: np.array(labels[i], np.float32))
    pool = rib.OtherImagePool(spec, list(labels))
    target = np.array(labels["t"], np.float32)
    assert pool.disjoint(target).tolist() == [1, 2, 4]  # a, b, d share no class with t
    for k in range(20):
        picks = pool.draw("t", target, 3, 1.0, rib.draw_generator(0, "t", k, -1))
        assert set(picks.tolist()) == {1, 2, 4}  # without replacement inside a step
        mixed = pool.draw("t", target, 5, 0.0, rib.draw_generator(0, "t", k, -1))
        assert 0 not in mixed.tolist() and len(set(mixed.tolist())) == 5  # never the target itself
    first = pool.draw("t", target, 4, 0.5, rib.draw_generator(7, "t", 3, -1))
    assert np.array_equal(first, pool.draw("t", target, 4, 0.5, rib.draw_generator(7, "t", 3, -1)))
    assert rib.draw_generator(7, "t", 3, 0).random() != rib.draw_generator(7, "t", 3, 1).random()
    # a target sharing a class with every image falls back to all the other images
    full = np.ones(3, np.float32)
    assert set(pool.draw("t", full, 5, 1.0, rib.draw_generator(0, "t", 0, -1)).tolist()) == {1, 2, 3, 4, 5}


# --- one image -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_image(tiny):
    """Model, theta_0, the stream items of image A (in-process) and a config maker."""
    from misc.datasets import build_spec
    from net.resnet50_cam import load_classifier
    args = make_args("/nonexistent", **dict(FAST, voc12_root=tiny.root, train_list=tiny.train_list))
    spec = build_spec(args)
    pool = rib.OtherImagePool(spec, tiny.ids)
    args.rib_iter = 3
    stream = rib.RIBStream(spec, tiny.ids[:1], pool, args)
    items = [stream.make_item(*p) for p in stream.plan]
    model = load_classifier(tiny.ckpt, 20)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}

    def run(**changes):
        model.load_state_dict(theta0)
        cfg = rib.RIBConfig.from_args(args)
        cfg = rib.RIBConfig(**{**cfg.__dict__, "iters": 2, **changes})
        return rib.rib_finetune_image(model, items[0], lambda k: items[1 + k], cfg, "cpu")

    return types.SimpleNamespace(model=model, theta0=theta0, run=run)


def test_only_layer3_layer4_and_classifier_change(one_image):
    one_image.run(lr=1e-3)
    after = one_image.model.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, one_image.theta0[k])}
    frozen = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2.")
    assert not [k for k in changed if k.startswith(frozen)]
    assert not [k for k in changed if "running_" in k or "num_batches" in k]  # BN statistics never move
    assert "classifier.weight" in changed
    for layer in ("layer3", "layer4"):
        params = [k for k, _ in one_image.model.named_parameters() if f".{layer}." in k]
        assert set(params) <= changed, f"some {layer} parameters did not change"
        assert any(".bn" in k and k.endswith("weight") for k in params)  # BN affine is trained


def test_aggregation_and_early_stops_count_terms(one_image):
    # scales (1.0, 0.5); K = 2
    paper = one_image.run(aggregate="paper")
    assert (paper.terms, paper.updates, paper.batches, paper.stop) == ([3, 3], 2, 2, "completed")
    # official: theta_0 and theta_1 add CAMs; the update of step 1 (whose model adds nothing) is not made
    official = one_image.run(aggregate="official")
    assert (official.terms, official.updates, official.batches) == ([2, 2], 1, 1)
    # official margin with a tiny m: stop after the first update; theta_1 never adds a CAM, in both modes
    for mode in ("paper", "official"):
        margin = one_image.run(margin_mode="official", margin=1e-6, aggregate=mode)
        assert (margin.terms, margin.updates, margin.stop) == ([1, 1], 1, "margin")
    # explosion with ratio 0 stops at k = 1 right after the scale-1.0 forward: no other scale, no other images
    fixed = one_image.run(explode_stop=True, explode_ratio=0.0, aggregate="paper")
    assert (fixed.terms, fixed.updates, fixed.batches, fixed.stop) == ([1, 1], 1, 1, "explosion")
    # official accounting: the scale-1.0 CAM of theta_1 was already added, the other scales' were not
    off = one_image.run(explode_stop=True, explode_ratio=0.0, aggregate="official")
    assert (off.terms, off.updates, off.stop) == ([2, 1], 1, "explosion")
    assert torch.equal(off.sums[1], fixed.sums[1]) and not torch.equal(off.sums[0], fixed.sums[0])
    # a huge ratio never triggers
    assert one_image.run(explode_stop=True, explode_ratio=1.0).stop == "completed"


# --- whole runs ------------------------------------------------------------------------------------------------


def test_output_format_and_background_record(tiny, base_run):
    from misc.datasets import build_spec
    spec = build_spec(base_run)
    for img_id in tiny.ids[:2]:
        rec = cam_file(base_run, img_id)
        assert rec["keys"].dtype == np.int64 and rec["cam"].dtype == np.float32
        assert rec["high_res"].dtype == np.float32
        assert rec["keys"].tolist() == np.flatnonzero(spec.label(img_id)).tolist()
        n = len(rec["keys"])
        assert rec["cam"].shape == (n, 12, 16) and rec["high_res"].shape == (n,) + SIZE
        assert rec["high_res"].max() <= 1 and rec["cam"].max() <= 1 and rec["high_res"].min() >= 0
    bg = cam_file(base_run, NOLABEL)
    assert bg["keys"].shape == (0,) and bg["cam"].shape == (0, 12, 16) and bg["high_res"].shape == (0,) + SIZE
    log_text = open(os.path.join(base_run.work_dir, "run.log")).read()
    assert "2 completed, 1 no labels" in log_text  # counted in the worker's summary (COCO has ~1,000 such)


def test_save_iters_and_k0_equals_make_cam(tiny, base_run, tmp_path):
    a = tiny.ids[0]
    k = [load_cam_npz(rib.rib_path(rib.iters_dir(base_run.rib_out_dir, j), a)) for j in range(2)]
    assert_same_record(k[1], cam_file(base_run, a))  # official aggregation (the default): k = 0..K-1
    assert not os.path.exists(rib.rib_path(rib.iters_dir(base_run.rib_out_dir, 2), a))
    assert not np.array_equal(k[0]["high_res"], k[1]["high_res"])
    # k00 is the CAM of theta_0 alone: exactly the plain CAM of make_cam (same format, same numbers)
    import step.make_cam as make_cam
    args = rib_args(tiny, tmp_path, [a], num_workers=0)
    make_cam.run(args)
    assert_same_record(k[0], load_cam_npz(os.path.join(args.cam_out_dir, a + ".npz")))


def test_eval_rib_iters_script(tiny, base_run):
    import eval_rib_iters
    base_run.cam_eval_thres = None
    rows = eval_rib_iters.evaluate_iterations(base_run, tiny.ids[:2])
    assert [r["k"] for r in rows] == [0, 1]
    # recomputed by hand: background where the best class score is <= t, conftest's miou_by_hand, the best t
    from step.eval_cam import sweep_thresholds
    thresholds = sweep_thresholds(base_run)  # the VOC preset's --cam_eval_sweep 0.2,0.49,0.01
    assert len(thresholds) == 30 and thresholds[0] == 0.2
    for r in rows:
        mious = []
        for t in thresholds:
            pairs = []
            for img_id in tiny.ids[:2]:
                rec = load_cam_npz(rib.rib_path(rib.iters_dir(base_run.rib_out_dir, r["k"]), img_id))
                gt = np.asarray(Image.open(os.path.join(tiny.root, "SegmentationClassAug", img_id + ".png")))
                cls = rec["keys"][rec["high_res"].argmax(0)] + 1
                pairs.append((gt, np.where(rec["high_res"].max(0) > np.float32(t), cls, 0)))
            mious.append(miou_by_hand(pairs))
        assert r["threshold"] == pytest.approx(thresholds[int(np.argmax(mious))])
        assert r["miou"] == round(100 * max(mious), 3), r
    assert rows[0]["miou"] != rows[1]["miou"]  # one RIB update changed the seeds


def test_reset_order_independence_resume_and_loader_workers(tiny, base_run, tmp_path):
    a, b = tiny.ids[:2]
    args = rib_args(tiny, tmp_path, [a, b], rib_loader_workers=0)
    # A "already done" (a dummy record that must stay untouched); B only has a leftover temp file of a kill
    save_cam_npz(rib.rib_path(args.rib_out_dir, a), [3], np.zeros((1, 12, 16)), np.zeros((1,) + SIZE))
    leftover = os.path.join(args.rib_out_dir, f".{b}.x1y2.tmp.npz")
    open(leftover, "wb").write(b"partial")
    rib.run(args)
    assert cam_file(args, a)["keys"].tolist() == [3]
    # B alone (A skipped) == B after A in base_run (and no DataLoader workers here vs 2 there)
    assert_same_record(cam_file(args, b), cam_file(base_run, b))


def test_one_vs_two_worker_processes_identical(tiny, base_run, tmp_path):
    args = rib_args(tiny, tmp_path, tiny.ids[:2], rib_workers=2, rib_loader_workers=0)
    rib.run(args)
    for img_id in tiny.ids[:2]:
        assert_same_record(cam_file(args, img_id), cam_file(base_run, img_id))


def test_fast_path_equals_reference_loop(tiny, base_run, tmp_path):
    import bench_rib
    args = rib_args(tiny, tmp_path, tiny.ids[:1])
    bench_rib.reference_rib(args, tiny.ids[:1])
    assert_same_record(cam_file(args, tiny.ids[0]), cam_file(base_run, tiny.ids[0]))


def test_early_stop_inside_a_run_drains_the_stream(tiny, tmp_path, caplog):
    args = rib_args(tiny, tmp_path, tiny.ids[:3], rib_iter=3, rib_explode_stop="true", rib_explode_ratio=0.0,
                    rib_loader_workers=2, rib_save_iters="true")
    with caplog.at_level(logging.INFO, logger="step.rib"):
        rib.run(args)
    assert "3 explosion" in caplog.text
    for img_id in tiny.ids[:3]:
        final = cam_file(args, img_id)
        # stopped at k = 1; official aggregation: theta_1's scale-1.0 CAM was added before the test, so k00 is
        # theta_0 alone and k01, k02 hold the final map
        k00 = load_cam_npz(rib.rib_path(rib.iters_dir(args.rib_out_dir, 0), img_id))
        assert not np.array_equal(k00["high_res"], final["high_res"])
        for k in (1, 2):
            assert_same_record(load_cam_npz(rib.rib_path(rib.iters_dir(args.rib_out_dir, k), img_id)), final)


def test_early_stop_checks_change_no_output(tiny, tmp_path):
    """The sync right after the scale-1.0 forward (and no unused last update) gives exactly the maps of the
    previous order that computed every step in full before testing (scripts/bench_rib.py --bench_modes late)."""
    outs = {}
    for early in (True, False):
        args = rib_args(tiny, tmp_path / str(early), tiny.ids[:3], rib_iter=3, rib_explode_stop="true",
                        rib_explode_ratio=0.5, rib_margin_mode="official", rib_margin=40)
        args._rib_early_checks = early
        rib.run(args)
        outs[early] = [cam_file(args, i) for i in tiny.ids[:3]]
    for a, b in zip(outs[True], outs[False]):
        assert_same_record(a, b)


def test_rerun_with_other_settings_stops(tiny, base_run, tmp_path):
    args = rib_args(tiny, tmp_path, tiny.ids[:1])
    rib.run(args)
    other = rib_args(tiny, tmp_path, tiny.ids[:1], rib_iter=5, rib_batch=4)
    with pytest.raises(DataError, match=r"iters 2 \(now 5\).*other_images 2 \(now 4\).*--overwrite rib"):
        rib.run(other)


# --- bad inputs ------------------------------------------------------------------------------------------------


def test_missing_classifier_names_file_and_fix(tiny, tmp_path):
    args = rib_args(tiny, tmp_path, tiny.ids[:1], with_checkpoint=False)
    with pytest.raises(DataError, match=r"res50_cam\.pth.*--only train_cam"):
        rib.run(args)


def test_wrong_class_count_checkpoint(tiny, tmp_path):
    args = rib_args(tiny, tmp_path, tiny.ids[:1])
    save_random_classifier(args.cam_weights_path, num_classes=21, seed=1)
    with pytest.raises(DataError, match="21 classes but the dataset has 20"):
        rib.run(args)
    assert not os.path.exists(rib.rib_path(args.rib_out_dir, tiny.ids[0]))


def test_corrupt_image_stops_before_any_work_naming_the_file(tiny, tmp_path):
    args = rib_args(tiny, tmp_path, [tiny.ids[0], CORRUPT])
    with pytest.raises(DataError, match=f"{CORRUPT}.jpg.*replace the file"):
        rib.run(args)
    assert not os.path.exists(rib.rib_path(args.rib_out_dir, tiny.ids[0]))  # checked up front


def test_bad_flags(tiny, tmp_path):
    with pytest.raises(DataError, match="scale-1.0"):
        rib.run(rib_args(tiny, tmp_path, tiny.ids[:1], cam_scales="0.5", rib_loss_scales="0.5",
                         rib_explode_stop="true"))
    with pytest.raises(DataError, match="--train_list"):
        rib.run(rib_args(tiny, tmp_path, tiny.ids[:1], train_list=write_list(tmp_path / "t.txt", [NOLABEL])))
