"""MS COCO 2014 through the same DatasetSpec and dataset classes as VOC (misc/datasets.py).

Layout under --coco_root (docs/coco.md): images where COCO puts them, train2014/COCO_train2014_<12-digit id>.jpg
and val2014/COCO_val2014_<id>.jpg, or in the official RIB layout JPEGImages/<id>.jpg (both are read in place);
annotations/instances_{train,val}2014.json; and what coco14/prepare.py writes from those: cls_labels.npz
(image-level labels with class names), train14.txt / val14.txt, and the semantic masks coco_seg_anno/<id>.png
(0 background, 1..80, 255 ignore). Ids are 12-digit strings; the official loader's list reversal is not
reproduced.
"""
import os

from misc.errors import DataError

CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")

# COCO's category id of each class above (1..90 with 10 gaps); class index = position in ascending id order.
CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))

SPLITS = ("train", "val")
LIST_NAMES = {split: f"{split}14.txt" for split in SPLITS}
LABEL_FILE_NAME = "cls_labels.npz"
MASK_DIR_NAME = "coco_seg_anno"

# (folder, file-name prefix) under the root, tried in order: the official RIB layout, then COCO's own folders.
IMAGE_LOCATIONS = (("JPEGImages", ""), ("train2014", "COCO_train2014_"), ("val2014", "COCO_val2014_"))

# Files coco14/prepare.py writes under the root; run_sample takes them for these flags while the flags keep their
# defaults (misc/datasets.use_root_files).
ROOT_FILES = {"cls_labels": LABEL_FILE_NAME, "train_list": LIST_NAMES["train"],
              "infer_list": LIST_NAMES["train"], "eval_list": LIST_NAMES["train"],
              "seg_train_list": LIST_NAMES["train"], "seg_infer_list": LIST_NAMES["val"],
              "seg_eval_list": LIST_NAMES["val"]}


def annotation_path(root, split):
    return os.path.join(root, "annotations", f"instances_{split}2014.json")


def make_spec(root, label_file=None, gt_dir=None):
    from misc.datasets import make_spec_from_label_file  # here: prepare.py's mask workers need no torch
    label_file = label_file or os.path.join(root, LABEL_FILE_NAME)
    if not os.path.isfile(label_file):
        raise DataError(f"COCO label file {label_file} does not exist; make it with python coco14/prepare.py "
                        f"--coco_root {root} (from annotations/instances_{{train,val}}2014.json), or pass "
                        f"--cls_labels")
    return make_spec_from_label_file("coco14", root, CLASS_NAMES, label_file, gt_dir=gt_dir, root_flag="--coco_root",
                                     gt_subdirs=(MASK_DIR_NAME,), image_locations=IMAGE_LOCATIONS)
