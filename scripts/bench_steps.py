"""Per-image CPU throughput of make_cam, cam_to_ir_label and make_sem_seg against faithful reference loops (the
official IRN scripts' structure), where their time goes, and their memory over a long COCO-sized list.

    python scripts/bench_steps.py --images 6 --repeat 2 --memory_images 200     # all three parts
    python scripts/bench_steps.py --parts profile --images 3                    # one part

ratio: each step's own run(args) (fixed costs included: settings record, network load, DataLoader, checks, the
compact records) and a reference loop on the same real VOC images of --voc12_root, alternately, best of --repeat:
IRN's make_cam (Net + load_state_dict, a DataLoader of the same multi-scale packs, flip-merged maps, stride-4 and
stride-16-cover resizes, max-normalised, the plain float32 record written), cam_to_ir_label (from those plain
records, the two CRFs of IRN's crf_inference_label), make_sem_seg_labels (EdgeDisplacement: IRNet's full forward
on the pair padded to the 512 crop, cam ** 1.3, the random walk, x4 upsample, background threshold, mask and
palette PNG). The IR labels, masks and palette PNGs of both sides are compared (the script fails if they differ).
One thread (OMP_NUM_THREADS too, which the steps' workers take); a random BN-calibrated ResNet-50 (20 classes)
and a random IRNet.
profile: each step's run(args) once under cProfile on the same images; the cumulative time of its functions split
into fixed costs (list and image checks, settings record, network load, DataLoader start) and per-image costs
(decode, forward, resize, record write, CRF, walk, PNG writes), plus each step module's import time in a fresh
process after torch, numpy and PIL.
memory: the three steps in this process on --memory_images synthetic 640 x 480 JPEGs with 3 of the 20 VOC classes
each (random classifier and IRNet; make_cam at --memory_scales, IRNet's input unpadded as COCO's), the resident set
sampled every 0.1 s with the count of outputs written, so the table shows RSS after 10 %, 50 % and 100 % of the
list.
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
    """(outputs written, RSS MiB) every 0.1 s while a step runs; a progress line at every 10 % of `total`."""

    def __init__(self, folder, suffix, name="", total=0):
        self.folder, self.suffix, self.samples, self.stop = folder, suffix, [], threading.Event()
        self.name, self.total, self.shown = name, total, 0

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            n = self._count()
            self.samples.append((n, rss_mib()))
            if self.total and n * 10 >= (self.shown + 1) * self.total:
                self.shown = n * 10 // self.total
                print(f"  {self.name}: {n}/{self.total} outputs, RSS {self.samples[-1][1]:.0f} MiB, peak so far "
                      f"{self.peak():.0f} MiB, {time.strftime('%H:%M:%S')}", flush=True)
            self.stop.wait(0.1)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.samples.append((self._count(), rss_mib()))  # the end of the list (the thread may miss it)

    def _count(self):
        try:
            return sum(1 for f in os.listdir(self.folder) if f.endswith(self.suffix) and not f.startswith("."))
        except OSError:
            return 0

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


def reference_sem_seg(args, ids, cam_dir):
    """IRN/RIB's make_sem_seg_labels: EdgeDisplacement (the pair [image, flip] zero-padded to the 512 crop, IRNet,
    crop to stride 4, sigmoid of the mean of both boundary logits), the plain record's `cam` ** power, the random
    walk (net/irn_affinity.propagate_to_edge: the official algorithm without its dense (hw)^2 matrix, the same
    labels; the dense one takes minutes per image on a CPU), x4 upsample, crop, global max, background threshold,
    argmax through the keys, mask and palette PNG written. Images larger than the crop are not cropped (IRN's
    F.pad with a negative size would crop them; none of the VOC images is)."""
    import imageio.v2 as imageio
    from PIL import Image
    from misc import imutils
    from misc.datasets import MultiScaleDataset, build_spec
    from net import irn_affinity
    from net.resnet50_irn import IRNet
    from torch.utils.data import DataLoader
    spec = build_spec(args)
    model = IRNet("none")
    model.load_state_dict(torch.load(args.irn_weights_path, weights_only=True)["state_dict"])
    model.eval()
    crop = args.irn_crop_size if args.sem_seg_pad_to == "crop" else args.sem_seg_pad_to
    loader = DataLoader(MultiScaleDataset(spec, ids, (1.0,), need_labels=False), batch_size=None, shuffle=False,
                        num_workers=args.num_workers)
    palette = imutils.color_palette()
    os.makedirs(args.sem_seg_out_dir, exist_ok=True)
    with torch.no_grad():
        for pack in loader:
            h, w = pack["size"]
            x = pack["img"][0]
            feat_h, feat_w = (h - 1) // 4 + 1, (w - 1) // 4 + 1
            x = F.pad(x, [0, max(0, crop - x.size(3)), 0, max(0, crop - x.size(2))])
            edge_out, _ = model(x)
            edge_out = edge_out[..., :feat_h, :feat_w]
            edge = torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2)
            with np.load(os.path.join(cam_dir, pack["name"] + ".npz")) as d:
                cams, keys = torch.from_numpy(d["cam"]) ** args.sem_seg_power, np.pad(d["keys"] + 1, (1, 0))
            rw = irn_affinity.propagate_to_edge(cams, edge[0], radius=5, beta=args.beta, exp_times=args.exp_times)
            rw_up = F.interpolate(rw, scale_factor=4, mode="bilinear", align_corners=False)[..., 0, :h, :w]
            rw_up = rw_up / torch.max(rw_up)
            rw_up_bg = F.pad(rw_up, (0, 0, 0, 0, 1, 0), value=args.sem_seg_bg_thres)
            rw_pred = keys[torch.argmax(rw_up_bg, dim=0).numpy()].astype(np.uint8)
            imageio.imwrite(os.path.join(args.sem_seg_out_dir, pack["name"] + ".png"), rw_pred)
            if args.save_palette:
                picture = Image.fromarray(rw_pred).convert("P")
                picture.putpalette(palette)
                picture.save(os.path.join(args.sem_seg_out_dir, pack["name"] + "_palette.png"))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


STEPS = ("make_cam", "cam_to_ir_label", "make_sem_seg")


def real_ids(opt):
    root = opt.voc12_root
    return sorted(f[:-4] for f in os.listdir(os.path.join(root, "SegmentationClassAug")))[:opt.images]


def save_random_irnet(path):
    from misc.fileio import save_checkpoint
    from net.resnet50_irn import IRNet
    torch.manual_seed(0)
    save_checkpoint(path, IRNet("none").state_dict(), crop_size=512, radius=10)


def same_pngs(dir_a, dir_b, ids, suffix=".png"):
    return all(np.array_equal(_png(os.path.join(dir_a, i + suffix)), _png(os.path.join(dir_b, i + suffix)))
               for i in ids)


def bench_ratio(opt, work):
    from conftest import save_random_classifier
    from step import cam_to_ir_label, make_cam, make_sem_seg_labels
    root, ids = opt.voc12_root, real_ids(opt)
    best = {k: float("inf") for s in STEPS for k in (s, s + "_ref")}
    same = {"ir_label": True, "sem_seg": True, "palette": True}
    # warm-up, untimed: the first network call of a process creates oneDNN's primitives and touches fresh memory
    warm = voc_args(os.path.join(work, "warm"), root, ids[:1], cam_scales=opt.scales)
    save_random_classifier(warm.cam_weights_path, num_classes=20, seed=0)
    save_random_irnet(warm.irn_weights_path)
    warm.ir_cam_source = "cam"
    reference_make_cam(warm, ids[:1])
    reference_sem_seg(warm, ids[:1], warm.cam_out_dir)
    shutil.rmtree(os.path.join(work, "warm"), ignore_errors=True)
    for r in range(opt.repeat):
        base = os.path.join(work, f"ratio{r}")
        args = voc_args(base, root, ids, cam_scales=opt.scales)
        save_random_classifier(args.cam_weights_path, num_classes=20, seed=0)
        save_random_irnet(args.irn_weights_path)
        ref = voc_args(base + "_ref", root, ids, cam_scales=opt.scales, cam_weights_name=args.cam_weights_path)
        ref.irn_weights_path = args.irn_weights_path
        args.ir_cam_source = ref.ir_cam_source = "cam"
        # alternately, the step first on even repeats and the reference first on odd ones
        runs = {"make_cam": (lambda: make_cam.run(args), lambda: reference_make_cam(ref, ids)),
                "cam_to_ir_label": (lambda: cam_to_ir_label.run(args),
                                    lambda: reference_ir_label(ref, ids, ref.cam_out_dir)),
                "make_sem_seg": (lambda: make_sem_seg_labels.run(args),
                                 lambda: reference_sem_seg(ref, ids, ref.cam_out_dir))}
        for step in STEPS:
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for which in order:
                key = step if which == 0 else step + "_ref"
                best[key] = min(best[key], timed(runs[step][which]))
        same["ir_label"] &= same_pngs(args.ir_label_out_dir, ref.ir_label_out_dir, ids)
        same["sem_seg"] &= same_pngs(args.sem_seg_out_dir, ref.sem_seg_out_dir, ids)
        same["palette"] &= same_pngs(args.sem_seg_out_dir, ref.sem_seg_out_dir, ids, "_palette.png")
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(base + "_ref", ignore_errors=True)
    n = len(ids)
    print(f"\nratio: {n} real VOC images, cam scales {opt.scales}, best of {opt.repeat}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print("| step | this project s/image | reference s/image | ratio |\n|---|---|---|---|")
    for step in STEPS:
        a, b = best[step] / n, best[step + "_ref"] / n
        print(f"| {step} | {a:.3f} | {b:.3f} | {a / b:.3f} |")
    print(f"IR labels identical to the reference's: {same['ir_label']}; sem_seg masks identical: "
          f"{same['sem_seg']}; palette PNGs identical: {same['palette']}")
    if not all(same.values()):
        raise SystemExit("the step's outputs differ from the reference's")


# --- profile: fixed and per-image costs of each step's run(args) ---------------------------------------------

# (label, fixed?, [(module path suffix, function name, caller function name or None)]): the time of a part is the
# cumulative time of its functions (when called from `caller`); what is left of run(args) is "rest".
# the fixed parts of the two steps that read CAM records (cam_to_ir_label, make_sem_seg)
CAM_READER_FIXED = [
    ("id list, dataset, checks", True, [("misc/datasets.py", "load_id_list", "run"),
                                        ("misc/datasets.py", "build_spec", None),
                                        ("misc/datasets.py", "check_ids", None),
                                        ("misc/cams.py", "check_cam_files", None),
                                        ("misc/resume.py", "pending", None),
                                        ("misc/fileio.py", "check_writable_dir", None)]),
    ("settings record", True, [("misc/resume.py", "prepare", None)]),
]
PARTS = {
    "make_cam": [
        ("id list, dataset, image checks", True, [("misc/datasets.py", "load_id_list", "run"),
                                                  ("misc/datasets.py", "build_spec", None),
                                                  ("misc/datasets.py", "check_ids", None),
                                                  ("misc/resume.py", "pending", None),
                                                  ("misc/fileio.py", "check_writable_dir", None)]),
        ("settings record", True, [("misc/resume.py", "prepare", None)]),
        ("classifier load", True, [("net/resnet50_cam.py", "load_classifier", None)]),
        ("DataLoader start", True, [("torch/utils/data/dataloader.py", "__iter__", None),
                                    ("torch/utils/data/dataloader.py", "__init__", "_work")]),
        ("decode + scale pyramid", False, [("misc/datasets.py", "__getitem__", None)]),
        ("forward (each scale: image + flip)", False, [("misc/cams.py", "multiscale_cam_maps", None)]),
        ("resize + sum", False, [("misc/cams.py", "resize_and_sum", None)]),
        ("record encode + write", False, [("misc/cams.py", "write_cam_record", None)]),
    ],
    "cam_to_ir_label": [
        *CAM_READER_FIXED,
        ("image decode", False, [("misc/fileio.py", "load_image_rgb", None)]),
        ("record read + decode (on the read-ahead thread: waits only)", False,
         [("misc/fileio.py", "load_cam_npz", None), ("concurrent/futures/_base.py", "result", None)]),
        ("dense CRF (2 inferences, one set-up)", False, [("misc/crf.py", "crf_inference_labels", None)]),
        ("seeds + combine", False, [("step/cam_to_ir_label.py", "ir_label", None)]),
        ("PNG write", False, [("misc/fileio.py", "save_png", None)]),
    ],
    "make_sem_seg": [
        *CAM_READER_FIXED,
        ("IRNet load", True, [("net/resnet50_irn.py", "load_irnet", None),
                              ("misc/fileio.py", "load_checkpoint", "run")]),
        ("image decode", False, [("misc/fileio.py", "load_image_rgb", None)]),
        ("record read + decode", False, [("misc/fileio.py", "load_cam_npz", None)]),
        ("normalise pair", False, [("misc/imutils.py", "scale_pyramid", None)]),
        ("IRNet boundary (pair)", False, [("net/resnet50_irn.py", "boundary_map", None)]),
        ("random walk", False, [("net/irn_affinity.py", "propagate_to_edge", None)]),
        ("upsample + labels", False, [("step/make_sem_seg_labels.py", "walk_to_labels", None)]),
        ("PNG writes", False, [("misc/fileio.py", "write", None)]),
    ],
}
# parts measured inside another part's functions: subtracted from the outer one
NESTED = {("cam_to_ir_label", "seeds + combine"): ("dense CRF (2 inferences, one set-up)",)}


def part_seconds(stats, specs):
    total = 0.0
    for suffix, func, caller in specs:
        for (path, _, name), (_, _, _, cum, callers) in stats.stats.items():
            if name != func or not path.replace(os.sep, "/").endswith(suffix):
                continue
            if caller is None:
                total += cum
            else:
                total += sum(v[3] for (_, _, c), v in callers.items() if c == caller)
    return total


def import_seconds(module):
    """Seconds of importing `module` in a fresh interpreter after torch, numpy and PIL (which the reference loops
    import too): its cumulative line in python -X importtime."""
    import subprocess
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import torch, numpy, PIL.Image; import {module}"],
                         cwd=REPO, check=True, capture_output=True, text=True).stderr
    line = [t for t in out.splitlines() if t.rstrip().endswith("| " + module)][-1]
    return int(line.split("|")[1]) / 1e6


def bench_profile(opt, work):
    import cProfile
    import pstats
    from conftest import save_random_classifier
    from step import cam_to_ir_label, make_cam, make_sem_seg_labels
    ids = real_ids(opt)
    args = voc_args(os.path.join(work, "profile"), opt.voc12_root, ids, cam_scales=opt.scales)
    save_random_classifier(args.cam_weights_path, num_classes=20, seed=0)
    save_random_irnet(args.irn_weights_path)
    args.ir_cam_source = "cam"
    runs = {"make_cam": make_cam.run, "cam_to_ir_label": cam_to_ir_label.run, "make_sem_seg": make_sem_seg_labels.run}
    modules = {"make_cam": "step.make_cam", "cam_to_ir_label": "step.cam_to_ir_label",
               "make_sem_seg": "step.make_sem_seg_labels"}
    n = len(ids)
    print(f"\nprofile: run(args) of each step under cProfile on {n} real VOC images, cam scales {opt.scales}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    for step in STEPS:
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        runs[step](args)
        profiler.disable()
        wall = time.perf_counter() - start
        stats = pstats.Stats(profiler)
        parts = {label: part_seconds(stats, specs) for label, _, specs in PARTS[step]}
        for (s, outer), inner in NESTED.items():
            if s == step:
                parts[outer] -= sum(parts[i] for i in inner)
        fixed = {label: parts[label] for label, is_fixed, _ in PARTS[step] if is_fixed}
        per_image = {label: parts[label] for label, is_fixed, _ in PARTS[step] if not is_fixed}
        rest = wall - sum(parts.values())
        print(f"\n{step}: {wall:.2f} s for {n} images under the profiler; fixed {sum(fixed.values()):.3f} s, "
              f"per image {sum(per_image.values()) / n:.3f} s, rest (loop, tqdm, profiler) {rest:.3f} s; "
              f"a fresh process imports {modules[step]} in {import_seconds(modules[step]):.3f} s after torch, "
              f"numpy and PIL")
        print("| part | kind | seconds in all | s/image |\n|---|---|---|---|")
        for label, is_fixed, _ in PARTS[step]:
            kind = "fixed" if is_fixed else "per image"
            print(f"| {label} | {kind} | {parts[label]:.3f} | {'' if is_fixed else f'{parts[label] / n:.3f}'} |")
        print(f"| rest | - | {rest:.3f} | |")
    # with --num_workers >= 2, cam_to_ir_label and make_sem_seg run their images in spawned processes (make_cam:
    # one per GPU): each starts an interpreter and imports torch and the step; a worker with no ids costs just that
    from misc import dist
    start = time.perf_counter()
    dist.run_sharded(cam_to_ir_label._work, [], args, ["cpu", "cpu"])
    print(f"\nspawning 2 CPU workers (--num_workers 2; interpreter + imports, no images): "
          f"{time.perf_counter() - start:.2f} s, a fixed cost only of multi-process runs (none above)")


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
    from step import cam_to_ir_label, make_cam, make_sem_seg_labels
    data = os.path.join(work, "coco_sized")
    ids = synthetic_coco_sized(data, opt.memory_images)
    # COCO's setting for the walk: IRNet sees the image unpadded (the official COCO code)
    args = voc_args(os.path.join(work, "memory"), data, ids, cam_scales=opt.memory_scales,
                    cls_labels=os.path.join(data, "cls_labels.npz"), sem_seg_pad_to=0)
    save_random_classifier(args.cam_weights_path, num_classes=20, seed=0)
    save_random_irnet(args.irn_weights_path)
    args.ir_cam_source = "cam"
    os.environ["OMP_NUM_THREADS"] = str(opt.memory_threads)
    torch.set_num_threads(opt.memory_threads)
    print(f"\nmemory: {len(ids)} synthetic 640 x 480 images, 3 classes each, cam scales {opt.memory_scales}, "
          f"IRNet input unpadded (COCO), torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.2f} (each row printed when its step ends, progress lines every 10 %)", flush=True)
    print("| step | RSS before MiB | after 10 % | after 50 % | after 100 % | peak | s/image |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    for name, fn, folder, suffix in (("make_cam", make_cam.run, args.cam_out_dir, ".npz"),
                                     ("cam_to_ir_label", cam_to_ir_label.run, args.ir_label_out_dir, ".png"),
                                     ("make_sem_seg", make_sem_seg_labels.run, args.sem_seg_out_dir, ".png")):
        os.makedirs(folder, exist_ok=True)
        start_rss = rss_mib()
        n = len(ids) * (2 if name == "make_sem_seg" else 1)  # mask + palette picture
        with RssMonitor(folder, suffix, name, n) as mon:
            seconds = timed(lambda: fn(args))
        print(f"| {name} | {start_rss:.0f} | {mon.at(0.1, n):.0f} | {mon.at(0.5, n):.0f} | {mon.at(1.0, n):.0f} | "
              f"{mon.peak():.0f} | {seconds / len(ids):.2f} |", flush=True)
        if name == "make_cam":
            sizes = [os.path.getsize(os.path.join(folder, i + ".npz")) for i in ids]
            print(f"(compact CAM record {float(np.mean(sizes)):,.0f} bytes/image)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="ratio,profile,memory",
                   help="comma list of ratio, profile, memory")
    p.add_argument("--voc12_root", default=os.path.join(REPO, "..", "shared", "data", "voc12_subset"))
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--memory_images", type=int, default=200)
    p.add_argument("--scales", default="1.0,0.5,1.5,2.0")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the ratio and profile parts")
    p.add_argument("--memory_scales", default="1.0",
                   help="make_cam's scales in the memory part (the four scales take ~20 s per 640 x 480 image)")
    p.add_argument("--memory_threads", type=int, default=2)
    opt = p.parse_args()
    # the steps' CPU workers take OMP_NUM_THREADS threads (misc/torchutils.set_cpu_threads): the same count for
    # the steps and the reference loops
    os.environ["OMP_NUM_THREADS"] = str(opt.threads)
    import conftest  # noqa: F401  (it sets 2 threads on import: set ours after it)
    torch.set_num_threads(opt.threads)
    work = tempfile.mkdtemp(prefix="bench_steps_")
    try:
        if "ratio" in opt.parts:
            bench_ratio(opt, work)
        if "profile" in opt.parts:
            bench_profile(opt, work)
        if "memory" in opt.parts:
            bench_memory(opt, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
