"""IRN stage: path indices and affinity labels, the random walk (dense reference vs lean), the CRF wrapper, IR label
combination, pseudo-mask evaluation, a tiny end-to-end run on real VOC images, resume and bad inputs."""
import os

import numpy as np
import pytest
import torch

from conftest import make_args, miou_by_hand, train_subset_ids, write_list
from misc import imutils
from misc.errors import DataError
from misc.fileio import load_label_png, save_cam_npz, save_png
from net import irn_affinity


# --- path indices and affinity labels ----------------------------------------------------------------------------


def test_search_directions_cover_half_disk():
    for radius in (2, 5, 10):
        dirs = irn_affinity.search_directions(radius)
        # every offset of the open disk except 0 appears exactly once, either as d or as -d
        disk = {(y, x) for y in range(-radius, radius + 1) for x in range(-radius, radius + 1)
                if 0 < x * x + y * y < radius * radius}
        assert len(dirs) == len(set(dirs)) == len(disk) // 2
        assert set(dirs) | {(-y, -x) for y, x in dirs} == disk
    assert irn_affinity.num_pairs(5) == 34


def test_path_index_and_affinity_labels_by_hand():
    # radius 2: directions (0,1), (1,-1), (1,0), (1,1); paths of (0,1) and (1,0) have 2 pixels, the diagonals 4
    # (the two pixels beside the diagonal are within distance 1 of it). Groups by length: [(0,1), (1,0)], then
    # [(1,-1), (1,1)].
    index = irn_affinity.PathIndex(2, (3, 4))
    assert index.search_dst.tolist() == [[0, 1], [1, 0], [1, -1], [1, 1]]
    assert [p.shape for p in index.search_paths] == [(2, 2, 2), (2, 4, 2)]
    # sources: rows [0, 3 - 1), columns [1, 4 - 1) -> (0,1) (0,2) (1,1) (1,2) = flat 1, 2, 5, 6
    assert index.src_indices.tolist() == [1, 2, 5, 6]
    assert index.dst_indices.tolist() == [[2, 3, 6, 7], [5, 6, 9, 10], [4, 5, 8, 9], [6, 7, 10, 11]]

    label = np.array([[0, 0, 1, 1],
                      [0, 255, 1, 1],
                      [2, 2, 2, 1]])
    bg_pos, fg_pos, neg = irn_affinity.affinity_labels(label, index.src_indices, index.dst_indices, num_classes=20)
    # rows: directions (0,1), (1,0), (1,-1), (1,1); columns: sources (0,1)=0, (0,2)=1, (1,1)=255, (1,2)=1
    assert bg_pos.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert fg_pos.tolist() == [[0, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]]
    assert neg.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0]]


def test_edge_to_affinity_takes_max_along_path():
    index = irn_affinity.PathIndex(3, (4, 6))
    edge = torch.zeros(4, 6)
    edge[0, 3] = 0.8  # on the straight path from (0, 2) to (0, 4)
    aff = irn_affinity.edge_to_affinity(edge.reshape(1, -1), [torch.from_numpy(p) for p in index.path_indices])[0]
    src = index.src_indices.tolist().index(2)  # flat (0, 2)
    d = [tuple(x) for x in index.search_dst.tolist()].index((0, 2))
    assert aff[d, src] == pytest.approx(0.2)
    d_down = [tuple(x) for x in index.search_dst.tolist()].index((2, 0))
    assert aff[d_down, src] == pytest.approx(1.0)  # a path that avoids the boundary pixel


# --- random walk -------------------------------------------------------------------------------------------------


def test_transition_matrix_is_column_stochastic_and_squared():
    rng = np.random.default_rng(0)
    a = rng.random((12, 12))
    aff = torch.from_numpy((a + a.T) / 2 + np.eye(12))
    t1 = irn_affinity.to_transition_matrix(aff, beta=3.0, exp_times=0).numpy()
    assert np.allclose(t1.sum(axis=0), 1.0)
    t8 = irn_affinity.to_transition_matrix(aff, beta=3.0, exp_times=3).numpy()
    expected = t1
    for _ in range(7):
        expected = expected @ t1
    assert np.allclose(t8, expected)
    assert np.allclose(t8.sum(axis=0), 1.0)


def test_random_walk_on_toy_graph_by_hand():
    # a 1 x 3 grid with boundary 0.5 in the middle: every pair's path touches the middle pixel, so all three
    # off-diagonal affinities are 1 - 0.5 = 0.5 (radius 5 reaches everything). beta = 1:
    # A = [[1, .5, .5], [.5, 1, .5], [.5, .5, 1]], column sums 2, T = A / 2.
    edge = torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64)
    x = torch.tensor([[[1.0, 1.0, 0.0]]], dtype=torch.float64)
    t = np.array([[1, .5, .5], [.5, 1, .5], [.5, .5, 1]]) / 2
    seeds = np.array([1.0, 1.0, 0.0]) * (1 - np.array([0.0, 0.5, 0.0]))  # the walk starts from cam * (1 - B)
    expected = seeds @ np.linalg.matrix_power(t, 4)  # exp_times 2 -> T^4
    dense = irn_affinity.random_walk_dense(x, edge, radius=5, beta=1.0, exp_times=2)
    lean = irn_affinity.random_walk_lean(x, edge, radius=5, beta=1.0, exp_times=2)
    assert np.allclose(dense.reshape(-1).numpy(), expected)
    assert np.allclose(lean.reshape(-1).numpy(), expected)


def _blobby_edge(h, w, seed=0):
    """A boundary map with a few closed contours, like IRNet's output."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    edge = 0.05 * torch.rand(h, w, generator=g)
    for cy, cx, r in ((h * 0.4, w * 0.3, h * 0.25), (h * 0.6, w * 0.7, h * 0.3)):
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        edge = torch.maximum(edge, torch.exp(-((dist - r) ** 2) / 2.0))
    return edge


def test_stencil_affinity_equals_official_dense_affinity():
    edge = _blobby_edge(11, 14)
    offsets, aff = irn_affinity.affinity_stencil(edge, 5)
    assert len(offsets) == 1 + 2 * 34
    assert torch.equal(irn_affinity.stencil_to_dense(offsets, aff), irn_affinity.dense_affinity(edge, 5))


def test_stencil_walk_reuses_its_grids_without_changing_a_bit():
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(3)
    edge = _blobby_edge(23, 31).double()
    offsets, aff = irn_affinity.affinity_stencil(edge, 5)
    weights = aff.pow(10.0)
    weights = weights / weights.sum(dim=0, keepdim=True)
    x = torch.rand(3, 23, 31, generator=g, dtype=torch.float64)
    before = x.clone()
    expected = x  # the plain form: a fresh zero-padded copy and a fresh output every step
    for _ in range(16):
        padded = F.pad(expected, (4, 4, 4, 4))
        nxt = torch.zeros_like(expected)
        for (dy, dx), wk in zip(offsets, weights):
            nxt.addcmul_(padded[:, 4 + dy:4 + dy + 23, 4 + dx:4 + dx + 31], wk)
        expected = nxt
    assert torch.equal(irn_affinity.stencil_walk(x, offsets, weights, 5, 16), expected)
    assert torch.equal(x, before) and irn_affinity.stencil_walk(x, offsets, weights, 5, 0) is x


def test_lean_walk_equals_dense_walk_and_labels():
    from argparse import Namespace
    from step.make_sem_seg_labels import pseudo_mask
    h, w = 24, 31
    edge = _blobby_edge(h, w, seed=1)
    g = torch.Generator().manual_seed(2)
    cams = torch.rand(3, h, w, generator=g) ** 2
    dense = irn_affinity.random_walk_dense(cams, edge)
    lean = irn_affinity.random_walk_lean(cams, edge)
    assert torch.allclose(dense, lean, rtol=1e-4, atol=1e-5)
    args = Namespace(sem_seg_power=1.3, beta=10.0, exp_times=8, sem_seg_bg_thres=0.27)
    keys = np.array([2, 7, 11])
    size = (4 * h - 3, 4 * w - 2)
    a = pseudo_mask(cams, keys, edge, size, args, lean=False)
    b = pseudo_mask(cams, keys, edge, size, args, lean=True)
    assert a.shape == size and set(np.unique(a)) <= {0, 3, 8, 12}
    assert (a == b).mean() > 0.9999


# --- network -------------------------------------------------------------------------------------------------------


def test_irnet_shapes_and_flip_alignment():
    import torch.nn.functional as F
    from net.resnet50_irn import IRNet
    torch.manual_seed(0)
    model = IRNet().eval()
    x = torch.randn(1, 3, 61, 77)
    edge, dp = model(x)
    assert edge.shape == (1, 1, 16, 20) and dp.shape == (1, 2, 16, 20)
    with torch.inference_mode():  # make_sem_seg's boundary without the displacement branch: the same bits
        assert torch.equal(model.boundary_logits(x), edge)
    # With a flip-equivariant stand-in network (a 4x4 mean of the first channel), the merged map of [image,
    # flipped image] padded to 64 must equal the stand-in's map of the image: the flipped map is cropped to
    # the image before it is flipped back (flipping the padded map would shift it by the padding).
    model.boundary_logits = lambda x: F.avg_pool2d(x[:, :1], 4)
    img = torch.randn(3, 32, 40)
    merged = model.boundary_map(torch.stack([img, img.flip(-1)]), pad_to=64)
    assert merged.shape == (8, 10)
    assert torch.allclose(merged, torch.sigmoid(F.avg_pool2d(img[None, :1], 4))[0, 0], atol=1e-6)


# --- CRF and IR labels ---------------------------------------------------------------------------------------------


def test_crf_keeps_a_ground_truth_like_label_map(voc_root):
    from misc.crf import crf_inference_label
    from misc.fileio import load_image_rgb
    img_id = train_subset_ids(1)[0]
    img = load_image_rgb(os.path.join(voc_root, "JPEGImages", img_id + ".jpg"))
    gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", img_id + ".png"))
    keys = np.unique(gt[gt != 255])
    compact = np.searchsorted(keys, np.where(gt == 255, 0, gt))  # 0..n-1, void painted background
    out = crf_inference_label(img, compact, n_labels=len(keys))
    assert out.shape == gt.shape and out.min() >= 0 and out.max() < len(keys)
    valid = gt != 255
    assert (out[valid] == compact[valid]).mean() > 0.9
    assert np.all(crf_inference_label(img, np.zeros(gt.shape, int), n_labels=1) == 0)


def test_crf_of_several_maps_equals_one_crf_each(voc_root):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels
    from misc.crf import crf_inference_labels
    from misc.fileio import load_image_rgb
    img_id = train_subset_ids(1)[0]
    img = load_image_rgb(os.path.join(voc_root, "JPEGImages", img_id + ".jpg"))[:160, :200].copy()
    h, w = img.shape[:2]
    maps = [np.add.outer(np.arange(h) // s, np.arange(w) // (s + 7)) % 3 for s in (20, 45)]

    def one_crf(labels):  # the CRF of IRN's crf_inference_label, set up for this map alone
        crf = dcrf.DenseCRF2D(w, h, 3)
        crf.setUnaryEnergy(unary_from_labels(labels, 3, gt_prob=0.7, zero_unsure=False))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=img, compat=10)
        return np.argmax(np.asarray(crf.inference(10)).reshape(3, h, w), axis=0)
    shared = crf_inference_labels(img, maps, n_labels=3)
    assert len(shared) == 2
    for labels, out in zip(maps, shared):
        expected = one_crf(labels)
        assert np.array_equal(out, expected) and (expected != labels).any()  # the CRF did change labels


def test_ir_label_combines_confident_maps(monkeypatch):
    from step import cam_to_ir_label
    monkeypatch.setattr(cam_to_ir_label, "crf_inference_labels", lambda img, maps, n_labels: list(maps))
    high_res = np.array([[[0.5, 0.2, 0.1, 0.0]]], np.float32)  # one class (index 4 -> label 5)
    record = {"keys": np.array([4]), "high_res": high_res}
    label = cam_to_ir_label.ir_label(np.zeros((1, 4, 3), np.uint8), record, fg_thres=0.35, bg_thres=0.17)
    assert label.tolist() == [[5, 255, 0, 0]]
    empty = {"keys": np.zeros(0, np.int64), "high_res": np.zeros((0, 1, 4), np.float32)}
    assert cam_to_ir_label.ir_label(np.zeros((1, 4, 3), np.uint8), empty, 0.35, 0.17).tolist() == [[0, 0, 0, 0]]


# --- evaluation ----------------------------------------------------------------------------------------------------


def test_eval_sem_seg_against_hand_confusion(tmp_path, voc_root):
    from step import eval_sem_seg
    gt_dir = tmp_path / "gt"
    args = make_args(tmp_path / "w", voc12_root=voc_root, gt_dir=gt_dir,
                     eval_list=write_list(tmp_path / "eval.txt", ["a", "b"]))
    # image a: gt [0 0 1 1], pred [0 1 1 255] (255 counts as 0); image b: gt [2 2 255 0], pred [2 0 2 0]
    save_png(gt_dir / "a.png", np.array([[0, 0, 1, 1]], np.uint8))
    save_png(gt_dir / "b.png", np.array([[2, 2, 255, 0]], np.uint8))
    save_png(os.path.join(args.sem_seg_out_dir, "a.png"), np.array([[0, 1, 1, 255]], np.uint8))
    save_png(os.path.join(args.sem_seg_out_dir, "b.png"), np.array([[2, 0, 2, 0]], np.uint8))
    results = eval_sem_seg.run(args)
    # counted pixels (gt, pred): a: (0,0) (0,1) (1,1) (1,0); b: (2,2) (2,0) (0,0)
    # background: tp 2, gt 3, pred 4 -> IoU 2/5; class 1: tp 1, gt 2, pred 2 -> 1/3; class 2: tp 1, gt 2, pred 1
    # -> 1/2. mIoU over the three present classes.
    assert results["per_class_iou"]["background"] == pytest.approx(40.0)
    assert results["per_class_iou"]["aeroplane"] == pytest.approx(100 / 3, abs=1e-3)
    assert results["per_class_iou"]["bicycle"] == pytest.approx(50.0)
    assert results["per_class_iou"]["bird"] is None
    assert results["miou"] == pytest.approx((40 + 100 / 3 + 50) / 3, abs=1e-3)
    # foreground: tp 2, predicted fg 3, gt fg 4; background fp = (4 - 2) / 5, fn = (3 - 2) / 5
    assert results["precision"] == pytest.approx(200 / 3, abs=1e-3)
    assert results["recall"] == pytest.approx(50.0)
    assert results["fp_bg"] == pytest.approx(40.0) and results["fn_bg"] == pytest.approx(20.0)
    assert results["num_images"] == 2
    assert os.path.isfile(os.path.join(args.result_dir, "eval_sem_seg.md"))
    os.remove(os.path.join(args.sem_seg_out_dir, "b.png"))
    with pytest.raises(DataError, match="of image b is missing"):
        eval_sem_seg.run(args)


# --- end to end, resume and bad inputs ---------------------------------------------------------------------------


def write_gt_cams(cam_dir, voc_root, ids, num_classes=20):
    """CAM files from blurred ground-truth masks (so that this test does not depend on make_cam / rib)."""
    import cv2
    for img_id in ids:
        gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", img_id + ".png"))
        classes = [c for c in np.unique(gt) if 0 < c <= num_classes]
        maps = []
        for c in classes:
            m = cv2.GaussianBlur((gt == c).astype(np.float32), (0, 0), 12)
            maps.append(m / max(m.max(), 1e-5))
        h, w = gt.shape
        high_res = np.array(maps, np.float32).reshape(len(classes), h, w)
        fh, fw = imutils.strided_size((h, w), 4)
        cam = np.array([cv2.resize(m, (fw, fh), interpolation=cv2.INTER_AREA) for m in maps],
                       np.float32).reshape(len(classes), fh, fw)
        save_cam_npz(os.path.join(cam_dir, img_id + ".npz"), np.array(classes) - 1, cam, high_res)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, voc_root):
    import run_sample
    work = tmp_path_factory.mktemp("irn")
    ids = train_subset_ids(4)
    id_list = write_list(work / "ids.txt", ids)
    args = make_args(work / "w", voc12_root=voc_root, infer_list=id_list, eval_list=id_list,
                     ir_cam_source="rib", irn_crop_size=64, irn_batch_size=2, irn_num_epoches=1,
                     only="cam_to_ir_label,train_irn,make_sem_seg,eval_sem_seg")
    write_gt_cams(args.rib_out_dir, voc_root, ids)
    run_sample.run_steps(args)
    return args, ids


def test_end_to_end_tiny_run(tiny_run, voc_root):
    import json
    from misc.fileio import load_checkpoint
    args, ids = tiny_run
    for img_id in ids:
        gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", img_id + ".png"))
        allowed = set(np.unique(gt[gt != 255]).tolist())
        ir = load_label_png(os.path.join(args.ir_label_out_dir, img_id + ".png"))
        assert ir.shape == gt.shape and set(np.unique(ir).tolist()) <= allowed | {255}
        sem = load_label_png(os.path.join(args.sem_seg_out_dir, img_id + ".png"))
        assert sem.shape == gt.shape and set(np.unique(sem).tolist()) <= allowed
        assert os.path.isfile(os.path.join(args.sem_seg_out_dir, img_id + "_palette.png"))
    state = load_checkpoint(args.irn_weights_path)["state_dict"]
    assert "mean_shift.running_mean" in state and torch.isfinite(state["mean_shift.running_mean"]).all()
    with open(os.path.join(args.result_dir, "eval_sem_seg.json")) as f:
        results = json.load(f)
    assert results["num_images"] == len(ids) and len(results["per_class_iou"]) == 21
    # the walk starts from blurred ground truth: even a random IRNet keeps the masks far above chance
    assert 30 < results["miou"] <= 100
    # both recomputed from the masks on disk: unsure (255) counts as background, void ignored; IRN's background
    # false-positive rate = non-background pixels predicted background over the background union
    pairs = [(load_label_png(os.path.join(voc_root, "SegmentationClassAug", i + ".png")),
              load_label_png(os.path.join(args.sem_seg_out_dir, i + ".png")) % 255) for i in ids]
    assert results["miou"] == round(100 * miou_by_hand(pairs), 3)
    gt, pred = (np.concatenate([p[k][p[0] != 255] for p in pairs]) for k in (0, 1))
    wrong_bg, union_bg = ((pred == 0) & (gt != 0)).sum(), ((pred == 0) | (gt == 0)).sum()
    assert results["fp_bg"] == round(100 * wrong_bg / union_bg, 3)


def test_second_run_skips_finished_outputs(tiny_run):
    import run_sample
    args, ids = tiny_run
    outputs = [os.path.join(args.ir_label_out_dir, i + ".png") for i in ids]
    outputs += [os.path.join(args.sem_seg_out_dir, i + ".png") for i in ids] + [args.irn_weights_path]
    before = [os.stat(p).st_mtime_ns for p in outputs]
    from step import cam_to_ir_label, make_sem_seg_labels
    assert cam_to_ir_label.run(args) == 0 and make_sem_seg_labels.run(args) == 0
    run_sample.run_steps(args)
    assert [os.stat(p).st_mtime_ns for p in outputs] == before


def test_missing_cam_file_names_the_id(tmp_path, voc_root):
    from step import cam_to_ir_label, make_sem_seg_labels
    ids = train_subset_ids(2)
    args = make_args(tmp_path / "w", voc12_root=voc_root, infer_list=write_list(tmp_path / "l.txt", ids),
                     ir_cam_source="cam")
    write_gt_cams(args.cam_out_dir, voc_root, ids[:1])
    with pytest.raises(DataError, match=f"{ids[1]}.*make_cam"):
        cam_to_ir_label.run(args)
    with pytest.raises(DataError, match=f"{ids[1]}.*make_cam"):
        make_sem_seg_labels.run(args)


def test_missing_irnet_checkpoint_and_foreign_classes(tmp_path, voc_root):
    from step import cam_to_ir_label, make_sem_seg_labels
    ids = train_subset_ids(1)
    args = make_args(tmp_path / "w", voc12_root=voc_root, infer_list=write_list(tmp_path / "l.txt", ids),
                     ir_cam_source="rib")
    write_gt_cams(args.rib_out_dir, voc_root, ids)
    with pytest.raises(DataError, match="res50_irn.pth.*train_irn"):
        make_sem_seg_labels.run(args)
    # a CAM with class index 25 (COCO-like) on the 20-class VOC dataset
    gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", ids[0] + ".png"))
    h, w = gt.shape
    fh, fw = imutils.strided_size((h, w), 4)
    save_cam_npz(os.path.join(args.rib_out_dir, ids[0] + ".npz"), [25], np.ones((1, fh, fw)), np.ones((1, h, w)))
    with pytest.raises(DataError, match="25.*20 classes"):
        cam_to_ir_label.run(args)
