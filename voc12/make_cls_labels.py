"""Regenerate the image-level label file (cls_labels.npz) from VOC annotations or from segmentation masks.

    python voc12/make_cls_labels.py --voc12_root VOCdevkit/VOC2012 --from xml  --out voc12/cls_labels.npz
    python voc12/make_cls_labels.py --voc12_root VOCdevkit/VOC2012 --from mask --mask_dir SegmentationClassAug \
        --lists voc12/train_aug.txt voc12/val.txt --out my_labels.npz

The shipped voc12/cls_labels.npz was converted from IRN's cls_labels.npy (github.com/jiwoon-ahn/irn, MIT
licence): 12,031 ids of train_aug and val, labels taken from the XML annotations, which list every object, so a
few images have more classes than their SBD mask shows. Format: `ids` (str [N]) and `labels` (uint8 [N, 20],
class k of VOC order at index k-1, no background).
"""
import argparse
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from misc.datasets import load_id_list, save_label_table  # noqa: E402
from misc.errors import DataError  # noqa: E402
from misc.fileio import load_label_png  # noqa: E402
from voc12.dataloader import CLASS_NAMES  # noqa: E402


def labels_from_xml(path):
    """Multi-hot vector of every object class named in a VOC annotation file."""
    label = np.zeros(len(CLASS_NAMES), np.uint8)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"annotation {path} is unreadable ({e})") from e
    for name in root.iter("name"):
        cls = (name.text or "").strip()
        if cls in CLASS_NAMES:  # part names (head, hand, ...) are not classes
            label[CLASS_NAMES.index(cls)] = 1
    return label


def labels_from_mask(path, num_classes=len(CLASS_NAMES)):
    """Multi-hot vector of the classes present in a class-index mask (0 background and 255 void ignored)."""
    values = np.unique(load_label_png(path))
    values = values[(values > 0) & (values <= num_classes)]
    label = np.zeros(num_classes, np.uint8)
    label[values - 1] = 1
    return label


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--voc12_root", required=True)
    p.add_argument("--from", dest="source", choices=("xml", "mask"), default="xml")
    p.add_argument("--mask_dir", default="SegmentationClassAug", help="mask folder under the root (--from mask)")
    p.add_argument("--lists", nargs="*", default=[], help="id lists to label (default: every file found)")
    p.add_argument("--out", default="cls_labels.npz")
    return p


def main(args):
    folder = os.path.join(args.voc12_root, "Annotations" if args.source == "xml" else args.mask_dir)
    ext = ".xml" if args.source == "xml" else ".png"
    if not os.path.isdir(folder):
        raise SystemExit(f"error: {folder} does not exist; check --voc12_root / --mask_dir")
    if args.lists:
        ids = sorted({i for path in args.lists for i in load_id_list(path, "--lists")})
    else:
        ids = sorted(f[:-len(ext)] for f in os.listdir(folder) if f.endswith(ext))
    read = labels_from_xml if args.source == "xml" else labels_from_mask
    table = {}
    for img_id in ids:
        path = os.path.join(folder, img_id + ext)
        if not os.path.isfile(path):
            raise SystemExit(f"error: {path} is missing for id {img_id}")
        table[img_id] = read(path)
    save_label_table(args.out, table)
    print(f"wrote {len(table)} labels to {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
