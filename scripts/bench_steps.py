"""Per-image CPU throughput of make_cam and cam_to_ir_label against faithful reference loops (the official IRN
scripts' structure), and the memory of make_cam, cam_to_ir_label and make_sem_seg over a long COCO-sized list.

    python scripts/bench_steps.py --images 6 --repeat 2            # ratio on real VOC images
    python scripts/bench_steps.py --parts memory --memory_images 200

ratio: the step's own run(args) (fixed costs included: settings record, classifier load, DataLoader, writing the
compact records) and the reference loop (IRN's make_cam / cam_to_ir_label: Net + load_state_dict, a DataLoader of
the same multi-scale packs, flip-merged maps, stride-4 and stride-16-cover resizes, max-normalised, the plain
float32 record written; the IR label from plain records with the same two CRFs) on the same real VOC images of
--voc12_root, alternately, best of --repeat; one thread (a second one spin-waits on a busy machine); a random
BN-calibrated ResNet-50 (20 classes). memory: the three steps in this process on --memory_images synthetic 640 x 480
JPEGs with 3 of the 20 VOC classes each (random classifier and IRNet), the resident set sampled every 0.1 s with
the count of outputs written, so the table shows RSS after 10 %, 50 % and 100 % of the list.
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssMonitor:
    """(outputs written, RSS MiB) every 0.1 s while a step runs."""

    def __init__(self, folder, suffix):
        self.folder, self.suffix, self.samples, self.stop = folder, suffix, [], threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            try:
                n = sum(1 for f in os.listdir(self.folder) if f.endswith(self.suffix) and not f.startswith("."))
            except OSError:
                n = 0
            self.samples.append((n, rss_mib()))
            self.stop.wait(0.1)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def at(self, share, total):
        want = max(1, int(round(share * total)))
        hits = [r for n, r in self.samples if n >= want]
        return max(r for n, r in self.samples if n <= want) if not hits else hits[0]

    def peak(self):
        return max(r for _, r in self.samples)


def voc_args(work, root, ids, **extra):
    from conftest import make_args, write_list
    os.makedirs(work, exist_ok=True)
    listing = write_list(os.path.join(work, "ids.txt"), ids)
    return make_args(work, voc12_root=root, infer_list=listing, eval_list=listing, **extra)


# --- the reference loops (the official scripts' structure) ------------------------------------------------------

def reference_make_cam(args, ids):
    from misc import imutils
    from misc.datasets import MultiScaleDataset, build_spec
    from net.resnet50_cam import Net, flip_merged_cam
    from torch.utils.data import DataLoader
    spec = build_spec(args)
    model = Net(spec.num_classes)
    model.load_state_dict(torch.load(args.cam_weights_path, weights_only=True)["state_dict"])
    model.eval()
    loader = DataLoader(MultiScaleDataset(spec, ids, args.cam_scales), batch_size=None, shuffle=False,
                        num_workers=args.num_workers)
    out_dir = args.cam_out_dir
    os.makedirs(out_dir, exist_ok=True)
    with torch.no_grad():
        for pack in loader:
            size = tuple(pack["size"])
            strided_size = imutils.strided_size(size, 4)
            strided_up_size = imutils.strided_up_size(size, 16)
            outputs = [flip_merged_cam(model.class_maps(img)) for img in pack["img"]]
            strided_cam = torch.sum(torch.stack([F.interpolate(o[None], strided_size, mode="bilinear",
                                                               align_corners=False)[0] for o in outputs]), 0)
            highres_cam = [F.interpolate(o[:, None], strided_up_size, mode="bilinear", align_corners=False)
                           for o in outputs]
            highres_cam = torch.sum(torch.stack(highres_cam, 0), 0)[:, 0, :size[0], :size[1]]
            valid_cat = torch.nonzero(pack["label"])[:, 0]
            strided_cam = strided_cam[valid_cat]
            strided_cam /= F.adaptive_max_pool2d(strided_cam, (1, 1)) + 1e-5
            highres_cam = highres_cam[valid_cat]
            highres_cam /= F.adaptive_max_pool2d(highres_cam, (1, 1)) + 1e-5
            np.savez(os.path.join(out_dir, pack["name"] + ".npz"), keys=valid_cat.numpy(),
                     cam=strided_cam.numpy(), high_res=highres_cam.numpy())


def reference_ir_label(args, ids, cam_dir):
    import imageio.v2 as imageio
    from misc.crf import crf_inference_label
    from misc.datasets import build_spec
    from misc.fileio import load_image_rgb
    spec = build_spec(args)
    os.makedirs(args.ir_label_out_dir, exist_ok=True)
    for img_id in ids:
        img = load_image_rgb(spec.image_path(img_id))
        with np.load(os.path.join(cam_dir, img_id + ".npz")) as d:
            cams, keys = d["high_res"], np.pad(d["keys"] + 1, (1, 0), mode="constant")
        fg = np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=args.conf_fg_thres), axis=0)
        fg_conf = keys[crf_inference_label(img, fg, n_labels=keys.shape[0])]
        bg = np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=args.conf_bg_thres), axis=0)
        bg_conf = keys[crf_inference_label(img, bg, n_labels=keys.shape[0])]
        conf = fg_conf.copy()
        conf[fg_conf == 0] = 255
        conf[bg_conf + fg_conf == 0] = 0
        imageio.imwrite(os.path.join(args.ir_label_out_dir, img_id + ".png"), conf.astype(np.uint8))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_ratio(opt, work):
    from conftest import save_random_classifier
    from step import cam_to_ir_label, make_cam
    root = opt.voc12_root
    ids = sorted(f[:-4] for f in os.listdir(os.path.join(root, "SegmentationClassAug")))[:opt.images]
    best = {k: float("inf") for k in ("make_cam", "make_cam_ref", "ir_label", "ir_label_ref")}
    for r in range(opt.repeat):
        base = os.path.join(work, f"ratio{r}")
        args = voc_args(base, root, ids, cam_scales=opt.scales)
        save_random_classifier(args.cam_weights_path, num_classes=20, seed=0)
        ref = voc_args(base + "_ref", root, ids, cam_scales=opt.scales, cam_weights_name=args.cam_weights_path)
        best["make_cam"] = min(best["make_cam"], timed(lambda: make_cam.run(args)))
        best["make_cam_ref"] = min(best["make_cam_ref"], timed(lambda: reference_make_cam(ref, ids)))
        args.ir_cam_source = ref.ir_cam_source = "cam"
        best["ir_label"] = min(best["ir_label"], timed(lambda: cam_to_ir_label.run(args)))
        best["ir_label_ref"] = min(best["ir_label_ref"],
                                   timed(lambda: reference_ir_label(ref, ids, ref.cam_out_dir)))
        same = all(np.array_equal(np.asarray(_png(os.path.join(args.ir_label_out_dir, i + ".png"))),
                                  np.asarray(_png(os.path.join(ref.ir_label_out_dir, i + ".png")))) for i in ids)
        best["ir_labels_identical"] = same
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(base + "_ref", ignore_errors=True)
    n = len(ids)
    print(f"\n{n} real VOC images, cam scales {opt.scales}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| step | this project s/image | reference s/image | ratio |\n|---|---|---|---|")
    for step in ("make_cam", "ir_label"):
        a, b = best[step] / n, best[step + "_ref"] / n
        print(f"| {step} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    print(f"IR labels identical to the reference's: {best['ir_labels_identical']}")


def _png(path):
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img).copy()


def synthetic_coco_sized(folder, count, seed=0):
    """VOC-format folder of `count` 640 x 480 JPEGs (textured, a few shapes) with 3 random classes each."""
    from PIL import Image
    from misc.datasets import save_label_table
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "JPEGImages"), exist_ok=True)
    ids, table = [], {}
    yy, xx = np.mgrid[:480, :640]
    for n in range(count):
        img_id = f"coco_{n:05d}"
        base = rng.uniform(0, 255, (3, 3, 3))
        img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((640, 480), Image.BILINEAR)).copy()
        for _ in range(3):
            cy, cx, r = rng.integers(60, 420), rng.integers(60, 580), rng.integers(30, 100)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, "JPEGImages", img_id + ".jpg"), quality=90)
        label = np.zeros(20, np.uint8)
        label[rng.choice(20, 3, replace=False)] = 1
        table[img_id] = label
        ids.append(img_id)
    save_label_table(os.path.join(folder, "cls_labels.npz"), table)
    return ids


def bench_memory(opt, work):
    from conftest import save_random_classifier
    from misc.fileio import save_checkpoint
    from net.resnet50_irn import IRNet
    from step import cam_to_ir_label, make_cam, make_sem_seg_labels
    data = os.path.join(work, "coco_sized")
    ids = synthetic_coco_sized(data, opt.memory_images)
    args = voc_args(os.path.join(work, "memory"), data, ids, cam_scales=opt.scales,
                    cls_labels=os.path.join(data, "cls_labels.npz"))
    save_random_classifier(args.cam_weights_path, num_classes=20, seed=0)
    torch.manual_seed(0)
    save_checkpoint(args.irn_weights_path, IRNet("none").state_dict(), crop_size=512, radius=10)
    args.ir_cam_source = "cam"
    rows = []
    for name, fn, folder, suffix in (("make_cam", make_cam.run, args.cam_out_dir, ".npz"),
                                     ("cam_to_ir_label", cam_to_ir_label.run, args.ir_label_out_dir, ".png"),
                                     ("make_sem_seg", make_sem_seg_labels.run, args.sem_seg_out_dir, ".png")):
        os.makedirs(folder, exist_ok=True)
        start_rss = rss_mib()
        with RssMonitor(folder, suffix) as mon:
            seconds = timed(lambda: fn(args))
        n = len(ids) * (2 if name == "make_sem_seg" else 1)  # mask + palette picture
        rows.append((name, start_rss, mon.at(0.1, n), mon.at(0.5, n), mon.at(1.0, n), mon.peak(),
                     seconds / len(ids)))
        if name == "make_cam":
            sizes = [os.path.getsize(os.path.join(folder, i + ".npz")) for i in ids]
            cam_bytes = float(np.mean(sizes))
    print(f"\n{len(ids)} synthetic 640 x 480 images, 3 classes each, cam scales {opt.scales}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; compact CAM record "
          f"{cam_bytes:,.0f} bytes/image")
    print("| step | RSS before MiB | after 10 % | after 50 % | after 100 % | peak | s/image |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.0f} | {r[2]:.0f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="ratio,memory")
    p.add_argument("--voc12_root", default=os.path.join(REPO, "..", "shared", "data", "voc12_subset"))
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--memory_images", type=int, default=200)
    p.add_argument("--scales", default="1.0,0.5,1.5,2.0")
    p.add_argument("--threads", type=int, default=1)
    opt = p.parse_args()
    import conftest  # noqa: F401  (it sets 2 threads on import: set ours after it)
    torch.set_num_threads(opt.threads)
    work = tempfile.mkdtemp(prefix="bench_steps_")
    try:
        if "ratio" in opt.parts:
            bench_ratio(opt, work)
        if "memory" in opt.parts:
            bench_memory(opt, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
