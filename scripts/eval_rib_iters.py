"""Seed mIoU of the RIB CAM after each iteration k (paper Fig. 5), from one run with --rib_save_iters true.

    python run_sample.py ... --only rib --rib_save_iters true               # writes result/cam_rib_iters/k00..kK
    python scripts/eval_rib_iters.py --voc12_root VOC2012 --work_dir W --eval_list voc12/train.txt

Folder k<k> holds M_k = sum_{j<=k} CAM(x; theta_j) of the run (k00 = the initial classifier's CAM, i.e. the
plain CAM baseline). Every folder is scored with the lead's step/eval_cam.evaluate_cam_dir (same threshold sweep
as --eval_cam_pass); the table goes to stdout and <work_dir>/result/eval_rib_iters.{json,md}. Takes every
run_sample flag (--cam_eval_sweep, --eval_list, ...).
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_sample  # noqa: E402
from misc.errors import DataError  # noqa: E402
from misc.fileio import save_json, save_text  # noqa: E402
from misc.metrics import markdown_table  # noqa: E402
from step.rib import iters_dir  # noqa: E402
from misc.datasets import load_id_list  # noqa: E402


def iteration_dirs(rib_out_dir):
    """[(k, folder)] of <rib_out_dir>_iters/k*, in order of k."""
    base = os.path.dirname(iters_dir(rib_out_dir, 0))
    found = []
    for path in glob.glob(os.path.join(base, "k*")):
        name = os.path.basename(path)
        if os.path.isdir(path) and name[1:].isdigit():
            found.append((int(name[1:]), path))
    if not found:
        raise DataError(f"no per-iteration CAM folders under {base}: run the rib step with --rib_save_iters true")
    return sorted(found)


def evaluate_iterations(args, ids=None):
    from step.eval_cam import evaluate_cam_dir
    ids = ids or load_id_list(args.eval_list, "--eval_list")
    rows = []
    for k, folder in iteration_dirs(args.rib_out_dir):
        res = evaluate_cam_dir(args, folder, ids, made_by="rib")
        rows.append({"k": k, "miou": res["miou"], "threshold": res["threshold"], "dir": folder})
    return rows


def main(argv=None):
    args = run_sample.parse_args(argv)
    try:
        rows = evaluate_iterations(args)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    table = markdown_table(["k", "seed mIoU", "threshold"], [[r["k"], r["miou"], f"{r['threshold']:.2f}"]
                                                             for r in rows])
    base = os.path.join(args.result_dir, "eval_rib_iters")
    save_json(base + ".json", rows)
    save_text(base + ".md", "# Seed mIoU after each RIB iteration (Fig. 5)\n\n" + table)
    print(table)
    return rows


if __name__ == "__main__":
    main()
