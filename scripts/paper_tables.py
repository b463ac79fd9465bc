"""The paper's tables and figures from result files: the paper's number beside each measured one.

    python scripts/paper_tables.py runs/voc runs/ablations --out runs/tables

Each WORK_DIR is either a pipeline run (run_sample.py / scripts/reproduce_*.sh: result/eval_*.json) or an ablation
work dir (scripts/ablations.py: ablations.json). Writes one markdown file per table (paper value, measured value,
delta, and the settings and date of the run; rows with no result are marked "not run", never filled) and PNG
figures: Figure 5 (seed mIoU vs K, GAP and GNDRP), Figure 3 (the maps of a few images along the RIB iterations)
and per-class bars against Table A2 / A3. With several seeds of a row, the measured value is mean +- std (n).
The paper's numbers are scripts/paper_numbers.csv.
"""
import csv
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from misc.cli import ArgumentParser, HelpFormatter  # noqa: E402
from misc.errors import DataError  # noqa: E402
from misc.fileio import save_text  # noqa: E402

PAPER_NUMBERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_numbers.csv")
TABLE_TITLES = {
    "1": "Table 1: initial seed, seed with CRF and pseudo masks (VOC / COCO train)",
    "2": "Table 2: DeepLab-v2 on PASCAL VOC 2012 val / test (image labels only)",
    "3": "Table 3: DeepLab-v2 with saliency (RIB-Sal) on VOC val / test",
    "4": "Table 4: DeepLab-v2 on MS COCO 2014 val",
    "5a": "Table 5(a): seed mIoU with BCE on saturating activations vs L_RIB",
    "5b": "Table 5(b): seed mIoU over the margin m and the learning rate lambda",
    "5c": "Table 5(c): seed mIoU with GAP and with GNDRP at several tau",
    "6": "Table 6: foreground precision, recall and F1 of the seeds (VOC train)",
    "7": "Table 7: seed IoU of 'boat' and 'train'",
    "A1": "Table A1: seed mIoU over the number of other images B",
    "A2": "Table A2: per-class IoU of DeepLab-v2 on VOC val",
    "A3": "Table A3: per-class IoU of DeepLab-v2 on COCO val",
    "fig5": "Figure 5: seed mIoU after each RIB iteration",
}
# which dataset a table's columns come from (Table 1 has both, told apart by the column prefix)
TABLE_DATASET = {"2": "voc12", "3": "voc12", "4": "coco14", "5a": "voc12", "5b": "voc12", "5c": "voc12",
                 "6": "voc12", "7": "voc12", "A1": "voc12", "A2": "voc12", "A3": "coco14", "fig5": "voc12"}


class Measurement:
    def __init__(self, table, row, column, value, source, dataset, smoke, run):
        self.table, self.row, self.column, self.value = table, row, column, value
        self.source, self.dataset, self.smoke, self.run = source, dataset, smoke, run


def load_paper_numbers(path=PAPER_NUMBERS):
    """{table: {(row, column): value}} and the class-name abbreviations of Tables A2 / A3."""
    numbers = defaultdict(dict)
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            numbers[rec["table"]][(rec["row"], rec["column"])] = float(rec["value"])
    return numbers


def class_abbreviations():
    """{(dataset, full class name): the name printed in Table A2 / A3}."""
    path = os.path.join(os.path.dirname(PAPER_NUMBERS), "paper_class_names.csv")
    out = {}
    if os.path.isfile(path):
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                out[(rec["dataset"].lower(), rec["full_name"])] = rec["printed"]
    return out


def read_json(path):
    with open(path) as f:
        return json.load(f)


def dig(obj, keys):
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def run_summary(result):
    """Settings and date of the run that made a result JSON (for the tables' last columns)."""
    run = result.get("run") or {}
    flags = run.get("flags") or {}
    if result.get("source") == "cam":  # a plain-CAM result (e.g. Table 5(a)'s Init.): no RIB setting applies
        keys = ("cam_scales", "backbone_weights", "seed")
        prefix = "plain CAM, "
    else:
        keys = ("rib_iter", "rib_learning_rate", "rib_margin", "rib_score_th", "rib_batch", "rib_pooling",
                "rib_loss", "rib_equations", "backbone_weights", "seed")
        prefix = ""
    settings = prefix + ", ".join(f"{k}={flags[k]}" for k in keys if k in flags)
    return {"settings": settings, "date": run.get("date", ""), "commit": (run.get("git_commit") or "")[:10]}


# --- collecting measurements ---------------------------------------------------------------------------------------


def from_ablations(work_dir):
    """Measurements of an ablation work dir (scripts/ablations.py's ablations.json)."""
    index = read_json(os.path.join(work_dir, "ablations.json"))
    out = []
    for table, entry in index["tables"].items():
        for c in entry["cells"]:
            for d in c["dirs"]:
                path = os.path.join(work_dir, d, c["source"])
                if not os.path.isfile(path):
                    continue
                result = read_json(path)
                value = result if c["column"] == "curve" else dig(result, c["key"])
                if value is None:
                    continue
                meta = result if isinstance(result, dict) else {}
                out.append(Measurement(table, c["row"], c["column"], value, path,
                                       meta.get("dataset", index.get("dataset")), index.get("smoke", False),
                                       run_summary(meta)))
    return out


def from_pipeline(work_dir):
    """Measurements of a pipeline work dir (run_sample.py's result/eval_*.json)."""
    out = []
    res = os.path.join(work_dir, "result")
    smoke = os.path.isdir(os.path.join(work_dir, "demo_data"))

    def add(table, row, column, path, *key):
        if os.path.isfile(path):
            result = read_json(path)
            value = dig(result, key)
            if value is not None:
                out.append(Measurement(table, row, column, value, path, result.get("dataset"), smoke,
                                       run_summary(result)))

    for source, row in (("rib", "RIB (Ours)"), ("cam", "IRN")):
        path = os.path.join(res, f"eval_cam_{source}.json")
        if not os.path.isfile(path):
            continue
        prefix = "voc_" if read_json(path).get("dataset") == "voc12" else "coco_"
        add("1", row, prefix + "seed", path, "miou")
        add("1", row, prefix + "crf", path, "crf", "miou")
        for col in ("precision", "recall", "f1"):
            add("6", row, col, path, col)
        for col in ("boat", "train"):
            add("7", row, col, path, "per_class_iou", col)
    for name, column in (("eval_sem_seg.json", "mask_irn"), ("eval_sem_seg_psa.json", "mask_psa")):
        path = os.path.join(res, name)
        if os.path.isfile(path):
            result = read_json(path)
            prefix = "voc_" if result.get("dataset") == "voc12" else "coco_"
            row = "RIB (Ours)" if result.get("source", "rib") == "rib" else "IRN"
            add("1", row, prefix + column, path, "miou")
    path = os.path.join(res, "eval_deeplab.json")
    if os.path.isfile(path):
        result = read_json(path)
        flags = (result.get("run") or {}).get("flags") or {}
        saliency = bool(flags.get("seg_saliency_dir"))
        if result.get("dataset") == "coco14":
            add("4", "RIB (Ours)", "miou", path, "miou")
            per_class_table, row = "A3", "Ours"
        else:
            table, row = ("3", "RIB-Sal (Ours)") if saliency else ("2", "RIB (Ours)")
            split = "test" if "test" in os.path.basename(str(flags.get("seg_eval_list", ""))) else "val"
            add(table, row, split, path, "miou")
            per_class_table = "A2"
        abbrev = class_abbreviations()
        for name, value in (result.get("per_class_iou") or {}).items():
            if value is None:
                continue
            ds = "voc" if per_class_table == "A2" else "coco"
            printed = abbrev.get((ds, name), name)
            column = f"val_{printed}" if per_class_table == "A2" else printed
            out.append(Measurement(per_class_table, row, column, value, path, result.get("dataset"), smoke,
                                   run_summary(result)))
    return out


def collect(work_dirs):
    measurements = []
    for w in work_dirs:
        found = []
        if os.path.isfile(os.path.join(w, "ablations.json")):
            found += from_ablations(w)
        if os.path.isdir(os.path.join(w, "result")):
            found += from_pipeline(w)
        if not found:
            raise DataError(f"{w} holds no result files: make them with run_sample.py (the eval_cam, eval_sem_seg "
                            f"and eval_deeplab steps write result/eval_*.json) or scripts/ablations.py "
                            f"(ablations.json)")
        measurements += found
    check_datasets(measurements)
    return measurements


def check_datasets(measurements):
    """Refuse a table that mixes datasets (or real and synthetic smoke runs), naming the files."""
    by_table = defaultdict(list)
    for m in measurements:
        expected = TABLE_DATASET.get(m.table) or ("coco14" if m.column.startswith("coco_") else "voc12")
        by_table[(m.table, expected)].append(m)
    for (table, expected), ms in by_table.items():
        kinds = {(m.dataset, m.smoke) for m in ms}
        wrong = [m for m in ms if m.dataset not in (expected, None)]
        if wrong or len({s for _, s in kinds}) > 1:
            a = wrong[0] if wrong else ms[0]
            b = next(m for m in ms if (m.dataset, m.smoke) != (a.dataset, a.smoke)) if not wrong else None
            detail = (f"{a.source} is {a.dataset} but Table {table} is {expected}" if wrong else
                      f"{a.source} ({'smoke' if a.smoke else 'real'} {a.dataset}) and {b.source} "
                      f"({'smoke' if b.smoke else 'real'} {b.dataset})")
            raise DataError(f"Table {table} would mix results of different datasets: {detail}; give the work dirs "
                            f"of one dataset (and not a smoke run with real ones)")


# --- rendering -------------------------------------------------------------------------------------------------------


def fmt(x):
    return "—" if x is None else f"{x:.2f}"


def aggregate(values):
    """(mean, text): a single value as is, several seeds as mean +- std (n)."""
    if len(values) == 1:
        return values[0], f"{values[0]:.2f}"
    mean = statistics.fmean(values)
    return mean, f"{mean:.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def table_markdown(table, paper, measured, smoke):
    """One table: every paper cell, plus measured cells the paper has no number for."""
    title = TABLE_TITLES.get(table, f"Table {table}")
    if smoke:
        title += " — synthetic smoke run (plumbing check, not the paper's data)"
    keys = list(paper.get(table, {}))
    keys += [k for k in measured if k not in paper.get(table, {})]
    lines = [f"# {title}\n", "| row | column | paper | measured | Δ | settings | date |",
             "|---|---|---|---|---|---|---|"]
    for row, col in keys:
        ref = paper.get(table, {}).get((row, col))
        ms = measured.get((row, col))
        if ms:
            mean, text = aggregate([m.value for m in ms])
            delta = f"{mean - ref:+.2f}" if ref is not None else "—"
            run = ms[0].run
            lines.append(f"| {row} | {col} | {fmt(ref)} | {text} | {delta} | {run['settings']} | {run['date']} |")
        else:
            lines.append(f"| {row} | {col} | {fmt(ref)} | not run | — | | |")
    return "\n".join(lines) + "\n"


def write_tables(measurements, out_dir, paper):
    by_table = defaultdict(lambda: defaultdict(list))
    any_smoke = any(m.smoke for m in measurements)  # then every table of this call says so
    smoke = defaultdict(lambda: any_smoke)
    for m in measurements:
        if m.column == "curve":
            continue
        by_table[m.table][(m.row, m.column)].append(m)
    written = []
    for table in sorted(set(by_table) | set(paper), key=table_order):
        if table in ("text", "errorbar") or table not in TABLE_TITLES:
            continue
        path = os.path.join(out_dir, f"table_{table}.md")
        save_text(path, table_markdown(table, paper, by_table.get(table, {}), smoke[table]))
        written.append(path)
    written.append(write_errorbar(measurements, out_dir, paper))
    return written


def write_errorbar(measurements, out_dir, paper):
    """The appendix's error bar (56.44 +- 0.05 over 5 runs) against the default RIB row over the run's seeds."""
    seeds = [m for m in measurements if m.table in ("5a", "1") and m.row in ("L_RIB", "RIB (Ours)")
             and m.column in ("seed", "voc_seed")]
    values = sorted({(m.source, m.value) for m in seeds})
    ref = paper.get("errorbar", {})
    lines = ["# Error bar of the seed mIoU (appendix: mean ± std over 5 runs)\n",
             "| | paper | measured |", "|---|---|---|"]
    if len(values) >= 2:
        vals = [v for _, v in values]
        lines.append(f"| mean | {fmt(ref.get(('RIB (Ours)', 'mean')))} | {statistics.fmean(vals):.2f} |")
        lines.append(f"| std | {fmt(ref.get(('RIB (Ours)', 'std')))} | {statistics.stdev(vals):.2f} |")
        lines.append(f"| runs | 5 | {len(vals)} |")
    else:
        lines.append("| mean ± std | 56.44 ± 0.05 | not run (scripts/ablations.py --table 5a --seeds 0,1,2,3,4) |")
    path = os.path.join(out_dir, "errorbar.md")
    save_text(path, "\n".join(lines) + "\n")
    return path


def table_order(name):
    order = ["1", "2", "3", "4", "5a", "5b", "5c", "6", "7", "A1", "A2", "A3", "fig5"]
    return order.index(name) if name in order else len(order)


# --- figures ---------------------------------------------------------------------------------------------------------


# The paper gives Figure 5 as a plot only; its numbers at the ends of the curves are in Table 5(c): the plain CAM
# (K = 0) and RIB with GAP and with GNDRP (tau 0.4) at K = 10.
FIG5_PAPER_POINTS = (("CAM", "5c", "CAM"), ("RIB-GAP", "5c", "RIB-GAP"), ("RIB-GNDRP", "5c", "RIB-GNDRP (tau=0.4)"))
FIG5_MIN_SPAN = 10.0  # points of mIoU on the y axis at least: a smoke run's 0.01-point wiggles are not a trend


def fig5_ylim(values):
    """y range of Figure 5: the values with a margin, at least FIG5_MIN_SPAN points wide."""
    low, high = min(values), max(values)
    if high - low < FIG5_MIN_SPAN:
        mid = (high + low) / 2
        low, high = mid - FIG5_MIN_SPAN / 2, mid + FIG5_MIN_SPAN / 2
    pad = 0.08 * (high - low)
    return low - pad, high + pad


def plot_fig5(measurements, out_dir, paper=None):
    """Figure 5: seed mIoU after each RIB iteration, GNDRP and GAP (one curve per run, seeds averaged), with the
    paper's values at K = 0 and K = 10 (Table 5(c)) as hollow markers."""
    curves = [m for m in measurements if m.table == "fig5" and m.column == "curve"]
    if not curves:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    colours = {"RIB-GAP": "tab:orange", "RIB-GNDRP": "tab:blue", "CAM": "grey"}
    values = []
    for row in sorted({m.row for m in curves}):
        runs = [m.value for m in curves if m.row == row]
        ks = sorted({r["k"] for run in runs for r in run})
        means = [statistics.fmean([r["miou"] for run in runs for r in run if r["k"] == k]) for k in ks]
        values += means
        ax.plot(ks, means, marker="o", color=colours.get(row), label=row.replace("RIB-", "RIB with ") + " (measured)")
    base = [m.value for m in measurements if m.table == "fig5" and m.row == "CAM"]
    if base:
        values.append(statistics.fmean(base))
        ax.axhline(values[-1], color="grey", linestyle="--", label="CAM (measured)")
    paper_k = {"CAM": 0, "RIB-GAP": 10, "RIB-GNDRP": 10}
    for name, table, row in FIG5_PAPER_POINTS:
        ref = (paper or {}).get(table, {}).get((row, "seed"))
        if ref is not None:
            values.append(ref)
            ax.plot([paper_k[name]], [ref], marker="s", markersize=8, linestyle="none", markerfacecolor="none",
                    color=colours[name], label=f"paper: {name.replace('RIB-', 'RIB with ')} ({ref:g}, Table 5(c))")
    ax.set_ylim(*fig5_ylim(values))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("RIB iteration (K)")
    ax.set_ylabel("seed mIoU (%)")
    smoke = any(m.smoke for m in curves)
    ax.set_title("Figure 5: seed mIoU along the RIB iterations" + ("\n(synthetic smoke run: not the paper's data)"
                                                                   if smoke else ""), fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, "figure5.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_dataset(folder):
    """The dataset spec of the run whose per-iteration CAMs are in `folder` (<work_dir>/result/cam_rib_iters/kNN),
    from the flags recorded beside its RIB maps; None when unrecorded."""
    from types import SimpleNamespace
    from misc.datasets import build_spec
    result_dir = os.path.dirname(os.path.dirname(os.path.abspath(folder)))
    record = os.path.join(result_dir, "cam_rib", "settings.json")
    if not os.path.isfile(record):
        return None
    flags = (read_json(record).get("run") or {}).get("flags") or {}
    dataset = flags.get("dataset", "voc12")
    root = flags.get("voc12_root") if dataset == "voc12" else flags.get("coco_root")
    try:
        return build_spec(SimpleNamespace(dataset=dataset, data_root=root, cls_labels=flags.get("cls_labels", ""),
                                          gt_dir=flags.get("gt_dir", "")))
    except (DataError, OSError):
        return None


def plot_fig3(measurements, out_dir, num_images=3):
    """Figure 3: the localization map of one class of a few images along the RIB iterations (the GNDRP Figure 5
    run): the image with its class, then the map of that class after each k over the image, one colour scale."""
    curves = [m for m in measurements if m.table == "fig5" and m.column == "curve" and m.row == "RIB-GNDRP"]
    if not curves:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from misc.fileio import load_cam_npz, load_image_rgb
    folders = [r["dir"] for r in sorted(curves[0].value, key=lambda r: r["k"])]
    ks = [r["k"] for r in sorted(curves[0].value, key=lambda r: r["k"])]
    ids = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(folders[0], "*.npz")))
    ids = [i for i in ids if len(load_cam_npz(os.path.join(folders[0], i + ".npz"))["keys"])][:num_images]
    if not ids:
        return None
    spec = run_dataset(folders[0])
    cols = len(folders) + 1
    fig, axes = plt.subplots(len(ids), cols, figsize=(1.7 * cols + 0.6, 1.8 * len(ids)), squeeze=False)
    for i, img_id in enumerate(ids):
        first = load_cam_npz(os.path.join(folders[0], img_id + ".npz"))
        cls = int(first["keys"][0])
        name = spec.class_names[cls] if spec is not None and cls < len(spec.class_names) else f"class {cls}"
        image = None
        if spec is not None:
            try:
                image = load_image_rgb(spec.image_path(img_id))
            except DataError:
                image = None
        ax = axes[i, 0]
        if image is not None:
            ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{img_id}\n{name}", fontsize=7)
        if i == 0:
            ax.set_title("image", fontsize=8)
        for j, folder in enumerate(folders):
            rec = load_cam_npz(os.path.join(folder, img_id + ".npz"))
            where = list(rec["keys"]).index(cls) if cls in list(rec["keys"]) else None
            cam = rec["high_res"][where] if where is not None else np.zeros(rec["high_res"].shape[1:])
            ax = axes[i, j + 1]
            if image is not None and image.shape[:2] == cam.shape:
                ax.imshow(image)
                ax.imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=0.55)
            else:
                ax.imshow(cam, cmap="jet", vmin=0, vmax=1)
            ax.axis("off")
            if i == 0:
                ax.set_title("CAM (k=0)" if ks[j] == 0 else f"RIB k={ks[j]}", fontsize=8)
    fig.suptitle("Figure 3: the map of the named class along the RIB iterations"
                 + (" (synthetic smoke run)" if curves[0].smoke else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    bar = fig.add_axes((0.91, 0.12, 0.02, 0.72))
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    # the overlays are translucent; the bar shows the opaque scale
    fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), cax=bar).set_label("map / its max", fontsize=7)
    bar.tick_params(labelsize=6)
    path = os.path.join(out_dir, "figure3.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class(measurements, out_dir, paper):
    """Per-class IoU bars of the measured DeepLab run against Table A2 (VOC) / A3 (COCO)."""
    paths = []
    for table, row in (("A2", "RIB (Ours)"), ("A3", "Ours")):
        ms = [m for m in measurements if m.table == table]
        if not ms:
            continue
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        cols = [m.column for m in ms]
        measured = [m.value for m in ms]
        ref = [paper.get(table, {}).get((row, c), np.nan) for c in cols]
        x = np.arange(len(cols))
        fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(cols)), 3.4))
        ax.bar(x - 0.2, ref, 0.4, label=f"paper ({table})")
        ax.bar(x + 0.2, measured, 0.4, label="measured")
        ax.set_xticks(x)
        ax.set_xticklabels([c.replace("val_", "") for c in cols], rotation=90, fontsize=7)
        ax.set_ylabel("IoU (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"per_class_{table}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def get_args_parser():
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("work_dirs", nargs="+", help="pipeline and/or ablation work dirs")
    p.add_argument("--out", required=True, help="folder for the markdown tables and PNG figures")
    return p


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    try:
        measurements = collect(opts.work_dirs)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    paper = load_paper_numbers()
    os.makedirs(opts.out, exist_ok=True)
    written = write_tables(measurements, opts.out, paper)
    written += [p for p in (plot_fig5(measurements, opts.out, paper), plot_fig3(measurements, opts.out)) if p]
    written += plot_per_class(measurements, opts.out, paper)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
