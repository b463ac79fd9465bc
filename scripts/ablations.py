"""Run the rows of one of the paper's tables as RIB variants over ONE classifier and ONE make_cam.

    python scripts/ablations.py --table 5a --work_dir runs/ablations --voc12_root VOCdevkit/VOC2012 \
        --backbone_weights imagenet                         # Table 5(a): BCE + sigmoid / tanh / softsign vs L_RIB
    python scripts/ablations.py --table 5b --work_dir runs/ablations --voc12_root ... --seeds 0,1,2,3,4
    python scripts/ablations.py --table 5a --work_dir /tmp/smoke --smoke             # synthetic data, CPU, a minute
    python scripts/paper_tables.py runs/ablations --out runs/tables                  # paper vs measured

Tables: 1 (CAM, RIB seed, seed + CRF, masks with IRN and PSA), 5a, 5b (the m x lambda grid), 5c (GAP and tau),
6 (precision / recall / F1), 7 (boat and train IoU), A1 (the number of other images B), fig5 (mIoU after each
RIB iteration with GAP and GNDRP, from one run each with --rib_save_iters). Every other flag goes to
run_sample.py unchanged (data root, weights, device, any setting).

Layout under --work_dir: base/ holds the one classifier (train_cam) and the plain CAMs (make_cam) every row
reuses (never retrained per row); runs/<run>/[seed<N>/] is one run_sample work dir per distinct RIB setting (a
setting shared by several tables, e.g. the default RIB, runs once); ablations.json maps each table's rows to the
result files. Everything resumes: rerunning the command skips finished work. --seeds runs every RIB row once per
seed (the other images drawn, the augmentation), as the appendix's 56.44 +- 0.05 over five runs.
"""
import argparse
import datetime
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import run_sample  # noqa: E402
from misc.cli import ArgumentParser, HelpFormatter  # noqa: E402
from misc.fileio import save_json  # noqa: E402

# --- the runs ----------------------------------------------------------------------------------------------------
# name -> (run_sample flags of the RIB variant, steps). Steps are run_sample step names; "iters" also scores the
# per-iteration CAMs (scripts/eval_rib_iters.py), "psa" adds the PSA refinement in the same work dir.
RIB_STEPS = ["rib", "eval_cam"]
IRN_STEPS = ["cam_to_ir_label", "train_irn", "make_sem_seg", "eval_sem_seg"]
PSA_STEPS = ["cam_to_psa_label", "train_aff", "make_psa_sem_seg", "eval_sem_seg"]

RUNS = {
    "default": [],
    "loss_bce_sigmoid": ["--rib_loss", "bce_sigmoid"],
    "loss_bce_tanh": ["--rib_loss", "bce_tanh"],
    "loss_bce_softsign": ["--rib_loss", "bce_softsign"],
    "m300_lr8e-6": ["--rib_margin", "300", "--rib_learning_rate", "8e-6"],
    "m600_lr5e-6": ["--rib_margin", "600", "--rib_learning_rate", "5e-6"],
    "m600_lr1e-5": ["--rib_margin", "600", "--rib_learning_rate", "1e-5"],
    "m1000_lr8e-6": ["--rib_margin", "1000", "--rib_learning_rate", "8e-6"],
    "gap": ["--rib_pooling", "gap"],
    "tau0.3": ["--rib_score_th", "0.3"],
    "tau0.5": ["--rib_score_th", "0.5"],
    **{f"batch{b}": ["--rib_batch", str(b)] for b in (1, 5, 10, 15, 25, 30)},
    "iters_gndrp": ["--rib_save_iters", "true"],
    "iters_gap": ["--rib_pooling", "gap", "--rib_save_iters", "true"],
}
# the paper's default row, under each table's name for it
DEFAULT_ALIASES = {"m600_lr8e-6": "default", "tau0.4": "default", "batch20": "default"}

SEED = "result/eval_cam_rib.json"
BASE_SEED = "result/eval_cam_cam.json"
MASK_IRN = "result/eval_sem_seg.json"
MASK_PSA = "result/eval_sem_seg_psa.json"


def cell(run, source, *key):
    """Where a measured value lives: a run ('base' or a RUNS name), its JSON file and the key path in it."""
    return {"run": DEFAULT_ALIASES.get(run, run), "source": source, "key": list(key)}


def table_cells(table, prefix):
    """{(row, column): cell} of a table (row and column names as in scripts/paper_numbers.csv). `prefix` is the
    dataset prefix of Table 1's columns (voc_ / coco_)."""
    if table == "1":
        return {("IRN", f"{prefix}seed"): cell("base", BASE_SEED, "miou"),
                ("IRN", f"{prefix}crf"): cell("base", BASE_SEED, "crf", "miou"),
                ("IRN", f"{prefix}mask_irn"): cell("base", MASK_IRN, "miou"),
                ("RIB (Ours)", f"{prefix}seed"): cell("default", SEED, "miou"),
                ("RIB (Ours)", f"{prefix}crf"): cell("default", SEED, "crf", "miou"),
                ("RIB (Ours)", f"{prefix}mask_irn"): cell("default", MASK_IRN, "miou"),
                ("RIB (Ours)", f"{prefix}mask_psa"): cell("default", MASK_PSA, "miou")}
    if table == "5a":
        return {("Init.", "seed"): cell("base", BASE_SEED, "miou"),
                ("BCE w/. Sigmoid", "seed"): cell("loss_bce_sigmoid", SEED, "miou"),
                ("BCE w/. Tanh", "seed"): cell("loss_bce_tanh", SEED, "miou"),
                ("BCE w/. Softsign", "seed"): cell("loss_bce_softsign", SEED, "miou"),
                ("L_RIB", "seed"): cell("default", SEED, "miou")}
    if table == "5b":
        return {(f"m={m},lambda={lr}", "seed"): cell(f"m{m}_lr{lr}", SEED, "miou")
                for m, lr in (("300", "8e-6"), ("600", "5e-6"), ("600", "8e-6"), ("600", "1e-5"), ("1000", "8e-6"))}
    if table == "5c":
        return {("CAM", "seed"): cell("base", BASE_SEED, "miou"),
                ("RIB-GAP", "seed"): cell("gap", SEED, "miou"),
                **{(f"RIB-GNDRP (tau={t})", "seed"): cell(f"tau{t}", SEED, "miou") for t in ("0.3", "0.4", "0.5")}}
    if table == "6":
        return {(row, col): cell(run, src, col) for row, run, src in (("IRN", "base", BASE_SEED),
                                                                       ("RIB (Ours)", "default", SEED))
                for col in ("precision", "recall", "f1")}
    if table == "7":
        return {(row, col): cell(run, src, "per_class_iou", col) for row, run, src in
                (("IRN", "base", BASE_SEED), ("RIB (Ours)", "default", SEED)) for col in ("boat", "train")}
    if table == "A1":
        return {("mIoU", f"B={b}"): cell(f"batch{b}", SEED, "miou") for b in (1, 5, 10, 15, 20, 25, 30)}
    if table == "fig5":
        return {("CAM", "k=0"): cell("base", BASE_SEED, "miou"),
                ("RIB-GNDRP", "curve"): cell("iters_gndrp", "result/eval_rib_iters.json"),
                ("RIB-GAP", "curve"): cell("iters_gap", "result/eval_rib_iters.json")}
    raise KeyError(table)


TABLES = ("1", "5a", "5b", "5c", "6", "7", "A1", "fig5")
TITLES = {"1": "Table 1: initial seed, seed with CRF and pseudo masks (IRN, PSA) on the training images",
          "5a": "Table 5(a): seed mIoU with BCE on saturating activations vs L_RIB",
          "5b": "Table 5(b): seed mIoU over the margin m and the learning rate lambda",
          "5c": "Table 5(c): seed mIoU with GAP and with GNDRP at several tau",
          "6": "Table 6: foreground precision, recall and F1 of the seeds",
          "7": "Table 7: seed IoU of 'boat' and 'train'",
          "A1": "Table A1: seed mIoU over the number of other images B",
          "fig5": "Figure 5: seed mIoU after each RIB iteration, GAP vs GNDRP"}

# --- the smoke configuration: the demo's synthetic data at tiny settings (CPU, about a minute per table) ----------
SMOKE_FLAGS = ["--device", "cpu", "--backbone_weights", "none", "--num_workers", "0", "--cam_num_epoches", "3",
               "--cam_batch_size", "8", "--cam_crop_size", "64", "--cam_resize_long", "64,80",
               "--cam_learning_rate", "0.02", "--official_momentum_bug", "false", "--cam_scales", "1.0",
               "--rib_iter", "2", "--rib_batch", "2", "--rib_crop_size", "64", "--rib_loader_workers", "0",
               "--rib_loss_scales", "1.0", "--cam_eval_sweep", "0.05,0.95,0.05", "--save_cam_png", "0",
               "--irn_crop_size", "64", "--irn_batch_size", "4", "--irn_num_epoches", "1",
               "--psa_crop_size", "80", "--psa_batch_size", "4", "--psa_num_epoches", "1"]


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--table", required=True, type=valid_table, help=f"one of {', '.join(TABLES)}")
    p.add_argument("--work_dir", required=True, help="base/, runs/ and ablations.json go here")
    p.add_argument("--seeds", default="0", type=seed_list,
                   help="comma-separated --seed values; each RIB row runs once per seed (mean +- std in the tables)")
    p.add_argument("--smoke", action="store_true",
                   help="the synthetic demo data at tiny settings on the CPU (plumbing check; tables say so)")
    p.add_argument("--fig5_iters", default=10, type=int, help="K of the two Figure 5 runs (paper axis: up to 10)")
    return p


def valid_table(name):
    if name not in TABLES:
        raise argparse.ArgumentTypeError(f"no table {name!r}; valid tables: {', '.join(TABLES)}")
    return name


def seed_list(text):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds >= 0, got {text!r}")
    return seeds


def run_sample_call(argv):
    """One run_sample invocation in this process; returns None or the error line."""
    try:
        run_sample.main(argv)
    except SystemExit as e:
        if e.code not in (None, 0):
            return str(e.code)
    return None


def smoke_data(work_dir):
    from voc12 import synthetic
    data = synthetic.make_dataset(os.path.join(work_dir, "smoke_data"), num_train=40, num_eval=8, size=64)
    return ["--voc12_root", data["root"], "--train_list", data["train"], "--infer_list", data["eval"],
            "--eval_list", data["eval"], "--cls_labels", data["labels"]]


def known_flags(flags):
    """The smoke flags this version's run_sample knows (the PSA ones only where PSA is built)."""
    parser = run_sample.get_args_parser()
    known = {o for a in parser._actions for o in a.option_strings}
    out = []
    for name, value in zip(flags[::2], flags[1::2]):
        if name in known:
            out += [name, value]
    return out


def crf_flag(work, wanted):
    """Keep the CRF column once a run has it (Table 1 asks for it; a later table must not drop it)."""
    path = os.path.join(work, "result", "eval_cam_rib.json" if "runs" in work else "eval_cam_cam.json")
    if not wanted and os.path.isfile(path):
        with open(path) as f:
            wanted = "crf" in json.load(f)
    return ["--eval_crf", str(wanted).lower()]


def run_table(opts, passthrough):
    """Run what opts.table needs (skipping finished work) and write <work_dir>/ablations.json."""
    common = (known_flags(SMOKE_FLAGS) + smoke_data(opts.work_dir) if opts.smoke else []) + passthrough
    probe = run_sample.parse_args(common + ["--work_dir", opts.work_dir])
    prefix = "voc_" if probe.dataset == "voc12" else "coco_"
    cells = table_cells(opts.table, prefix)
    needed = {c["run"] for c in cells.values()}
    with_crf = opts.table == "1"
    base_dir = os.path.join(opts.work_dir, "base")
    shared = ["--cam_weights_name", os.path.join(base_dir, "sess", "res50_cam.pth"),
              "--cam_dir", os.path.join(base_dir, "result", "cam")]
    failures = []

    base_steps = ["train_cam", "make_cam", "eval_cam"]
    if opts.table == "1":
        base_steps += IRN_STEPS  # IRN's row: the plain CAM refined by IRN
    err = run_sample_call(common + ["--work_dir", base_dir, "--seed", str(opts.seeds[0]), "--only",
                                    ",".join(base_steps), "--eval_cam_source", "cam", "--ir_cam_source", "cam"]
                          + crf_flag(base_dir, with_crf))
    if err:
        raise SystemExit(f"error: the shared classifier / CAM run failed ({err}); see {base_dir}/run.log")

    run_dirs = {"base": [base_dir]}
    for run in sorted(needed - {"base"}):
        run_dirs[run] = []
        flags = list(RUNS[run])
        if run.startswith("iters_"):
            flags += ["--rib_iter", str(opts.fig5_iters) if not opts.smoke else "3"]
        steps = list(RIB_STEPS)
        if opts.table == "1" and run == "default":
            steps += IRN_STEPS
        for seed in opts.seeds:
            work = os.path.join(opts.work_dir, "runs", run, f"seed{seed}")
            run_dirs[run].append(work)
            argv = common + shared + flags + ["--work_dir", work, "--seed", str(seed), "--eval_cam_source",
                                              "rib", "--ir_cam_source", "rib"] + crf_flag(work, with_crf)
            err = run_sample_call(argv + ["--only", ",".join(steps)])
            if not err and opts.table == "1" and run == "default":
                err = psa_refinement(argv)
            if not err and run.startswith("iters_"):
                err = score_iterations(argv)
            if err:
                failures.append(f"{run} (seed {seed}): {err}")
    write_index(opts, cells, run_dirs, probe, failures)
    for f in failures:
        print(f"warning: {f}", file=sys.stderr)
    return failures


def psa_refinement(argv):
    """Table 1's PSA column: the PSA steps on the same RIB seeds, when this version has them."""
    import importlib.util
    if importlib.util.find_spec("step.train_aff") is None:
        return None
    return run_sample_call(argv + ["--refine", "psa", "--psa_cam_source", "rib", "--only", ",".join(PSA_STEPS)])


def score_iterations(argv):
    import eval_rib_iters
    try:
        eval_rib_iters.main(argv)
    except SystemExit as e:
        return str(e.code)
    return None


def write_index(opts, cells, run_dirs, probe, failures):
    """ablations.json: what paper_tables.py reads. Tables accumulate: each --table call adds its own entry."""
    path = os.path.join(opts.work_dir, "ablations.json")
    index = {"tables": {}}
    if os.path.isfile(path):
        with open(path) as f:
            index = json.load(f)
    if index.get("smoke", opts.smoke) != opts.smoke or index.get("dataset", probe.dataset) != probe.dataset:
        raise SystemExit(f"error: {path} holds a {'smoke' if index.get('smoke') else 'real'} run on "
                         f"{index.get('dataset')}; use another --work_dir for this one")
    index.update({"smoke": opts.smoke, "dataset": probe.dataset, "updated": now()})
    index["tables"][opts.table] = {
        "seeds": opts.seeds, "failures": failures, "date": now(), "command": " ".join(sys.argv),
        "cells": [{"row": row, "column": col, **c,
                   "dirs": [os.path.relpath(d, opts.work_dir) for d in run_dirs[c["run"]]]}
                  for (row, col), c in cells.items()]}
    save_json(path, index)


def now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def main(argv=None):
    opts, passthrough = get_args_parser().parse_known_args(argv)
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    failures = run_table(opts, passthrough)
    print(f"Table {opts.table}: results indexed in {os.path.join(opts.work_dir, 'ablations.json')}; "
          f"python scripts/paper_tables.py {opts.work_dir} --out DIR makes the table")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
