"""Turn a COCO 2014 download into the pipeline's inputs, in one command:

    python coco14/prepare.py --coco_root ROOT [--crowd background|ignore] [--overlap last|smallest]

ROOT holds annotations/instances_train2014.json and instances_val2014.json, and the images in train2014/ and
val2014/ (COCO's names) or in JPEGImages/<12-digit id>.jpg (the official RIB layout). Written under ROOT:

    cls_labels.npz             image-level labels of every image of both JSONs: `ids` (12-digit str), `labels`
                               (uint8 [N, 80]; class = position of the category in ascending category-id order,
                               crowd annotations included) and `class_names` (the categories' names)
    train14.txt, val14.txt     the ids of each JSON in its image order (images without annotations included,
                               as the official lists)
    coco_seg_anno/<id>.png     semantic masks: 0 background, 1..80 classes, 255 ignore (palette PNG)

Mask rules (docs/coco.md has the sources):
    --crowd background  crowd (iscrowd=1) regions stay background (default; as ReCAM's public generator);
    --crowd ignore      crowd pixels that no single-instance annotation covers become 255;
    --overlap last      where instances overlap, the later annotation of the JSON wins (default; as ReCAM);
    --overlap smallest  the instance with the fewest pixels wins (coco2voc's rule; ties: the later one).
Polygons (holes are not part of COCO's polygons) and RLE, compressed or not, are decoded with pycocotools.

Masks are made by --workers processes with a progress bar; a mask that exists is kept, so an interrupted run
resumes and a repeated run changes nothing. The rules are recorded in coco_seg_anno/settings.json: a rerun with
other rules stops, --overwrite remakes the masks. Prints how many images have no annotation.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import warnings
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coco14.dataloader import (CLASS_NAMES, LABEL_FILE_NAME, LIST_NAMES, MASK_DIR_NAME, SPLITS,  # noqa: E402
                               annotation_path)
from misc.fileio import DataError, save_png, save_text  # noqa: E402

CROWD_RULES = ("background", "ignore")
OVERLAP_RULES = ("last", "smallest")
IGNORE = 255


# --- reading and checking the instances JSON ------------------------------------------------------------------


def load_instances(path):
    """The parsed instances JSON, checked to be COCO instances; a DataError naming the file otherwise."""
    if not os.path.isfile(path):
        raise DataError(f"annotations file {path} is missing: put COCO's instances_*2014.json under "
                        f"<coco_root>/annotations/ (or prepare fewer --splits)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON ({e}); download it again") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict)
               or not isinstance(data.get(k), list)]
    if missing:
        raise DataError(f"{path} is not a COCO instances file (no {' / '.join(missing)} list; a captions or "
                        f"image-info file?); use annotations/instances_<split>2014.json")
    if any("keypoints" in c for c in data["categories"]):
        raise DataError(f"{path} is a COCO keypoints file, not instances; use annotations/instances_<split>2014.json")
    for key, fields in (("images", ("id", "height", "width")), ("annotations", ("image_id", "category_id",
                                                                               "segmentation")),
                        ("categories", ("id", "name"))):
        for entry in data[key]:
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise DataError(f"{path} is not a COCO instances file: an entry of '{key}' lacks one of "
                                f"{', '.join(fields)} ({str(entry)[:80]})")
    return data


def categories_of(data):
    """[(category id, name)] in ascending id order."""
    return sorted((int(c["id"]), str(c["name"])) for c in data["categories"])


def check_categories(per_split):
    """The categories shared by every JSON, in ascending id order; different sets are an error."""
    (first_path, first), *rest = per_split
    if not first:
        raise DataError(f"{first_path} has an empty 'categories' list: a model needs at least one class; use "
                        f"COCO's instances_<split>2014.json")
    for path, cats in rest:
        if cats != first:
            raise DataError(f"{path} and {first_path} list different categories; both must come from the same "
                            f"COCO release")
    if len(first) > 254:
        raise DataError(f"{first_path} has {len(first)} categories; a uint8 mask holds at most 254 classes")
    return first


def annotations_by_image(data, path, class_of):
    """{image id: [annotation, ...]} in JSON order, checking image and category ids."""
    images = {int(img["id"]) for img in data["images"]}
    by_image = {i: [] for i in images}
    for ann in data["annotations"]:
        if int(ann["category_id"]) not in class_of:
            raise DataError(f"{path}: annotation {ann.get('id')} of image {ann['image_id']} has category id "
                            f"{ann['category_id']}, which is not in the file's categories; the file is damaged "
                            f"or edited")
        if int(ann["image_id"]) not in images:
            raise DataError(f"{path}: annotation {ann.get('id')} refers to image {ann['image_id']}, which is not "
                            f"in the file's images")
        by_image[int(ann["image_id"])].append(ann)
    return by_image


def image_file(root, split, img):
    """The image's path: COCO's <split>2014/<file_name> when it is there, else JPEGImages/<12-digit id>.jpg."""
    name = img.get("file_name") or f"COCO_{split}2014_{int(img['id']):012d}.jpg"
    coco_path = os.path.join(root, f"{split}2014", name)
    if os.path.isfile(coco_path):
        return coco_path
    return os.path.join(root, "JPEGImages", f"{int(img['id']):012d}.jpg")


def check_image_folder(root, split):
    folders = [os.path.join(root, f"{split}2014"), os.path.join(root, "JPEGImages")]
    if not any(os.path.isdir(f) for f in folders):
        raise DataError(f"image folder {folders[0]} (or {folders[1]}) is missing: unpack COCO's {split}2014.zip "
                        f"under --coco_root")


# --- masks ---------------------------------------------------------------------------------------------------


def decode_segmentation(segmentation, height, width):
    """bool (H, W) of a COCO segmentation: a list of polygons, or RLE with counts as a list (uncompressed, as
    COCO's crowd regions) or as a string (compressed). Polygons with fewer than three points cover nothing."""
    from pycocotools import mask as coco_mask
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), bool)
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [height, width])) != [height, width]:
            raise DataError(f"an RLE segmentation is {segmentation.get('size')} but its image is "
                            f"{[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": segmentation["counts"].encode()
                   if isinstance(segmentation["counts"], str) else segmentation["counts"]}
    else:
        raise DataError(f"unknown segmentation format {str(segmentation)[:60]}")
    with warnings.catch_warnings():  # pycocotools' decode trips numpy 2's copy-keyword deprecation; harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(rle).astype(bool)


def semantic_mask(height, width, annotations, class_of, crowd="background", overlap="last"):
    """uint8 (H, W) mask of one image: 0 background, class_of[category id] + 1, 255 where --crowd ignore.

    Instances are painted in an order that makes the winner come last: JSON order ('last') or by decreasing
    pixel count ('smallest'; a stable sort, so of two equal areas the later annotation wins). Crowd regions are
    painted 255 first ('ignore') so that any single instance covers them, or skipped ('background')."""
    mask = np.zeros((height, width), np.uint8)
    instances = []
    for ann in annotations:
        region = decode_segmentation(ann["segmentation"], height, width)
        if ann.get("iscrowd", 0):
            if crowd == "ignore":
                mask[region] = IGNORE
            continue
        instances.append((region, class_of[int(ann["category_id"])] + 1))
    if overlap == "smallest":
        instances.sort(key=lambda item: -int(item[0].sum()))
    for region, value in instances:
        mask[region] = value
    return mask


_worker = {}


def _init_worker(crowd, overlap, class_of):
    from misc.imutils import color_palette
    _worker.update(crowd=crowd, overlap=overlap, class_of=class_of, palette=color_palette())


def make_mask(task):
    """Write one mask (a worker's unit of work): task = (id, image path, height, width, annotations, out path).
    Returns (id, error message or None): the image must exist and have the JSON's size."""
    from PIL import Image
    img_id, image_path, height, width, annotations, out_path = task
    try:
        with Image.open(image_path) as img:
            size = img.size
    except OSError as e:
        return img_id, f"image {image_path} is unreadable ({e})"
    if size != (width, height):
        return img_id, (f"image {image_path} is {size[0]}x{size[1]} but its instances JSON says {width}x{height}; "
                        f"the image and the annotations come from different releases")
    try:
        mask = semantic_mask(height, width, annotations, _worker["class_of"], _worker["crowd"], _worker["overlap"])
    except DataError as e:
        return img_id, f"image {img_id}: {e}"
    save_png(out_path, mask, palette=_worker["palette"])
    return img_id, None


def write_masks(tasks, crowd, overlap, class_of, workers, progress=True, split=""):
    """Run make_mask over tasks in `workers` processes (in-process for 1) with a progress bar."""
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc=f"coco masks {split}".strip(), unit="img", disable=not progress or not tasks)
    pool = None
    if workers <= 1:
        _init_worker(crowd, overlap, class_of)
        results = map(make_mask, tasks)
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (crowd, overlap, class_of))
        results = pool.imap_unordered(make_mask, tasks, chunksize=16)
    try:
        for _, error in results:
            if error:
                raise DataError(error)
            bar.update(1)
        if pool is not None:
            pool.close()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()  # after close(): the workers have finished; after an error: stop them now
            pool.join()


# --- labels and lists ----------------------------------------------------------------------------------------


def label_table(data, class_of):
    """{12-digit id: uint8 [C]} of every image of one JSON; an image without annotations gets all zeros."""
    table = {f"{int(img['id']):012d}": np.zeros(len(class_of), np.uint8) for img in data["images"]}
    for ann in data["annotations"]:
        table[f"{int(ann['image_id']):012d}"][class_of[int(ann["category_id"])]] = 1
    return table


def write_if_changed_text(path, text):
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return False
    save_text(path, text)
    return True


def write_if_changed_labels(path, table, class_names):
    from misc.datasets import load_label_file, save_label_table
    if os.path.isfile(path):
        try:
            old, old_names = load_label_file(path)
            if old_names == tuple(class_names) and old.keys() == table.keys() and \
                    all(np.array_equal(old[k], table[k]) for k in table):
                return False
        except DataError:
            pass  # unreadable: remake it
    save_label_table(path, table, class_names=class_names)
    return True


def check_recorded_rules(mask_dir, settings, overwrite):
    """Masks made with other rules (or from other JSONs) are never mixed with new ones: stop, naming the
    difference, unless --overwrite."""
    from misc import provenance
    record = provenance.read_record(mask_dir)
    if overwrite or record is None or not any(n.endswith(".png") for n in os.listdir(mask_dir)):
        return
    diff = provenance.differences(record.get("settings", {}), settings)
    if diff:
        shown = "; ".join(f"{name} {json.dumps(a)[:40]} (now {json.dumps(b)[:40]})" for name, a, b in diff)
        raise DataError(f"the masks in {mask_dir} were made with other settings: {shown}. Pass --overwrite to "
                        f"remake them, or give the recorded rules")


def file_digest(path, chunk=1 << 24):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:12]


# --- the command ---------------------------------------------------------------------------------------------


def check_split(root, split, data, path, class_of):
    """(annotations by image, 12-digit ids, image paths) of one parsed split, or a DataError naming the fault."""
    by_image = annotations_by_image(data, path, class_of)
    ids = [f"{int(img['id']):012d}" for img in data["images"]]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path} lists an image id twice; the file is damaged")
    paths = [image_file(root, split, img) for img in data["images"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} image(s) of {path} have no file, e.g. {missing[0]}; unpack "
                        f"{split}2014.zip under --coco_root (or fix the JSON)")
    return by_image, ids, paths


def check_inputs(root, splits):
    """Every JSON parsed and checked (instances, categories, ids, image files) before anything is written: a bad
    val JSON must not be found after the train masks are made. One JSON in memory at a time (train2014's parse,
    about 9 s, is then done twice)."""
    first = None
    for split in splits:
        path = annotation_path(root, split)
        data = load_instances(path)
        categories = categories_of(data)
        first = (path, check_categories([(path, categories)] if first is None else [first, (path, categories)]))
        check_split(root, split, data, path, {cid: n for n, (cid, _) in enumerate(categories)})
        del data


def prepare(root, crowd="background", overlap="last", splits=SPLITS, workers=None, overwrite=False, progress=True):
    """Labels, lists and masks of `splits` under root (see the module docstring). Returns a summary dict with
    per-split image counts, images without annotations, crowd-only images and masks written.

    One split at a time: a parsed instances JSON is the memory peak (a few GB for train2014)."""
    from misc import provenance
    if crowd not in CROWD_RULES or overlap not in OVERLAP_RULES:
        raise DataError(f"--crowd must be one of {CROWD_RULES} and --overlap one of {OVERLAP_RULES}")
    if not os.path.isdir(root):
        raise DataError(f"--coco_root {root} does not exist; point it at the folder holding annotations/ and "
                        f"train2014/, val2014/")
    for split in splits:  # every file and folder is checked before any work
        if not os.path.isfile(annotation_path(root, split)):
            load_instances(annotation_path(root, split))
        check_image_folder(root, split)
    check_inputs(root, splits)
    workers = max(1, (os.cpu_count() or 2) if workers is None else workers)
    mask_dir = os.path.join(root, MASK_DIR_NAME)
    summary = {"root": root, "crowd": crowd, "overlap": overlap, "splits": {}, "masks_written": 0}
    table, lists, first = {}, {}, None
    for split in splits:
        path = annotation_path(root, split)
        data = load_instances(path)
        categories = categories_of(data)
        if first is None:
            first = (path, check_categories([(path, categories)]))
            class_of = {cid: n for n, (cid, _) in enumerate(categories)}
            class_names = [name for _, name in categories]
            settings = {"crowd": crowd, "overlap": overlap, "categories": [cid for cid, _ in categories],
                        "annotations": {s: file_digest(annotation_path(root, s)) for s in splits}}
            check_recorded_rules(mask_dir, settings, overwrite)
            record_args = SimpleNamespace(overwrite=("prepare",) if overwrite else (), device="cpu",
                                          coco_root=root, crowd=crowd, overlap=overlap, splits=list(splits))
            provenance.prepare(record_args, "prepare", mask_dir, settings)
        else:
            check_categories([first, (path, categories)])
        by_image, ids, paths = check_split(root, split, data, path, class_of)
        tasks = []
        for img, img_id, image_path in zip(data["images"], ids, paths):
            out = os.path.join(mask_dir, img_id + ".png")
            if not os.path.isfile(out):
                tasks.append((img_id, image_path, int(img["height"]), int(img["width"]),
                              by_image[int(img["id"])], out))
        table.update(label_table(data, class_of))
        lists[split] = ids
        summary["splits"][split] = {
            "images": len(ids), "annotations": len(data["annotations"]),
            "without_annotations": sum(1 for a in by_image.values() if not a),
            "crowd_only": sum(1 for a in by_image.values() if a and all(x.get("iscrowd", 0) for x in a))}
        del data, by_image
        write_masks(tasks, crowd, overlap, class_of, min(workers, max(1, len(tasks))), progress, split)
        summary["masks_written"] += len(tasks)
        del tasks

    summary["classes"] = len(class_names)
    summary["labels_written"] = write_if_changed_labels(os.path.join(root, LABEL_FILE_NAME), table, class_names)
    for split, ids in lists.items():  # written last: their presence marks a finished preparation
        write_if_changed_text(os.path.join(root, LIST_NAMES[split]), "\n".join(ids) + "\n")
    if tuple(class_names) != CLASS_NAMES:
        summary["note"] = (f"the {len(class_names)} categories differ from COCO's 80; their names are in "
                           f"{LABEL_FILE_NAME}")
    return summary


def describe(summary):
    lines = [f"coco_root {summary['root']}: {summary['classes']} classes, masks with --crowd {summary['crowd']} "
             f"--overlap {summary['overlap']} ({summary['masks_written']} written now)"]
    for split, s in summary["splits"].items():
        lines.append(f"  {split}: {s['images']} images, {s['annotations']} annotations; {s['without_annotations']} "
                     f"image(s) without any annotation (kept: all-background labels and masks), "
                     f"{s['crowd_only']} with crowd annotations only")
    if "note" in summary:
        lines.append("  note: " + summary["note"])
    return "\n".join(lines)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco_root", required=True, help="folder with annotations/ and train2014/, val2014/")
    p.add_argument("--crowd", choices=CROWD_RULES, default="background",
                   help="crowd regions: background (default) or 255 ignore")
    p.add_argument("--overlap", choices=OVERLAP_RULES, default="last",
                   help="overlapping instances: the later annotation (default) or the smallest one wins")
    p.add_argument("--splits", default="train,val", help="comma-separated subset of train,val")
    p.add_argument("--workers", type=int, default=None, help="mask processes (default: the CPU count)")
    p.add_argument("--overwrite", action="store_true", help="remake the masks (e.g. with other rules)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    if not splits or any(s not in SPLITS for s in splits):
        raise SystemExit(f"error: --splits takes names from {','.join(SPLITS)}, got {args.splits!r}")
    try:
        summary = prepare(args.coco_root, args.crowd, args.overlap, splits, args.workers, args.overwrite)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    print(describe(summary))
    return summary


if __name__ == "__main__":
    main()
