"""Time the RIB step against a straightforward reference loop on the same images and device.

    python scripts/bench_rib.py --voc12_root ../shared/data/voc12_subset --work_dir runs/bench \
        --train_list ../shared/data/voc12_subset/ImageSets/train_aug_subset.txt \
        --infer_list ../shared/data/voc12_subset/ImageSets/train_subset.txt --device cpu

fast       step/rib.py as run_sample runs it: bf16 autocast and channels-last on CUDA (--amp, --channels_last),
           DataLoader workers preparing the other images ahead (--rib_loader_workers), the class index built once,
           one host sync per step right after the scale-1.0 forward, one worker per GPU.
late       (with --bench_modes fast,late,...) the same code with its previous order: every step computed in
           full (other scales, other images, backward) before the early-stop test, and the last, unused update
           of the official aggregation made; the outputs are identical, the time shows what the early test
           saves.
reference  the official code's structure: fp32, the disjoint-image list rebuilt per image by scanning
           --train_list, other images loaded in-process, .item() syncs for the early stops, one process.
Both draw the same other images (same (seed, image, step, slot) generators), so on CPU in fp32 their outputs
should agree to rounding; the script prints s/image of both, the ratio, the largest difference of the maps, and
the seed mIoU of both (step/eval_cam.evaluate_cam_dir, best threshold of the sweep) on the images with masks.

Each mode runs in a fresh subprocess so neither inherits the other's warm caches, and processes --bench_warmup
untimed images first (kernel selection, lazy imports); the timing includes the model load and, for the fast
mode, the DataLoader start, i.e. what a run of that many images costs. On CPU the configuration is
small unless given (--rib_iter 2 --rib_crop_size 128 --rib_batch 2, 3 images); on CUDA the paper's settings and
20 images. Without <work_dir>/sess/res50_cam.pth a random BN-calibrated classifier is made: the timings hold,
the mIoU is meaningless. Results: stdout and <work_dir>/bench/bench_rib.json.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import run_sample  # noqa: E402
from misc.fileio import load_cam_npz, load_image_rgb  # noqa: E402

CPU_SMALL = {"rib_iter": "2", "rib_crop_size": "128", "rib_batch": "2"}


def bench_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                add_help=False)
    p.add_argument("--bench_images", type=int, default=None, help="images timed (default 3 on CPU, 20 on CUDA)")
    p.add_argument("--bench_warmup", type=int, default=1, help="untimed images processed first by each mode")
    p.add_argument("--bench_modes", default="fast,reference",
                   help="modes timed in this run, in order (fast, late, reference); see above")
    p.add_argument("--bench_mode", default=None, choices=("fast", "late", "reference"),
                   help="internal: run one mode in this process")
    p.add_argument("--bench_help", action="store_true", help="show only the bench's flags (--help: all flags)")
    return p


def prepare_args(argv):
    """run_sample args with the bench's defaults (small on CPU), the bench's id list and output folders."""
    bench, rest = bench_parser().parse_known_args(argv)
    args = run_sample.parse_args(rest)
    from misc.torchutils import resolve_device
    args.device = resolve_device(args.device)
    cpu = not str(args.device).startswith("cuda")
    if cpu:  # a small configuration unless the user chose the values
        given = {a.lstrip("-").split("=")[0] for a in rest if a.startswith("--")}
        extra = [x for k, v in CPU_SMALL.items() if k not in given for x in (f"--{k}", v)]
        args = run_sample.parse_args(rest + extra)
        args.device = "cpu"
    bench.bench_images = bench.bench_images or (3 if cpu else 20)
    args.bench_dir = os.path.join(args.work_dir, "bench")
    return bench, args


def bench_ids(args, count, warmup):
    """The first `count` ids of --infer_list that have a ground-truth mask (for the agreement check), and
    `warmup` further ids to warm up on."""
    from misc.datasets import build_spec, load_id_list
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    with_masks = [i for i in ids if os.path.isfile(spec.gt_path(i))]
    chosen = (with_masks or ids)[:count]
    rest = [i for i in ids if i not in set(chosen)]
    return chosen, rest[:warmup]


def ensure_classifier(args):
    if os.path.isfile(args.cam_weights_path):
        return False
    from misc.datasets import build_spec, load_id_list
    from misc.fileio import save_checkpoint
    from misc.imutils import classification_augment
    from net.resnet50 import calibrate_batchnorm
    from net.resnet50_cam import Net
    spec = build_spec(args)
    rng = np.random.default_rng(0)
    ids = load_id_list(args.train_list, "--train_list")[:4]
    batch = torch.from_numpy(np.stack([classification_augment(load_image_rgb(spec.image_path(i)), 128, rng)
                                       for i in ids]))
    torch.manual_seed(args.seed)
    model = Net(spec.num_classes)
    calibrate_batchnorm(model, [batch])
    save_checkpoint(args.cam_weights_path, model.state_dict(), num_classes=spec.num_classes)
    print(f"note: no classifier at {args.cam_weights_path}; made a random BN-calibrated one (timings only)")
    return True


# --- the reference loop ---------------------------------------------------------------------------------------


def reference_draw(train_ids, spec, img_id, label, count, disjoint_prob, rng):
    """The official sampler, rebuilt for every image by scanning the list (same draws as step.rib's index)."""
    present = label > 0
    disjoint = np.array([n for n, i in enumerate(train_ids) if not np.any((spec.label(i) > 0) & present)],
                        dtype=np.int64)
    others = np.array([n for n, i in enumerate(train_ids) if i != img_id], dtype=np.int64)
    from_disjoint = rng.random(count) < disjoint_prob
    if len(disjoint) == 0:
        from_disjoint[:] = False
    out = np.empty(count, np.int64)
    n_d = int(from_disjoint.sum())
    out[from_disjoint] = rng.choice(disjoint, n_d, replace=n_d > len(disjoint)) if n_d else []
    if count - n_d:
        out[~from_disjoint] = others[rng.choice(len(others), count - n_d, replace=count - n_d > len(others))]
    return out


def reference_rib(args, ids):
    """Per image: reset, fresh optimiser, K steps in the official order with .item() syncs, fp32, in-process."""
    import torch.nn.functional as F
    from misc.cams import resize_and_sum, write_cam_record
    from misc.datasets import build_spec, load_id_list
    from misc.imutils import classification_augment, scale_pyramid
    from misc.rib_losses import finetune_loss
    from misc.torchutils import PolyOptimizer, poly_param_groups
    from net.resnet50_cam import load_classifier
    from step.rib import RIBConfig, draw_generator, pool_logits, rib_path, write_background_record

    cfg = RIBConfig.from_args(args)
    spec = build_spec(args)
    device = args.device
    model = load_classifier(args.cam_weights_path, spec.num_classes, device)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    train_ids = load_id_list(args.train_list, "--train_list")
    for img_id in ids:
        img = load_image_rgb(spec.image_path(img_id))
        label_np = spec.labels.get(img_id, np.zeros(spec.num_classes, np.float32))
        if not label_np.any():
            write_background_record(rib_path(args.rib_out_dir, img_id), img.shape[:2])
            continue
        model.load_state_dict(theta0)
        label = torch.from_numpy(label_np).to(device)
        keys = torch.nonzero(label > 0).flatten()
        pyramid = [torch.from_numpy(p).to(device) for p in scale_pyramid(img, cfg.forward_scales)]
        backbone, head = model.trainable_parameter_groups()
        optimizer = PolyOptimizer(poly_param_groups(backbone, head, cfg.lr, cfg.weight_decay), cfg.lr,
                                  cfg.weight_decay, cfg.iters, cfg.momentum, cfg.official_momentum_bug)
        sums = {s: None for s in cfg.cam_scales}
        for k in range(cfg.last_cam_index + 1):
            train = k < cfg.iters
            step_maps, logits, labels, exploded = {}, [], [], False
            for s, x in zip(cfg.forward_scales, pyramid):
                with torch.set_grad_enabled(train and s in cfg.loss_scales):
                    cam = model.class_maps(x)
                merged = F.relu(cam[0].detach()) + F.relu(cam[1].detach()).flip(-1)
                if s in cfg.cam_scales:
                    step_maps[s] = merged
                if cfg.explode_stop and k >= 1 and s == 1.0:
                    maps = merged[keys]
                    norm = maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
                    exploded = (norm > cfg.explode_th).any(0).float().mean().item() > cfg.explode_ratio
                if train and s in cfg.loss_scales:
                    logits.append(pool_logits(cam, label.expand(2, -1), cfg))
                    labels.append(label.expand(2, -1))
            if exploded:
                if cfg.aggregate == "official" and 1.0 in cfg.cam_scales:  # added before the official test
                    sums[1.0] = sums[1.0] + step_maps[1.0]
                break
            for s in cfg.cam_scales:
                sums[s] = step_maps[s] if sums[s] is None else sums[s] + step_maps[s]
            if not train:
                break
            target_sum = (torch.cat(logits).detach() * label).sum().item()
            picks = reference_draw(train_ids, spec, img_id, label_np, args.rib_batch, args.rib_disjoint_prob,
                                   draw_generator(args.seed, img_id, k, -1))
            if len(picks):
                others = np.stack([classification_augment(load_image_rgb(spec.image_path(train_ids[p])),
                                                          args.rib_crop_size,
                                                          draw_generator(args.seed, img_id, k, slot),
                                                          tuple(int(v) for v in args.cam_resize_long))
                                   for slot, p in enumerate(picks)])
                other_labels = torch.from_numpy(np.stack([spec.label(train_ids[p]) > 0 for p in picks])
                                                .astype(np.float32)).to(device)
                logits.append(pool_logits(model.class_maps(torch.from_numpy(others).to(device)), other_labels,
                                          cfg))
                labels.append(other_labels)
            loss = finetune_loss(torch.cat(logits), torch.cat(labels), cfg.loss, cfg.margin, cfg.margin_mode)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if cfg.margin_mode == "official" and cfg.loss == "rib" and abs(target_sum) > cfg.margin:
                break
        strided, high_res = resize_and_sum([sums[s] for s in cfg.cam_scales], img.shape[:2])
        write_cam_record(rib_path(args.rib_out_dir, img_id), strided, high_res, label.cpu())


# --- driver ---------------------------------------------------------------------------------------------------


def run_mode(mode, args, ids, warmup_ids):
    """Run one mode here (in this process): first untimed on `warmup_ids` (first-call costs: oneDNN / cuDNN
    kernel selection, lazy imports), then timed on `ids`."""
    import logging
    from misc import runlog
    runlog.setup()
    logging.getLogger("step.rib").setLevel(logging.WARNING)
    import step.rib as rib
    if mode == "reference":
        args.amp = False  # fp32, as the official code
        if not str(args.device).startswith("cuda"):
            torch.set_flush_denormal(True)  # the same CPU setting as step.rib, so only the loop differs
    seconds = None
    for ids_now, out in ((warmup_ids, f"{mode}_warmup"), (ids, mode)):
        if not ids_now:
            continue
        args.rib_out_dir = os.path.join(args.bench_dir, out)
        shutil.rmtree(args.rib_out_dir, ignore_errors=True)
        args.infer_list = os.path.join(args.bench_dir, out + "_ids.txt")
        with open(args.infer_list, "w") as f:
            f.write("\n".join(ids_now) + "\n")
        start = time.perf_counter()
        if mode in ("fast", "late"):
            args._rib_early_checks = mode == "fast"
            rib.run(args)
        else:
            reference_rib(args, ids_now)
        if str(args.device).startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"mode": mode, "images": len(ids), "seconds": seconds, "s_per_image": seconds / len(ids)}


def agreement(args, ids, modes):
    """Largest |difference| of the high_res maps of each mode against the first, and the seed mIoU of every mode's
    folder on the ids with masks."""
    from misc.datasets import build_spec
    from step.eval_cam import evaluate_cam_dir
    spec = build_spec(args)
    out = {}
    for other in modes[1:]:
        diffs = []
        for i in ids:
            a = load_cam_npz(os.path.join(args.bench_dir, modes[0], i + ".npz"))
            b = load_cam_npz(os.path.join(args.bench_dir, other, i + ".npz"))
            diffs.append(float(np.abs(a["high_res"] - b["high_res"]).max()) if a["high_res"].size else 0.0)
        out[f"max_abs_diff_high_res_{modes[0]}_{other}"] = max(diffs)
    with_masks = [i for i in ids if os.path.isfile(spec.gt_path(i))]
    out["eval_images"] = len(with_masks)
    if with_masks:
        for mode in modes:
            res = evaluate_cam_dir(args, os.path.join(args.bench_dir, mode), with_masks, spec, made_by="rib")
            out[f"miou_{mode}"] = res["miou"]
            out[f"threshold_{mode}"] = res["threshold"]
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--bench_help" in argv:
        bench_parser().print_help()
        return None
    if "--help" in argv or "-h" in argv:  # the bench's own flags, then every run_sample flag it accepts
        print(bench_parser().format_help())
        print("every flag of run_sample.py is accepted too:\n")
        print(run_sample.get_args_parser().format_help().split("\n\n", 1)[-1])
        return None
    bench, args = prepare_args(argv)
    os.makedirs(args.bench_dir, exist_ok=True)
    ids, warmup_ids = bench_ids(args, bench.bench_images, bench.bench_warmup)
    if bench.bench_mode is not None:
        result = run_mode(bench.bench_mode, args, ids, warmup_ids)
        with open(os.path.join(args.bench_dir, f"{bench.bench_mode}.json"), "w") as f:
            json.dump(result, f)
        return result

    modes = [m.strip() for m in bench.bench_modes.split(",") if m.strip()]
    if not modes or any(m not in ("fast", "late", "reference") for m in modes):
        raise SystemExit(f"error: --bench_modes {bench.bench_modes}: choose from fast, late, reference")
    ensure_classifier(args)
    results = {}
    for mode in modes:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--bench_mode", mode]
        subprocess.run(cmd, check=True, cwd=REPO)
        with open(os.path.join(args.bench_dir, f"{mode}.json")) as f:
            results[mode] = json.load(f)
    summary = {
        "device": str(args.device), "images": len(ids), "rib_iter": args.rib_iter, "rib_batch": args.rib_batch,
        "rib_crop_size": args.rib_crop_size, "cam_scales": list(args.cam_scales),
        "rib_loss_scales": list(args.rib_loss_scales), "amp": bool(args.amp),
        "rib_loader_workers": args.rib_loader_workers,
        "rib_explode_stop": bool(args.rib_explode_stop), "rib_aggregate": args.rib_aggregate,
        "load_avg_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
        **{f"{m}_s_per_image": results[m]["s_per_image"] for m in modes},
        **agreement(args, ids, modes),
    }
    for m in modes[1:]:
        summary[f"{m}_over_{modes[0]}"] = results[m]["s_per_image"] / results[modes[0]]["s_per_image"]
    with open(os.path.join(args.bench_dir, "bench_rib.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"RIB bench on {summary['device']}, {len(ids)} images, K={args.rib_iter}, {args.rib_batch} other "
          f"images of {args.rib_crop_size}px, CAM scales {args.cam_scales}, loss scales {args.rib_loss_scales}")
    print(f"  (load average {summary['load_avg_1min']} on {summary['cpu_count']} CPUs at the end)")
    for m in modes:
        print(f"  {m:9s} {summary[f'{m}_s_per_image']:.2f} s/image" + (
            f"  ({summary[f'{m}_over_{modes[0]}']:.2f}x the time of {modes[0]})" if m != modes[0] else ""))
    for m in modes[1:]:
        print(f"  max |high_res {modes[0]} - {m}| {summary[f'max_abs_diff_high_res_{modes[0]}_{m}']:.2e}")
    if f"miou_{modes[0]}" in summary:
        print("  seed mIoU " + ", ".join(f"{m} {summary[f'miou_{m}']} (thr {summary[f'threshold_{m}']:.2f})"
                                         for m in modes) + f" on {summary['eval_images']} images")
    return summary


if __name__ == "__main__":
    main()
