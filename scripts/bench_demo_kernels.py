"""Does the demo print the same table under both x86 kernel families? (issue 21: a short DeepLab run amplified
the last-bit differences of AVX2 and AVX-512 kernels into 20 mIoU points.)

    python scripts/bench_demo_kernels.py --work_dir /tmp/kern                  # VOC demo, DeepLab stage per family
    python scripts/bench_demo_kernels.py --work_dir /tmp/kern --demo coco14
    python scripts/bench_demo_kernels.py --work_dir /tmp/kern --full           # every step under each family

The whole demo runs once under the first family, then the DeepLab stage (train_deeplab, infer_deeplab,
eval_deeplab) reruns under each other family (misc/cpu_kernels.py: REPRO_CPU_KERNELS=
avx512|avx2 pins oneDNN, ATen and MKL to that code path and 2 threads) on the same labels; --full reruns every
step. Prints each family's rows, the DeepLab loss curves and each metric's spread; exits 1 when the DeepLab mIoU
differs by more than --tolerance points between the families (5: the demo's 24 images hold a class in only 3 of
them, so one class learned a little better moves the mean by a few points; the settings before batch 8 x 60
iterations swung it by 20). Flags after `--` go to run_sample.py (e.g. -- --seg_num_iters 60).
A slow check (minutes): not part of the test suite; its result is quoted in README.md.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from misc.cpu_kernels import FAMILIES  # noqa: E402

DEEPLAB_STEPS = "train_deeplab,infer_deeplab,eval_deeplab"
METRICS = ("miou", "precision", "recall", "f1")


def run_demo(work_dir, demo, family, extra, only=None):
    cmd = [sys.executable, "run_sample.py", "--demo", demo, "--work_dir", work_dir] + list(extra)
    if only:
        cmd += ["--only", only, "--overwrite", "train_deeplab,infer_deeplab,eval_deeplab"]
    env = {**os.environ, "REPRO_CPU_KERNELS": family}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: {' '.join(cmd)} under {family} failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - start


def read_rows(work_dir):
    rows = {}
    result = os.path.join(work_dir, "result")
    for name, label in (("eval_cam_cam.json", "seeds, plain CAM"), ("eval_cam_rib.json", "seeds, RIB"),
                        ("eval_sem_seg.json", "pseudo masks"), ("eval_deeplab.json", "DeepLab-v2 + CRF")):
        path = os.path.join(result, name)
        if os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
            rows[label] = {m: data.get(m) for m in METRICS}
    return rows


def loss_curve(work_dir):
    """The logged mean losses of the last train_deeplab run in run.log."""
    with open(os.path.join(work_dir, "run.log")) as f:
        text = f.read()
    start = text.rfind("DeepLab-v2 (MSC) on")  # the start line of the last train_deeplab run
    text = text[start:] if start >= 0 else text
    return [float(x) for x in re.findall(r"train_deeplab iteration \d+/\d+: loss ([0-9.eE+-]+|nan|inf)", text)]


def fmt(x):
    return "—" if x is None else f"{x:.2f}"  # the evaluation JSONs hold percentages


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", required=True)
    p.add_argument("--demo", default="voc12", choices=("voc12", "coco14"))
    p.add_argument("--families", default=",".join(FAMILIES), help="kernel families, comma-separated")
    p.add_argument("--full", action="store_true", help="rerun every step under each family, not just DeepLab")
    p.add_argument("--tolerance", type=float, default=5.0, help="largest allowed DeepLab mIoU difference (points)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags for run_sample.py")
    args = p.parse_args()
    extra = [a for a in args.extra if a != "--"]
    families = [f for f in args.families.split(",") if f]
    results = {}
    for i, family in enumerate(families):
        work = os.path.join(args.work_dir, family if args.full else "run")
        if args.full or i == 0:
            seconds = run_demo(work, args.demo, family, extra)  # the whole demo (skips what is done)
        else:
            seconds = run_demo(work, args.demo, family, extra, only=DEEPLAB_STEPS)
        results[family] = {"rows": read_rows(work), "loss": loss_curve(work), "seconds": seconds}
        print(f"{family}: {seconds:.0f} s", flush=True)
    print(f"\n| {args.demo} demo | kernels | mIoU | precision | recall | F1 |\n| --- | --- | --- | --- | --- | --- |")
    for label in results[families[0]]["rows"]:
        for family in families:
            row = results[family]["rows"].get(label, {})
            print(f"| {label} | {family} | " + " | ".join(fmt(row.get(m)) for m in METRICS) + " |")
    for family in families:
        print(f"{family} DeepLab loss curve: " + " ".join(f"{x:.3f}" for x in results[family]["loss"]))
    spreads = {}
    for m in METRICS:
        values = [results[f]["rows"].get("DeepLab-v2 + CRF", {}).get(m) for f in families]
        if all(v is not None for v in values):
            spreads[m] = max(values) - min(values)
    print("DeepLab spread between the families: " + ", ".join(f"{m} {v:.2f}" for m, v in spreads.items()) +
          f" points (mIoU tolerance {args.tolerance})")
    spread = spreads.get("miou", float("inf"))
    with open(os.path.join(args.work_dir, "kernels.json"), "w") as f:
        json.dump(results, f, indent=1)
    sys.exit(1 if spread > args.tolerance else 0)


if __name__ == "__main__":
    main()
