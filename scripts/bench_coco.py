"""Per-image CPU cost of the COCO path on COCO-sized images (640 x 480): the mask of coco14/prepare.py, make_cam, the
IR-label CRF (cam_to_ir_label), the random walk (make_sem_seg) and the two evaluations' per-image work.

    python scripts/bench_coco.py                              # 5 images, every part, torch's default threads
    python scripts/bench_coco.py --parts make_cam,walk --threads 1 --images 3
    python scripts/bench_coco.py --parts json        # prepare.py's fixed cost on a train2014-sized JSON

Each part calls the step's own functions on synthetic 640 x 480 images (coco14/synthetic.py's textures and
shapes): --instances single-instance polygons / RLE and one crowd region per image (COCO has about 7 instances per
image), --classes labels per image (COCO: about 2.9), random BN-calibrated ResNet-50 classifier (80 classes) and
IRNet. Timings cover what the step does per image in its worker (image decode, network, post-processing, writing
the output), after one untimed warm-up image; model loading and process start are not included. Prints wall and
process CPU seconds per image (CPU seconds count every thread) and the load average, as a markdown table.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coco14 import prepare, synthetic  # noqa: E402
from coco14.dataloader import CLASS_NAMES, CATEGORY_IDS  # noqa: E402
from misc import imutils  # noqa: E402
from misc.fileio import atomic_path, load_cam_npz, load_image_rgb, load_label_png, save_png  # noqa: E402

PARTS = ("prepare", "make_cam", "crf", "walk", "eval_cam", "eval_sem_seg")  # per image; "json" on request
TRAIN2014 = (82783, 604907)  # images, annotations of instances_train2014.json
SIZE = (480, 640)  # (H, W)


def make_images(folder, count, instances, classes, seed=0):
    """[(image path, annotations, classes)] of synthetic 640 x 480 COCO images."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = SIZE
    out = []
    for n in range(count):
        chosen = rng.choice(len(CLASS_NAMES), size=classes, replace=False)
        anns = synthetic.random_annotations(rng, n, h, w, 1, crowd_prob=1.0, max_objects=1)[:1]  # the crowd
        for k in range(instances):
            kind = ("disk", "square", "triangle")[k % 3]
            r = int(rng.integers(30, 110))
            cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
            seg = synthetic.shape_polygon(kind, cy, cx, r)
            region = prepare.decode_segmentation(seg, h, w)
            ann = synthetic.annotation(k + 2, n, "person", seg, region)
            ann["category_id"] = CATEGORY_IDS[int(chosen[k % classes])]
            anns.append(ann)
        img = synthetic.background(rng, max(h, w))[:h, :w].copy()
        for ann in anns:
            region = prepare.decode_segmentation(ann["segmentation"], h, w)
            img[region] = rng.uniform(0, 255, 3)
        path = os.path.join(folder, f"{n:012d}.jpg")
        with atomic_path(path) as tmp:
            Image.fromarray(img.astype(np.uint8)).save(tmp, format="JPEG", quality=90)
        out.append((path, anns, np.sort(chosen)))
    return out


def json_cost(folder, images=TRAIN2014[0], annotations=TRAIN2014[1], seed=0):
    """(seconds, peak MiB) of prepare.py's per-split bookkeeping -- parse, check, index by image, labels -- on a
    synthetic instances JSON of train2014's size (24-point polygons; the real file is 332 MB)."""
    import json
    import resource
    rng = np.random.default_rng(seed)
    path = os.path.join(folder, "instances_big.json")
    with open(path, "w") as f:
        f.write('{"images": [')
        f.write(",".join(json.dumps({"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 480,
                                     "width": 640}) for i in range(images)))
        f.write('], "categories": ' + json.dumps([{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]))
        f.write(', "annotations": [')
        for a in range(annotations):
            poly = np.round(rng.uniform(0, 480, 48), 2).tolist()
            f.write(("," if a else "") + json.dumps({"id": a, "image_id": int(rng.integers(images)), "iscrowd": 0,
                                                   "category_id": CATEGORY_IDS[a % 80], "segmentation": [poly],
                                                   "area": 1.0, "bbox": [0, 0, 1, 1]}))
        f.write("]}")
    size = os.path.getsize(path) / 2 ** 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    data = prepare.load_instances(path)
    class_of = {cid: n for n, (cid, _) in enumerate(prepare.categories_of(data))}
    prepare.annotations_by_image(data, path, class_of)
    prepare.label_table(data, class_of)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return seconds, peak, size


def timed(fn, items):
    """(wall s/image, CPU s/image) of fn over items after one warm-up call."""
    fn(items[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for item in items:
        fn(item)
    n = len(items)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--instances", type=int, default=7)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--cam_scales", default="1.0,0.5,1.5,2.0")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [x for x in args.parts.split(",") if x]
    scales = tuple(float(s) for s in args.cam_scales.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        items = make_images(tmp, args.images + 1, args.instances, args.classes)
        class_of = {cid: n for n, cid in enumerate(CATEGORY_IDS)}
        masks, cams = {}, {}

        def prepare_one(item):
            path, anns, _ = item
            out = path[:-4] + "_gt.png"
            if os.path.exists(out):
                os.remove(out)
            _, error = prepare.make_mask((path, path, *SIZE, anns, out))
            assert error is None, error
            masks[path] = out
        prepare._init_worker("ignore", "last", class_of)
        if {"prepare", "eval_cam", "eval_sem_seg"} & set(parts):
            result = timed(prepare_one, items)
            if "prepare" in parts:
                rows.append(("prepare (one mask: header check, decode, PNG)", *result))

        need_cam = {"make_cam", "crf", "walk", "eval_cam"} & set(parts)
        if need_cam:
            from misc.cams import multiscale_cam_maps, resize_and_sum, write_cam_record
            from net.resnet50 import calibrate_batchnorm
            from net.resnet50_cam import Net
            torch.manual_seed(0)
            model = Net(len(CLASS_NAMES)).eval()
            first = torch.from_numpy(imutils.scale_pyramid(load_image_rgb(items[0][0]), (0.5,))[0])
            calibrate_batchnorm(model, [first])

            def make_cam_one(item):
                path, _, classes = item
                img = load_image_rgb(path)
                pyramid = [torch.from_numpy(x) for x in imutils.scale_pyramid(img, scales)]
                with torch.inference_mode():
                    maps = multiscale_cam_maps(model, pyramid, "cpu")
                    strided, high_res = resize_and_sum(maps, img.shape[:2])
                label = torch.zeros(len(CLASS_NAMES))
                label[classes] = 1
                cams[path] = path[:-4] + "_cam.npz"
                write_cam_record(cams[path], strided, high_res, label)
            result = timed(make_cam_one, items)
            if "make_cam" in parts:
                rows.append((f"make_cam ({len(scales)} scales + flips)", *result))

        if "crf" in parts:
            from step.cam_to_ir_label import ir_label

            def crf_one(item):
                img = load_image_rgb(item[0])
                label = ir_label(img, load_cam_npz(cams[item[0]]), 0.35, 0.17)
                save_png(item[0][:-4] + "_ir.png", label)
            rows.append(("cam_to_ir_label (two dense CRFs)", *timed(crf_one, items)))

        if "walk" in parts:
            from net.resnet50 import calibrate_batchnorm
            from net.resnet50_irn import IRNet
            from step.make_sem_seg_labels import pseudo_mask
            torch.manual_seed(0)
            irnet = IRNet().eval()
            calibrate_batchnorm(irnet, [torch.from_numpy(
                imutils.hwc_to_chw(imutils.normalize(load_image_rgb(items[0][0]))))[None]])
            walk_args = argparse.Namespace(sem_seg_power=1.3, beta=10.0, exp_times=8, sem_seg_bg_thres=0.22)

            def walk_one(item):
                img = load_image_rgb(item[0])
                record = load_cam_npz(cams[item[0]])
                with torch.inference_mode():
                    pair = torch.from_numpy(imutils.scale_pyramid(img, (1.0,))[0])
                    edge = irnet.boundary_map(pair, pad_to=0).float()
                    mask = pseudo_mask(torch.from_numpy(record["cam"]), record["keys"], edge, img.shape[:2],
                                       walk_args)
                save_png(item[0][:-4] + "_sem.png", mask.astype(np.uint8))
            rows.append(("make_sem_seg (IRNet boundary + random walk)", *timed(walk_one, items)))

        if "eval_cam" in parts:
            from misc.cli import sweep_values
            from step.eval_cam import ThresholdSweep, seed_scores
            sweep = ThresholdSweep(81, sweep_values(0.10, 0.50, 0.01))

            def eval_cam_one(item):
                record = load_cam_npz(cams[item[0]])
                gt = load_label_png(masks[item[0]])
                sweep.update(gt, *seed_scores(record, gt.shape))
            rows.append(("eval_cam (41 thresholds, one pass)", *timed(eval_cam_one, items)))

        if "eval_sem_seg" in parts:
            from misc.metrics import ConfusionMatrix
            confusion = ConfusionMatrix(81)

            def eval_sem_seg_one(item):
                gt = load_label_png(masks[item[0]])
                pred = load_label_png(masks[item[0]])  # a mask file as the prediction: same read and update
                confusion.update(gt, pred)
            rows.append(("eval_sem_seg", *timed(eval_sem_seg_one, items)))

    if "json" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, peak, size = json_cost(tmp)
        print(f"instances JSON of train2014's size ({TRAIN2014[0]} images, {TRAIN2014[1]} annotations, {size:.0f} "
              f"MiB): parse + check + index + labels {seconds:.1f} s, peak memory +{peak:.0f} MiB")
    load = os.getloadavg()[0]
    print(f"{args.images} images of {SIZE[1]}x{SIZE[0]}, {args.instances} instances + 1 crowd region, "
          f"{args.classes} classes each; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPU(s), load average {load:.1f}\n")
    print("| part | wall s/image | CPU s/image |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]:.3f} | {row[2]:.3f} |")


if __name__ == "__main__":
    main()
