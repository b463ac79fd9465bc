"""Benchmark of the DeepLab-v2 stage: training images/s and peak GPU memory, inference s/image with and without
the dense CRF.

    python scripts/bench_deeplab.py --device cuda                           # the paper's settings on a GPU
    python scripts/bench_deeplab.py --device cpu --arch resnet50 --batch 2 --crop 161 --iters 3 --warmup 1

Training: the MSC DeepLab of deeplab/model.py with the step's optimiser (parameter groups, SGD momentum) and loss
(the balanced CE of the four MSC outputs), on a fixed batch of random images and labels already on the device, so
the figure is the network's speed; the input pipeline is timed apart (--voc12_root: decode + augment of real images
per loader process). Variants: fp32 eager (the baseline; CUDA convs may use TF32, printed), bf16 autocast +
channels-last (the step's CUDA default), and the same with torch.compile (--seg_compile). Inference: one full-size
image (a real one from --voc12_root, else random 500x375), MSC over 1.0/0.75/0.5, softmax at full resolution; the
CRF (10 iterations, deeplab-pytorch's parameters) on 21 classes. Prints a markdown table; --out FILE.json saves it.
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab.losses import balanced_cross_entropy, msc_loss  # noqa: E402
from deeplab.model import build_deeplab, parameter_groups  # noqa: E402
from deeplab.predict import predict_logits, probabilities  # noqa: E402
from misc.torchutils import denormals_flushed  # noqa: E402
from misc.cli import ArgumentParser, HelpFormatter, int_at_least, show_all_defaults, str2bool  # noqa: E402
from misc.torchutils import autocast  # noqa: E402

VARIANTS = {"fp32": (False, False, False), "bf16": (True, True, False), "bf16+compile": (True, True, True)}


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_training(args, variant, device):
    amp, channels_last, compile_model = VARIANTS[variant]
    on_cuda = str(device).startswith("cuda")
    if not on_cuda and (amp or compile_model):
        return None  # bf16 autocast and compile are CUDA levers here
    torch.manual_seed(0)
    model = build_deeplab(21, args.arch).to(device).train()
    if channels_last and on_cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameter_groups(model, 1e-9, 5e-4), lr=1e-9, momentum=0.9)  # tiny: stays finite
    train_model = torch.compile(model) if compile_model else model
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    if channels_last and on_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 21, (args.batch, args.crop, args.crop), device=device, dtype=torch.uint8)
    labels[:, :, : args.crop // 8] = 255

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            outputs = train_model(x)
        loss = msc_loss(outputs, labels, balanced_cross_entropy)
        loss.backward()
        optimizer.step()

    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.iters
    return {"variant": variant, "s_per_iter": seconds, "images_per_s": args.batch / seconds,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if on_cuda else None,
            "hours_for_30k_iters_batch_10": 30000 * 10 / (args.batch / seconds) / 3600}


def test_image(args):
    if args.voc12_root:
        from misc.fileio import load_image_rgb
        name = sorted(os.listdir(os.path.join(args.voc12_root, "JPEGImages")))[0]
        return load_image_rgb(os.path.join(args.voc12_root, "JPEGImages", name))
    return np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)


def bench_inference(args, device):
    on_cuda = str(device).startswith("cuda")
    torch.manual_seed(0)
    model = build_deeplab(21, args.arch).to(device).eval()
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    img = test_image(args)
    times = []
    for k in range(args.infer_images + 1):  # the first is a warm-up
        sync(device)
        start = time.perf_counter()
        logits = predict_logits(model, img, device, (1.0, 0.75, 0.5), False, True, on_cuda)
        probs = probabilities(logits, img.shape[:2]).cpu().numpy()
        times.append(time.perf_counter() - start)
    net = float(np.mean(times[1:]))
    crf = None
    if args.crf:
        from misc.crf import crf_inference_softmax
        probs = np.random.default_rng(0).dirichlet(np.ones(21), size=img.shape[:2]).transpose(2, 0, 1)
        start = time.perf_counter()
        crf_inference_softmax(img, probs.astype(np.float32))
        crf = time.perf_counter() - start
    return {"image": f"{img.shape[1]}x{img.shape[0]}", "network_s_per_image": net, "crf_s_per_image": crf,
            "with_crf_s_per_image": net + crf if crf is not None else None}


def bench_loader(args):
    """Decode + augment of real images in one process (the DataLoader worker's share of the work)."""
    if not args.voc12_root:
        return None
    from deeplab.data import segmentation_augment
    from misc.fileio import load_image_rgb
    names = sorted(os.listdir(os.path.join(args.voc12_root, "JPEGImages")))[:20]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for name in names:
        img = load_image_rgb(os.path.join(args.voc12_root, "JPEGImages", name))
        segmentation_augment(img, np.zeros(img.shape[:2], np.uint8), args.crop, (0.5, 0.75, 1.0, 1.25, 1.5), rng)
    return {"images_per_s_per_worker": len(names) / (time.perf_counter() - start)}


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    p.add_argument("--arch", default="resnet101", choices=("resnet101", "resnet50"))
    p.add_argument("--batch", type=int_at_least(1), default=10, help="training batch (paper: 10)")
    p.add_argument("--crop", type=int_at_least(16), default=321, help="training crop (paper: 321)")
    p.add_argument("--iters", type=int_at_least(1), default=20, help="timed training iterations")
    p.add_argument("--warmup", type=int_at_least(0), default=5, help="untimed iterations first (compile, cudnn)")
    p.add_argument("--variants", default="fp32,bf16,bf16+compile", help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--infer_images", type=int_at_least(1), default=5, help="timed inference repetitions")
    p.add_argument("--crf", type=str2bool, default=True, help="also time the dense CRF")
    p.add_argument("--voc12_root", default="", help="real images for the inference and loader figures")
    p.add_argument("--tf32", type=str2bool, default=None, help="force cudnn TF32 on / off (default: torch's)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    show_all_defaults(p)
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    device = args.device
    if args.tf32 is not None:
        torch.backends.cudnn.allow_tf32 = args.tf32
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    results = {"device": name,
               "torch": torch.__version__, "arch": args.arch, "batch": args.batch, "crop": args.crop,
               "cudnn_tf32": torch.backends.cudnn.allow_tf32 if device.startswith("cuda") else None,
               "training": [], "loader": bench_loader(args)}
    with denormals_flushed(not device.startswith("cuda")):
        for variant in args.variants.split(","):
            r = bench_training(args, variant.strip(), device)
            if r is not None:
                results["training"].append(r)
                print(f"training {variant}: {r['images_per_s']:.2f} images/s", flush=True)
        results["inference"] = bench_inference(args, device)
    base = next((r for r in results["training"] if r["variant"] == "fp32"), None)
    print(f"\n{results['device']}, torch {results['torch']}, {args.arch}, batch {args.batch}, crop {args.crop}, MSC\n")
    print("| variant | images/s | s/iteration | speed-up vs fp32 | peak GPU memory (GiB) | 30k x 10 images (h) |")
    print("|---|---|---|---|---|---|")
    for r in results["training"]:
        speedup = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "—"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "—"
        print(f"| {r['variant']} | {r['images_per_s']:.2f} | {r['s_per_iter']:.3f} | {speedup} | {mem} | "
              f"{r['hours_for_30k_iters_batch_10']:.1f} |")
    inf = results["inference"]
    print(f"\ninference ({inf['image']}, MSC 1.0/0.75/0.5): network {inf['network_s_per_image']:.3f} s/image"
          + (f", CRF {inf['crf_s_per_image']:.3f} s/image, with CRF {inf['with_crf_s_per_image']:.3f} s/image"
             if inf["crf_s_per_image"] is not None else ""))
    if results["loader"]:
        print(f"loader: {results['loader']['images_per_s_per_worker']:.1f} images/s per worker process "
              f"(decode + augment at crop {args.crop})")
    if args.out:
        from misc.fileio import save_json
        save_json(args.out, results)


if __name__ == "__main__":
    main()
