"""MS COCO 2014 as a first-class dataset: coco14/prepare.py on the synthetic COCO-format fixture (coco14/synthetic.py;
masks checked by hand for both crowd and both overlap rules, idempotence, resuming, bad inputs), the root's labels
and lists in run_sample, both image layouts, and every step at 80 classes (the official GNDRP looped over
range(20) and silently fell back to GAP for COCO classes >= 20)."""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch

import run_sample
from coco14 import prepare as coco_prepare
from coco14 import synthetic
from coco14.dataloader import CLASS_NAMES, annotation_path
from conftest import make_args, save_random_classifier, write_list
from misc.datasets import build_spec, load_id_list, load_label_file
from misc.fileio import DataError, load_cam_npz, load_label_png
from misc.metrics import ConfusionMatrix
from misc.rib_losses import gndrp_pool

PERSON, GIRAFFE, PIZZA, TOOTHBRUSH = (CLASS_NAMES.index(n) for n in ("person", "giraffe", "pizza", "toothbrush"))
LAYOUT = f"{synthetic.LAYOUT_ID:012d}"
EMPTY_TRAIN = f"{synthetic.EMPTY_IDS['train']:012d}"


def expected_layout_mask(crowd, overlap):
    """The layout image's mask written from synthetic.LAYOUT_BOXES by hand: toothbrush (80) [24:48, 40:72] first,
    the larger person (1) [8:72, 8:56] later; a giraffe crowd [56:88, 80:120]; pizza (54) [40:64, 100:124]."""
    m = np.zeros(synthetic.LAYOUT_SIZE, np.uint8)
    if crowd == "ignore":
        m[56:88, 80:120] = 255
    if overlap == "last":       # the later person covers the toothbrush where they overlap
        m[24:48, 40:72] = 80
        m[8:72, 8:56] = 1
    else:                       # the smaller toothbrush wins
        m[8:72, 8:56] = 1
        m[24:48, 40:72] = 80
    m[40:64, 100:124] = 54      # a single instance always wins over a crowd region
    return m


@pytest.fixture(scope="module")
def raw_coco(tmp_path_factory):
    """The raw synthetic COCO download (12 train, 4 val images); copy it before preparing."""
    root = str(tmp_path_factory.mktemp("coco_raw") / "coco")
    synthetic.make_dataset(root, num_train=12, num_val=4, num_subset=6)
    return root


@pytest.fixture
def coco_copy(raw_coco, tmp_path):
    root = str(tmp_path / "coco")
    shutil.copytree(raw_coco, root)
    return root


@pytest.fixture(scope="module")
def prepared(raw_coco, tmp_path_factory):
    """A prepared copy with --crowd ignore (255 in the masks) and its summary."""
    root = str(tmp_path_factory.mktemp("coco_prepared") / "coco")
    shutil.copytree(raw_coco, root)
    summary = coco_prepare.prepare(root, crowd="ignore", workers=1, progress=False)
    return root, summary


def test_gndrp_applies_to_class_index_above_20():
    maps = torch.zeros(1, 80, 1, 4)
    maps[0, 50] = torch.tensor([1.0, 2.0, 10.0, 3.0])
    labels = torch.zeros(1, 80)
    labels[0, 50] = 1
    # tau 0.4 of max 10: the 10 is dropped -> paper mean (1 + 2 + 3) / 3 = 2; GAP would be 4
    assert gndrp_pool(maps, labels, 0.4, "paper")[0, 50].item() == pytest.approx(2.0)
    assert gndrp_pool(maps, labels, 0.4, "official")[0, 50].item() == pytest.approx(6 / 4)


def test_fixture_is_coco_format(raw_coco):
    data = json.load(open(annotation_path(raw_coco, "train")))
    ids = [c["id"] for c in data["categories"]]
    assert len(ids) == 80 and max(ids) == 90 and 12 not in ids  # COCO's ids with gaps
    forms = {("list" if isinstance(a["segmentation"], list) else type(a["segmentation"]["counts"]).__name__,
              a["iscrowd"]) for a in data["annotations"]}
    assert {("list", 0), ("str", 0), ("list", 1)} <= forms  # polygons, compressed RLE, uncompressed crowd RLE
    first = data["images"][0]
    assert first["file_name"] == f"COCO_train2014_{LAYOUT}.jpg"
    assert os.path.isfile(os.path.join(raw_coco, "train2014", first["file_name"]))
    assert not [a for a in data["annotations"] if a["image_id"] == synthetic.EMPTY_IDS["train"]]


@pytest.mark.parametrize("crowd", ["background", "ignore"])
@pytest.mark.parametrize("overlap", ["last", "smallest"])
def test_layout_mask_by_hand(raw_coco, crowd, overlap):
    data = json.load(open(annotation_path(raw_coco, "train")))
    class_of = {cid: n for n, (cid, _) in enumerate(coco_prepare.categories_of(data))}
    anns = [a for a in data["annotations"] if a["image_id"] == synthetic.LAYOUT_ID]
    mask = coco_prepare.semantic_mask(*synthetic.LAYOUT_SIZE, anns, class_of, crowd, overlap)
    np.testing.assert_array_equal(mask, expected_layout_mask(crowd, overlap))


def test_prepare_writes_labels_lists_and_masks(coco_copy):
    summary = coco_prepare.prepare(coco_copy, workers=2, progress=False)  # defaults: background, last
    assert summary["splits"]["train"]["without_annotations"] == 1
    assert summary["splits"]["val"]["without_annotations"] == 1
    train = load_id_list(os.path.join(coco_copy, "train14.txt"))
    val = load_id_list(os.path.join(coco_copy, "val14.txt"))
    json_ids = [f"{i['id']:012d}" for i in json.load(open(annotation_path(coco_copy, "train")))["images"]]
    assert train == json_ids and len(val) == 4 and EMPTY_TRAIN in train  # JSON order, unannotated image kept
    table, names = load_label_file(os.path.join(coco_copy, "cls_labels.npz"))
    assert names == CLASS_NAMES and set(table) == set(train) | set(val)
    assert np.flatnonzero(table[LAYOUT]).tolist() == sorted([PERSON, GIRAFFE, PIZZA, TOOTHBRUSH])  # crowd counts
    assert not table[EMPTY_TRAIN].any()
    np.testing.assert_array_equal(load_label_png(os.path.join(coco_copy, "coco_seg_anno", LAYOUT + ".png")),
                                  expected_layout_mask("background", "last"))
    assert not load_label_png(os.path.join(coco_copy, "coco_seg_anno", EMPTY_TRAIN + ".png")).any()
    for img_id in train + val:  # every mask has its image's size and only values of the image's labels
        gt = load_label_png(os.path.join(coco_copy, "coco_seg_anno", img_id + ".png"))
        present = np.unique(gt[(gt > 0) & (gt < 255)]) - 1
        assert set(present.tolist()) <= set(np.flatnonzero(table[img_id]).tolist())


def test_prepare_is_idempotent_resumable_and_records_its_rules(coco_copy):
    coco_prepare.prepare(coco_copy, workers=1, progress=False)
    mask_dir = os.path.join(coco_copy, "coco_seg_anno")
    outputs = [os.path.join(coco_copy, n) for n in ("cls_labels.npz", "train14.txt", "val14.txt")] + \
        [os.path.join(mask_dir, n) for n in sorted(os.listdir(mask_dir)) if n.endswith(".png")]
    before = {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in outputs}
    again = coco_prepare.prepare(coco_copy, workers=1, progress=False)
    assert again["masks_written"] == 0 and not again["labels_written"]
    assert {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for p in outputs} == before  # nothing touched

    # an interrupted run: three masks missing and a temporary file of a dead process left behind
    for p in outputs[3:6]:
        os.remove(p)
    stale = os.path.join(mask_dir, f".{LAYOUT}.somehost-999999999.abc.tmp.png")
    open(stale, "wb").close()
    resumed = coco_prepare.prepare(coco_copy, workers=1, progress=False)
    assert resumed["masks_written"] == 3
    assert {p: open(p, "rb").read() for p in outputs} == {p: v[0] for p, v in before.items()}

    with pytest.raises(DataError, match="crowd.*--overwrite"):
        coco_prepare.prepare(coco_copy, crowd="ignore", workers=1, progress=False)
    coco_prepare.prepare(coco_copy, crowd="ignore", overlap="smallest", workers=1, overwrite=True, progress=False)
    np.testing.assert_array_equal(load_label_png(os.path.join(mask_dir, LAYOUT + ".png")),
                                  expected_layout_mask("ignore", "smallest"))


def _edit_json(root, split, edit):
    path = annotation_path(root, split)
    data = json.load(open(path))
    data = edit(data)
    json.dump(data, open(path, "w"))
    return path


@pytest.mark.parametrize("case, match", [
    ("missing_json", "instances_val2014.json is missing"),
    ("missing_images", "val2014 .*is missing"),
    ("captions", "not a COCO instances file"),
    ("unknown_category", "category id 12, which is not in the file's categories"),
    ("image_without_file", "have no file"),
    ("empty_categories", "empty 'categories' list"),
    ("captions_val_after_good_train", "instances_val2014.json is not a COCO instances file"),
])
def test_prepare_bad_inputs(coco_copy, case, match, capsys):
    if case == "missing_json":
        os.remove(annotation_path(coco_copy, "val"))
    elif case == "missing_images":
        shutil.rmtree(os.path.join(coco_copy, "val2014"))
    elif case == "captions":
        _edit_json(coco_copy, "val", lambda d: {"images": d["images"], "annotations": [
            {"image_id": d["images"][0]["id"], "caption": "a cat"}]})
    elif case == "unknown_category":
        def edit(d):
            d["annotations"][0]["category_id"] = 12  # one of COCO's unused ids
            return d
        _edit_json(coco_copy, "train", edit)
    elif case == "image_without_file":
        os.remove(os.path.join(coco_copy, "train2014", f"COCO_train2014_{EMPTY_TRAIN}.jpg"))
    elif case == "empty_categories":
        for split in ("train", "val"):
            _edit_json(coco_copy, split, lambda d: {**d, "categories": [], "annotations": []})
    elif case == "captions_val_after_good_train":  # found before the train masks are written (issue 21)
        _edit_json(coco_copy, "val", lambda d: {"images": d["images"], "annotations": []})
    with pytest.raises(SystemExit) as e:
        coco_prepare.main(["--coco_root", coco_copy, "--workers", "1"])
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message
    assert __import__("re").search(match, message), message
    assert not os.path.exists(os.path.join(coco_copy, "train14.txt"))  # nothing marked as prepared
    mask_dir = os.path.join(coco_copy, "coco_seg_anno")
    assert not os.path.isdir(mask_dir) or not [n for n in os.listdir(mask_dir) if n.endswith(".png")]


def test_run_sample_takes_root_files_and_both_image_layouts(prepared, tmp_path):
    root, _ = prepared
    args = make_args(tmp_path / "w", "--dataset", "coco14", coco_root=root)
    assert args.cls_labels == os.path.join(root, "cls_labels.npz")
    assert args.train_list == args.infer_list == args.eval_list == os.path.join(root, "train14.txt")
    assert args.sem_seg_pad_to == 0 and args.rib_learning_rate == 5e-6 and args.sem_seg_bg_thres == 0.22
    mine = write_list(tmp_path / "mine.txt", [LAYOUT])
    assert make_args(tmp_path / "w", "--dataset", "coco14", coco_root=root, train_list=mine).train_list == mine
    spec = build_spec(args)
    assert spec.image_path(LAYOUT).endswith(os.path.join("train2014", f"COCO_train2014_{LAYOUT}.jpg"))
    val_id = load_id_list(os.path.join(root, "val14.txt"))[0]
    assert spec.image_path(val_id).endswith(f"COCO_val2014_{val_id}.jpg")
    # the official RIB layout: JPEGImages/<id>.jpg, no prefix
    official = tmp_path / "official"
    os.makedirs(official / "JPEGImages")
    shutil.copy(spec.image_path(LAYOUT), official / "JPEGImages" / f"{LAYOUT}.jpg")
    other = build_spec(make_args(tmp_path / "w", "--dataset", "coco14", coco_root=official,
                                 cls_labels=args.cls_labels))
    assert other.image_path(LAYOUT) == str(official / "JPEGImages" / f"{LAYOUT}.jpg")
    other.check_ids([LAYOUT], "--train_list")
    with pytest.raises(DataError, match="have no image"):  # an id in a list with no image
        spec.check_ids([LAYOUT, "000000999999"], "--infer_list", need_labels=False)


def test_demo_flag_takes_a_dataset():
    assert run_sample.parse_args(["--demo"]).demo == "voc12"
    args = run_sample.parse_args(["--demo", "coco14"])
    assert args.demo == "coco14" and args.dataset == "coco14" and args.rib_score_th == 0.5
    assert run_sample.parse_args([]).demo is None
    with pytest.raises(SystemExit):
        run_sample.parse_args(["--demo", "coco14", "--dataset", "voc12"])


def test_confusion_ignores_255_of_coco_masks(prepared):
    root, _ = prepared
    gt = load_label_png(os.path.join(root, "coco_seg_anno", LAYOUT + ".png"))
    assert (gt == 255).sum() > 0
    pred = np.where(gt == 255, PERSON + 1, gt)  # whatever is predicted on ignored pixels
    cm = ConfusionMatrix(81)
    cm.update(gt, pred)
    assert cm.mat.shape == (81, 81) and cm.mat.sum() == (gt != 255).sum()
    scores = cm.compute()
    assert scores["iou"][PERSON + 1] == 1.0 and np.nanmean(scores["iou"]) == 1.0


def test_voc_checkpoint_rejected_by_a_coco_run(prepared, tmp_path):
    root, _ = prepared
    args = make_args(tmp_path / "w", "--dataset", "coco14", coco_root=root, only="make_cam")
    save_random_classifier(args.cam_weights_path, num_classes=20)
    with pytest.raises(DataError, match="has 20 classes but the dataset has 80"):
        run_sample.run_steps(args)


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine a second OpenMP thread spin-waits and slows the steps tenfold
    and more (docs/benchmarks.md); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_coco_pipeline_end_to_end(prepared, tmp_path, one_thread):
    """Every step on the prepared fixture (crowd ignore: 255 in the ground truth) at 80 classes, through the
    pseudo-mask evaluation and, where its steps exist, DeepLab (81 outputs, scored on val14); the unannotated
    image gets all-background records."""
    root, _ = prepared
    subset = os.path.join(root, "demo_subset.txt")
    # the IRN path and, where its steps exist, the DeepLab stage without re-training (COCO's setting)
    steps = [n for n, module, _ in run_sample.STEPS if importlib.util.find_spec(module) is not None
             and n not in ("cam_to_psa_label", "train_aff", "make_psa_sem_seg", "retrain_deeplab")]
    args = make_args(tmp_path / "w", "--dataset", "coco14", coco_root=root, infer_list=subset, eval_list=subset,
                     cam_num_epoches=1, cam_batch_size=4, cam_crop_size=64, cam_resize_long=(64, 96),
                     cam_learning_rate=0.01, cam_scales=(1.0,), rib_iter=1, rib_batch=1, rib_crop_size=64,
                     rib_loader_workers=0, rib_loss_scales=(1.0,), eval_cam_source="both", save_cam_png=1,
                     irn_crop_size=64, irn_batch_size=2, irn_num_epoches=1, only=",".join(steps))
    if "train_deeplab" in steps:
        args.seg_train_list = subset  # the ids with pseudo masks; infer / eval: ROOT's val14.txt
        for name, value in {"seg_arch": "resnet50", "seg_backbone_weights": "none", "seg_crop_size": 64,
                            "seg_batch_size": 2, "seg_num_iters": 2, "seg_save_every": 2, "seg_log_every": 1,
                            "seg_test_scales": (1.0,), "seg_crf": False, "seg_save_png": 1}.items():
            setattr(args, name, value)
    run_sample.run_steps(args)
    assert torch.load(args.cam_weights_path, weights_only=True)["state_dict"]["classifier.weight"].shape[0] == 80
    for folder in (args.cam_out_dir, args.rib_out_dir):
        assert load_cam_npz(os.path.join(folder, LAYOUT + ".npz"))["keys"].tolist() == \
            sorted([PERSON, GIRAFFE, PIZZA, TOOTHBRUSH])
        empty = load_cam_npz(os.path.join(folder, EMPTY_TRAIN + ".npz"))
        assert empty["keys"].size == 0 and empty["high_res"].shape[1:] == (120, 160)
    ids = load_id_list(subset)
    for source in ("cam", "rib"):
        results = json.load(open(os.path.join(args.result_dir, f"eval_cam_{source}.json")))
        assert len(results["per_class_iou"]) == 81 and results["num_images"] == len(ids)
        assert results["threshold"] in [round(0.10 + 0.01 * i, 2) for i in range(41)]  # COCO sweep 0.10-0.50
    assert not load_label_png(os.path.join(args.sem_seg_out_dir, EMPTY_TRAIN + ".png")).any()
    assert json.load(open(os.path.join(args.sem_seg_out_dir, "settings.json")))["settings"]["pad_to"] == 0
    results = json.load(open(os.path.join(args.result_dir, "eval_sem_seg.json")))
    confusion = np.array(results["confusion"])
    gts = [load_label_png(os.path.join(root, "coco_seg_anno", i + ".png")) for i in ids]
    assert confusion.shape == (81, 81) and len(results["per_class_iou"]) == 81
    assert confusion.sum() == sum(int((g != 255).sum()) for g in gts)  # 255 is never a class
    assert sum(int((g == 255).sum()) for g in gts) > 0
    if "eval_deeplab" in steps:
        assert args.seg_eval_list == os.path.join(root, "val14.txt")
        deeplab = torch.load(args.deeplab_weights_path, weights_only=True)["state_dict"]
        assert {v.shape[0] for k, v in deeplab.items() if k.endswith("weight") and v.ndim == 4 and "aspp" in k} == {81}
        results = json.load(open(os.path.join(args.result_dir, "eval_deeplab.json")))
        assert len(results["per_class_iou"]) == 81 and results["num_images"] == 4
