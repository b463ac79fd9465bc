"""The confusion matrix, scores and the one-pass threshold sweep against hand-computed values."""
import numpy as np
import pytest

from misc.metrics import ConfusionMatrix, scores_from_confusion
from step.eval_cam import ThresholdSweep, seed_prediction, seed_scores, summarize


def test_confusion_counts_and_ignores_void():
    gt = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    # rows gt, cols pred: (0,0) (0,1) (1,1) (1,2) (2,2); the 255 pixel is dropped
    expected = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(cm.mat, expected)


def test_scores_hand_computed():
    mat = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    s = scores_from_confusion(mat)
    # IoU = tp / (row + col - tp): bg 1/(2+1-1)=0.5, c1 1/(2+2-1)=1/3, c2 1/(1+2-1)=0.5
    np.testing.assert_allclose(s["iou"], [0.5, 1 / 3, 0.5])
    assert s["miou"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    # foreground: predicted fg = cols 1,2 = 4 pixels, correct fg = 2 -> precision 0.5; gt fg = 3 -> recall 2/3
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_among_predfg_bg_counts_only_ground_truth_background():
    # rows gt, cols pred; predicted foreground = columns 1 and 2 = 2 + 3 + 4 + 1 + 5 + 1 = 16 pixels
    mat = np.array([[10, 2, 1],    # gt background: 3 pixels predicted foreground
                    [0, 3, 4],     # gt class 1: 4 predicted as class 2 (wrong class, but not background)
                    [1, 1, 5]])
    out = summarize(mat, ("background", "a", "b"))
    assert out["among_predfg_bg"] == pytest.approx(100 * 3 / 16)  # the official share: 18.75 %
    # the old formula counted every wrongly classed foreground pixel: (16 - 8) / 16 = 50 %
    assert out["among_predfg_bg"] != pytest.approx(100 * (16 - 8) / 16)


def test_absent_class_is_nan_and_skipped_by_the_mean():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    s = cm.compute()
    assert np.isnan(s["iou"][2]) and np.isnan(s["iou"][3])
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # nanmean over the two present classes


def test_class_only_in_prediction_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0]), np.array([0, 2]))
    s = cm.compute()
    assert s["iou"][2] == 0.0 and s["miou"] == pytest.approx((0.5 + 0.0) / 2)


def _random_record(rng, n_keys, size, num_classes=20):
    keys = np.sort(rng.choice(num_classes, n_keys, replace=False)).astype(np.int64)
    high_res = rng.random((n_keys, *size)).astype(np.float32) ** 2
    return {"keys": keys, "high_res": high_res}


def test_one_pass_sweep_equals_per_threshold_evaluation():
    rng = np.random.default_rng(0)
    thresholds = [round(0.2 + 0.01 * i, 2) for i in range(30)]
    sweep = ThresholdSweep(21, thresholds)
    per_threshold = [ConfusionMatrix(21) for _ in thresholds]
    for n_keys in (0, 1, 2, 3):
        record = _random_record(rng, n_keys, (17, 23))
        gt = rng.integers(0, 21, size=(17, 23))
        gt[rng.random(gt.shape) < 0.1] = 255
        # exact ties with a threshold must go to background in both paths
        if n_keys:
            record["high_res"][0, 0, :5] = np.float32(0.25)
        score, cls = seed_scores(record, gt.shape)
        sweep.update(gt, score, cls)
        for cm, t in zip(per_threshold, thresholds):
            cm.update(gt, seed_prediction(record, t) if n_keys else np.zeros_like(gt))
    for j, cm in enumerate(per_threshold):
        np.testing.assert_array_equal(sweep.confusion(j), cm.mat, err_msg=f"threshold {thresholds[j]}")


def test_seed_prediction_by_hand():
    record = {"keys": np.array([2, 7]), "high_res": np.array([[[0.9, 0.1], [0.3, 0.5]],
                                                              [[0.2, 0.6], [0.3, 0.4]]], np.float32)}
    # threshold 0.35: pixel (0,0) class 2 -> label 3; (0,1) class 7 -> 8; (1,0) all <= 0.35 -> bg; (1,1) 0.5 -> 3
    np.testing.assert_array_equal(seed_prediction(record, 0.35), [[3, 8], [0, 3]])
    # a tie with the threshold goes to background
    np.testing.assert_array_equal(seed_prediction(record, 0.5), [[3, 8], [0, 0]])


def test_all_background_baseline():
    sweep = ThresholdSweep(3, [0.5])
    gt = np.array([0, 0, 0, 1, 2, 255])
    sweep.update(gt, np.zeros(6, np.float32), np.zeros(6, np.int64))
    mat = sweep.all_background_confusion()
    np.testing.assert_array_equal(mat, [[3, 0, 0], [1, 0, 0], [1, 0, 0]])
    # background IoU 3/5, classes 1 and 2 IoU 0 -> mIoU 0.2
    assert scores_from_confusion(mat)["miou"] == pytest.approx(0.2)
