"""Image-level labels and id lists of COCO 2014 from the instances annotations.

    python coco14/make_cls_labels.py --annotations annotations/instances_train2014.json \
        annotations/instances_val2014.json --out coco14/cls_labels.npz --list_dir coco14

Class index = position of the category in ascending category-id order (the 80 classes of coco14.CLASS_NAMES).
Writes <list_dir>/train14.txt and val14.txt with 12-digit ids (one per image file named in the JSON).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coco14.dataloader import CLASS_NAMES  # noqa: E402
from misc.datasets import save_label_table  # noqa: E402


def labels_from_instances(instances):
    """{12-digit id: uint8 [80]} from one parsed instances JSON; images without objects get all zeros."""
    cat_ids = sorted(c["id"] for c in instances["categories"])
    if len(cat_ids) != len(CLASS_NAMES):
        raise SystemExit(f"error: expected {len(CLASS_NAMES)} categories, found {len(cat_ids)}")
    index = {cid: i for i, cid in enumerate(cat_ids)}
    table = {f"{img['id']:012d}": np.zeros(len(CLASS_NAMES), np.uint8) for img in instances["images"]}
    for ann in instances["annotations"]:
        table[f"{ann['image_id']:012d}"][index[ann["category_id"]]] = 1
    return table


def main(args):
    table = {}
    for path in args.annotations:
        with open(path) as f:
            part = labels_from_instances(json.load(f))
        table.update(part)
        name = "val14.txt" if "val" in os.path.basename(path) else "train14.txt"
        with open(os.path.join(args.list_dir, name), "w") as f:
            f.write("\n".join(sorted(part)) + "\n")
    save_label_table(args.out, table)
    print(f"wrote {len(table)} labels to {args.out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--annotations", nargs="+", required=True)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "cls_labels.npz"))
    p.add_argument("--list_dir", default=os.path.dirname(os.path.abspath(__file__)))
    main(p.parse_args())
