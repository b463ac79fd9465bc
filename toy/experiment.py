"""Toy experiment of Sec. 3.1 / Fig. 1 and "Effectiveness of RIB" / Fig. 2 of the RIB paper (NeurIPS 2021).

MNIST '2' and '8' images; 10 % of them get a circle ('2') or a square ('8') at a random place. A 5-conv + FC
classifier is trained with the sigmoid BCE loss; the high gradient ratio (HGR) of the digit (R_D), the added shape
(R_ND) and the background (R_BG) is measured in the input gradients of every layer (Fig. 1(c)) and, for the
final logit, along K iterations of per-image RIB fine-tuning with L_RIB (Fig. 2(b)).

    python scripts/toy_experiment.py --mnist_dir ../shared/data/mnist --out_dir toy_out

Runs on a laptop CPU in one to two minutes (2 cores). See docs/toy_experiment.md for the choices made and measured
results.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from misc.errors import DataError
from misc.fileio import atomic_path, save_json, save_text
from net.rib_loss import MARGIN_MODES, rib_loss
from toy.mnist import load_mnist
from toy.net import ToyCNN
from toy.shapes import (GRAD_NORMS, REGION_D, REGION_KEYS, REGION_ND, gradient_maps, hgr, logit_gradient_map,
                        make_toy_set, normalise_gradients, paint_shape, region_mean)

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(iterable, **kwargs):
        return iterable

DIGITS = (2, 8)  # class 0 = '2', class 1 = '8'
SHAPE_FOR_DIGIT = {2: "circle", 8: "square"}
LAYER_NAMES = [f"G{l}" for l in range(1, 7)]


def get_args_parser():
    parser = argparse.ArgumentParser(description="RIB toy experiment (Sec. 3.1, Fig. 1 and Fig. 2)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # data
    parser.add_argument("--mnist_dir", default=None, type=str,
                        help="folder with the MNIST IDX files (gz or raw); t10k is required, train is optional")
    parser.add_argument("--download", action="store_true",
                        help="fetch missing IDX files from a public mirror into --mnist_dir (needs network)")
    parser.add_argument("--out_dir", default="toy_out", type=str, help="where JSON, markdown and PNGs go")
    parser.add_argument("--t10k_test_every", default=5, type=int,
                        help="without the train images, t10k index %% N == 0 goes to test, the rest to train")
    parser.add_argument("--shape_fraction", default=0.1, type=float,
                        help="fraction of the train and test images that get a shape (paper: 10 %%)")
    parser.add_argument("--shape_size", default=7, type=int, help="side of the shape's box, pixels")
    parser.add_argument("--shape_thickness", default=2, type=int, help="stroke width of the shape, pixels")
    parser.add_argument("--shape_gap", default=1, type=int,
                        help="min. distance in pixels between shape and digit when there is room")
    # classifier
    parser.add_argument("--epochs", default=15, type=int, help="classifier training epochs (sigmoid BCE)")
    parser.add_argument("--batch_size", default=64, type=int)
    parser.add_argument("--lr", default=3e-3, type=float,
                        help="initial Adam learning rate of the classifier, cosine-decayed to 0 per step")
    parser.add_argument("--max_train", default=0, type=int,
                        help="use at most this many training images (0 = all); to keep CPU time low")
    # analysis
    parser.add_argument("--n_analysis", default=100, type=int,
                        help="test images, each carrying a shape, over which HGR is averaged (paper: 100)")
    parser.add_argument("--hgr_thresh", default=0.3, type=float, help="HGR counts gradients above this")
    parser.add_argument("--grad_norm", default="max", choices=GRAD_NORMS,
                        help="'max': |G| divided by the max of each map; 'none': raw |G|")
    parser.add_argument("--n_examples", default=4, type=int, help="rows of the example gradient-map figures")
    # RIB
    parser.add_argument("--rib_iters", default=10, type=int, help="K, RIB iterations per image (paper: 10)")
    parser.add_argument("--rib_lr", default=3e-5, type=float, help="lambda, plain SGD step of RIB")
    parser.add_argument("--rib_batch", default=20, type=int,
                        help="B: the target image plus B-1 random training images, redrawn every iteration")
    parser.add_argument("--rib_lr_sweep", default=[1e-5, 1e-4, 3e-4, 1e-3], type=float, nargs="*",
                        help="extra lambda values, one more RIB pass each, for the sensitivity figure and table; "
                             "give the flag with no value to skip")
    parser.add_argument("--rib_margin", default=50.0, type=float, help="m of L_RIB = -sum_c t_c min(m, y_c)")
    parser.add_argument("--rib_margin_mode", default="paper", choices=MARGIN_MODES,
                        help="'paper' clamps the logits at m; 'official' does not clamp")
    # misc
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--threads", default=1, type=int,
                        help="torch CPU threads (0 = torch's default). 1: the tiny convs gain little from more, "
                             "a shared CPU makes extra threads spin, and results then do not depend on the "
                             "machine's core count")
    parser.add_argument("--no_progress", action="store_true", help="hide the tqdm progress bars")
    return parser


# ----------------------------------------------------------------------------------------------- data


def build_data(args, rng_train, rng_test, rng_analysis):
    """MNIST '2'/'8' train and test sets with shapes on a `shape_fraction` of them, plus the analysis set:
    `n_analysis` digits of the test split, each painted with its class's shape."""
    tr_img, tr_lbl, te_img, te_lbl, split_info = load_mnist(args.mnist_dir, args.t10k_test_every, args.download)
    keep_tr, keep_te = np.isin(tr_lbl, DIGITS), np.isin(te_lbl, DIGITS)
    tr_img, tr_lbl = tr_img[keep_tr], tr_lbl[keep_tr]
    te_img, te_lbl = te_img[keep_te], te_lbl[keep_te]
    if args.max_train > 0:
        tr_img, tr_lbl = tr_img[:args.max_train], tr_lbl[:args.max_train]
    if len(tr_img) == 0 or len(te_img) == 0:
        raise DataError(f"--mnist_dir {args.mnist_dir!r}: no '2'/'8' images in the train or test split; "
                        "check the label files")
    if args.n_analysis > len(te_img):
        raise DataError(f"--n_analysis {args.n_analysis} exceeds the {len(te_img)} '2'/'8' test images; lower it")
    shape_kw = dict(size=args.shape_size, thickness=args.shape_thickness, gap=args.shape_gap)
    train = make_toy_set(tr_img / 255.0, tr_lbl, SHAPE_FOR_DIGIT, args.shape_fraction, rng_train, **shape_kw)
    test = make_toy_set(te_img / 255.0, te_lbl, SHAPE_FOR_DIGIT, args.shape_fraction, rng_test, **shape_kw)
    train["classes"] = (tr_lbl == DIGITS[1]).astype(np.int64)
    test["classes"] = (te_lbl == DIGITS[1]).astype(np.int64)

    # The test split has only ~40 shaped images at 10 %; the analysis needs `n_analysis` images that carry a
    # shape, so it paints a fresh shape on each of n_analysis randomly chosen clean test digits.
    pick = np.sort(rng_analysis.choice(len(te_img), size=args.n_analysis, replace=False))
    a_img, a_reg, a_over = [], [], 0
    for i in pick:
        img, reg, over = paint_shape(te_img[i] / 255.0, SHAPE_FOR_DIGIT[int(te_lbl[i])], rng_analysis, **shape_kw)
        a_img.append(img)
        a_reg.append(reg)
        a_over += int(over)
    analysis = {"images": np.asarray(a_img, dtype=np.float32), "regions": np.asarray(a_reg),
                "classes": test["classes"][pick], "test_index": pick, "n_overlapped": a_over}
    return train, test, analysis, split_info


def to_tensor(images):
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)


# ----------------------------------------------------------------------------------------------- classifier


def train_classifier(model, train, args, rng):
    """Sigmoid BCE on two-class multi-hot (here one-hot) targets, Adam, shuffled mini-batches.

    The learning rate decays to 0 along a cosine: with ~1.6k training images and no batch norm, a constant rate
    leaves the test accuracy jumping by a few points between epochs, and the analysed model should be a settled one.
    """
    x_all, y_all = to_tensor(train["images"]), F.one_hot(torch.from_numpy(train["classes"]), 2).float()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    total_steps = args.epochs * ((len(x_all) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    model.train()
    losses = []
    for _ in tqdm(range(args.epochs), desc="train classifier", disable=args.no_progress):
        order = torch.from_numpy(rng.permutation(len(x_all)))
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            loss = F.binary_cross_entropy_with_logits(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x_all))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model, images, classes, mask=None):
    if mask is not None:
        images, classes = images[mask], classes[mask]
    if len(images) == 0:
        return None
    pred = torch.cat([model(to_tensor(images[i:i + 512])).argmax(1) for i in range(0, len(images), 512)])
    return float((pred.numpy() == classes).mean())


# ----------------------------------------------------------------------------------------------- analyses


def layer_analysis(model, analysis, args):
    """Fig. 1(c): per-image HGR (and mean normalised gradient) of every region in G_1..G_6, averaged over images.
    Returns ({'hgr': (6, 3), 'mean': (6, 3)}, normalised maps (N, 6, H, W))."""
    maps = gradient_maps(model, to_tensor(analysis["images"]), torch.from_numpy(analysis["classes"]))
    norm = normalise_gradients(maps.numpy(), args.grad_norm)
    regions = analysis["regions"][:, None]  # the same regions for the 6 maps of an image
    stats = {"hgr": np.nanmean(hgr(norm, regions, args.hgr_thresh), axis=0),
             "mean": np.nanmean(region_mean(norm, regions), axis=0)}
    return stats, norm


def run_rib(model, theta0, train, analysis, args, rib_lr, rng, example_ids=(), example_ks=(), desc="RIB"):
    """Fig. 2(b): for every analysis image, restart from theta_0 and run K RIB steps; HGR of G_6 at each theta_k.

    Row k of 'hgr'/'mean' is measured on theta_k, the model after k updates (k = 0 is the trained model itself),
    for k = 0..K. Fig. 2 plots k = 0..K-1 (its panels show k = 0, 5, 9 for K = 10); the JSON keeps theta_K apart.
    """
    n, k_iters, b = len(analysis["images"]), args.rib_iters, args.rib_batch
    x_train = to_tensor(train["images"])
    t_train = F.one_hot(torch.from_numpy(train["classes"]), 2).float()
    per_hgr = np.zeros((n, k_iters + 1, len(REGION_KEYS)))
    per_mean = np.zeros((n, k_iters + 1, len(REGION_KEYS)))
    target_logit = np.zeros((n, k_iters + 1))
    reached_margin = np.zeros(n, dtype=bool)  # the target's logit hit m at some step (L_RIB's clamp active)
    examples = {}
    for i in tqdm(range(n), desc=desc, disable=args.no_progress):
        model.load_state_dict(theta0)  # every image starts from the trained weights theta_0
        opt = torch.optim.SGD(model.parameters(), lr=rib_lr)  # plain SGD: theta_k = theta_{k-1} - lambda * grad
        x = to_tensor(analysis["images"][i:i + 1])
        c = torch.from_numpy(analysis["classes"][i:i + 1])
        t = F.one_hot(c, 2).float()
        regions = analysis["regions"][i:i + 1]
        for k in range(k_iters + 1):
            g6 = normalise_gradients(logit_gradient_map(model, x, c).numpy(), args.grad_norm)  # (1, H, W)
            per_hgr[i, k] = hgr(g6, regions, args.hgr_thresh)[0]
            per_mean[i, k] = region_mean(g6, regions)[0]
            if i in example_ids and k in example_ks:
                examples[(i, k)] = g6[0]
            # the batch: the fixed target first, plus B-1 training images drawn afresh at every iteration
            others = torch.from_numpy(rng.choice(len(x_train), size=b - 1, replace=False))
            logits = model(torch.cat([x, x_train[others]]))
            target_logit[i, k] = logits[0, c].item()  # y^c of theta_k, read off the RIB forward pass
            reached_margin[i] |= bool(target_logit[i, k] >= args.rib_margin)
            if k == k_iters:
                break  # theta_K is measured, not updated
            loss = rib_loss(logits, torch.cat([t, t_train[others]]), args.rib_margin, mode=args.rib_margin_mode)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.load_state_dict(theta0)
    return {"hgr": np.nanmean(per_hgr, axis=0), "mean": np.nanmean(per_mean, axis=0),
            "target_logit": target_logit.mean(axis=0), "fraction_reaching_margin": float(reached_margin.mean()),
            "examples": examples}


def as_table(array):
    """(rows, 3) array -> {'RD': [...], 'RND': [...], 'RBG': [...]} of plain floats."""
    return {key: [float(v) for v in array[:, j]] for j, key in enumerate(REGION_KEYS)}


# ----------------------------------------------------------------------------------------------- outputs


def save_figure(fig, path):
    import matplotlib.pyplot as plt
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def nd_box(ax, regions):
    """Red box around R_ND, like the red boxes of the paper's Fig. 1(b)."""
    import matplotlib.patches as patches
    rows, cols = np.nonzero(regions == REGION_ND)
    if len(rows):
        ax.add_patch(patches.Rectangle((cols.min() - 1, rows.min() - 1), cols.max() - cols.min() + 2,
                                       rows.max() - rows.min() + 2, fill=False, edgecolor="red", linewidth=1.2))


def map_grid(images, regions, columns, titles, path, suptitle=None):
    """One row per image: the image, then one normalised gradient map per column (jet, red box on R_ND)."""
    import matplotlib.pyplot as plt
    rows = len(images)
    fig, axes = plt.subplots(rows, 1 + len(columns), figsize=(1.5 * (1 + len(columns)), 1.55 * rows),
                             squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(images[r], cmap="gray", vmin=0, vmax=1)
        for j, maps in enumerate(columns):
            axes[r, j + 1].imshow(maps[r], cmap="jet", vmin=0, vmax=max(float(maps[r].max()), 1e-12))
            nd_box(axes[r, j + 1], regions[r])
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[j], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    save_figure(fig, path)


def plot_all(out_dir, train, analysis, layer_maps, result, rib_examples, example_ids, example_ks, args,
             sweep_examples=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"RD": "R_D", "RND": "R_ND", "RBG": "R_BG"}
    styles = {"RD": "o-", "RND": "s-", "RBG": "^-"}

    # Fig. 1(a): toy training images that carry a shape (3 per class) and their regions (R_D white, R_ND red).
    shaped = np.flatnonzero(train["has_shape"])
    picks = np.concatenate([shaped[train["classes"][shaped] == c][:3] for c in (0, 1)])
    if len(picks):
        fig, axes = plt.subplots(2, len(picks), figsize=(1.5 * len(picks), 3.3), squeeze=False)
        for j, i in enumerate(picks):
            axes[0, j].imshow(train["images"][i], cmap="gray", vmin=0, vmax=1)
            overlay = np.zeros(train["regions"][i].shape + (3,))
            overlay[train["regions"][i] == REGION_D] = (1.0, 1.0, 1.0)
            overlay[train["regions"][i] == REGION_ND] = (1.0, 0.15, 0.15)
            axes[1, j].imshow(overlay)
            for ax in axes[:, j]:
                ax.axis("off")
        axes[0, 0].set_title("toy images", loc="left", fontsize=9)
        axes[1, 0].set_title("R_D white, R_ND red, R_BG black", loc="left", fontsize=9)
        save_figure(fig, os.path.join(out_dir, "fig1a_toy_images.png"))

    # Fig. 1(b): normalised |G_1..G_6| of the first analysis images.
    map_grid(analysis["images"][example_ids], analysis["regions"][example_ids],
             [layer_maps[example_ids, l] for l in range(6)], ["image"] + LAYER_NAMES,
             os.path.join(out_dir, "fig1b_gradient_maps.png"))

    # Fig. 2(a): G_6 of the same images at k = 0, K/2, K-1.
    map_grid(analysis["images"][example_ids], analysis["regions"][example_ids],
             [np.stack([rib_examples[(i, k)] for i in example_ids]) for k in example_ks],
             ["image"] + [f"G6, k={k}" for k in example_ks], os.path.join(out_dir, "fig2a_rib_examples.png"),
             f"lambda = {args.rib_lr:g}")
    if sweep_examples:  # the same images under the largest swept lambda
        lam = sweep_examples["lambda"]
        map_grid(analysis["images"][example_ids], analysis["regions"][example_ids],
                 [np.stack([sweep_examples["maps"][(i, k)] for i in example_ids]) for k in example_ks],
                 ["image"] + [f"G6, k={k}" for k in example_ks],
                 os.path.join(out_dir, "fig2a_rib_examples_sweep_max_lambda.png"), f"lambda = {lam:g}")

    # Fig. 1(c) and Fig. 2(b), each with the threshold-free mean gradient next to HGR.
    def line_panels(xs, tables, xlabel, title, path, xticklabels=None):
        fig, axes = plt.subplots(1, 2, figsize=(8.8, 3.2))
        fig.subplots_adjust(wspace=0.32)
        for ax, (name, table) in zip(axes, tables):
            for key in REGION_KEYS:
                ax.plot(xs, table[key], styles[key], label=labels[key])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(name)
            ax.set_ylim(bottom=0)
            if xticklabels:
                ax.set_xticks(xs)
                ax.set_xticklabels(xticklabels)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title, fontsize=9)
        save_figure(fig, path)

    hgr_name = f"HGR (|G| > {args.hgr_thresh}, norm={args.grad_norm})"
    mean_name = f"mean |G| (norm={args.grad_norm})"
    line_panels(list(range(1, 7)), [(hgr_name, result["hgr_layers"]), (mean_name, result["mean_grad_layers"])],
                "gradient map", f"per layer, mean of {args.n_analysis} test images with a shape",
                os.path.join(out_dir, "fig1c_hgr_layers.png"), LAYER_NAMES)
    line_panels(list(range(args.rib_iters)), [(hgr_name, result["hgr_rib"]), (mean_name, result["mean_grad_rib"])],
                "RIB iteration k", f"G6 during RIB (m={args.rib_margin}, lambda={args.rib_lr:g}, B={args.rib_batch}), "
                f"mean of {args.n_analysis} images", os.path.join(out_dir, "fig2b_hgr_rib.png"))

    # Sensitivity of Fig. 2(b) to lambda: one panel per region, one line per lambda.
    sweep = result["rib_lr_sweep"]
    if len(sweep) > 1:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
        for ax, key in zip(axes, REGION_KEYS):
            for lam, entry in sorted(sweep.items(), key=lambda kv: float(kv[0])):
                ax.plot(range(args.rib_iters), entry["hgr_rib"][key], "o-", markersize=3, label=f"lambda={lam}")
            ax.set_title(f"HGR of {labels[key]} in G6", fontsize=9)
            ax.set_xlabel("RIB iteration k")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        save_figure(fig, os.path.join(out_dir, "fig2c_rib_lr_sweep.png"))


def markdown_table(table, columns, digits=3):
    head = "| region | " + " | ".join(columns) + " |"
    sep = "| --- |" + " --- |" * len(columns)
    rows = [f"| {key} | " + " | ".join(f"{v:.{digits}f}" for v in table[key]) + " |" for key in REGION_KEYS]
    return "\n".join([head, sep] + rows)


def trend_checks(result):
    """Plain numbers behind the paper's qualitative claims (Sec. 3.1 and Fig. 2)."""
    L = {k: np.asarray(v) for k, v in result["hgr_layers"].items()}
    M = {k: np.asarray(v) for k, v in result["mean_grad_layers"].items()}
    R = {k: np.asarray(v) for k, v in result["hgr_rib"].items()}

    def largest_drop(values):  # the step G_l -> G_{l+1} with the largest decrease (None: it never decreases)
        drops = values[:-1] - values[1:]
        l = int(np.argmax(drops))
        return f"G{l + 1}->G{l + 2}" if drops[l] > 0 else None

    def ratio(a, b):
        return round(float(a / b), 4) if b > 0 else None

    return {
        "HGR_RBG_G1_G2": [round(float(L["RBG"][0]), 4), round(float(L["RBG"][1]), 4)],
        "meangrad_RBG_G1_G2": [round(float(M["RBG"][0]), 4), round(float(M["RBG"][1]), 4)],
        "HGR_largest_drop_step": {k: largest_drop(L[k]) for k in REGION_KEYS},
        "HGR_G6_over_G5": {k: ratio(L[k][5], L[k][4]) for k in REGION_KEYS},
        "HGR_G5_over_G1": {k: ratio(L[k][4], L[k][0]) for k in REGION_KEYS},
        "HGR_RIB_last_minus_first": {k: round(float(R[k][-1] - R[k][0]), 4) for k in REGION_KEYS},
    }


def summary_markdown(result):
    s, acc, t = result["settings"], result["accuracy"], result["trends"]
    k_cols = [f"k={k}" for k in result["rib_k"]]
    shaped_acc = acc["test_shaped"]
    lines = [
        "# RIB toy experiment (Sec. 3.1, Fig. 1(c) and Fig. 2(b))", "",
        f"Data: {s['split_info'].get('note', s['split_info']['split'])}. '2'/'8' images: {s['n_train']} train "
        f"({s['n_train_shaped']} with a shape), {s['n_test']} test ({s['n_test_shaped']} with a shape). "
        f"HGR is averaged over {s['n_analysis']} test-split digits, each painted with its class's shape.", "",
        f"Classifier (5 conv + FC, sigmoid BCE, {s['epochs']} epochs): test accuracy {acc['test']:.4f} "
        f"(test images with a shape: {'n/a' if shaped_acc is None else f'{shaped_acc:.4f}'}; analysis set "
        f"{acc['analysis']:.4f}); train accuracy {acc['train']:.4f}.", "",
        f"HGR = share of a region's pixels with |G| > {s['hgr_thresh']}, grad_norm={s['grad_norm']} "
        f"({'each |G| map divided by its own max' if s['grad_norm'] == 'max' else 'raw |G|'}); "
        "per image, then averaged over the images.", "",
        "## HGR per layer (Fig. 1(c))", "",
        "G1..G5: gradient of the sum of conv layer l's output (after ReLU); G6: gradient of the class logit y^c.", "",
        markdown_table(result["hgr_layers"], LAYER_NAMES), "",
        "Mean normalised |G| per region (threshold-free companion):", "",
        markdown_table(result["mean_grad_layers"], LAYER_NAMES), "",
        f"## HGR of G6 during RIB (Fig. 2(b)): K = {s['rib_iters']}, m = {s['rib_margin']}, lambda = {s['rib_lr']:g}, "
        f"B = {s['rib_batch']}", "",
        "Column k = the model after k RIB updates (k = 0: the trained classifier).", "",
        markdown_table(result["hgr_rib"], k_cols), "",
        "Mean normalised |G6| per region:", "",
        markdown_table(result["mean_grad_rib"], k_cols), "",
        "After the K-th update (theta_K), HGR: " + ", ".join(
            f"{k} {v:.3f}" for k, v in result["hgr_rib_theta_K"].items()) + ".",
        "Mean target logit y^c at k = 0..K: " + ", ".join(f"{v:.1f}" for v in result["rib_target_logit"]) +
        f"; images whose target logit reached m: {result['rib_fraction_images_reaching_margin']:.2f}.", "",
    ]
    sweep = result["rib_lr_sweep"]
    if len(sweep) > 1:
        lines += ["## Sensitivity to lambda (HGR of G6 at k = 0 and k = K-1, mean target logit at k = K)", "",
                  "| lambda | RD k=0 | RD k=K-1 | RND k=0 | RND k=K-1 | RBG k=0 | RBG k=K-1 | logit k=K | reached m |",
                  "| --- |" + " --- |" * 8]
        for lam, e in sorted(sweep.items(), key=lambda kv: float(kv[0])):
            h = e["hgr_rib"]
            lines.append(f"| {lam} | " + " | ".join(f"{h[k][0]:.3f} | {h[k][-1]:.3f}" for k in REGION_KEYS) +
                         f" | {e['target_logit'][-1]:.3g} | {e['fraction_reaching_margin']:.2f} |")
        lines.append("")
    lines += ["## Trend numbers", "",
              "Paper's claims: R_BG falls early (G1->G2); R_D and R_ND fall gradually; the drop G5->G6 is prominent, "
              "R_ND nearly vanishing; during RIB, R_D and R_ND rise markedly while R_BG stays about constant.", ""]
    lines += [f"- {k}: {json.dumps(v)}" for k, v in t.items()]
    lines += ["", f"Wall time {result['timings']['total_s']:.1f} s (" + ", ".join(
        f"{k} {v}" for k, v in result["timings"].items() if k != "total_s") + ").", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def main(args):
    """The experiment: data, classifier, HGR per layer, HGR during RIB (and the lambda sweep), figures, JSON."""
    t_start = time.time()
    check_args(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the classifier's initial weights
    # independent random streams, so that e.g. a different --n_analysis does not change the training data
    ss_train, ss_test, ss_analysis, ss_fit, ss_rib = np.random.SeedSequence(args.seed).spawn(5)
    train, test, analysis, split_info = load_data(args, ss_train, ss_test, ss_analysis)
    timings = {}
    model = ToyCNN(num_classes=2)
    losses = timed(timings, "train_s", train_classifier, model, train, args, np.random.default_rng(ss_fit))
    acc = accuracies(model, train, test, analysis)
    print(f"[toy] classifier trained in {timings['train_s']:.1f} s: final BCE {losses[-1]:.4f}, "
          f"test accuracy {acc['test']:.4f}, analysis-set accuracy {acc['analysis']:.4f}")
    theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layer_stats, layer_maps = timed(timings, "layer_analysis_s", layer_analysis, model, analysis, args)
    example_ids = np.arange(min(args.n_examples, args.n_analysis))
    example_ks = sorted({0, args.rib_iters // 2, args.rib_iters - 1})  # k = 0, 5, 9 for K = 10, as in Fig. 2(a)
    examples = (set(example_ids.tolist()), set(example_ks))
    # every lambda sees the same batches: its RIB stream restarts from the same seed
    rib = timed(timings, "rib_s", run_rib, model, theta0, train, analysis, args, args.rib_lr,
                np.random.default_rng(ss_rib), *examples, desc=f"RIB lambda={args.rib_lr:g}")
    sweep, sweep_examples = timed(timings, "rib_sweep_s", lambda_sweep, model, theta0, train, analysis, args, rib,
                                  ss_rib, examples)
    settings = run_settings(args, split_info, train, test, analysis)
    result = results(args, rib, layer_stats, sweep, acc, losses, settings)
    os.makedirs(args.out_dir, exist_ok=True)
    timed(timings, "figures_s", plot_all, args.out_dir, train, analysis, layer_maps, result, rib["examples"],
          example_ids, example_ks, args, sweep_examples)
    timings["total_s"] = round(time.time() - t_start, 2)
    # timings in their own key, written last: the only part of the JSON that differs between identical runs
    result["timings"] = timings
    save_json(os.path.join(args.out_dir, "toy_results.json"), result)
    save_text(os.path.join(args.out_dir, "toy_summary.md"), summary_markdown(result))
    print_summary(result, args, timings)
    return result


def check_args(args):
    if args.rib_batch < 1 or args.rib_iters < 1 or args.n_analysis < 1 or args.epochs < 1:
        raise ValueError("--rib_batch, --rib_iters, --n_analysis and --epochs must be >= 1")


def timed(timings, key, fn, *args, **kwargs):
    """fn(*args, **kwargs), its wall time recorded as timings[key] (seconds, 2 decimals)."""
    t0 = time.time()
    out = fn(*args, **kwargs)
    timings[key] = round(time.time() - t0, 2)
    return out


def load_data(args, ss_train, ss_test, ss_analysis):
    train, test, analysis, split_info = build_data(args, np.random.default_rng(ss_train),
                                                   np.random.default_rng(ss_test), np.random.default_rng(ss_analysis))
    if args.rib_batch - 1 > len(train["images"]):
        raise ValueError(f"--rib_batch {args.rib_batch} needs more training images than the {len(train['images'])} "
                         "available; lower it")
    print(f"[toy] data: {split_info.get('note', split_info['split'])}")
    print(f"[toy] '2'/'8' images: train {len(train['images'])} ({int(train['has_shape'].sum())} with a shape), "
          f"test {len(test['images'])} ({int(test['has_shape'].sum())} with a shape), analysis {args.n_analysis}")
    return train, test, analysis, split_info


def accuracies(model, train, test, analysis):
    return {
        "train": accuracy(model, train["images"], train["classes"]),
        "test": accuracy(model, test["images"], test["classes"]),
        "test_shaped": accuracy(model, test["images"], test["classes"], test["has_shape"]),
        "test_unshaped": accuracy(model, test["images"], test["classes"], ~test["has_shape"]),
        "analysis": accuracy(model, analysis["images"], analysis["classes"]),
    }


def rib_entry(r, K):
    return {"hgr_rib": as_table(r["hgr"][:K]),
            "hgr_rib_theta_K": {key: float(r["hgr"][K, j]) for j, key in enumerate(REGION_KEYS)},
            "target_logit": [float(v) for v in r["target_logit"]],
            "fraction_reaching_margin": r["fraction_reaching_margin"]}


def lambda_sweep(model, theta0, train, analysis, args, rib, ss_rib, examples):
    """RIB at every --rib_lr_sweep value (the main lambda's run reused); the G_6 examples of the largest swept
    lambda, for a second Fig. 2(a)."""
    sweep = {f"{args.rib_lr:g}": rib_entry(rib, args.rib_iters)}
    sweep_examples = {}
    for lam in sorted(args.rib_lr_sweep):
        if f"{lam:g}" in sweep:
            continue
        r = run_rib(model, theta0, train, analysis, args, lam, np.random.default_rng(ss_rib), *examples,
                    desc=f"RIB lambda={lam:g}")
        sweep[f"{lam:g}"] = rib_entry(r, args.rib_iters)
        sweep_examples = {"lambda": lam, "maps": r["examples"]}
    return sweep, sweep_examples


def run_settings(args, split_info, train, test, analysis):
    """The flags and what the results' keys mean, for the JSON."""
    settings = dict(vars(args))
    settings.update({
        "split_info": split_info, "digits": list(DIGITS), "shape_for_digit": SHAPE_FOR_DIGIT,
        "n_train": len(train["images"]), "n_train_shaped": int(train["has_shape"].sum()),
        "n_test": len(test["images"]), "n_test_shaped": int(test["has_shape"].sum()),
        "n_shapes_overlapping_digit": {"train": train["n_overlapped"], "test": test["n_overlapped"],
                                       "analysis": analysis["n_overlapped"]},
        "analysis_set": "n_analysis random test-split '2'/'8' digits, each painted with its class's shape",
        "layers": "G1..G5: d/dx of the sum of conv layer l's output after ReLU; G6: d y^c / dx, c = the image's class",
        "rib_k_definition": "hgr_rib[k] is measured on theta_k (after k RIB updates), k = 0..K-1; "
                            "theta_K in hgr_rib_theta_K",
        "region_overlap_rule": "a shape keeps --shape_gap pixels from the digit when there is room; otherwise it "
                               "goes where it touches the fewest digit pixels and is painted on background "
                               "pixels only, the digit pixels under it staying R_D",
        "classifier_optimiser": "Adam, cosine decay of --lr to 0 over all steps, BCE-with-logits (mean)",
        "rib_optimiser": "plain SGD (no momentum, no weight decay) on rib_loss summed over the B rows",
        "torch_version": torch.__version__,
    })
    return settings


def results(args, rib, layer_stats, sweep, acc, losses, settings):
    K = args.rib_iters
    result = {
        "hgr_layers": as_table(layer_stats["hgr"]),
        "hgr_rib": as_table(rib["hgr"][:K]),
        "mean_grad_layers": as_table(layer_stats["mean"]),
        "mean_grad_rib": as_table(rib["mean"][:K]),
        "hgr_rib_theta_K": {key: float(rib["hgr"][K, j]) for j, key in enumerate(REGION_KEYS)},
        "rib_k": list(range(K)),
        "rib_target_logit": [float(v) for v in rib["target_logit"]],
        "rib_fraction_images_reaching_margin": rib["fraction_reaching_margin"],
        "rib_lr_sweep": sweep,
        "accuracy": acc,
        "train_bce_per_epoch": [float(v) for v in losses],
        "settings": settings,
    }
    result["trends"] = trend_checks(result)
    return result


def print_summary(result, args, timings):
    print("[toy] HGR per layer (G1..G6):")
    for key in REGION_KEYS:
        print(f"    {key:4s} " + " ".join(f"{v:.3f}" for v in result["hgr_layers"][key]))
    print(f"[toy] HGR of G6 during RIB (k = 0..{args.rib_iters - 1}, lambda={args.rib_lr:g}):")
    for key in REGION_KEYS:
        print(f"    {key:4s} " + " ".join(f"{v:.3f}" for v in result["hgr_rib"][key]))
    print(f"[toy] done in {timings['total_s']:.1f} s; outputs in {args.out_dir}")


def cli(argv=None):
    args = get_args_parser().parse_args(argv)
    if argv is None:  # a command: pin the CPU kernels so that any x86-64 machine prints the same numbers
        from misc.cpu_kernels import reexec_pinned
        reexec_pinned()
    try:
        main(args)
    except DataError as e:  # bad input: one line naming the flag/file and the fix, no traceback
        sys.exit(f"error: {e}")
