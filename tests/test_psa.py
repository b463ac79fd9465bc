"""PSA stage (AffinityNet): label combination and block reduction, pairs and affinities, the loss, the lean walk
against the official dense walk, the networks, a tiny end-to-end run on real VOC images, resume, and bad inputs."""
import math
import os

import numpy as np
import pytest
import torch

from conftest import make_args, miou_by_hand, save_random_classifier, train_subset_ids, write_list
from misc import indexing, psa
from misc.fileio import DataError, load_checkpoint, load_label_png, save_checkpoint


# --- affinity labels ---------------------------------------------------------------------------------------------


def test_combine_labels_by_hand():
    # compact CRF labels: 0 background, 1 -> keys[0] = 4 (label 5), 2 -> keys[1] = 11 (label 12)
    low = np.array([[0, 1, 2, 1, 0]])
    high = np.array([[0, 1, 2, 0, 2]])
    # low says bg -> 255 (unless high says bg -> 0); low says fg -> its class, except where high says bg
    assert psa.combine_labels(low, high, np.array([4, 11])).tolist() == [[0, 5, 12, 0, 255]]


def test_psa_label_uses_both_alphas():
    # with the CRF replaced by a plain argmax: CAM c, background (1 - c)^alpha.
    # c = 0.9, 0.3: (1 - c)^4 < c -> confident foreground; c = 0.2: 0.8^4 = 0.41 > 0.2 (low-alpha background) but
    # 0.8^32 < 0.2 (high-alpha foreground) -> unsure; c = 0.05: 0.95^32 = 0.19 > 0.05 -> confident background.
    record = {"keys": np.array([2]), "high_res": np.array([[[0.9, 0.3, 0.2, 0.05]]], np.float32)}
    plain = lambda img, cams, alpha: np.concatenate([psa.background_score(cams, alpha), cams]).argmax(axis=0)
    img = np.zeros((1, 4, 3), np.uint8)
    assert psa.psa_label(img, record, 4, 32, crf=plain).tolist() == [[3, 3, 255, 0]]
    empty = {"keys": np.zeros(0, np.int64), "high_res": np.zeros((0, 1, 4), np.float32)}
    assert psa.psa_label(img, empty, 4, 32, crf=plain).tolist() == [[0, 0, 0, 0]]


def test_reduce_label_majority_by_hand():
    label = np.array([[0, 0, 5, 5, 255, 255],
                      [0, 5, 255, 5, 0, 5],
                      [0, 5, 7, 7, 9, 9],
                      [5, 0, 7, 255, 9, 9]], np.uint8)
    valid = np.ones(label.shape, bool)
    valid[2:, 4:] = False  # padding: a block with no valid pixel
    valid[2, 2] = valid[2, 3] = valid[3, 2] = False  # only the 255 counts in this block
    # blocks (stride 2): [0 0 0 5] -> 0; [5 5 255 5] -> 5; [255 255 0 5] -> 255; [0 5 5 0] tie -> 0 (smallest);
    # [255] -> 255; padding only -> 255
    assert psa.reduce_label(label, valid, stride=2).tolist() == [[0, 5, 255], [0, 255, 255]]
    # sizes that are not multiples: the last blocks are partial ([255 0] is a tie -> 0)
    assert psa.reduce_label(label[:3, :5], valid[:3, :5], stride=2).tolist() == [[0, 5, 0], [0, 255, 255]]


def test_color_jitter_is_seeded_and_keeps_gray():
    rng_img = np.random.default_rng(0)
    img = rng_img.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a = psa.color_jitter(img, np.random.default_rng(1))
    b = psa.color_jitter(img, np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b) and not np.array_equal(a, img)
    assert np.array_equal(psa.color_jitter(img, np.random.default_rng(1), 0, 0, 0, 0), img)
    gray = np.full((4, 4, 3), 128, np.uint8)  # no saturation: a hue shift changes nothing
    assert np.array_equal(psa.color_jitter(gray, np.random.default_rng(2), 0, 0, 0, 0.1), gray)


# --- pairs, affinities and the loss --------------------------------------------------------------------------------


def test_pairs_are_the_official_layout():
    h, w = 12, 15
    src, dst = psa.pair_indices(5, (h, w))
    index = indexing.PathIndex(5, (h, w))  # IRN's layout: same sources, directions grouped by path length
    assert np.array_equal(src, index.src_indices)
    for k, (dy, dx) in enumerate(indexing.search_directions(5)):  # PSA's order: directions as listed
        assert np.array_equal(dst[k], src + dy * w + dx)
    assert dst.shape == (34, (h - 4) * (w - 8))
    assert psa.pair_indices(5, (4, 20))[0].size == 0  # fewer than 5 rows: no source


def test_pair_affinity_is_exp_of_mean_l1():
    g = torch.Generator().manual_seed(0)
    features = torch.rand(2, 3, 6, 10, generator=g)
    aff = psa.pair_affinity(features)
    src, dst = psa.pair_indices(5, (6, 10))
    flat = features.flatten(2)
    expected = torch.exp(-(flat[:, :, src][:, :, None] - flat[:, :, dst]).abs().mean(dim=1))
    assert aff.shape == (2, 34, 2 * 2) and torch.allclose(aff, expected)


def test_affinity_loss_on_hand_made_pairs():
    aff = torch.tensor([[[0.5, 0.9, 0.2, 1.0], [0.8, 0.1, 0.6, 0.3]]])
    bg = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 0]]])
    fg = torch.tensor([[[0, 1.0, 0, 1.0], [0, 0, 0, 0]]])
    neg = torch.tensor([[[0, 0, 1.0, 0], [0, 1.0, 0, 0]]])
    eps = 1e-5
    bg_loss = -math.log(0.5 + eps) / (1 + eps)
    fg_loss = (-math.log(0.9 + eps) - math.log(1.0 + eps)) / (2 + eps)
    neg_loss = (-math.log(1 + eps - 0.2) - math.log(1 + eps - 0.1)) / (2 + eps)
    out = psa.affinity_loss(aff, bg, fg, neg)
    assert out["bg_pos"].item() == pytest.approx(bg_loss, rel=1e-5)
    assert out["fg_pos"].item() == pytest.approx(fg_loss, rel=1e-5)
    assert out["neg"].item() == pytest.approx(neg_loss, rel=1e-5)
    assert out["loss"].item() == pytest.approx(bg_loss / 4 + fg_loss / 4 + neg_loss / 2, rel=1e-5)
    # the unlabelled pairs (0.8, 0.6, 0.3) do not move the loss
    aff2 = aff.clone()
    aff2[0, 1, 0] = aff2[0, 1, 2] = aff2[0, 1, 3] = 0.01
    assert psa.affinity_loss(aff2, bg, fg, neg)["loss"].item() == pytest.approx(out["loss"].item())


# --- random walk ---------------------------------------------------------------------------------------------------


def hand_affinity(features, radius=5):
    """The official affinity matrix written out pixel by pixel: sources inside the band, lower half-plane."""
    c, h, w = features.shape
    rf = radius - 1
    a = np.eye(h * w)
    f = features.numpy().astype(np.float64)
    for y in range(h - rf):
        for x in range(rf, w - rf):
            for dy in range(0, radius):
                for dx in range(-rf, radius):
                    if (dy == 0 and dx <= 0) or dy * dy + dx * dx >= radius * radius:
                        continue
                    v = np.exp(-np.abs(f[:, y, x] - f[:, y + dy, x + dx]).mean())
                    a[y * w + x, (y + dy) * w + x + dx] = a[(y + dy) * w + x + dx, y * w + x] = v
    return a


def test_walk_by_hand_on_a_small_grid():
    g = torch.Generator().manual_seed(3)
    features = torch.rand(4, 6, 10, generator=g)
    x = torch.rand(2, 6, 10, generator=g)
    a = hand_affinity(features)
    assert np.allclose(psa.dense_affinity(features).numpy(), a, atol=1e-6)
    offsets, stencil = psa.affinity_stencil(features)
    assert len(offsets) == 69 and np.allclose(indexing.stencil_to_dense(offsets, stencil).numpy(), a, atol=1e-6)
    t = a ** 3.0
    t = t / t.sum(axis=0, keepdims=True)
    expected = (x.reshape(2, -1).numpy() @ np.linalg.matrix_power(t, 4)).reshape(2, 6, 10)  # logt 2 -> T^4
    assert np.allclose(psa.random_walk_dense(x, features, beta=3.0, logt=2).numpy(), expected, atol=1e-5)
    assert np.allclose(psa.random_walk_lean(x, features, beta=3.0, logt=2).numpy(), expected, atol=1e-6)


def test_cam_with_background_pools_the_padded_map():
    cams = torch.full((1, 3, 10), 0.5)  # 3 x 10 -> padded 8 x 16 -> a 1 x 2 grid
    pooled = psa.cam_with_background(cams, alpha=2.0)
    assert pooled.shape == (2, 1, 2)
    assert torch.allclose(pooled[:, 0, 0], torch.tensor([0.25 * 24 / 64, 0.5 * 24 / 64]))
    assert torch.allclose(pooled[:, 0, 1], torch.tensor([0.25 * 6 / 64, 0.5 * 6 / 64]))


def test_lean_walk_equals_dense_walk_and_labels():
    g = torch.Generator().manual_seed(1)
    # two smooth regions in feature space, like a trained AffinityNet's
    features = torch.rand(16, 11, 14, generator=g) * 0.3
    features[:8, :, 7:] += 1.0
    size = (83, 109)  # not a multiple of 8: padded and cropped
    high_res = torch.rand(2, *size, generator=g) ** 3
    keys = np.array([6, 14])
    walk_scores = psa.cam_with_background(high_res, 16.0)
    dense = psa.random_walk_dense(walk_scores, features, beta=8.0, logt=8)
    lean = psa.random_walk_lean(walk_scores, features, beta=8.0, logt=8)
    assert torch.allclose(dense, lean, rtol=1e-4, atol=1e-6)
    a, score_a = psa.psa_pseudo_mask(high_res, keys, features, size, lean=False, with_score=True)
    b, score_b = psa.psa_pseudo_mask(high_res, keys, features, size, lean=True, with_score=True)
    assert a.shape == size and set(np.unique(a)) <= {0, 7, 15} and (a == b).mean() > 0.9999
    assert score_a.dtype == np.uint8 and np.abs(score_a.astype(int) - score_b).max() <= 1 and score_a.max() == 255
    no_class = psa.psa_pseudo_mask(high_res[:0], np.zeros(0, np.int64), features, size)
    assert no_class.shape == size and not no_class.any()


# --- networks ------------------------------------------------------------------------------------------------------


def test_affinitynet_resnet50_shapes_and_parameter_groups():
    from net.affinitynet import AffinityNet
    torch.manual_seed(0)
    model = AffinityNet("resnet50").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 80)).shape == (1, 448, 8, 10)
    weights, biases, new_weights, new_biases = model.parameter_groups()
    assert [p.shape for p in new_weights] == [(64, 512, 1, 1), (128, 1024, 1, 1), (256, 2048, 1, 1),
                                              (448, 448, 1, 1)]
    assert not biases and not new_biases  # every conv is bias-free; BatchNorm is frozen
    trainable = {id(p) for p in weights}
    b = model.backbone
    assert not any(id(p) in trainable for m in (b.conv1, b.bn1, b.layer1) for p in m.parameters())
    assert not any(id(p) in trainable for p in b.layer3[0].bn1.parameters())
    assert id(b.layer3[0].conv2.weight) in trainable


def test_resnet38_loads_psa_named_weights(tmp_path, monkeypatch):
    import net.resnet38 as r38
    from net.affinitynet import AffinityNet
    torch.manual_seed(0)
    model = AffinityNet("resnet38").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 448, 4, 6)
    # a state dict as PSA saves its trained classifier: PSA's names, a head, no num_batches_tracked, "module."
    # prefixes; given from memory (a real file is 400 MB)
    state = {k: v for k, v in model.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["b4_3.conv_branch2a.weight"] = torch.randn_like(state["b4_3.conv_branch2a.weight"])
    state["bn7.running_var"] = torch.rand_like(state["bn7.running_var"])
    state["fc8.weight"] = torch.zeros(20, 4096, 1, 1)
    path = tmp_path / "res38_cls.pth"
    path.write_bytes(b"stand-in")
    monkeypatch.setattr(r38.torch, "load", lambda *a, **k: {"module." + k2: v for k2, v in state.items()})
    backbone = r38.load_resnet38_weights(model.backbone, str(path))
    assert torch.equal(backbone.b4_3.conv_branch2a.weight, state["b4_3.conv_branch2a.weight"])
    assert torch.equal(backbone.bn7.running_var, state["bn7.running_var"])
    monkeypatch.setattr(r38.torch, "load", lambda *a, **k: {"conv1.weight": torch.zeros(64, 3, 7, 7)})
    with pytest.raises(DataError, match="not a ResNet-38 state dict"):
        r38.load_resnet38_weights(backbone, str(path))
    with pytest.raises(DataError, match="convert_mxnet_to_torch"):
        r38.load_resnet38_weights(backbone, str(tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"))


# --- command line ------------------------------------------------------------------------------------------------


def test_flags_default_to_the_official_values(tmp_path):
    args = make_args(tmp_path / "w")
    official = {"psa_low_alpha": 4, "psa_high_alpha": 32, "psa_alpha": 16, "psa_beta": 8, "psa_logt": 8,
                "psa_crop_size": 448, "psa_batch_size": 8, "psa_num_epoches": 8, "psa_learning_rate": 0.1,
                "psa_weight_decay": 5e-4}
    assert {k: getattr(args, k) for k in official} == official
    assert args.psa_cam_source == "rib" and args.psa_backbone == "resnet50"
    assert make_args(tmp_path / "w", refine="psa").pseudo_mask_dir.endswith(os.path.join("result", "sem_seg_psa"))
    with pytest.raises(SystemExit):
        make_args(tmp_path / "w", psa_crop_size=100)  # not a multiple of 8


# --- end to end, resume and bad inputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, voc_root):
    import run_sample
    from test_irn import write_gt_cams
    work = tmp_path_factory.mktemp("psa")
    ids = train_subset_ids(3)
    id_list = write_list(work / "ids.txt", ids)
    args = make_args(work / "w", voc12_root=voc_root, infer_list=id_list, eval_list=id_list, refine="psa",
                     psa_cam_source="rib", psa_crop_size=80, psa_batch_size=2, psa_num_epoches=1,
                     only="cam_to_psa_label,train_aff,make_psa_sem_seg,eval_sem_seg")
    write_gt_cams(args.rib_out_dir, voc_root, ids)
    run_sample.run_steps(args)
    return args, ids


def test_end_to_end_tiny_run(tiny_run, voc_root):
    import json
    args, ids = tiny_run
    unsure = 0
    for img_id in ids:
        gt = load_label_png(os.path.join(voc_root, "SegmentationClassAug", img_id + ".png"))
        allowed = set(np.unique(gt[gt != 255]).tolist())
        label = load_label_png(os.path.join(args.psa_label_out_dir, img_id + ".png"))
        assert label.shape == gt.shape and set(np.unique(label).tolist()) <= allowed | {255}
        unsure += (label == 255).mean()
        mask = load_label_png(os.path.join(args.sem_seg_psa_out_dir, img_id + ".png"))
        assert mask.shape == gt.shape and set(np.unique(mask).tolist()) <= allowed
        assert os.path.isfile(os.path.join(args.sem_seg_psa_out_dir, img_id + "_palette.png"))
        assert load_label_png(os.path.join(args.sem_seg_psa_score_dir, img_id + ".png")).shape == gt.shape
    assert 0 < unsure / len(ids) < 0.5  # the two CRFs disagree on a band around the objects
    ckpt = load_checkpoint(args.psa_aff_weights_path)
    assert ckpt["kind"] == "psa_affinitynet" and ckpt["backbone"] == "resnet50" and ckpt["num_classes"] == 20
    with open(os.path.join(args.result_dir, "eval_sem_seg_psa.json")) as f:
        results = json.load(f)
    assert results["refine"] == "psa" and results["made_by"]["step"] == "make_psa_sem_seg"
    assert results["num_images"] == len(ids) and len(results["per_class_iou"]) == 21
    # the walk starts from blurred ground truth: even a random AffinityNet keeps the masks far above chance
    assert 30 < results["miou"] <= 100
    pairs = [(load_label_png(os.path.join(voc_root, "SegmentationClassAug", i + ".png")),
              load_label_png(os.path.join(args.sem_seg_psa_out_dir, i + ".png")) % 255) for i in ids]
    assert results["miou"] == round(100 * miou_by_hand(pairs), 3)  # recomputed from the masks on disk


def test_second_run_skips_finished_outputs(tiny_run):
    import run_sample
    from step import cam_to_psa_label, make_psa_sem_seg
    args, ids = tiny_run
    outputs = [os.path.join(args.psa_label_out_dir, i + ".png") for i in ids]
    outputs += [os.path.join(args.sem_seg_psa_out_dir, i + ".png") for i in ids] + [args.psa_aff_weights_path]
    before = [os.stat(p).st_mtime_ns for p in outputs]
    assert cam_to_psa_label.run(args) == 0 and make_psa_sem_seg.run(args) == 0
    run_sample.run_steps(args)
    assert [os.stat(p).st_mtime_ns for p in outputs] == before
    # an interrupted run resumes: a missing mask is remade, the others are kept
    os.remove(outputs[len(ids)])
    assert make_psa_sem_seg.run(args) == 1 and os.path.isfile(outputs[len(ids)])


def test_checkpoint_of_wrong_kind_backbone_or_class_count(tiny_run, tmp_path):
    from net.affinitynet import load_affinity_net
    from step import make_psa_sem_seg, train_aff
    args, ids = tiny_run
    classifier = tmp_path / "res50_cam.pth"
    save_random_classifier(classifier)
    with pytest.raises(DataError, match="not an AffinityNet checkpoint.*classifier.*--overwrite train_aff"):
        load_affinity_net(str(classifier), "resnet50", 20)
    with pytest.raises(DataError, match="resnet50 backbone but --psa_backbone is resnet38"):
        load_affinity_net(args.psa_aff_weights_path, "resnet38", 20)
    # the same weights recorded as trained on an 80-class dataset, in a fresh work dir, through the steps
    ckpt = load_checkpoint(args.psa_aff_weights_path)
    other = make_args(tmp_path / "w", voc12_root=args.voc12_root, infer_list=args.infer_list, refine="psa",
                      psa_crop_size=80, psa_batch_size=2, psa_num_epoches=1)
    save_checkpoint(other.psa_aff_weights_path, ckpt["state_dict"],
                    **{**{k: v for k, v in ckpt.items() if k != "state_dict"}, "num_classes": 80})
    os.makedirs(other.result_dir, exist_ok=True)
    os.symlink(os.path.abspath(args.rib_out_dir), other.rib_out_dir)
    with pytest.raises(DataError, match="80 classes but the dataset has 20"):
        make_psa_sem_seg.run(other)
    os.symlink(os.path.abspath(args.psa_label_out_dir), other.psa_label_out_dir)
    with pytest.raises(DataError, match="80 classes but the dataset has 20"):
        train_aff.run(other)  # an existing checkpoint is checked before it is kept


def test_missing_inputs_name_the_id(tmp_path, voc_root):
    from step import cam_to_psa_label, train_aff
    ids = train_subset_ids(2)
    args = make_args(tmp_path / "w", voc12_root=voc_root, infer_list=write_list(tmp_path / "l.txt", ids),
                     refine="psa", psa_cam_source="cam", psa_crop_size=80)
    with pytest.raises(DataError, match=f"{ids[0]}.*make_cam.*--psa_cam_source"):
        cam_to_psa_label.run(args)
    with pytest.raises(DataError, match=f"PSA label.*{ids[0]}.*cam_to_psa_label"):
        train_aff.run(args)
    with pytest.raises(DataError, match="resnet38 needs --psa_backbone_weights"):
        train_aff.backbone_weights(make_args(tmp_path / "w", psa_backbone="resnet38", backbone_weights="x.pth"))
