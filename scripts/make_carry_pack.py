"""A copy of the real VOC subset small enough to travel to a lent GPU machine (the `device` tool carries at most
64 MiB of git-ignored files; the subset is 145 MB).

    python scripts/make_carry_pack.py --voc12_root ../shared/data/voc12_subset --out .devdata/voc_pack

Keeps all train_subset images with their masks (the evaluation set) and as many of the other train_aug_subset
images as fit in --max_mb, re-encoded as JPEG with the long side at most --long_side (VOC's 500: nothing is
resized in practice) at the highest quality that fits; masks are copied (palette PNGs, resized with nearest
neighbour only if their image was). Writes JPEGImages/, SegmentationClassAug/, cls_labels.npz (the ids kept),
ImageSets/train_subset.txt, ImageSets/train_aug_subset.txt and PACK.json (what was carried, quality, sizes).
The folder is a VOC root: pass it as --voc12_root with --cls_labels <pack>/cls_labels.npz.
"""
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from misc.cli import ArgumentParser, HelpFormatter, int_at_least  # noqa: E402
from misc.datasets import load_id_list, load_label_file, save_label_table  # noqa: E402
from misc.fileio import DataError, atomic_path, save_json  # noqa: E402
from voc12.dataloader import DEFAULT_LABEL_FILE  # noqa: E402


def encode(img, quality):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def fitted(img, long_side):
    w, h = img.size
    scale = min(1.0, long_side / max(w, h))
    if scale < 1.0:
        img = img.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    return img, scale


def choose_quality(paths, budget_bytes, count, long_side, qualities=(92, 90, 88, 85, 82, 80, 75, 70)):
    """The highest JPEG quality at which `count` images (estimated from a sample of `paths`) fit the budget."""
    sample = paths[::max(1, len(paths) // 40)]
    for q in qualities:
        mean = np.mean([len(encode(fitted(Image.open(p).convert("RGB"), long_side)[0], q)) for p in sample])
        if mean * count <= budget_bytes:
            return q, mean
    return qualities[-1], mean


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--voc12_root", required=True, help="the VOC subset (JPEGImages/, SegmentationClassAug/, "
                                                       "ImageSets/train_subset.txt, train_aug_subset.txt)")
    p.add_argument("--out", default=".devdata/voc_pack", help="the pack folder (git-ignored)")
    p.add_argument("--max_mb", type=int_at_least(1), default=40,
                   help="size budget of the pack in MiB (the tree, about 3 MiB, travels too: 64 MiB in all)")
    p.add_argument("--long_side", type=int_at_least(64), default=500, help="longest image side kept")
    args = p.parse_args(argv)
    sets = os.path.join(args.voc12_root, "ImageSets")
    try:
        with_masks = load_id_list(os.path.join(sets, "train_subset.txt"), "train_subset.txt")
        all_ids = load_id_list(os.path.join(sets, "train_aug_subset.txt"), "train_aug_subset.txt")
    except DataError as e:
        raise SystemExit(f"error: {e}")
    labels, _ = load_label_file(DEFAULT_LABEL_FILE)
    others = [i for i in all_ids if i not in set(with_masks)]
    img_path = lambda i: os.path.join(args.voc12_root, "JPEGImages", i + ".jpg")  # noqa: E731
    mask_bytes = sum(os.path.getsize(os.path.join(args.voc12_root, "SegmentationClassAug", i + ".png"))
                     for i in with_masks)
    budget = args.max_mb * 2 ** 20 - mask_bytes - 2 ** 20  # lists, labels, slack
    if budget <= 0:
        raise SystemExit(f"error: --max_mb {args.max_mb} leaves no room for images after the masks "
                         f"({mask_bytes / 2 ** 20:.1f} MiB) and 1 MiB for lists and labels: raise --max_mb")
    quality, mean = choose_quality([img_path(i) for i in all_ids], budget, len(all_ids), args.long_side)
    kept_others = others[:max(0, int(budget // mean) - len(with_masks))]
    kept = with_masks + kept_others
    total, resized = 0, 0
    for n, img_id in enumerate(kept):
        img, scale = fitted(Image.open(img_path(img_id)).convert("RGB"), args.long_side)
        data = encode(img, quality)
        if total + len(data) > budget:  # the estimate was optimistic: stop at the budget
            kept = kept[:n]
            break
        total += len(data)
        with atomic_path(os.path.join(args.out, "JPEGImages", img_id + ".jpg")) as tmp:
            open(tmp, "wb").write(data)
        if img_id in set(with_masks):
            mask = Image.open(os.path.join(args.voc12_root, "SegmentationClassAug", img_id + ".png"))
            if scale < 1.0:
                mask = mask.resize(img.size, Image.NEAREST)
                resized += 1
            with atomic_path(os.path.join(args.out, "SegmentationClassAug", img_id + ".png")) as tmp:
                mask.save(tmp, format="PNG")
    kept_set = set(kept)
    os.makedirs(os.path.join(args.out, "ImageSets"), exist_ok=True)
    for name, ids in (("train_subset.txt", [i for i in with_masks if i in kept_set]),
                      ("train_aug_subset.txt", [i for i in all_ids if i in kept_set])):
        with open(os.path.join(args.out, "ImageSets", name), "w") as f:
            f.write("\n".join(ids) + "\n")
    save_label_table(os.path.join(args.out, "cls_labels.npz"), {i: labels[i] for i in kept})
    summary = {"source": os.path.abspath(args.voc12_root), "jpeg_quality": quality, "long_side": args.long_side,
               "images": len(kept), "with_masks": len([i for i in with_masks if i in kept_set]),
               "images_only": len(kept) - len([i for i in with_masks if i in kept_set]),
               "of_train_aug_subset": len(all_ids), "masks_resized": resized,
               "jpeg_mib": round(total / 2 ** 20, 2), "mask_mib": round(mask_bytes / 2 ** 20, 2)}
    save_json(os.path.join(args.out, "PACK.json"), summary)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
