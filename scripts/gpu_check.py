"""One command for a lent GPU machine: the measurements of the GPU paths, in order of value, each in its own time
budget, each part's result written as soon as the part ends.

    python scripts/gpu_check.py --out DIR                                # on the GPU (docs/benchmarks.md)
    python scripts/gpu_check.py --device cpu --tiny --out DIR            # the CPU dry run (tests/test_gpu_check.py)

Parts (--parts, default all, in this order):
  a  environment (GPU, torch / CUDA / cuDNN versions, optional packages) and `pytest -m cuda` (per-test timeout)
  b  RIB at the paper's settings (K = 10, 20 other 512^2 crops, CAM scales 1.0/0.5/1.5/2.0 + flip) on a few images:
     the fast path (bf16, channels-last) and the fp32 official-structure reference loop in one run (s/image, CAM
     and seed agreement), then fp32 fast and --rib_compile true
  c  DeepLab-v2 ResNet-101 MSC training at batch 10, crop 321: images/s and peak memory, fp32 vs bf16 +
     channels-last (scripts/bench_deeplab.py's loop); inference s/image without the CRF
  d  make_cam and the random walk (s/image, peak memory on a 500x375 image); train_cam and train_irn images/s
     (the steps' networks, optimisers and losses on one real batch already on the device)
  e  with the time left: a classifier trained from scratch on the data for a fixed time, then plain CAM vs RIB
     seed mIoU (threshold sweep) at the paper's RIB settings on as many images with masks as the budget allows

Each part runs in its own process with its budget (--budget_a .. --budget_e, seconds; the defaults add up to 8
minutes): a part checks its deadline between measurements and is killed 15 s after it; whatever it measured is
already in DIR/part_<x>.json and .md (rewritten after every measurement), with its status (ok, error with the
traceback, over budget, killed). DIR/summary.md and summary.json hold every part. Steps that need pydensecrf or
pycocotools (absent on the lent machine) are skipped with a line saying so.

Data: --voc12_root (default .devdata/voc_pack, made by scripts/make_carry_pack.py, else ../shared/data/voc12_subset)
with its ImageSets/train_subset.txt (images with masks) and train_aug_subset.txt (other images), and
--cls_labels (default <root>/cls_labels.npz when present). --tiny shrinks every size for a quick run of the code.
"""
import argparse
import contextlib
import copy
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PARTS = {
    "a": "environment and the CUDA tests",
    "b": "RIB at the paper's settings: fast path vs fp32 reference",
    "c": "DeepLab-v2 MSC training and inference",
    "d": "make_cam, random walk, train_cam and train_irn",
    "e": "classifier from scratch, plain CAM vs RIB seed mIoU",
}
BUDGETS = {"a": 120, "b": 150, "c": 60, "d": 45, "e": 105}  # 480 s = 8 minutes
KILL_GRACE = 15  # seconds a part may run past its budget before it is killed


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (part_<x>.json/.md, summary.json/.md, logs)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (the dry run)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes everywhere: checks the code, measures nothing")
    p.add_argument("--parts", default="abcde", help="parts to run, in order (letters a-e)")
    for part, seconds in BUDGETS.items():
        p.add_argument(f"--budget_{part}", type=float, default=seconds,
                       help=f"wall-time budget of part {part} ({PARTS[part]}), seconds")
    p.add_argument("--voc12_root", default="", help="VOC-format data (default: .devdata/voc_pack, else "
                                                    "../shared/data/voc12_subset)")
    p.add_argument("--cls_labels", default="", help="label file (default: <root>/cls_labels.npz, else the "
                                                    "dataset's)")
    p.add_argument("--rib_images", type=int, default=4, help="part b: timed images per variant (after a warm-up)")
    p.add_argument("--pytest_timeout", type=int, default=60, help="part a: per-test timeout, seconds")
    p.add_argument("--part_child", default="", help=argparse.SUPPRESS)  # internal: run this part here
    return p


# --- records ---------------------------------------------------------------------------------------------------


def environment(device):
    import numpy as np
    import torch
    argv = sys.argv[1:]
    if "--part_child" in argv:  # a part's process: the command the user ran
        argv = argv[:argv.index("--part_child")] + argv[argv.index("--part_child") + 2:]
    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
           "command": " ".join(["python", "scripts/gpu_check.py"] + argv),
           "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "cuda": torch.version.cuda, "cudnn": None, "device": str(device), "gpu": None,
           "host": platform.node(), "cpu_count": os.cpu_count()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["gpu"] = f"none (cpu, {torch.get_num_threads()} threads)"
    return env


class Part:
    """One part's record: rows of measurements and notes, rewritten to part_<x>.json/.md after every change."""

    def __init__(self, letter, opts):
        self.letter, self.opts = letter, opts
        self.start = time.perf_counter()
        self.deadline = self.start + getattr(opts, f"budget_{letter}")
        self.data = {"part": letter, "title": PARTS[letter], **environment(opts.device), "tiny": opts.tiny,
                     "budget_s": getattr(opts, f"budget_{letter}"), "status": "running", "elapsed_s": 0.0,
                     "rows": [], "notes": [], "error": None}
        self.write()

    def left(self):
        return self.deadline - time.perf_counter()

    def out_of_time(self, what):
        """True (and a note) when the budget is spent: the caller skips `what`."""
        if self.left() > 0:
            return False
        self.note(f"not run: {what} (budget of {self.data['budget_s']:g} s spent)")
        self.data["status"] = "over budget"
        return True

    def row(self, **values):
        self.data["rows"].append(values)
        self.write()

    def note(self, text):
        self.data["notes"].append(text)
        self.write()

    def write(self):
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 2)
        write_part_files(self.opts.out, self.data)


def json_path(out, letter):
    return os.path.join(out, f"part_{letter}.json")


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def markdown(data):
    lines = [f"## Part {data['part']}: {data['title']}", "",
             f"{data['gpu']} · torch {data['torch']} · CUDA {data['cuda']} · cuDNN {data['cudnn']} · Python "
             f"{data['python']} · numpy {data['numpy']} · {data['date_utc']} UTC" + (" · **--tiny**" if data["tiny"]
                                                                                    else ""),
             "", f"`{data['command']}`", "",
             f"status: **{data['status']}**, {data['elapsed_s']} s of a {data['budget_s']:g} s budget", ""]
    rows = data["rows"]
    if rows:
        cols = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
        lines.append("")
    lines += [f"* {n}" for n in data["notes"]]
    if data.get("error"):
        lines += ["", "error:", "```", data["error"].rstrip()[-3000:], "```"]
    return "\n".join(lines) + "\n"


def write_part_files(out, data):
    write_json(json_path(out, data["part"]), data)
    with open(os.path.join(out, f"part_{data['part']}.md.tmp"), "w") as f:
        f.write(markdown(data))
    os.replace(os.path.join(out, f"part_{data['part']}.md.tmp"), os.path.join(out, f"part_{data['part']}.md"))


def write_summary(out, letters):
    parts = {}
    for letter in letters:
        if os.path.isfile(json_path(out, letter)):
            with open(json_path(out, letter)) as f:
                parts[letter] = json.load(f)
    write_json(os.path.join(out, "summary.json"), parts)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("# gpu_check results\n\n" + "\n".join(markdown(d) for d in parts.values()))


# --- shared helpers ------------------------------------------------------------------------------------------


def data_root(opts):
    if opts.voc12_root:
        return opts.voc12_root
    pack = os.path.join(REPO, ".devdata", "voc_pack")
    return pack if os.path.isdir(pack) else os.path.join(REPO, "..", "shared", "data", "voc12_subset")


def data_flags(opts):
    root = data_root(opts)
    labels = opts.cls_labels or (os.path.join(root, "cls_labels.npz")
                                 if os.path.isfile(os.path.join(root, "cls_labels.npz")) else "")
    sets = os.path.join(root, "ImageSets")
    flags = ["--voc12_root", root, "--train_list", os.path.join(sets, "train_aug_subset.txt"),
             "--eval_list", os.path.join(sets, "train_subset.txt")]
    return flags + (["--cls_labels", labels] if labels else [])


def masked_ids(opts):
    from misc.datasets import load_id_list
    return load_id_list(os.path.join(data_root(opts), "ImageSets", "train_subset.txt"), "train_subset.txt")


def on_cuda(opts):
    return str(opts.device).startswith("cuda")


def sync(opts):
    import torch
    if on_cuda(opts):
        torch.cuda.synchronize()


def reset_peak(opts):
    import torch
    if on_cuda(opts):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(opts):
    import torch
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 3) if on_cuda(opts) else None


def has_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def first_image(opts):
    """A real image of the data: the first with a mask (500 x 375 for most VOC images)."""
    from misc.fileio import load_image_rgb
    return load_image_rgb(os.path.join(data_root(opts), "JPEGImages", masked_ids(opts)[0] + ".jpg"))


def run_args(opts, work, *extra):
    """run_sample args on the check's data and device, random init, the given extra flags."""
    import run_sample
    argv = ["--work_dir", work, "--device", opts.device, "--backbone_weights", "none", *data_flags(opts), *extra]
    return run_sample.parse_args(argv)


# --- part a: environment and the CUDA tests ----------------------------------------------------------------------


def part_a(part, opts):
    import torch
    env = {"cuda_available": torch.cuda.is_available(), "gpu_count": torch.cuda.device_count(),
           "bf16_supported": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), sm_count=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}")
    for name in ("triton", "pydensecrf", "pycocotools", "pytest_timeout", "cv2", "PIL", "imageio", "tqdm",
                 "matplotlib", "skimage", "tensorboard"):
        env[f"has_{name}"] = has_module(name)
    env["c_compiler"] = shutil.which("cc") or shutil.which("gcc")
    for key, value in env.items():
        part.row(item=key, value=value)
    for name, steps in (("pydensecrf", "cam_to_ir_label, the CRF of eval_cam / infer_deeplab"),
                        ("pycocotools", "coco14/prepare.py and the synthetic COCO demo")):
        if not env[f"has_{name}"]:
            part.note(f"{name} is not installed: {steps} are skipped here")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        part.note("nvidia-smi: " + (smi.stdout.strip() or smi.stderr.strip()))
    # the CUDA tests, with a per-test timeout when pytest-timeout is there and the part's budget over all
    log_path = os.path.join(opts.out, "part_a_pytest.log")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs", os.path.join(REPO, "tests", "test_cuda.py")]
    if env["has_pytest_timeout"]:
        cmd += [f"--timeout={opts.pytest_timeout}"]  # the plugin loads itself when installed
    else:
        part.note("pytest-timeout is not installed: no per-test timeout, only the part's budget")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        part.data["child_groups"] = [proc.pid]  # the driver kills these too if it kills this part
        part.write()
        try:
            rc = proc.wait(timeout=max(5.0, part.left()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # pytest and the torchrun processes it started
            proc.wait()
            rc = "timed out"
    with open(log_path) as f:
        tail = f.read().strip().splitlines()
    summary = next((line for line in reversed(tail) if " in " in line and ("passed" in line or "skipped" in line
                                                                            or "failed" in line)), "")
    part.row(item="pytest -m cuda", value=f"rc {rc}: {summary}", seconds=round(time.perf_counter() - start, 1))
    part.data["pytest_tail"] = tail[-40:]
    if rc not in (0, 5):  # 5: nothing collected
        part.data["status"] = "tests failed" if rc != "timed out" else "over budget"


# --- part b: RIB fast path vs reference ------------------------------------------------------------------------


def rib_reference_loop():
    """The official-structure reference loop (scripts/bench_rib.py's)."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import bench_rib
    return bench_rib.reference_rib, bench_rib.ensure_classifier


def rib_settings(opts):
    if opts.tiny:
        return ["--rib_iter", "1", "--rib_batch", "1", "--rib_crop_size", "64", "--cam_scales", "1.0,0.5",
                "--rib_loss_scales", "1.0", "--rib_loader_workers", "0"]
    # the paper's settings (the defaults: K = 10, 20 other 512^2 crops, scales 1.0, 0.5, 1.5, 2.0 + flip);
    # a random classifier explodes at k = 1, so the stop is off and every image runs all K steps
    return ["--rib_loader_workers", "6"]


def run_rib_variant(opts, base, name, ids, warmup, reference=False, **flags):
    """Seconds per image of one variant (after an untimed warm-up image) and its output folder."""
    import torch
    import step.rib as rib
    args = copy.copy(base)
    for k, v in flags.items():
        setattr(args, k, v)
    seconds = None
    for ids_now, out in ((warmup, name + "_warmup"), (ids, name)):
        if not ids_now:
            continue
        args.rib_out_dir = os.path.join(args.work_dir, "rib", out)
        shutil.rmtree(args.rib_out_dir, ignore_errors=True)
        args.infer_list = os.path.join(args.work_dir, out + "_ids.txt")
        with open(args.infer_list, "w") as f:
            f.write("\n".join(ids_now) + "\n")
        reset_peak(opts)
        start = time.perf_counter()
        if reference:
            args.amp = False
            if not on_cuda(opts):
                torch.set_flush_denormal(True)  # as step.rib's CPU workers
            rib_reference_loop()[0](args, ids_now)
            torch.set_flush_denormal(False)
        else:
            rib.run(args)
        sync(opts)
        seconds = time.perf_counter() - start
    return seconds / len(ids), args.rib_out_dir


def cam_agreement(dir_a, dir_b, ids, bg=0.25):
    """Largest |difference| of the high_res maps, the largest one relative to the reference's peak, and the share
    of pixels whose seed (argmax over [bg, classes]) is the same."""
    import numpy as np
    from misc.fileio import load_cam_npz
    worst = rel = 0.0
    same = total = 0
    for i in ids:
        a = load_cam_npz(os.path.join(dir_a, i + ".npz"))["high_res"]
        b = load_cam_npz(os.path.join(dir_b, i + ".npz"))["high_res"]
        if not a.size:
            continue
        diff = float(np.abs(a - b).max())
        worst = max(worst, diff)
        rel = max(rel, diff / max(float(np.abs(a).max()), 1e-12))
        sa = np.pad(a, ((1, 0), (0, 0), (0, 0)), constant_values=bg).argmax(0)
        sb = np.pad(b, ((1, 0), (0, 0), (0, 0)), constant_values=bg).argmax(0)
        same += int((sa == sb).sum())
        total += sa.size
    return worst, rel, (same / total if total else None)


def seed_miou(args, cam_dir, ids):
    from step.eval_cam import evaluate_cam_dir
    res = evaluate_cam_dir(args, cam_dir, ids, made_by="rib")
    return res["miou"], res["threshold"]


def part_b(part, opts):
    import logging
    logging.getLogger("step.rib").setLevel(logging.WARNING)
    work = os.path.join(opts.out, "work_b")
    args = run_args(opts, work, *rib_settings(opts), "--rib_explode_stop", "false")
    args.device = opts.device
    os.makedirs(os.path.join(work, "sess"), exist_ok=True)
    args._rib_early_checks = True
    rib_reference_loop()[1](args)  # a random BN-calibrated classifier (timings; the mIoU only compares)
    ids_all = masked_ids(opts)
    count = 1 if opts.tiny else opts.rib_images
    ids, warmup = (ids_all[:1], []) if opts.tiny else (ids_all[1:1 + count], ids_all[:1])
    part.note(f"{len(ids)} timed image(s) per variant after {len(warmup)} warm-up image(s); K={args.rib_iter}, {args.rib_batch} "
              f"other images of {args.rib_crop_size}^2, CAM scales {list(args.cam_scales)} + flip, loss scales "
              f"{list(args.rib_loss_scales)}, --rib_explode_stop false (a random classifier explodes at k = 1); "
              f"random BN-calibrated classifier: the mIoU compares the paths, it says nothing about RIB")
    fast_label = "fast (bf16, channels-last)" if on_cuda(opts) else "fast (step.rib; on the CPU fp32, contiguous)"
    variants = [(fast_label, "fast", {"amp": True, "channels_last": True}),
                ("reference (fp32, official structure)", "reference", {"reference": True}),
                ("fast fp32", "fast_fp32", {"amp": False, "channels_last": True}),
                ("fast + --rib_compile true", "compile", {"amp": True, "channels_last": True, "rib_compile": True})]
    done = {}
    for label, name, flags in variants:
        if part.out_of_time(label):
            continue
        if name == "fast_fp32" and not on_cuda(opts):
            part.note("fast fp32: the same computation as fast on the CPU (bf16 and channels-last are CUDA "
                      "levers): not run")
            continue
        if name == "compile" and opts.tiny and not on_cuda(opts):
            part.note("--rib_compile true: not run in the CPU dry run (inductor on the CPU takes minutes; "
                      "tests/test_gpu_paths.py checks it)")
            continue
        s, out = run_rib_variant(opts, args, name, ids, warmup, **flags)
        done[name] = out
        row = {"variant": label, "s_per_image": round(s, 3), "peak_gib": peak_gib(opts)}
        if name != "fast" and "fast" in done:
            worst, rel, same = cam_agreement(done["fast"], out, ids)
            row.update(max_abs_diff_vs_fast=worst, max_rel_diff_vs_fast=rel, seed_pixels_equal_vs_fast=same)
        miou, thr = seed_miou(args, out, ids)
        row.update(seed_miou=miou, threshold=thr)
        part.row(**row)
    rows = {r["variant"]: r for r in part.data["rows"]}
    if fast_label in rows and "reference (fp32, official structure)" in rows:
        ratio = rows["reference (fp32, official structure)"]["s_per_image"] / rows[fast_label]["s_per_image"]
        part.note(f"speed-up of the fast path over the reference: {ratio:.2f}x")


# --- part c: DeepLab --------------------------------------------------------------------------------------------


def part_c(part, opts):
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import bench_deeplab
    from deeplab.predict import denormals_flushed
    argv = ["--device", opts.device, "--voc12_root", data_root(opts), "--crf", "false"]
    if opts.tiny:
        argv += ["--arch", "resnet50", "--batch", "1", "--crop", "33", "--iters", "1", "--warmup", "0",
                 "--infer_images", "1"]
    else:
        argv += ["--iters", "10", "--warmup", "3", "--infer_images", "3"]
    args = bench_deeplab.get_args_parser().parse_args(argv)
    part.note(f"{args.arch} MSC, batch {args.batch}, crop {args.crop}, {args.iters} timed iterations after "
              f"{args.warmup}; fixed random batch on the device (the network's speed, no loader)")
    def training(variant):
        if variant == "bf16+compile" and not on_cuda(opts):
            part.note("bf16+compile: CUDA only")
            return
        r = bench_deeplab.bench_training(args, variant, opts.device)
        if r is None:
            part.note(f"training {variant}: bench_deeplab runs bf16 on CUDA only (tests/test_gpu_paths.py checks "
                      f"bf16 on the CPU)")
            return
        part.row(what=f"training {variant}", images_per_s=round(r["images_per_s"], 3),
                 s_per_iter=round(r["s_per_iter"], 4), peak_gib=r["peak_mem_gib"],
                 hours_30k_x_10=round(r["hours_for_30k_iters_batch_10"], 2))

    with denormals_flushed(not on_cuda(opts)):
        for variant in ("bf16", "fp32"):
            if not part.out_of_time(f"training {variant}"):
                training(variant)
        if not part.out_of_time("inference"):
            inf = bench_deeplab.bench_inference(args, opts.device)
            part.row(what=f"inference {inf['image']} MSC 1.0/0.75/0.5, no CRF",
                     s_per_image=round(inf["network_s_per_image"], 4))
        if not part.out_of_time("training bf16+compile"):  # last: compiling may take the rest of the budget
            training("bf16+compile")
    if not has_module("pydensecrf"):
        part.note("pydensecrf is not installed: the CRF timing is skipped")


# --- part d: make_cam, random walk, train_cam, train_irn ---------------------------------------------------------


def time_loop(opts, step, iters, warmup):
    for _ in range(warmup):
        step()
    sync(opts)
    reset_peak(opts)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(opts)
    return (time.perf_counter() - start) / iters


def part_d(part, opts):
    import torch
    import torch.nn.functional as F
    from misc import indexing
    from misc.cams import multiscale_cam_maps, resize_and_sum
    from misc.datasets import ClassificationDataset, build_spec
    from misc.imutils import scale_pyramid
    from misc.torchutils import PolyOptimizer, autocast, poly_param_groups, to_device
    from net.resnet50 import calibrate_batchnorm
    from net.resnet50_cam import Net
    device, cuda = opts.device, on_cuda(opts)
    tiny = opts.tiny
    work = os.path.join(opts.out, "work_d")
    args = run_args(opts, work)
    spec = build_spec(args)
    ids = masked_ids(opts)
    img = first_image(opts)
    if tiny:
        img = img[:96, :128]
    scales = (1.0, 0.5) if tiny else (1.0, 0.5, 1.5, 2.0)
    iters, warmup = (1, 0) if tiny else (10, 2)

    # make_cam: one image, its scales + flips, the step's network code
    if not part.out_of_time("make_cam"):
        torch.manual_seed(0)
        model = Net(spec.num_classes).to(device).eval()
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        pyramid = [torch.from_numpy(p) for p in scale_pyramid(img, scales)]

        def cam_once():
            with torch.inference_mode():
                maps = multiscale_cam_maps(model, pyramid, device, cuda, lambda: autocast(device, True))
                resize_and_sum(maps, img.shape[:2])
        s = time_loop(opts, cam_once, iters, warmup)
        part.row(what=f"make_cam {img.shape[1]}x{img.shape[0]}, scales {list(scales)} + flip, bf16",
                 s_per_image=round(s, 4), peak_gib=peak_gib(opts))
        del model

    # the random walk (lean stencil) of make_sem_seg on a synthetic 500x375 case
    if not part.out_of_time("random walk"):
        sys.path.insert(0, os.path.join(REPO, "scripts"))
        from bench_random_walk import synthetic_case
        h, w = (48, 64) if tiny else (375, 500)
        cams, edge = synthetic_case(h, w, 2)
        cams, edge = cams.to(device), edge.to(device)
        s = time_loop(opts, lambda: indexing.random_walk_lean(cams.pow(1.3), edge, 5, 10.0, 8), iters, warmup)
        part.row(what=f"random walk {w}x{h} (lean, radius 5, 2^8 steps, 2 classes)", s_per_image=round(s, 4),
                 peak_gib=peak_gib(opts))

    # train_cam: the classifier, PolyOptimizer and loss of step/train_cam.py on one real batch
    batch, crop = (2, 64) if tiny else (16, 512)
    if not part.out_of_time("train_cam"):
        dataset = ClassificationDataset(spec, ids[:batch], crop_size=crop, resize_long=(320, 640))
        items = [dataset[i] for i in range(batch)]
        x = to_device(torch.stack([torch.as_tensor(it["img"]) for it in items]), device, cuda)
        labels = torch.stack([torch.as_tensor(it["label"]) for it in items]).to(device)
        torch.manual_seed(0)
        model = Net(spec.num_classes)
        calibrate_batchnorm(model, [x.float().cpu()])
        model = model.to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        back, head = model.trainable_parameter_groups()
        opt = PolyOptimizer(poly_param_groups(back, head, 0.01, 1e-4), 0.01, 1e-4, 1000)

        def cam_step():
            with autocast(device, True):
                logits = model(x)
            loss = F.multilabel_soft_margin_loss(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        s = time_loop(opts, cam_step, iters, warmup)
        part.row(what=f"train_cam batch {batch} crop {crop}, bf16", images_per_s=round(batch / s, 2),
                 s_per_iter=round(s, 4), peak_gib=peak_gib(opts))
        del model, opt

    # train_irn: IRNet + AffinityDisplacementLoss of step/train_irn.py; IR labels made from the masks
    if not part.out_of_time("train_irn"):
        from misc.fileio import load_label_png, save_png
        from net.resnet50_irn import AffinityDisplacementLoss, IRNet
        from step.train_irn import AffinityDataset, training_path_index
        batch, crop = (2, 64) if tiny else (32, 512)
        label_dir = os.path.join(work, "ir_label")
        os.makedirs(label_dir, exist_ok=True)
        picked = [ids[i % len(ids)] for i in range(batch)]
        for i in set(picked):
            save_png(os.path.join(label_dir, i + ".png"), load_label_png(spec.gt_path(i)).astype("uint8"))
        path_index = training_path_index(crop)
        dataset = AffinityDataset(spec, picked, label_dir, path_index, crop)
        items = torch.utils.data.default_collate([dataset[i] for i in range(batch)])
        x = to_device(items["img"], device, cuda)
        labels = [items[k].to(device) for k in ("bg_pos", "fg_pos", "neg")]
        torch.manual_seed(0)
        model = IRNet()
        calibrate_batchnorm(model, [x.float().cpu()])
        model = model.to(device).train()
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        criterion = AffinityDisplacementLoss(path_index).to(device)
        edge_p, dp_p = model.trainable_parameters()
        opt = PolyOptimizer([{"params": edge_p, "lr": 0.1, "weight_decay": 1e-4},
                             {"params": dp_p, "lr": 1.0, "weight_decay": 1e-4}], 0.1, 1e-4, 1000)

        def irn_step():
            with autocast(device, True):
                edge_out, dp = model(x)
            losses = criterion(edge_out, dp, *labels)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
        s = time_loop(opts, irn_step, iters, warmup)
        part.row(what=f"train_irn batch {batch} crop {crop}, bf16", images_per_s=round(batch / s, 2),
                 s_per_iter=round(s, 4), peak_gib=peak_gib(opts))


# --- part e: classifier from scratch, CAM vs RIB seeds ----------------------------------------------------------


def part_e(part, opts):
    import logging
    import numpy as np
    import run_sample
    from misc.datasets import load_id_list
    logging.getLogger("step.rib").setLevel(logging.WARNING)
    work = os.path.join(opts.out, "work_e")
    root = data_root(opts)
    train_list = os.path.join(root, "ImageSets", "train_aug_subset.txt")
    train_ids = load_id_list(train_list, "train_aug_subset.txt")
    masks = masked_ids(opts)
    os.makedirs(work, exist_ok=True)
    if opts.tiny:  # a few images: the run checks the code
        train_ids, masks = train_ids[:4], masks[:2]
        train_list = os.path.join(work, "train_ids.txt")
        with open(train_list, "w") as f:
            f.write("\n".join(train_ids) + "\n")
    if opts.tiny:
        cls = ["--cam_batch_size", "2", "--cam_crop_size", "64", "--cam_resize_long", "64,96",
               "--cam_learning_rate", "0.01", "--official_momentum_bug", "false", "--cam_scales", "1.0,0.5"]
        rate_guess, train_share = 4.0, 0.4
    else:
        # from scratch (no ImageNet weights here): the demo's stable recipe, at the paper's crop
        cls = ["--cam_batch_size", "16", "--cam_crop_size", "512", "--cam_learning_rate", "0.01",
               "--official_momentum_bug", "false"]
        rate_guess, train_share = 150.0, 0.45
    budget_train = part.left() * train_share
    rate = rate_guess
    d = os.path.join(opts.out, "part_d.json")
    if os.path.isfile(d):  # part d's measured train_cam rate, when it ran
        with open(d) as f:
            for r in json.load(f).get("rows", []):
                if str(r.get("what", "")).startswith("train_cam") and r.get("images_per_s"):
                    rate = float(r["images_per_s"]) * (0.8 if not opts.tiny else 1.0)  # the loader's share
    epochs = 1 if opts.tiny else max(1, int(budget_train * rate / max(len(train_ids), 1)))
    part.note(f"classifier from scratch: {epochs} epoch(s) of {len(train_ids)} images ({budget_train:.0f} s at "
              f"about {rate:.1f} images/s)")
    base = ["--num_workers", "0" if opts.tiny else "8", "--cam_num_epoches", str(epochs), *cls, *rib_settings(opts),
            "--train_list", train_list,
            "--infer_list", os.path.join(root, "ImageSets", "train_subset.txt"), "--cam_eval_sweep",
            "0.05,0.95,0.05", "--save_cam_png", "0", "--check_classifier", "true"]
    from misc.fileio import DataError
    start = time.perf_counter()
    try:
        run_sample.run_steps(run_args(opts, work, *base, "--only", "train_cam"))
    except DataError as e:  # diverged: once more at a tenth of the rate, in a fresh work dir
        part.note(f"train_cam: {e}; retrying at a tenth of the learning rate")
        work = os.path.join(opts.out, "work_e_retry")
        lr = float(base[base.index("--cam_learning_rate") + 1]) / 10
        base[base.index("--cam_learning_rate") + 1] = f"{lr:g}"
        run_sample.run_steps(run_args(opts, work, *base, "--only", "train_cam"))
    train_s = time.perf_counter() - start
    part.row(what="train_cam (from scratch)", images=len(train_ids) * epochs, seconds=round(train_s, 1),
             images_per_s=round(len(train_ids) * epochs / train_s, 2))
    # plain CAM and RIB on as many masked images as fit: RIB's cost per image from one timed image
    if part.out_of_time("make_cam / rib"):
        return
    ids_path = os.path.join(work, "eval_ids.txt")

    def run_on(ids, only):
        with open(ids_path, "w") as f:
            f.write("\n".join(ids) + "\n")
        a = run_args(opts, work, *base, "--infer_list", ids_path, "--eval_list", ids_path, "--only", only)
        a._rib_early_checks = True
        run_sample.run_steps(a)
        return a

    start = time.perf_counter()
    run_on(masks[:1], "make_cam,rib")
    per_image = time.perf_counter() - start
    n = int(np.clip((part.left() - 15) / max(per_image, 1e-3), 1, len(masks)))
    if n > 1:
        run_on(masks[:n], "make_cam,rib")
    a = run_on(masks[:n], "eval_cam")
    for source in ("cam", "rib"):
        with open(os.path.join(a.result_dir, f"eval_cam_{source}.json")) as f:
            res = json.load(f)
        part.row(what=f"seed mIoU, {'plain CAM' if source == 'cam' else 'RIB'}", images=n,
                 seed_miou=res.get("miou"), threshold=res.get("threshold"))
    part.note(f"RIB at {'tiny' if opts.tiny else 'the paper'}'s settings on {n} of {len(masks)} images with "
              f"masks ({per_image:.1f} s for the first image with make_cam)")


# --- driver ---------------------------------------------------------------------------------------------------


def exit_with_parent():
    """A part runs in its own session (so that a kill takes everything it started): end it, and all it started,
    when the driver is gone (killed by an outer timeout), instead of running on beside a rerun."""
    import threading
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os.killpg(os.getpgrp(), 9)
    threading.Thread(target=watch, daemon=True).start()


def kill_part(proc, letter, out):
    """Kill a part's process group and the process groups it started (recorded in its JSON)."""
    groups = [proc.pid]
    with contextlib.suppress(OSError, ValueError):
        with open(json_path(out, letter)) as f:
            groups += json.load(f).get("child_groups", [])
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, 9)


def run_child(opts):
    import torch
    exit_with_parent()
    letter = opts.part_child
    if not on_cuda(opts):
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    part = Part(letter, opts)
    try:
        globals()[f"part_{letter}"](part, opts)
        if part.data["status"] == "running":
            part.data["status"] = "ok"
    except BaseException:
        part.data["status"] = "error"
        part.data["error"] = traceback.format_exc()
    part.write()
    return 0


def main(argv=None):
    opts = get_parser().parse_args(argv)
    opts.out = os.path.abspath(opts.out)
    os.makedirs(opts.out, exist_ok=True)
    if opts.part_child:
        return run_child(opts)
    letters = [c for c in opts.parts if c in PARTS]
    bad = [c for c in opts.parts if c not in PARTS and c not in ", "]
    if bad or not letters:
        raise SystemExit(f"error: --parts {opts.parts}: letters a-e")
    argv = list(sys.argv[1:] if argv is None else argv)
    print(f"gpu_check: parts {''.join(letters)} on {opts.device}, budgets "
          + ", ".join(f"{c} {getattr(opts, 'budget_' + c):g} s" for c in letters) + f"; results in {opts.out}",
          flush=True)
    total = time.perf_counter()
    running = {}

    def stop(signum, frame):  # an outer timeout: end the running part and everything it started, then exit
        if running.get("proc") is not None:
            kill_part(running["proc"], running["letter"], opts.out)
            path = json_path(opts.out, running["letter"])
            if os.path.isfile(path):  # what the part measured stays; its status says it was cut
                with open(path) as f:
                    data = json.load(f)
                data["status"] = f"killed (gpu_check stopped by signal {signum})"
                write_part_files(opts.out, data)
        write_summary(opts.out, letters)
        raise SystemExit(f"gpu_check: stopped by signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for letter in letters:
        budget = getattr(opts, f"budget_{letter}")
        log_path = os.path.join(opts.out, f"part_{letter}.log")
        start = time.perf_counter()
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--part_child", letter]
        status = None
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            running.update(proc=proc, letter=letter)
            try:
                proc.wait(timeout=budget + KILL_GRACE)
            except subprocess.TimeoutExpired:
                kill_part(proc, letter, opts.out)  # the part and everything it started
                proc.wait()
                status = f"killed after {budget + KILL_GRACE:g} s"
        path = json_path(opts.out, letter)
        data = json.load(open(path)) if os.path.isfile(path) else None
        if data is None:  # it died before its first write
            data = {"part": letter, "title": PARTS[letter], **environment(opts.device), "tiny": opts.tiny,
                    "budget_s": budget, "status": "running", "rows": [], "notes": [], "error": None}
        if status is not None or data.get("status") == "running":
            data["status"] = status or f"died (exit code {proc.returncode})"
            with open(log_path) as f:
                data["error"] = (data.get("error") or "") + "".join(f.readlines()[-40:])
        data["elapsed_s"] = round(time.perf_counter() - start, 2)
        write_part_files(opts.out, data)
        write_summary(opts.out, letters)
        print(f"part {letter} ({PARTS[letter]}): {data['status']} in {data['elapsed_s']:.1f} s "
              f"(budget {budget:g} s)", flush=True)
    print(f"gpu_check: done in {time.perf_counter() - total:.1f} s; {os.path.join(opts.out, 'summary.md')}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
