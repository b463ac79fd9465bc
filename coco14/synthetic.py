"""A small synthetic dataset in COCO 2014's raw format, for the COCO demo and tests (python run_sample.py --demo
coco14; tests/test_coco.py). It is what a COCO download looks like before coco14/prepare.py:

    <root>/train2014/COCO_train2014_<12-digit id>.jpg, <root>/val2014/COCO_val2014_<id>.jpg
    <root>/annotations/instances_train2014.json, instances_val2014.json

with all 80 COCO categories under their real ids (1..90 with gaps). Objects reuse the shapes and colours of
voc12/synthetic.py on the same textured backgrounds, as four COCO classes spread over the id range:

    person (category id 1, mask value 1): disk, 24-gon polygon
    giraffe (category id 25, mask value 24): square, polygon
    pizza (category id 59, mask value 54): triangle, polygon
    toothbrush (category id 90, mask value 80): ring, compressed RLE

Some images carry a crowd of persons (small disks, one uncompressed-RLE annotation with iscrowd=1, as COCO's crowd
regions); one image of each split has no annotation. Objects may overlap; the image shows them in annotation
order (a later one on top). The first training image has a fixed layout (LAYOUT_*), made for checking masks by
hand: a small toothbrush rectangle under a later, larger person rectangle (the overlap rules disagree there) and a
crowd of giraffes partly under a pizza rectangle given as compressed RLE. Images are painted from the decoded
annotations, so pixels and annotations agree exactly.

    python coco14/synthetic.py --out ROOT && python coco14/prepare.py --coco_root ROOT
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coco14.dataloader import CATEGORY_IDS, CLASS_NAMES, annotation_path  # noqa: E402
from misc.fileio import atomic_path, save_json, save_text  # noqa: E402
from voc12.synthetic import DEMO_CLASSES, background, shape_mask  # noqa: E402

# COCO class -> the VOC demo class whose shape and colour it borrows
SHAPE_OF = {"person": "cat", "giraffe": "dog", "pizza": "bird", "toothbrush": "sheep"}
CATEGORY_ID = dict(zip(CLASS_NAMES, CATEGORY_IDS))
CLASS_OF_CATEGORY = dict(zip(CATEGORY_IDS, CLASS_NAMES))

# The hand-checkable image: (H, W) and axis-aligned boxes (y0, y1, x0, x1), half-open, in annotation order.
LAYOUT_ID = 9
LAYOUT_SIZE = (96, 128)
LAYOUT_BOXES = (("toothbrush", (24, 48, 40, 72), "polygon", 0),   # small, first
                ("person", (8, 72, 8, 56), "polygon", 0),          # large, later: overlaps the toothbrush
                ("giraffe", (56, 88, 80, 120), "rle", 1),          # crowd (uncompressed RLE)
                ("pizza", (40, 64, 100, 124), "compressed", 0))    # over part of the crowd
EMPTY_IDS = {"train": 25, "val": 30}
SIZES = ((120, 160), (120, 160), (160, 120), (128, 128))  # (H, W): mostly landscape, as COCO


def rle_uncompressed(region):
    """COCO's uncompressed RLE of a bool mask: run lengths in column-major order, starting with a 0-run."""
    flat = np.asarray(region, bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(region.shape), "counts": counts}


def rle_compressed(region):
    from pycocotools import mask as coco_mask
    rle = coco_mask.encode(np.asfortranarray(np.asarray(region, np.uint8)))
    return {"size": list(region.shape), "counts": rle["counts"].decode("ascii")}


def box_polygon(y0, y1, x0, x1):
    """The polygon of the pixels [y0, y1) x [x0, x1) (pycocotools fills a vertex rectangle half-open)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def shape_polygon(kind, cy, cx, r):
    """Polygon of voc12/synthetic.shape_mask's shapes (the ring has a hole and is given as RLE instead)."""
    if kind == "disk":
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    elif kind == "square":
        d = 0.85 * r
        points = np.array([[cx - d, cy - d], [cx + d, cy - d], [cx + d, cy + d], [cx - d, cy + d]])
    elif kind == "triangle":  # apex up, as shape_mask
        half = 1.8 * r * 0.6
        points = np.array([[cx, cy - r], [cx + half, cy + 0.8 * r], [cx - half, cy + 0.8 * r]])
    else:
        raise ValueError(kind)
    return [np.round(points.ravel(), 2).tolist()]


def decoded(segmentation, h, w):
    from coco14.prepare import decode_segmentation
    return decode_segmentation(segmentation, h, w)


def paint(img, region, cls_name, rng):
    """Fill a region with the class's colour, jitter and stripes (as voc12/synthetic.py)."""
    colour, kind = DEMO_CLASSES[SHAPE_OF[cls_name]]
    h, w = img.shape[:2]
    stripes = (np.mgrid[:h, :w][1 if kind in ("disk", "ring") else 0] // 4) % 2
    fill = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 10, size=3) - 35 * stripes[..., None], 0, 255)
    img[region] = fill[region]


def annotation(ann_id, img_id, cls_name, segmentation, region, crowd=0):
    ys, xs = np.nonzero(region)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] \
        if len(ys) else [0, 0, 0, 0]
    return {"id": ann_id, "image_id": img_id, "category_id": CATEGORY_ID[cls_name], "segmentation": segmentation,
            "area": float(region.sum()), "bbox": bbox, "iscrowd": crowd}


def layout_annotations(img_id, next_ann_id):
    h, w = LAYOUT_SIZE
    out = []
    for n, (cls_name, (y0, y1, x0, x1), form, crowd) in enumerate(LAYOUT_BOXES):
        region = np.zeros((h, w), bool)
        region[y0:y1, x0:x1] = True
        segmentation = {"polygon": lambda: box_polygon(y0, y1, x0, x1), "rle": lambda: rle_uncompressed(region),
                        "compressed": lambda: rle_compressed(region)}[form]()
        out.append(annotation(next_ann_id + n, img_id, cls_name, segmentation, region, crowd))
    return out


def random_annotations(rng, img_id, h, w, next_ann_id, crowd_prob=0.2, max_objects=2):
    """A crowd of persons (sometimes), then one or two objects of the four classes at random places."""
    out = []
    if rng.random() < crowd_prob:
        region = np.zeros((h, w), bool)
        r = max(3, min(h, w) // 16)
        for _ in range(int(rng.integers(3, 6))):
            cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
            region |= shape_mask("disk", max(h, w), cy, cx, r)[:h, :w]
        out.append(annotation(next_ann_id, img_id, "person", rle_uncompressed(region), region, crowd=1))
    for cls_name in rng.choice(list(SHAPE_OF), size=int(rng.integers(1, max_objects + 1)), replace=False):
        kind = DEMO_CLASSES[SHAPE_OF[cls_name]][1]
        r = int(rng.integers(min(h, w) // 7, min(h, w) // 4))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        if kind == "ring":
            region = shape_mask(kind, max(h, w), cy, cx, r)[:h, :w]
            segmentation = rle_compressed(region)
        else:
            segmentation = shape_polygon(kind, cy, cx, r)
            region = decoded(segmentation, h, w)
        out.append(annotation(next_ann_id + len(out), img_id, cls_name, segmentation, region))
    return out


def categories():
    return [{"id": cid, "name": name, "supercategory": "synthetic"} for cid, name in zip(CATEGORY_IDS, CLASS_NAMES)]


def write_split(root, split, image_ids, rng, first_ann_id):
    """Images and the instances JSON of one split; returns the next free annotation id."""
    images, annotations = [], []
    ann_id = first_ann_id
    for n, img_id in enumerate(image_ids):
        if img_id == LAYOUT_ID:
            h, w = LAYOUT_SIZE
            anns = layout_annotations(img_id, ann_id)
        else:
            h, w = SIZES[n % len(SIZES)]
            anns = [] if img_id == EMPTY_IDS[split] else random_annotations(rng, img_id, h, w, ann_id)
        img = background(rng, max(h, w))[:h, :w].copy()
        for ann in anns:  # annotation order = drawing order: a later object is on top
            paint(img, decoded(ann["segmentation"], h, w), CLASS_OF_CATEGORY[ann["category_id"]], rng)
        name = f"COCO_{split}2014_{img_id:012d}.jpg"
        with atomic_path(os.path.join(root, f"{split}2014", name)) as tmp:
            Image.fromarray(img.astype(np.uint8)).save(tmp, format="JPEG", quality=92)
        images.append({"id": img_id, "file_name": name, "height": h, "width": w, "license": 0})
        annotations += anns
        ann_id += len(anns)
    save_json(annotation_path(root, split), {
        "info": {"description": "synthetic COCO-format data (coco14/synthetic.py)"}, "licenses": [],
        "images": images, "annotations": annotations, "categories": categories()})
    return ann_id


def make_dataset(root, num_train=160, num_val=24, num_subset=24, seed=0):
    """Write the raw dataset (idempotent: an existing complete one is kept). Returns {'root', 'train_ids',
    'val_ids', 'subset'}: 12-digit ids in JSON order and <root>/demo_subset.txt, the first num_subset training
    ids (the demo's RIB / IRN / evaluation list). The layout image and the train image without annotations come
    first."""
    paths = [annotation_path(root, s) for s in ("train", "val")]
    subset = os.path.join(root, "demo_subset.txt")
    if all(os.path.isfile(p) for p in paths + [subset]):
        with open(paths[0]) as f, open(paths[1]) as g:
            ids = [[f"{img['id']:012d}" for img in json.load(h)["images"]] for h in (f, g)]
        return {"root": root, "train_ids": ids[0], "val_ids": ids[1], "subset": subset}
    rng = np.random.default_rng(seed)
    fixed = {LAYOUT_ID, *EMPTY_IDS.values()}
    # sparse, unordered ids as COCO's; train and val disjoint
    pool = [int(i) for i in rng.choice(np.arange(1, 600000), size=num_train + num_val + 8, replace=False)
            if int(i) not in fixed]
    train_ids = [LAYOUT_ID, EMPTY_IDS["train"]] + pool[:num_train - 2]
    val_ids = [EMPTY_IDS["val"]] + pool[num_train - 2:num_train - 2 + num_val - 1]
    next_ann = write_split(root, "val", val_ids, rng, 1)  # val first: train's JSON marks a complete dataset
    write_split(root, "train", train_ids, rng, next_ann)
    train_ids = [f"{i:012d}" for i in train_ids]
    save_text(subset, "\n".join(train_ids[:num_subset]) + "\n")
    return {"root": root, "train_ids": train_ids, "val_ids": [f"{i:012d}" for i in val_ids], "subset": subset}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="root folder to write (kept if already complete)")
    p.add_argument("--num_train", type=int, default=160)
    p.add_argument("--num_val", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    data = make_dataset(a.out, a.num_train, a.num_val, seed=a.seed)
    print(f"{a.out}: {len(data['train_ids'])} train and {len(data['val_ids'])} val images in COCO 2014's layout")
