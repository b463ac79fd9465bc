"""PASCAL VOC 2012 (+ SBD train_aug): where the files are and what the classes are.

Layout under --voc12_root: JPEGImages/<id>.jpg, ground truth in SegmentationClass/<id>.png (falling back to
SegmentationClassAug/<id>.png, or --gt_dir). The official id lists and the image-level labels of all 12,031
train_aug + val ids (cls_labels.npz, converted from IRN's cls_labels.npy) ship in this folder. The datasets
themselves are dataset-generic (misc/datasets.py).
"""
import os

from misc.datasets import make_spec_from_label_file

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LABEL_FILE = os.path.join(PACKAGE_DIR, "cls_labels.npz")

CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def make_spec(root, label_file=None, gt_dir=None):
    return make_spec_from_label_file("voc12", root, CLASS_NAMES, label_file or DEFAULT_LABEL_FILE, gt_dir=gt_dir)
