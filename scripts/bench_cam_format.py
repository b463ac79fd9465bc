"""Bytes, write / read time and eval_cam time of the CAM record formats (misc/cam_format.py), on real CAMs.

  python scripts/bench_cam_format.py --classifier /tmp/demo/sess/res50_cam.pth --demo_work_dir /tmp/demo

Maps come from a trained classifier (e.g. the demo's, `python run_sample.py --demo --work_dir /tmp/demo`) run as
make_cam runs it (4 scales + flips) on N real VOC images of --voc12_root ("voc"), and the same maps resized to
the stride-16 grids of a 640 x 480 image ("coco", COCO's typical size, 3 classes); the classes kept are the
classifier's strongest, as many as the image's VOC labels (VOC) or 3 (COCO). Each record is written in the plain layout (format 1, the official one)
and the compact one (format 2), read back and compared bit for bit; eval_cam's seed evaluation (evaluate_cam_dir,
which reads every record) is timed on both folders of the VOC records, alternately, best of --repeat. With
--demo_work_dir the demo's own CAMs (whose seeds mean something) are rewritten as float16 and their seed mIoU
compared with the float32 one. Prints a markdown table; --json writes the numbers.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from misc import imutils  # noqa: E402
from misc.cams import multiscale_cam_maps, resize_and_sum, write_cam_record  # noqa: E402
from misc.fileio import load_cam_npz, load_checkpoint, load_image_rgb, load_npz, save_cam_npz  # noqa: E402
from net.resnet50_cam import load_classifier  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", required=True, help="a trained classifier checkpoint (train_cam's)")
    p.add_argument("--voc12_root", default=os.path.join(REPO, "..", "shared", "data", "voc12_subset"))
    p.add_argument("--num_images", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3, help="eval_cam timings: best of this many, alternating")
    p.add_argument("--demo_work_dir", default="", help="a finished demo work dir: float16's seed mIoU effect")
    p.add_argument("--bench_dir", default="", help="where the records go (default: a temporary folder)")
    p.add_argument("--json", default="")
    p.add_argument("--maps_cache", default="",
                   help="folder of the classifier's per-scale maps per image (made on the first run, reused: the "
                        "classifier's forwards are the slow part and not what is measured)")
    return p.parse_args()


def voc_ids(root, n):
    ids = sorted(f[:-4] for f in os.listdir(os.path.join(root, "SegmentationClassAug")) if f.endswith(".png"))
    return ids[:n]


def class_maps(model, img, scales=(1.0, 0.5, 1.5, 2.0)):
    pyramid = [torch.from_numpy(p) for p in imutils.scale_pyramid(img, scales)]
    with torch.inference_mode():
        return multiscale_cam_maps(model, pyramid, "cpu")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cached_maps(model, img_id, img, cache):
    path = os.path.join(cache, img_id + ".npz") if cache else ""
    if path and os.path.isfile(path):
        d = load_npz(path)
        return [torch.from_numpy(d[f"m{k}"]) for k in range(4)]
    maps = class_maps(model, img)
    if path:
        os.makedirs(cache, exist_ok=True)
        np.savez(path, size=np.array(img.shape[:2]), **{f"m{k}": m.numpy() for k, m in enumerate(maps)})
    return maps


def coco_sized(maps, size=(480, 640), scales=(1.0, 0.5, 1.5, 2.0)):
    """A VOC image's per-scale maps bilinearly resized to the stride-16 grids of a 640 x 480 image at each scale:
    maps as smooth as the classifier's, of COCO's typical size."""
    out = []
    for m, s in zip(maps, scales):
        grid = (-(-round(size[0] * s) // 16), -(-round(size[1] * s) // 16))
        out.append(torch.nn.functional.interpolate(m[None], grid, mode="bilinear", align_corners=False)[0])
    return out


def write_records(model, images, num_keys, folder, cache, to_coco=False):
    """Plain and compact records of each image; per-format bytes, write and read seconds, bit equality."""
    stats = {f: {"bytes": 0, "write_s": 0.0, "read_s": 0.0} for f in ("plain", "compact")}
    equal = True
    for img_id, img, n in zip(*zip(*images), num_keys):
        maps = cached_maps(model, img_id, img, cache)
        if to_coco:
            maps, img = coco_sized(maps), np.zeros((480, 640, 3), np.uint8)
        strength = torch.stack([m.flatten(1).amax(1) for m in maps]).sum(0)
        label = torch.zeros(len(strength))
        label[strength.argsort(descending=True)[:n]] = 1
        strided, high_res = resize_and_sum(maps, img.shape[:2])
        records = {}
        for fmt in ("plain", "compact"):
            path = os.path.join(folder, fmt, img_id + ".npz")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _, dt = timed(lambda: write_cam_record(path, strided, high_res, label, maps, fmt))
            stats[fmt]["write_s"] += dt
            stats[fmt]["bytes"] += os.path.getsize(path)
            records[fmt], dt = timed(lambda: load_cam_npz(path))
            stats[fmt]["read_s"] += dt
        a, b = records["plain"], records["compact"]
        equal &= all(np.array_equal(np.ascontiguousarray(a[k]).view(np.uint8), np.ascontiguousarray(b[k]).view(np.uint8))
                     and a[k].dtype == b[k].dtype for k in ("keys", "cam", "high_res"))
    n = len(images)
    return {f: {"bytes_per_image": s["bytes"] / n, "write_ms": 1e3 * s["write_s"] / n,
                "read_ms": 1e3 * s["read_s"] / n} for f, s in stats.items()}, equal


def voc_args(root, work_dir, ids):
    import run_sample
    os.makedirs(work_dir, exist_ok=True)
    listing = os.path.join(work_dir, "eval_ids.txt")
    with open(listing, "w") as f:
        f.write("\n".join(ids) + "\n")
    args = run_sample.parse_args(["--work_dir", work_dir, "--voc12_root", root, "--eval_list", listing,
                                  "--device", "cpu", "--backbone_weights", "none"])
    return args


def time_eval(args, folders, ids, repeat):
    """ms/image of evaluate_cam_dir: "today" is the plain folder read one record after the other (the loop before
    the compact format), the others read ahead on a thread (misc/cams.read_cam_records)."""
    from step import eval_cam

    def sequential(cam_dir, ids, made_by, ahead=2):
        for img_id in ids:
            yield img_id, load_cam_npz(os.path.join(cam_dir, img_id + ".npz"), made_by)

    runs = {"today": (folders["plain"], sequential), **{k: (v, eval_cam.read_cam_records) for k, v in folders.items()}}
    best = {k: float("inf") for k in runs}
    real = eval_cam.read_cam_records
    try:
        for _ in range(repeat):
            for name, (folder, reader) in runs.items():
                eval_cam.read_cam_records = reader
                _, dt = timed(lambda: eval_cam.evaluate_cam_dir(args, folder, ids))
                best[name] = min(best[name], dt)
    finally:
        eval_cam.read_cam_records = real
    return {k: 1e3 * v / len(ids) for k, v in best.items()}


def float16_effect(work_dir, bench_dir):
    """Seed mIoU of the demo's CAM and RIB records as they are and rewritten as float16."""
    import run_sample
    from step.eval_cam import evaluate_cam_dir
    args = run_sample.parse_args(["--demo", "--work_dir", work_dir])
    from step import demo
    args = demo.demo_args(args)
    from misc.datasets import load_id_list
    ids = load_id_list(args.eval_list, "--eval_list")
    out = {}
    for source, folder in (("cam", args.cam_out_dir), ("rib", args.rib_out_dir)):
        half = os.path.join(bench_dir, "float16_" + source)
        os.makedirs(half, exist_ok=True)
        size32 = size16 = 0
        for img_id in ids:
            rec = load_cam_npz(os.path.join(folder, img_id + ".npz"))
            save_cam_npz(os.path.join(half, img_id + ".npz"), rec["keys"], rec["cam"], rec["high_res"],
                         fmt="float16")
            size32 += os.path.getsize(os.path.join(folder, img_id + ".npz"))
            size16 += os.path.getsize(os.path.join(half, img_id + ".npz"))
        a, b = evaluate_cam_dir(args, folder, ids), evaluate_cam_dir(args, half, ids)
        out[source] = {"miou_float32": a["miou"], "miou_float16": b["miou"], "threshold_float32": a["threshold"],
                       "threshold_float16": b["threshold"],
                       "max_sweep_diff": max(abs((a["sweep"][t] or 0) - (b["sweep"][t] or 0)) for t in a["sweep"]),
                       "images": len(ids), "bytes_compact": size32 / len(ids), "bytes_float16": size16 / len(ids)}
    return out


def main():
    opt = parse()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    num_classes = int(load_checkpoint(opt.classifier, "classifier checkpoint")["state_dict"]
                      ["classifier.weight"].shape[0])
    model = load_classifier(opt.classifier, num_classes)
    bench = opt.bench_dir or tempfile.mkdtemp(prefix="bench_cam_format_")
    ids = voc_ids(opt.voc12_root, opt.num_images)
    from misc.fileio import load_label_png
    voc = [(i, load_image_rgb(os.path.join(opt.voc12_root, "JPEGImages", i + ".jpg"))) for i in ids]
    voc_keys = [min(num_classes, max(1, len(set(np.unique(load_label_png(
        os.path.join(opt.voc12_root, "SegmentationClassAug", i + ".png")))) - {0, 255}))) for i in ids]
    results = {"images": len(ids), "classifier": opt.classifier, "torch_threads": torch.get_num_threads(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    cache = opt.maps_cache or os.path.join(bench, "maps")
    results["voc"], eq_voc = write_records(model, voc, voc_keys, os.path.join(bench, "voc"), cache)
    results["voc"]["classes_per_image"] = float(np.mean(voc_keys))
    results["coco"], eq_coco = write_records(model, voc, [min(3, num_classes)] * len(voc),
                                             os.path.join(bench, "coco"), cache, to_coco=True)
    results["bit_equal"] = bool(eq_voc and eq_coco)
    results["eval_cam_ms_per_image"] = time_eval(voc_args(opt.voc12_root, os.path.join(bench, "work"), ids),
                                                 {f: os.path.join(bench, "voc", f) for f in ("plain", "compact")},
                                                 ids, opt.repeat)
    if opt.demo_work_dir:
        results["float16"] = float16_effect(opt.demo_work_dir, bench)
    print(report(results))
    if opt.json:
        with open(opt.json, "w") as f:
            json.dump(results, f, indent=2)
    if not opt.bench_dir:
        shutil.rmtree(bench, ignore_errors=True)


def report(r):
    lines = [f"{r['images']} images, torch {torch.__version__} ({r['cpu_capability']}, {r['torch_threads']} threads); "
             f"compact == plain bit for bit: {r['bit_equal']}", "",
             "| maps | format | bytes/image | write ms/image | read ms/image |", "|---|---|---|---|---|"]
    for size in ("voc", "coco"):
        for fmt in ("plain", "compact"):
            s = r[size][fmt]
            lines.append(f"| {size} | {fmt} | {s['bytes_per_image']:,.0f} | {s['write_ms']:.1f} | {s['read_ms']:.1f} |")
    e = r["eval_cam_ms_per_image"]
    lines += ["", f"eval_cam: today (plain, sequential reads) {e['today']:.1f} ms/image; plain read ahead "
                  f"{e['plain']:.1f}; compact read ahead {e['compact']:.1f} (ratio to today "
                  f"{e['compact'] / e['today']:.2f})"]
    for source, f in r.get("float16", {}).items():
        lines.append(f"float16 ({source}, {f['images']} demo images): seed mIoU {f['miou_float32']:.2f} -> "
                     f"{f['miou_float16']:.2f} (threshold {f['threshold_float32']:.2f} -> "
                     f"{f['threshold_float16']:.2f}; largest sweep difference {f['max_sweep_diff']:.2f}); "
                     f"{f['bytes_compact']:,.0f} -> {f['bytes_float16']:,.0f} bytes/image")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
