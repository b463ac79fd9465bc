"""COCO 2014 (80 classes) through the same code: no class count is hard-coded (the official GNDRP looped over
range(20) and silently fell back to GAP for COCO classes >= 20)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import run_sample
from conftest import make_args
from coco14 import dataloader as coco
from coco14.make_cls_labels import labels_from_instances
from misc.fileio import load_cam_npz, load_label_png, save_png
from misc.imutils import color_palette
from misc.rib_losses import gndrp_pool
from misc.datasets import load_id_list, save_label_table
from voc12 import synthetic
from voc12.synthetic import make_dataset

# synthetic VOC classes -> COCO classes with an index >= 20
TO_COCO = {"cat": "elephant", "dog": "bear", "bird": "zebra", "sheep": "giraffe"}


def test_gndrp_applies_to_class_index_above_20():
    maps = torch.zeros(1, 80, 1, 4)
    maps[0, 50] = torch.tensor([1.0, 2.0, 10.0, 3.0])
    labels = torch.zeros(1, 80)
    labels[0, 50] = 1
    # tau 0.4 of max 10: the 10 is dropped -> paper mean (1 + 2 + 3) / 3 = 2; GAP would be 4
    assert gndrp_pool(maps, labels, 0.4, "paper")[0, 50].item() == pytest.approx(2.0)
    assert gndrp_pool(maps, labels, 0.4, "official")[0, 50].item() == pytest.approx(6 / 4)


def test_labels_from_instances():
    instances = {"categories": [{"id": i} for i in range(1, 91) if i not in
                                (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)],  # COCO's 80 ids have gaps
                 "images": [{"id": 9}, {"id": 57870}],
                 "annotations": [{"image_id": 57870, "category_id": 1}, {"image_id": 57870, "category_id": 90},
                                 {"image_id": 57870, "category_id": 1}]}
    table = labels_from_instances(instances)
    assert set(table) == {"000000000009", "000000057870"}
    assert table["000000000009"].sum() == 0
    assert np.flatnonzero(table["000000057870"]).tolist() == [0, 79]  # person, toothbrush


def make_coco_copy(src_root, dst_root, label_file):
    """The synthetic VOC-format set re-laid out as COCO: 12-digit ids, coco_seg_anno masks, 80-class labels."""
    ids = load_id_list(os.path.join(src_root, "ImageSets", "train.txt"))
    remap = np.arange(256)
    for v, c in TO_COCO.items():
        remap[synthetic.CLASS_NAMES.index(v) + 1] = coco.CLASS_NAMES.index(c) + 1
    new_ids, table = [], {}
    for n, img_id in enumerate(ids):
        new_id = f"{n:012d}"
        os.makedirs(os.path.join(dst_root, "JPEGImages"), exist_ok=True)
        shutil.copy(os.path.join(src_root, "JPEGImages", img_id + ".jpg"),
                    os.path.join(dst_root, "JPEGImages", new_id + ".jpg"))
        mask = remap[load_label_png(os.path.join(src_root, "SegmentationClass", img_id + ".png"))].astype(np.uint8)
        save_png(os.path.join(dst_root, "coco_seg_anno", new_id + ".png"), mask, palette=color_palette())
        label = np.zeros(80, np.uint8)
        present = np.unique(mask[(mask > 0) & (mask < 255)])
        label[present - 1] = 1
        table[new_id] = label
        new_ids.append(new_id)
    save_label_table(label_file, table)
    lst = os.path.join(dst_root, "train14.txt")
    open(lst, "w").write("\n".join(new_ids) + "\n")
    return lst


def test_coco_pipeline_end_to_end(tmp_path):
    make_dataset(str(tmp_path / "voc"), num_train=8, num_eval=2, size=64)
    label_file = str(tmp_path / "coco_labels.npz")
    lst = make_coco_copy(str(tmp_path / "voc"), str(tmp_path / "coco"), label_file)
    args = make_args(tmp_path / "w", "--dataset", "coco14", coco_root=tmp_path / "coco", cls_labels=label_file,
                     train_list=lst, infer_list=lst, eval_list=lst, cam_num_epoches=1, cam_batch_size=4,
                     cam_crop_size=64, cam_resize_long=(64, 80), cam_learning_rate=0.01, cam_scales=(1.0,),
                     rib_iter=1, rib_batch=1, rib_crop_size=64, rib_loader_workers=0, rib_loss_scales=(1.0,),
                     eval_cam_source="both", save_cam_png=0, only="train_cam,make_cam,rib,eval_cam")
    assert args.rib_learning_rate == 5e-6 and args.rib_score_th == 0.5  # the COCO preset
    run_sample.run_steps(args)
    ckpt = torch.load(args.cam_weights_path, weights_only=True)
    assert ckpt["state_dict"]["classifier.weight"].shape[0] == 80
    for folder in (args.cam_out_dir, args.rib_out_dir):
        rec = load_cam_npz(os.path.join(folder, "000000000000.npz"))
        assert len(rec["keys"]) and rec["keys"].min() >= 20  # COCO indices of elephant, bear, zebra, giraffe
    for source in ("cam", "rib"):
        results = json.load(open(os.path.join(args.result_dir, f"eval_cam_{source}.json")))
        assert len(results["per_class_iou"]) == 81 and results["num_images"] == 8
        assert results["per_class_iou"]["elephant"] is not None or results["per_class_iou"]["bear"] is not None
