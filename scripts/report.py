"""A static HTML report of a work dir: python scripts/report.py WORK_DIR  ->  WORK_DIR/report/index.html

Works on any work dir, complete or partial (VOC, COCO, the demos): what is missing is left out and said so. It
shows the steps that ran (run.log) with their times and settings (the settings records of sess/ and result/),
every evaluation's headline numbers (result/eval_*.json, linked to their markdown), the seed threshold sweep of
CAM and RIB as a curve, per-class IoU bars (with the paper's Tables A2 / A3 when the run scored the whole val
set), and a gallery image | ground truth | CAM | RIB | pseudo mask | DeepLab of the images where RIB changed the
seed most (per-image mIoU, CAM -> RIB, largest gains then largest losses) with each image's per-class IoU.
Self-contained: charts are inline SVG, pictures are PNG files under report/img/; no server, no network.
"""
import argparse
import csv
import glob
import html
import json
import os
import re
import sys
from types import SimpleNamespace

import numpy as np
from PIL import Image

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from misc import imutils  # noqa: E402
from misc.fileio import atomic_path, load_cam_npz, load_image_rgb, load_label_png, save_text  # noqa: E402

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b9c1d0;font-size:13px}main{padding:8px 28px 40px;max-width:1280px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #eceef2;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f1f3f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #e1e4ea;border-radius:8px;padding:8px 14px;
min-width:130px}.card b{display:block;font-size:22px}.card span{color:#667085;font-size:12px}
.note{color:#667085;font-size:12px}code{background:#f1f3f6;padding:1px 4px;border-radius:3px;font-size:12px}
details summary{cursor:pointer}pre{white-space:pre-wrap;font-size:12px;margin:4px 0}
.gallery td{padding:4px}.gallery img{height:110px;display:block;border-radius:3px}.up{color:#0a7d32}
.down{color:#b42318}.iou{font-size:12px}.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.two{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:0 16px}.two section{margin:16px 0 0}
td.iou{min-width:190px}svg{max-width:100%;height:auto}
"""
COLORS = {"CAM": "#5b8def", "RIB": "#e4572e", "pseudo mask": "#2a9d8f", "DeepLab": "#7a4eb8", "paper": "#9aa3b2"}
# the paper's DeepLab per-class IoU of RIB: Table A2 (VOC val) and A3 (COCO val), scripts/paper_numbers.csv
PAPER_ROWS = {"voc12": ("A2", "RIB (Ours)", "val_"), "coco14": ("A3", "Ours", "")}
FULL_VAL = {"voc12": 1449, "coco14": 40137}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work_dir")
    p.add_argument("--gallery", type=int, default=8, help="images with the largest gains, and as many losses")
    p.add_argument("--max_images", type=int, default=3000,
                   help="per-image IoU of at most this many eval images (the first of --eval_list)")
    p.add_argument("--height", type=int, default=110, help="gallery picture height")
    return p.parse_args(argv)


def esc(x):
    return html.escape(str(x))


def fmt(v, digits=2):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return esc(v)


# --- what ran ------------------------------------------------------------------------------------------------

def read_runs(work_dir):
    """Commands of run.log with their steps: [{command, started, steps: {name: seconds or None}}]."""
    path = os.path.join(work_dir, "run.log")
    runs = []
    if not os.path.isfile(path):
        return runs
    with open(path, errors="replace") as f:
        for line in f:
            m = re.search(r"^(\S+ \S+) INFO run_sample: command: (.*)$", line.rstrip())
            if m:
                runs.append({"started": m[1].split(",")[0], "command": m[2], "steps": {}, "total": None})
                continue
            if not runs:
                continue
            m = re.search(r"run_sample: step (\w+): (start|done in ([\d.]+) s)", line)
            if m:
                runs[-1]["steps"][m[1]] = float(m[3]) if m[3] else None
            m = re.search(r"run_sample: all steps done in ([\d.]+) s", line)
            if m:
                runs[-1]["total"] = float(m[1])
    return runs


def read_settings(work_dir):
    """The settings records (misc/resume.py) of every output: [(path, record)]."""
    paths = sorted(glob.glob(os.path.join(work_dir, "result", "*", "settings.json")) +
                   glob.glob(os.path.join(work_dir, "sess", "*.settings.json")))
    out = []
    for p in paths:
        try:
            with open(p) as f:
                out.append((os.path.relpath(p, work_dir), json.load(f)))
        except (OSError, ValueError):
            continue
    return out


def read_evals(work_dir):
    out = {}
    for p in sorted(glob.glob(os.path.join(work_dir, "result", "eval_*.json"))):
        try:
            with open(p) as f:
                out[os.path.basename(p)[:-5]] = json.load(f)
        except (OSError, ValueError):
            continue
    return out


# --- charts (inline SVG) -------------------------------------------------------------------------------------

def line_chart(series, xlabel, ylabel, width=560, height=260):
    """series: {name: [(x, y)]} -> SVG."""
    pts = [p for s in series.values() for p in s if p[1] is not None]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = max(1.0, (y1 - y0) * 0.1)
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1
    L, R, T, B = 58, 12, 10, 36
    sx = lambda x: L + (x - x0) / (x1 - x0) * (width - L - R)  # noqa: E731
    sy = lambda y: T + (y1 - y) / (y1 - y0) * (height - T - B)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        parts.append(f'<line x1="{L}" x2="{width - R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eceef2"/>'
                     f'<text x="{L - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end" fill="#667085">'
                     f'{y:.1f}</text>')
    for i in range(6):
        x = x0 + (x1 - x0) * i / 5
        parts.append(f'<text x="{sx(x):.1f}" y="{height - B + 16}" font-size="11" text-anchor="middle" '
                     f'fill="#667085">{x:.2f}</text>')
    parts.append(f'<text x="{(L + width - R) / 2}" y="{height - 4}" font-size="11" text-anchor="middle" '
                 f'fill="#1d2330">{esc(xlabel)}</text><text x="12" y="{(T + height - B) / 2}" font-size="11" '
                 f'fill="#1d2330" text-anchor="middle" transform="rotate(-90 12 {(T + height - B) / 2})">'
                 f'{esc(ylabel)}</text>')
    for name, s in series.items():
        s = [p for p in s if p[1] is not None]
        color = COLORS.get(name, "#333")
        d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(s))
        dash = ' stroke-dasharray="6 4"' if name == "RIB" else ""  # visible where it lies on the CAM curve
        parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        bx, by = max(s, key=lambda p: p[1])
        parts.append(f'<circle cx="{sx(bx):.1f}" cy="{sy(by):.1f}" r="4" fill="{color}"><title>{esc(name)}: '
                     f'{by:.2f} at {bx:.2f}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(classes, series, width=600):
    """Grouped horizontal bars: classes x series {name: {class: iou}} -> SVG."""
    names = [n for n in series if series[n]]
    if not names or not classes:
        return ""
    bar, gap, label_w = 7, 6, 120
    row = bar * len(names) + gap
    height = row * len(classes) + 28
    scale = (width - label_w - 50) / 100.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for v in range(0, 101, 20):
        x = label_w + v * scale
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height - 20}" stroke="#eceef2"/>'
                     f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="middle" fill="#667085">{v}'
                     f'</text>')
    for i, c in enumerate(classes):
        y = i * row
        parts.append(f'<text x="{label_w - 6}" y="{y + row / 2 + 2:.1f}" font-size="11" text-anchor="end">'
                     f'{esc(c)}</text>')
        for j, n in enumerate(names):
            v = series[n].get(c)
            if v is None:
                continue
            parts.append(f'<rect x="{label_w}" y="{y + j * bar}" width="{max(0.0, v) * scale:.1f}" '
                         f'height="{bar - 1}" fill="{COLORS.get(n, "#333")}"><title>{esc(n)} {esc(c)}: {v:.1f}'
                         f'</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def legend(names):
    return '<p class="legend">' + "".join(f'<span><i class="sw" style="background:{COLORS.get(n, "#333")}"></i>'
                                          f'{esc(n)}</span>' for n in names) + "</p>"


# --- the run's dataset (for the gallery) ---------------------------------------------------------------------

def run_flags(settings):
    """The flags of the latest run that wrote a CAM folder (else any record)."""
    best = None
    for path, rec in settings:
        flags = (rec.get("run") or {}).get("flags")
        if flags and (best is None or "cam" in path):
            best = flags
    return best


def build_dataset(flags, work_dir):
    from misc.datasets import build_spec, load_id_list
    dataset = flags.get("dataset", "voc12")
    root = flags.get("voc12_root" if dataset == "voc12" else "coco_root", "")
    candidates = [root, os.path.join(os.path.dirname(os.path.abspath(work_dir)), root)]
    root = next((r for r in candidates if r and os.path.isdir(r)), None)
    if root is None:
        raise FileNotFoundError(f"the dataset root {flags.get('voc12_root') or flags.get('coco_root')} is not here")
    labels = flags.get("cls_labels") or None
    spec = build_spec(SimpleNamespace(dataset=dataset, data_root=root, cls_labels=labels if labels and
                                      os.path.isfile(labels) else None, gt_dir=flags.get("gt_dir") or ""))
    ids = load_id_list(flags["eval_list"], "--eval_list") if flags.get("eval_list") else []
    return spec, ids


def per_class_iou(gt, pred, names):
    """{class name: IoU %} over the classes in the ground truth or the prediction (void ignored)."""
    valid = gt != 255
    out = {}
    for c in np.union1d(np.unique(gt[valid]), np.unique(pred[valid])):
        g, p = (gt == c) & valid, (pred == c) & valid
        union = (g | p).sum()
        if union:
            out[names[int(c)] if int(c) < len(names) else str(int(c))] = 100.0 * (g & p).sum() / union
    return out


def gallery_rows(work_dir, spec, ids, evals, max_images):
    """Per-image seed IoU of CAM and RIB at their best thresholds: [(delta, id, cam_iou, rib_iou)]."""
    from step.eval_cam import seed_prediction
    cam_dir, rib_dir = os.path.join(work_dir, "result", "cam"), os.path.join(work_dir, "result", "cam_rib")
    t_cam = evals.get("eval_cam_cam", {}).get("threshold")
    t_rib = evals.get("eval_cam_rib", {}).get("threshold")
    names = spec.names_with_background
    rows = []
    for img_id in ids[:max_images]:
        a, b = os.path.join(cam_dir, img_id + ".npz"), os.path.join(rib_dir, img_id + ".npz")
        if not (os.path.isfile(a) and os.path.isfile(b)) or t_cam is None or t_rib is None:
            continue
        try:
            gt = spec.load_gt(img_id)
        except Exception:  # noqa: BLE001  (an id without ground truth has no IoU)
            continue
        ious = []
        for path, t in ((a, t_cam), (b, t_rib)):
            ious.append(per_class_iou(gt, seed_prediction(load_cam_npz(path), t), names))
        m_cam, m_rib = (float(np.mean(list(d.values()))) if d else 0.0 for d in ious)
        rows.append((m_rib - m_cam, img_id, ious[0], ious[1], m_cam, m_rib))
    return rows


def thumb(array, height):
    img = Image.fromarray(np.ascontiguousarray(array))
    w = max(1, round(img.width * height / img.height))
    return img.resize((w, height), Image.NEAREST if img.mode == "P" or array.ndim == 2 else Image.BILINEAR)


def write_png(img, path):
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=True)


def gallery_pictures(work_dir, spec, img_id, evals, out_dir, height):
    """The pictures of one gallery row as files under report/img/: {column: relative path or None}."""
    from step.eval_cam import seed_prediction
    palette = np.array(imutils.color_palette(), dtype=np.uint8).reshape(-1, 3)
    img = load_image_rgb(spec.image_path(img_id))
    cols = {"image": img, "ground truth": palette[np.clip(spec.load_gt(img_id), 0, 255)]}
    for name, sub, key in (("CAM", "cam", "eval_cam_cam"), ("RIB", "cam_rib", "eval_cam_rib")):
        rec = load_cam_npz(os.path.join(work_dir, "result", sub, img_id + ".npz"))
        heat = rec["high_res"].max(axis=0) if len(rec["keys"]) else np.zeros(img.shape[:2], np.float32)
        seed = palette[seed_prediction(rec, evals[key]["threshold"])]
        cols[name] = np.concatenate([imutils.colorize_cam(img, heat), seed], axis=1)
    for name, sub in (("pseudo mask", "sem_seg"), ("pseudo mask", "sem_seg_psa"), ("DeepLab", "deeplab_pred")):
        path = os.path.join(work_dir, "result", sub, img_id + ".png")
        if name not in cols and os.path.isfile(path):
            cols[name] = palette[np.clip(load_label_png(path), 0, 255)]
    out = {}
    for name in ("image", "ground truth", "CAM", "RIB", "pseudo mask", "DeepLab"):
        if name not in cols:
            out[name] = None
            continue
        rel = f"img/{re.sub(r'[^A-Za-z0-9_.-]', '_', img_id)}_{name.replace(' ', '_')}.png"
        write_png(thumb(cols[name], height), os.path.join(out_dir, rel))
        out[name] = rel
    return out


# --- the page ------------------------------------------------------------------------------------------------

def section(title, body, anchor):
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def steps_html(runs, settings):
    if not runs and not settings:
        return '<p class="note">No run.log and no settings records: nothing has run in this work dir yet.</p>'
    parts = []
    for run in runs:
        rows = "".join(f"<tr><td>{esc(s)}</td><td class=num>{fmt(t, 1) if t is not None else 'started, not done'}"
                       f"</td></tr>" for s, t in run["steps"].items())
        total = f"; all steps done in {run['total']:.1f} s" if run["total"] is not None else ""
        parts.append(f"<p><code>{esc(run['command'])}</code> <span class=note>{esc(run['started'])}{total}</span>"
                     f"</p><table><tr><th>step</th><th>seconds</th></tr>{rows}</table>")
    if settings:
        rows = []
        for path, rec in settings:
            s = json.dumps(rec.get("settings", {}), sort_keys=True)
            rows.append(f"<tr><td>{esc(rec.get('step', '?'))}</td><td><code>{esc(path)}</code></td>"
                        f"<td><details><summary>{esc(s[:90])}{'…' if len(s) > 90 else ''}</summary><pre>"
                        f"{esc(json.dumps(rec.get('settings', {}), indent=1, sort_keys=True))}</pre></details></td>"
                        f"</tr>")
        parts.append(f"<details><summary><b>Settings records</b> ({len(rows)}: what each output was made with)"
                     f"</summary><table><tr><th>step</th><th>record</th><th>settings</th></tr>" + "".join(rows) +
                     "</table></details>")
    return "".join(parts)


def evals_html(evals):
    if not evals:
        return '<p class="note">No evaluation has run yet (result/eval_*.json).</p>'
    head = ["mIoU", "thr.", "prec.", "recall", "F1", "images", "CRF"]
    rows = []
    for name, e in evals.items():
        crf = e.get("crf")
        # eval_cam's "crf" holds the seeds' mIoU after a CRF; eval_deeplab's says whether its predictions had one
        crf = crf.get("miou") if isinstance(crf, dict) else ("yes" if crf else "no") if isinstance(crf, bool) else None
        vals = [e.get("miou"), e.get("threshold"), e.get("precision"), e.get("recall"), e.get("f1"),
                e.get("num_images"), crf]
        rows.append(f"<tr><td><a href=\"../result/{esc(name)}.md\">{esc(name)}</a></td>" +
                    "".join(f"<td class=num>{fmt(v)}</td>" for v in vals) + "</tr>")
    cards = "".join(f'<div class="card"><b>{fmt(e.get("miou"))}</b><span>{esc(n)} mIoU</span></div>'
                    for n, e in evals.items() if e.get("miou") is not None)
    warn = "".join(f"<p class=note>⚠ {esc(n)}: {esc(w)}</p>" for n, e in evals.items() for w in e.get("warnings", []))
    return (f'<div class="cards">{cards}</div><table style="margin-top:12px"><tr><th>evaluation</th>' +
            "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>" + warn)


def sweep_html(evals):
    series = {}
    for name, key in (("CAM", "eval_cam_cam"), ("RIB", "eval_cam_rib")):
        sweep = evals.get(key, {}).get("sweep")
        if sweep and len(sweep) > 1:
            series[name] = sorted((float(t), v) for t, v in sweep.items())
    if not series:
        return '<p class="note">No threshold sweep (eval_cam has not run, or ran at one threshold).</p>'
    best = "; ".join(f"{n} best {max(s, key=lambda p: p[1] or -1)[1]:.2f} at "
                     f"{max(s, key=lambda p: p[1] or -1)[0]:.2f}" for n, s in series.items())
    return legend(series) + line_chart(series, "background threshold", "seed mIoU") + f"<p class=note>{best}</p>"


def paper_ious(dataset, spec_names):
    table, row, prefix = PAPER_ROWS.get(dataset, (None, None, None))
    if table is None:
        return {}
    printed = {}
    with open(os.path.join(REPO, "scripts", "paper_class_names.csv")) as f:
        for r in csv.DictReader(f):
            if r["dataset"] == ("voc" if dataset == "voc12" else "coco"):
                printed[r["printed"]] = r["full_name"]
    out = {}
    with open(os.path.join(REPO, "scripts", "paper_numbers.csv")) as f:
        for r in csv.DictReader(f):
            if r["table"] == table and r["row"] == row and r["column"].startswith(prefix):
                name = printed.get(r["column"][len(prefix):], r["column"][len(prefix):])
                out[name] = float(r["value"])
    return out


def classes_html(evals, dataset):
    series = {"CAM": evals.get("eval_cam_cam", {}).get("per_class_iou", {}),
              "RIB": evals.get("eval_cam_rib", {}).get("per_class_iou", {}),
              "pseudo mask": evals.get("eval_sem_seg", evals.get("eval_sem_seg_psa", {})).get("per_class_iou", {}),
              "DeepLab": evals.get("eval_deeplab", {}).get("per_class_iou", {})}
    series = {k: {c: v for c, v in s.items() if v is not None} for k, s in series.items() if s}
    if not series:
        return '<p class="note">No per-class IoU yet.</p>'
    classes = list(next(iter(series.values())).keys())
    for s in series.values():
        classes += [c for c in s if c not in classes]
    deeplab = evals.get("eval_deeplab", {})
    note = ""
    if deeplab and deeplab.get("num_images") == FULL_VAL.get(dataset):
        paper = paper_ious(dataset, classes)
        if paper:
            series["paper"] = paper
            note = (f"<p class=note>paper: RIB's DeepLab per-class IoU, Table {PAPER_ROWS[dataset][0]} "
                    f"(scripts/paper_numbers.csv)</p>")
    else:
        note = ("<p class=note>The paper's per-class IoU (Tables A2/A3) is shown when eval_deeplab scored the "
                f"whole val set ({FULL_VAL.get(dataset, '?')} images); this run did not.</p>")
    return legend(series) + note + bar_chart(classes, series)


def gallery_html(work_dir, evals, settings, out_dir, opt):
    if "eval_cam_cam" not in evals or "eval_cam_rib" not in evals:
        return '<p class="note">The gallery needs both seed evaluations (eval_cam of CAM and RIB).</p>'
    flags = run_flags(settings)
    try:
        spec, ids = build_dataset(flags or {}, work_dir)
    except Exception as e:  # noqa: BLE001  (a partial or moved work dir still gets the rest of the report)
        return f'<p class="note">No gallery: {esc(e)}</p>'
    rows = gallery_rows(work_dir, spec, ids, evals, opt.max_images)
    if not rows:
        return '<p class="note">No image has both a CAM and a RIB record and ground truth.</p>'
    rows.sort(key=lambda r: -r[0])
    k = opt.gallery
    chosen = rows[:k] + [r for r in rows[::-1][:k] if r not in rows[:k]][::-1]
    cols = ("image", "ground truth", "CAM", "RIB", "pseudo mask", "DeepLab")
    out = [f"<p class=note>{len(rows)} images scored; the {min(k, len(rows))} largest gains of RIB over CAM "
           f"(per-image seed mIoU at each source's best threshold, "
           f"{evals['eval_cam_cam']['threshold']:.2f} / {evals['eval_cam_rib']['threshold']:.2f}), then the "
           f"largest losses. CAM and RIB: heat map | seed.</p><table class=gallery><tr><th>image</th>" +
           "".join(f"<th>{c}</th>" for c in cols[1:]) + "<th>per-class IoU (CAM → RIB)</th></tr>"]
    for delta, img_id, iou_cam, iou_rib, m_cam, m_rib in chosen:
        pics = gallery_pictures(work_dir, spec, img_id, evals, out_dir, opt.height)
        cells = "".join(f'<td><img src="{esc(pics[c])}" alt="{esc(c)} of {esc(img_id)}"></td>' if pics[c] else
                        "<td class=note>—</td>" for c in cols)
        classes = sorted(set(iou_cam) | set(iou_rib))
        ious = "<br>".join(f"{esc(c)}: {fmt(iou_cam.get(c), 1)} → {fmt(iou_rib.get(c), 1)}" for c in classes)
        tone = "up" if delta > 0 else "down" if delta < 0 else ""
        out.append(f"<tr>{cells}<td class=iou><b>{esc(img_id)}</b><br><span class={tone}>mIoU {m_cam:.1f} → "
                   f"{m_rib:.1f} ({delta:+.1f})</span><br>{ious}</td></tr>")
    return "".join(out) + "</table>"


def tb_html(work_dir):
    tb = os.path.join(work_dir, "tb")
    if not os.path.isdir(tb):
        return ('<p class="note">No TensorBoard logs (run with <code>--tensorboard true</code> to write them '
                'under WORK_DIR/tb/).</p>')
    runs = sorted(d for d in os.listdir(tb) if os.path.isdir(os.path.join(tb, d)))
    links = "".join(f'<li><a href="../tb/{esc(r)}/">{esc(r)}</a></li>' for r in runs)
    return (f"<p>Training curves (loss, lr, val mIoU): <a href=\"../tb/\">tb/</a>; view them with "
            f"<code>tensorboard --logdir {esc(os.path.abspath(tb))}</code>.</p><ul>{links}</ul>")


def build(opt):
    work_dir = opt.work_dir
    if not os.path.isdir(work_dir):
        raise SystemExit(f"report: {work_dir} is not a folder; pass a work dir (--work_dir of run_sample.py)")
    out_dir = os.path.join(work_dir, "report")
    os.makedirs(os.path.join(out_dir, "img"), exist_ok=True)
    runs, settings, evals = read_runs(work_dir), read_settings(work_dir), read_evals(work_dir)
    flags = run_flags(settings) or {}
    dataset = flags.get("dataset") or next((e.get("dataset") for e in evals.values() if e.get("dataset")), "?")
    body = ['<div class="two">' + section("Evaluations", evals_html(evals), "evals") +
            section("Steps", steps_html(runs, settings), "steps") + "</div>",
            '<div class="two">' + section("Seed threshold sweep", sweep_html(evals), "sweep") +
            section("Per-class IoU", classes_html(evals, dataset), "classes") + "</div>",
            section("Where RIB helps and hurts", gallery_html(work_dir, evals, settings, out_dir, opt), "gallery"),
            section("Training curves", tb_html(work_dir), "tb")]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>RIB run report: '
            f'{esc(os.path.basename(os.path.abspath(work_dir)))}</title><style>{CSS}</style></head><body>'
            f'<header><h1>RIB run report</h1><p>{esc(os.path.abspath(work_dir))} · dataset {esc(dataset)} · '
            f'{len(runs)} command(s) in run.log</p></header><main>{"".join(body)}</main>'
            # a marker the browser test reads: every picture loaded
            '<script>window.addEventListener("load",function(){var bad=[].filter.call(document.images,'
            'function(i){return !i.complete||i.naturalWidth===0});document.body.setAttribute("data-report",'
            'bad.length?"broken "+bad.length:"ok")});</script></body></html>')
    path = os.path.join(out_dir, "index.html")
    save_text(path, page)
    return path


def main():
    path = build(parse())
    print(f"report: {path}")


if __name__ == "__main__":
    main()
