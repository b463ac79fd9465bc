"""MS COCO 2014 through the same DatasetSpec and dataset classes as VOC (voc12/dataloader.py).

Layout (as the official RIB code expects): <root>/JPEGImages/<12-digit id>.jpg for train2014 and val2014 images
(without the COCO_train2014_ prefix), semantic masks <root>/coco_seg_anno/<id>.png (0 background, 1..80 classes),
and image-level labels in an .npz (`ids`, `labels` [N, 80]) made by coco14/make_cls_labels.py from the
instances_*.json annotations. Ids are strings; the official loader's list reversal is not reproduced.
"""
import os

from misc.datasets import make_spec_from_label_file

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LABEL_FILE = os.path.join(PACKAGE_DIR, "cls_labels.npz")

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


def make_spec(root, label_file=None, gt_dir=None):
    label_file = label_file or DEFAULT_LABEL_FILE
    if not os.path.isfile(label_file):
        from misc.fileio import DataError
        raise DataError(f"COCO label file {label_file} does not exist; make it with coco14/make_cls_labels.py "
                        f"from instances_train2014.json / instances_val2014.json (or pass --cls_labels)")
    return make_spec_from_label_file("coco14", root, CLASS_NAMES, label_file, gt_dir=gt_dir, root_flag="--coco_root",
                                     gt_subdirs=("coco_seg_anno",))
