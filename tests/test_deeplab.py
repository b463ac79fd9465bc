"""DeepLab-v2 stage: OS8 shapes and ASPP, MSC, losses, parameter groups, the label rules and the re-training fill,
the walk score of make_sem_seg, the softmax CRF, the VOC test export, resume after a kill, a tiny end-to-end run on
real VOC images through the five steps, evaluation against a hand-computed confusion matrix, and bad inputs."""
import json
import os
import tarfile
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import make_args, train_subset_ids, write_list
from deeplab.losses import balanced_cross_entropy, cross_entropy, make_loss, msc_loss
from deeplab.model import ASPP_RATES, MSC, DeepLabV2, build_deeplab, logit_size, parameter_groups, poly_lr
from misc.fileio import DataError, load_label_png, save_png

# tiny settings of every run here: ResNet-50 from scratch, small crops, a rate a random backbone survives
TINY = dict(seg_arch="resnet50", seg_backbone_weights="none", seg_crop_size=32, seg_batch_size=2,
            seg_learning_rate=1e-5, seg_test_scales="0.5", seg_log_every=1)


# --- model -----------------------------------------------------------------------------------------------------------


def test_output_stride_8_and_aspp_sum():
    torch.manual_seed(0)
    model = DeepLabV2(5, "resnet50").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 81))
    assert out.shape == (1, 5, 9, 11) and logit_size((65, 81)) == (9, 11)
    b = model.backbone  # strides (2, 2, 1, 1), dilation 2 in layer3 and 4 in layer4, in every block
    assert b.layer3[0].conv2.stride == (1, 1) and b.layer4[0].conv2.stride == (1, 1)
    assert {blk.conv2.dilation for blk in b.layer3} == {(2, 2)} and {blk.conv2.dilation for blk in b.layer4} == {(4, 4)}
    convs = model.aspp.convs
    assert [c.dilation[0] for c in convs] == list(ASPP_RATES) == [6, 12, 18, 24]
    assert all(c.in_channels == 2048 and c.out_channels == 5 and c.padding == c.dilation for c in convs)
    assert all(torch.all(c.bias == 0) for c in convs)
    assert abs(torch.cat([c.weight.flatten() for c in convs]).std().item() - 0.01) < 0.001
    feats = torch.randn(1, 2048, 7, 9)
    with torch.no_grad():
        for c in convs:
            c.bias.normal_()
        assert torch.allclose(model.aspp(feats), sum(c(feats) for c in convs), atol=1e-5)


class PoolNet(nn.Module):
    """A stand-in base network with the stride-8 grid: 8x8 mean pooling of two colour channels."""

    def forward(self, x):
        return F.avg_pool2d(x[:, :2], 8, ceil_mode=True)


def test_msc_returns_each_scale_and_their_max():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 80)
    msc = MSC(PoolNet()).train()
    outs = msc(x)
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 10), (6, 8), (4, 5), (8, 10)]
    expected = outs[0]
    for o in outs[1:3]:
        expected = torch.maximum(expected, F.interpolate(o, (8, 10), mode="bilinear", align_corners=False))
    assert torch.equal(outs[3], expected)
    # the 0.5 input is the bilinear resize of the image (deeplab-pytorch), so its logits are the net of that
    half = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    assert torch.allclose(outs[2], PoolNet()(half))
    msc.eval()
    assert torch.equal(msc(x), expected)
    assert torch.equal(msc(x, scales=(1.0,)), outs[0])


# --- losses, parameter groups, learning rate ------------------------------------------------------------------------


def test_balanced_and_plain_cross_entropy_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 1, 4)
    labels = torch.tensor([[[0, 1, 255, 2]], [[0, 0, 255, 255]], [[255, 255, 255, 255]]], dtype=torch.uint8)
    logp = torch.log_softmax(logits, dim=1)

    def ce(n, j, c):
        return -logp[n, c, 0, j].item()
    image1 = ce(0, 0, 0) + (ce(0, 1, 1) + ce(0, 3, 2)) / 2  # bg mean + fg mean
    image2 = (ce(1, 0, 0) + ce(1, 1, 0)) / 2  # no foreground: the fg term adds 0
    image3 = 0.0  # nothing labelled
    assert balanced_cross_entropy(logits, labels).item() == pytest.approx((image1 + image2 + image3) / 3, rel=1e-5)
    plain = (ce(0, 0, 0) + ce(0, 1, 1) + ce(0, 3, 2) + ce(1, 0, 0) + ce(1, 1, 0)) / 5
    assert cross_entropy(logits, labels).item() == pytest.approx(plain, rel=1e-5)
    assert cross_entropy(logits[2:], labels[2:]).item() == 0.0
    # MSC: each output against the labels resized (nearest) to its grid, summed
    full = torch.zeros(1, 2, 8, 8)
    small = torch.zeros(1, 2, 4, 4)
    lab = torch.zeros(1, 8, 8, dtype=torch.uint8)
    lab[:, :, 4:] = 1
    total = msc_loss([full, small], lab, balanced_cross_entropy)
    assert total.item() == pytest.approx(4 * np.log(2), rel=1e-5)  # (bg + fg) per output, uniform logits


def test_dsrg_softmax_smoothing_by_hand(tmp_path):
    """--seg_loss_smoothing s: p = (softmax + s) / (1 + C s) before the log (DSRG's SoftmaxLayer)."""
    # one image, 2 classes, 4 pixels: softmax (1/4, 3/4) on a bg and a fg pixel, a bg pixel whose softmax is
    # (e^-100, 1), an ignored pixel
    logits = torch.tensor([[[[0.0, 0.0, 0.0, 0.0]], [[np.log(3), np.log(3), 100.0, 5.0]]]])
    labels = torch.tensor([[[0, 1, 0, 255]]], dtype=torch.uint8)
    exact = (np.log(4) + 100) / 2 + np.log(4 / 3)  # bg mean + fg mean, -log e^-100 = 100
    assert balanced_cross_entropy(logits, labels).item() == pytest.approx(exact, rel=1e-6)
    # s = 0.05: p_bg = 0.3 / 1.1 = 3/11, p_fg = 0.8 / 1.1 = 8/11, saturated bg 0.05 / 1.1 = 1/22
    smoothed = (np.log(11 / 3) + np.log(22)) / 2 + np.log(11 / 8)
    assert balanced_cross_entropy(logits, labels, smoothing=0.05).item() == pytest.approx(smoothed, rel=1e-6)
    # DSRG's 1e-4 caps a pixel's loss at log((1 + 2e-4) / 1e-4) = 9.2105 instead of 100
    capped = (np.log(1.0002 / 0.2501) + np.log(1.0002 / 1e-4)) / 2 + np.log(1.0002 / 0.7501)
    assert make_loss("balanced", 1e-4)(logits, labels).item() == pytest.approx(capped, rel=1e-5)
    assert make_loss("balanced", 0.0) is balanced_cross_entropy and make_loss("ce", 0.0) is cross_entropy
    with pytest.raises(DataError, match="--seg_loss_smoothing 0.0001.*--seg_loss is ce"):
        make_loss("ce", 1e-4)
    # the flag: default 0 (the exact log-softmax), 1e-4 accepted, recorded in the checkpoint settings only when on
    from deeplab.train import training_settings
    spec = types.SimpleNamespace(class_names=["bg", "a"])
    lst = write_list(tmp_path / "ids.txt", ["x"])
    off = make_args(tmp_path, seg_train_list=lst)
    on = make_args(tmp_path, seg_train_list=lst, seg_loss_smoothing=1e-4)
    assert off.seg_loss_smoothing == 0.0 and on.seg_loss_smoothing == 1e-4
    assert "loss_smoothing" not in training_settings(off, spec, "none")  # older checkpoints still resume
    assert training_settings(on, spec, "none")["loss_smoothing"] == 1e-4


def test_parameter_groups_and_poly_rate():
    model = build_deeplab(21, "resnet50")
    groups = parameter_groups(model, 1e-3, 5e-4)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 5e-4), (1e-2, 5e-4), (2e-2, 0.0)]
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == set(in_groups)
    bn_params = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert bn_params and not any(p.requires_grad for p in bn_params)
    assert not {id(p) for p in bn_params} & set(in_groups)
    convs = [m for m in model.base.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert {id(m.weight) for m in convs} == {id(p) for p in groups[0]["params"]}
    assert {id(c.bias) for c in model.base.aspp.convs} == {id(p) for p in groups[2]["params"]}
    # deeplab-pytorch's poly: updated every 10 iterations
    assert poly_lr(2e-4, 0, 100) == poly_lr(2e-4, 9, 100) == 2e-4
    assert poly_lr(2e-4, 15, 100) == pytest.approx(2e-4 * 0.9 ** 0.9)
    assert poly_lr(2e-4, 100, 100) == 0.0


# --- label rules ---------------------------------------------------------------------------------------------------


def test_round_one_rule_and_retrain_fill_by_hand(tmp_path):
    from deeplab.predict import finish_image
    from step.make_seg_labels import round_one_label
    mask = np.array([[0, 3, 3, 5, 0, 3]])
    score = np.array([[10, 200, 60, 77, 150, 51]], np.uint8)  # 0.3 -> 76.5, 0.2 -> 51 on the 0..255 scale
    label = round_one_label(mask, score, fg_thres=0.3, bg_thres=0.2)
    # bg (10 < 51) | fg 3 | between | 77 > 76.5: fg 5 | high score but the mask says background | 51 is not < 51
    assert label.tolist() == [[0, 3, 255, 5, 255, 255]]
    save_png(tmp_path / "r1.png", label.astype(np.uint8))
    pred = np.array([1, 2, 4, 4, 4, 7])  # the round-one model's argmax
    probs = np.eye(8, dtype=np.float32)[pred].T.reshape(8, 1, 6)
    finish_image({"img_path": None, "probs": probs, "crf": None, "round1": str(tmp_path / "r1.png"),
                  "filled": str(tmp_path / "filled.png")})
    assert load_label_png(tmp_path / "filled.png").tolist() == [[0, 3, 4, 5, 4, 7]]


def test_saliency_rule_by_hand():
    from step.make_seg_labels import saliency_label
    mask = np.array([[0, 0, 2, 2, 255]])
    sal = np.array([[0, 200, 31, 32, 0]], np.uint8)
    # bg & not salient keep 0 | bg but salient -> 255 | fg but saliency < 32 -> 255 | fg & salient keep | void stays
    assert saliency_label(mask, sal, 32).tolist() == [[0, 255, 255, 2, 255]]


def test_make_sem_seg_writes_the_walk_score():
    from step.make_sem_seg_labels import walk_to_labels
    walk = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]], [[[3.0, 0.5], [1.0, 0.0]]]])  # 2 classes, 2x2 stride-4 grid
    labels, score = walk_to_labels(walk, np.array([4, 9]), (8, 8), 0.27, with_score=True)
    up = F.interpolate(walk, scale_factor=4, mode="bilinear", align_corners=False)[:, 0]
    normed = up / up.max()
    assert score.dtype == np.uint8 and np.array_equal(score, np.round(255 * normed.amax(0).numpy()))
    assert np.array_equal(labels > 0, normed.amax(0).numpy() > 0.27)  # the value the threshold is compared with
    assert set(np.unique(labels)) <= {0, 5, 10}
    empty_labels, empty_score = walk_to_labels(None, np.zeros(0, int), (3, 5), 0.27, with_score=True)
    assert not empty_labels.any() and not empty_score.any() and empty_score.shape == (3, 5)


def test_softmax_crf_keeps_a_ground_truth_like_map(voc_root):
    from misc.crf import crf_inference_softmax
    from misc.fileio import load_image_rgb
    img_id = train_subset_ids(1)[0]
    img = load_image_rgb(os.path.join(voc_root, "JPEGImages", img_id + ".jpg"))
    gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", img_id + ".png"))
    target = np.where(gt == 255, 0, gt)
    probs = np.full((21,) + gt.shape, 0.4 / 20, np.float32)
    np.put_along_axis(probs, target[None], 0.6, axis=0)
    q = crf_inference_softmax(img, probs)
    assert q.shape == probs.shape and np.allclose(q.sum(0), 1, atol=1e-3)
    valid = gt != 255
    assert (q.argmax(0)[valid] == gt[valid]).mean() > 0.9


# --- VOC test export -----------------------------------------------------------------------------------------------


def test_voc_test_export_reads_back(tmp_path, voc_root):
    import io
    from PIL import Image
    from misc import imutils
    from scripts import export_voc_test
    ids = train_subset_ids(2)
    pred_dir = tmp_path / "pred"
    preds = {}
    for k, img_id in enumerate(ids):
        with Image.open(os.path.join(voc_root, "JPEGImages", img_id + ".jpg")) as img:
            w, h = img.size
        preds[img_id] = (np.arange(h * w).reshape(h, w) % (21 - k)).astype(np.uint8)
        save_png(pred_dir / f"{img_id}.png", preds[img_id])
    out = str(tmp_path / "test.tar.gz")
    export_voc_test.main(["--pred_dir", str(pred_dir), "--list", write_list(tmp_path / "ids.txt", ids), "--out", out,
                          "--voc12_root", voc_root])
    with tarfile.open(out, "r:gz") as tar:
        names = tar.getnames()
        assert names == [f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in ids]
        for img_id, name in zip(ids, names):
            img = Image.open(io.BytesIO(tar.extractfile(name).read()))
            assert img.mode == "P" and img.getpalette()[:63] == imutils.color_palette()[:63]
            assert np.array_equal(np.asarray(img), preds[img_id])  # values 0..20 and the original size
    save_png(pred_dir / f"{ids[0]}.png", np.full((3, 4), 21, np.uint8))
    with pytest.raises(SystemExit, match="value 21"):
        export_voc_test.main(["--pred_dir", str(pred_dir), "--list", str(tmp_path / "ids.txt"), "--out", out])
    save_png(pred_dir / f"{ids[0]}.png", np.zeros((3, 4), np.uint8))
    with pytest.raises(SystemExit, match="original size"):
        export_voc_test.main(["--pred_dir", str(pred_dir), "--list", str(tmp_path / "ids.txt"), "--out", out,
                              "--voc12_root", voc_root])


# --- pseudo masks from ground truth, so that these tests do not depend on the IRN stage -------------------------------


def write_gt_pseudo_masks(args, voc_root, ids):
    """Pseudo masks = ground truth (void painted background) and walk scores: confident on objects, unsure on the
    void border, low on the background."""
    for img_id in ids:
        gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", img_id + ".png"))
        save_png(os.path.join(args.sem_seg_out_dir, img_id + ".png"), np.where(gt == 255, 0, gt).astype(np.uint8))
        score = np.where(gt == 255, 64, np.where(gt > 0, 200, 20)).astype(np.uint8)
        save_png(os.path.join(args.sem_seg_score_dir, img_id + ".png"), score)


def test_resume_after_kill_matches_the_uninterrupted_run(tmp_path, voc_root, monkeypatch):
    from deeplab import train
    from misc.fileio import load_checkpoint
    from step import make_seg_labels, train_deeplab
    ids = train_subset_ids(3)
    runs = {}
    for name in ("whole", "killed"):
        args = make_args(tmp_path / name, voc12_root=voc_root, seg_train_list=write_list(tmp_path / "ids.txt", ids),
                         seg_num_iters=4, seg_save_every=2, seg_scales="1.0", seg_lr_step=1,
                         **{**TINY, "seg_batch_size": 1})
        write_gt_pseudo_masks(args, voc_root, ids)
        make_seg_labels.run(args)
        runs[name] = args
    train_deeplab.run(runs["whole"])

    args = runs["killed"]
    calls = {"n": 0}
    real_loss = train.msc_loss

    def killed_in_iteration_4(*a):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_loss(*a)
    monkeypatch.setattr(train, "msc_loss", killed_in_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        train_deeplab.run(args)
    monkeypatch.setattr(train, "msc_loss", real_loss)
    resume = train.resume_path(args.deeplab_weights_path)
    state = load_checkpoint(resume)
    assert state["iteration"] == 2 and not os.path.isfile(args.deeplab_weights_path)
    # the rate of the last step taken, iteration index 1 (poly updated every iteration here)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-5 * (1 - 1 / 4) ** 0.9)

    changed = make_args(tmp_path / "killed", voc12_root=voc_root, seg_train_list=str(tmp_path / "ids.txt"),
                        seg_num_iters=4, seg_save_every=2, seg_scales="1.0", seg_lr_step=1,
                        **{**TINY, "seg_batch_size": 1, "seg_learning_rate": 3e-5})
    with pytest.raises(DataError, match=r"resume checkpoint .*learning_rate 1e-05 \(now 3e-05\).*--overwrite "
                                         r"train_deeplab"):
        train_deeplab.run(changed)

    train_deeplab.run(args)  # resumes at iteration 2
    assert not os.path.isfile(resume)
    whole = load_checkpoint(runs["whole"].deeplab_weights_path)
    resumed = load_checkpoint(args.deeplab_weights_path)
    assert whole["iterations"] == resumed["iterations"] == 4
    for k, v in whole["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_cuda_out_of_memory_names_the_flags(tmp_path, voc_root, monkeypatch):
    from deeplab import train
    from step import make_seg_labels, train_deeplab
    ids = train_subset_ids(2)
    args = make_args(tmp_path / "w", voc12_root=voc_root, seg_train_list=write_list(tmp_path / "ids.txt", ids),
                     seg_num_iters=2, **TINY)
    write_gt_pseudo_masks(args, voc_root, ids)
    make_seg_labels.run(args)

    def out_of_memory(*a):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(train, "msc_loss", out_of_memory)
    with pytest.raises(DataError, match="out of memory.*--seg_batch_size.*--seg_iter_size.*--seg_crop_size"):
        train_deeplab.run(args)


# --- end to end ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, voc_root):
    import run_sample
    work = tmp_path_factory.mktemp("deeplab")
    ids = train_subset_ids(6)
    train_ids, other_ids = ids[:4], ids[4:]
    args = make_args(work / "w", voc12_root=voc_root, seg_train_list=write_list(work / "train.txt", train_ids),
                     seg_infer_list=write_list(work / "other.txt", other_ids), seg_eval_list=str(work / "other.txt"),
                     seg_num_iters=2, seg_save_png=1, seg_save_logits="true", seg_eval_every=2,
                     only="make_seg_labels,train_deeplab,retrain_deeplab,infer_deeplab,eval_deeplab", **TINY)
    write_gt_pseudo_masks(args, voc_root, ids)
    run_sample.run_steps(args)
    return args, train_ids, other_ids


def test_end_to_end_tiny_run(tiny_run, voc_root):
    from misc.metrics import ConfusionMatrix, segmentation_report
    args, train_ids, other_ids = tiny_run
    for img_id in train_ids:
        gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", img_id + ".png"))
        round1 = load_label_png(os.path.join(args.seg_label_dir, img_id + ".png"))
        assert round1.shape == gt.shape and np.array_equal(round1 == 255, gt == 255)  # the unsure band
        filled = load_label_png(os.path.join(args.seg_label_retrain_dir, img_id + ".png"))
        assert filled.max() <= 20 and np.array_equal(filled[gt != 255], round1[gt != 255])
    assert os.path.isfile(args.deeplab_weights_path) and os.path.isfile(args.deeplab_retrain_weights_path)
    with open(os.path.join(args.result_dir, "eval_deeplab.json")) as f:
        results = json.load(f)
    assert results["made_by"]["settings"]["model"] == "deeplab_retrain.pth"
    confusion = ConfusionMatrix(21)
    for img_id in other_ids:
        pred = load_label_png(os.path.join(args.deeplab_pred_dir, img_id + ".png"))
        gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", img_id + ".png"))
        assert pred.shape == gt.shape and pred.max() <= 20
        assert os.path.isfile(os.path.join(args.deeplab_pred_dir, img_id + "_palette.png"))
        prob = np.load(os.path.join(args.deeplab_pred_dir, img_id + "_prob.npz"))["prob"]
        assert prob.dtype == np.float16 and prob.shape == (21,) + gt.shape
        assert np.allclose(prob.astype(np.float32).sum(0), 1, atol=0.02)
        confusion.update(gt, pred)
    recomputed = segmentation_report(confusion.mat, results["per_class_iou"].keys())
    for key in ("miou", "per_class_iou", "precision", "recall", "f1"):
        assert results[key] == recomputed[key]
    assert len(results["per_class_iou"]) == 21 and results["num_images"] == 2 and results["crf"] is True
    assert results["pseudo_mask_miou"] == 100.0 and 0 < results["all_background_miou"] < 100
    assert os.path.isfile(os.path.join(args.result_dir, "eval_deeplab.md"))
    assert len(os.listdir(os.path.join(args.result_dir, "eval_deeplab_png"))) == 1
    assert "seg_label" in results["run"]["flags"]["seg_label_dir"]


def test_second_run_skips_finished_outputs(tiny_run):
    import run_sample
    args, train_ids, other_ids = tiny_run
    outputs = [args.deeplab_weights_path, args.deeplab_retrain_weights_path]
    outputs += [os.path.join(args.seg_label_dir, i + ".png") for i in train_ids]
    outputs += [os.path.join(args.seg_label_retrain_dir, i + ".png") for i in train_ids]
    outputs += [os.path.join(args.deeplab_pred_dir, i + ".png") for i in other_ids]
    before = [os.stat(p).st_mtime_ns for p in outputs]
    run_sample.run_steps(args)
    assert [os.stat(p).st_mtime_ns for p in outputs] == before


def test_eval_deeplab_against_hand_confusion(tmp_path, voc_root):
    from step import eval_deeplab
    gt_dir = tmp_path / "gt"
    args = make_args(tmp_path / "w", voc12_root=voc_root, gt_dir=gt_dir, seg_save_png=0,
                     seg_eval_list=write_list(tmp_path / "eval.txt", ["a", "b"]))
    save_png(gt_dir / "a.png", np.array([[0, 0, 1, 1]], np.uint8))
    save_png(gt_dir / "b.png", np.array([[2, 2, 255, 0]], np.uint8))
    save_png(os.path.join(args.deeplab_pred_dir, "a.png"), np.array([[0, 1, 1, 0]], np.uint8))
    save_png(os.path.join(args.deeplab_pred_dir, "b.png"), np.array([[2, 0, 2, 0]], np.uint8))
    results = eval_deeplab.run(args)
    # counted (gt, pred): a: (0,0) (0,1) (1,1) (1,0); b: (2,2) (2,0) (0,0). background: tp 2, gt 3, pred 4 ->
    # 2/5; class 1: tp 1, gt 2, pred 2 -> 1/3; class 2: tp 1, gt 2, pred 1 -> 1/2
    assert results["per_class_iou"]["background"] == pytest.approx(40.0)
    assert results["per_class_iou"]["aeroplane"] == pytest.approx(100 / 3, abs=1e-3)
    assert results["per_class_iou"]["bicycle"] == pytest.approx(50.0)
    assert results["per_class_iou"]["bird"] is None
    assert results["miou"] == pytest.approx((40 + 100 / 3 + 50) / 3, abs=1e-3)
    assert results["precision"] == pytest.approx(200 / 3, abs=1e-3) and results["recall"] == pytest.approx(50.0)
    assert results["all_background_miou"] == pytest.approx(100 * (3 / 7) / 3, abs=1e-3)  # bg IoU 3/7, 0, 0
    assert results["pseudo_mask_miou"] is None and results["crf"] is False and results["num_images"] == 2
    os.remove(os.path.join(args.deeplab_pred_dir, "b.png"))
    with pytest.raises(DataError, match="prediction .*b.png of image b is missing.*infer_deeplab"):
        eval_deeplab.run(args)


# --- bad inputs ----------------------------------------------------------------------------------------------------


def test_bad_pseudo_masks_and_saliency(tmp_path, voc_root):
    from step import make_seg_labels
    ids = train_subset_ids(2)
    id_list = write_list(tmp_path / "ids.txt", ids)
    args = make_args(tmp_path / "w", voc12_root=voc_root, seg_train_list=id_list)
    with pytest.raises(DataError, match="pseudo-mask folder .*sem_seg is missing or empty.*make_sem_seg"):
        make_seg_labels.run(args)
    write_gt_pseudo_masks(args, voc_root, ids)
    os.remove(os.path.join(args.sem_seg_score_dir, ids[1] + ".png"))
    with pytest.raises(DataError, match=f"no walk score .*e.g. {ids[1]}.*--overwrite make_sem_seg"):
        make_seg_labels.run(args)
    write_gt_pseudo_masks(args, voc_root, ids)
    save_png(os.path.join(args.sem_seg_out_dir, ids[0] + ".png"), np.zeros((5, 7), np.uint8))
    with pytest.raises(DataError, match=f"pseudo mask .*{ids[0]}.png is 5x7 but image"):
        make_seg_labels.run(args)
    gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", ids[0] + ".png"))
    save_png(os.path.join(args.sem_seg_out_dir, ids[0] + ".png"), np.full(gt.shape, 37, np.uint8))
    with pytest.raises(DataError, match="value 37, above the 20 classes"):
        make_seg_labels.run(args)
    write_gt_pseudo_masks(args, voc_root, ids)
    sal_dir = tmp_path / "sal"
    save_png(sal_dir / f"{ids[0]}.png", np.zeros(gt.shape, np.uint8))
    sal = make_args(tmp_path / "sal_w", voc12_root=voc_root, seg_train_list=id_list, seg_saliency_dir=sal_dir)
    write_gt_pseudo_masks(sal, voc_root, ids)
    with pytest.raises(DataError, match=f"has no saliency map for image {ids[1]}"):
        make_seg_labels.run(sal)
    assert not any(n.endswith(".png") for n in os.listdir(sal.seg_label_dir))  # nothing half-written


def test_checkpoint_of_another_class_count_or_backbone(tmp_path):
    from deeplab.predict import load_deeplab, save_deeplab
    path = str(tmp_path / "deeplab.pth")
    torch.manual_seed(0)
    model = build_deeplab(5, "resnet50")
    save_deeplab(path, model, "resnet50", ["a", "b", "c", "d"])
    torch.manual_seed(1)  # another init: only the file can make the weights equal
    loaded = load_deeplab(path, 5, "resnet50").state_dict()
    saved = model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    with pytest.raises(DataError, match="predicts 5 classes .* the dataset has 21"):
        load_deeplab(path, 21, "resnet50")
    with pytest.raises(DataError, match="resnet50 DeepLab but --seg_arch is resnet101"):
        load_deeplab(path, 5, "resnet101")
