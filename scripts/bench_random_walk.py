"""Time and peak memory of the random walk of make_sem_seg: IRN's dense (hw)^2 algorithm vs the lean stencil walk.

    python scripts/bench_random_walk.py                      # 500x375 image, CPU, both variants
    python scripts/bench_random_walk.py --device cuda        # GPU: torch.cuda.max_memory_allocated
    python scripts/bench_random_walk.py --variants lean --height 640 --width 480

The case is synthetic: a boundary map with closed contours and noise at stride 4 (125 x 94 for 500 x 375) and
--classes CAMs made of blobs. On CPU each variant runs in a fresh process and its peak is the rise of the peak
resident set size (VmHWM) over the process's size after building the inputs; on CUDA both run here and the peak is
max_memory_allocated over the allocation before the walk. Both variants' label maps are compared pixel by pixel.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from misc import imutils  # noqa: E402
from net import irn_affinity  # noqa: E402
from step.make_sem_seg_labels import walk_to_labels  # noqa: E402


def synthetic_case(height, width, classes, seed=0):
    """(cams (C, h, w) in [0, 1], edge (h, w) in [0, 1]) at stride 4 of a height x width image."""
    h, w = imutils.strided_size((height, width), 4)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    edge = 0.1 * torch.rand(h, w, generator=g)
    cams = []
    for _ in range(classes):
        cy, cx = float(torch.rand(1, generator=g)) * h, float(torch.rand(1, generator=g)) * w
        r = (0.15 + 0.2 * float(torch.rand(1, generator=g))) * min(h, w)
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        edge = torch.maximum(edge, torch.exp(-((dist - r) ** 2) / 2.0))  # a closed contour around the object
        cams.append(torch.exp(-(dist / (0.6 * r)) ** 2))  # a CAM peaked inside it, too small (as CAMs are)
    return torch.stack(cams), edge


def proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def run_variant(variant, args, device):
    """(seconds, peak bytes above the pre-walk level, labels) of one variant."""
    cams, edge = synthetic_case(args.height, args.width, args.classes)
    cams, edge = cams.to(device), edge.to(device)
    walk_fn = irn_affinity.random_walk_lean if variant == "lean" else irn_affinity.random_walk_dense
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        walk_fn(cams[:, :8, :8], edge[:8, :8], args.radius, args.beta, 1)  # warm-up (CUDA context, kernels)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        try:  # reset the peak RSS to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        base = proc_status("VmRSS")
    start = time.perf_counter()
    walk = walk_fn(cams.pow(args.power), edge, args.radius, args.beta, args.exp_times)
    if on_cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if on_cuda else proc_status("VmHWM")) - base
    labels = walk_to_labels(walk.float().cpu(), np.arange(args.classes), (args.height, args.width), args.bg_thres)
    return seconds, peak, labels


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", default="dense,lean")
    p.add_argument("--exp_times", type=int, default=8)
    p.add_argument("--radius", type=int, default=5)
    p.add_argument("--beta", type=float, default=10.0)
    p.add_argument("--power", type=float, default=1.3)
    p.add_argument("--bg_thres", type=float, default=0.27)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: run one variant, write JSON
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]

    if args.child:
        variant, out = args.child.split(":", 1)
        seconds, peak, labels = run_variant(variant, args, args.device)
        np.save(out + ".npy", labels)
        with open(out, "w") as f:
            json.dump({"seconds": seconds, "peak": peak, "rss_peak": proc_status("VmHWM")}, f)
        return

    h, w = imutils.strided_size((args.height, args.width), 4)
    print(f"random walk of a {args.width}x{args.height} image: {h}x{w} stride-4 grid, {args.classes} classes, "
          f"radius {args.radius}, beta {args.beta:g}, 2^{args.exp_times} steps, device {args.device}, "
          f"{torch.get_num_threads()} threads; one dense matrix = {irn_affinity.dense_bytes(h, w) / 2 ** 30:.2f} GiB")
    results = {}
    for variant in variants:
        if str(args.device).startswith("cuda"):
            seconds, peak, labels = run_variant(variant, args, args.device)
        else:  # a fresh process per variant: its peak RSS is its own
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "result.json")
                cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{variant}:{out}"]
                cmd += [a for a in sys.argv[1:]]
                subprocess.run(cmd, check=True)
                with open(out) as f:
                    r = json.load(f)
                seconds, peak, labels = r["seconds"], r["peak"], np.load(out + ".npy")
        results[variant] = labels
        print(f"{variant:>6}: {seconds:8.2f} s, peak memory {peak / 2 ** 20:9.1f} MiB")
    if len(results) == 2:
        a, b = results.values()
        print(f"labels equal on {100 * (a == b).mean():.4f}% of {a.size} pixels")


if __name__ == "__main__":
    main()
