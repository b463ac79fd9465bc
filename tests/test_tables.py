"""The paper's tables as commands: the transcribed numbers, the ablation runner's smoke mode end to end, and
paper_tables.py on hand-made result files (seeds, missing rows, mixed datasets, bad table names)."""
import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

import ablations  # noqa: E402
import paper_tables  # noqa: E402


def test_paper_numbers_file_is_well_formed():
    rows = list(csv.DictReader(open(REPO / "scripts" / "paper_numbers.csv", newline="")))
    keys = [(r["table"], r["row"], r["column"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert all(r["source"] for r in rows)
    values = {k: float(r["value"]) for k, r in zip(keys, rows)}
    # headline numbers
    assert values[("1", "RIB (Ours)", "voc_seed")] == 56.5 and values[("1", "RIB (Ours)", "voc_mask_irn")] == 70.6
    assert values[("1", "RIB (Ours)", "voc_mask_psa")] == 68.6 and values[("4", "RIB (Ours)", "miou")] == 43.8
    assert values[("2", "RIB (Ours)", "val")] == 68.3 and values[("3", "RIB (Ours)", "val")] == 70.2
    assert values[("errorbar", "RIB (Ours)", "mean")] == 56.44 and values[("errorbar", "RIB (Ours)", "std")] == 0.05
    # Table A2: the 21 per-class IoUs of RIB on val average to the mIoU the paper prints (68.3)
    per_class = [v for (t, row, col), v in values.items() if t == "A2" and row == "RIB (Ours)"
                 and col.startswith("val_") and col != "val_miou"]
    assert len(per_class) == 21 and statistics.fmean(per_class) == pytest.approx(68.3, abs=0.1)
    coco = [v for (t, row, col), v in values.items() if t == "A3" and row == "Ours" and col != "mean"]
    assert len(coco) == 81 and statistics.fmean(coco) == pytest.approx(43.8, abs=0.1)
    # every table the runner fills has the paper's cells
    for table in ("5a", "5b", "5c", "6", "7", "A1"):
        cells = ablations.table_cells(table, "voc_")
        assert all((table, row, col) in values for row, col in cells), table


@pytest.fixture(scope="module")
def smoke_tables(tmp_path_factory):
    """scripts/ablations.py --smoke for Table 5a and Figure 5 (one classifier, one make_cam), then the tables."""
    work = tmp_path_factory.mktemp("ablations")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for table in ("5a", "fig5"):
        out = subprocess.run([sys.executable, "scripts/ablations.py", "--table", table, "--work_dir", str(work),
                              "--smoke"], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
    out_dir = work / "tables"
    out = subprocess.run([sys.executable, "scripts/paper_tables.py", str(work), "--out", str(out_dir)],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return work, out_dir


def test_smoke_table_5a_has_paper_and_measured_columns(smoke_tables):
    work, out_dir = smoke_tables
    text = (out_dir / "table_5a.md").read_text()
    assert "synthetic smoke run" in text.splitlines()[0]
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    index = json.load(open(work / "ablations.json"))
    runs = {c["row"]: c for c in index["tables"]["5a"]["cells"]}
    for row, paper in (("Init.", "48.80"), ("BCE w/. Sigmoid", "50.50"), ("L_RIB", "56.50")):
        cells = [c.strip() for c in lines[row].strip("|").split("|")]
        # the measured cell is the mIoU in the run's own result file (one seed in the smoke run)
        run = runs[row]
        assert len(run["dirs"]) == 1
        result = json.load(open(work / run["dirs"][0] / run["source"]))
        for key in run["key"]:
            result = result[key]
        assert cells[2] == paper and cells[3] == f"{result:.2f}"
        assert cells[4] == f"{float(cells[3]) - float(paper):+.2f}"
        if row == "Init.":  # plain CAM: its settings, not RIB's (issue 21)
            assert cells[5].startswith("plain CAM") and "rib_" not in cells[5], cells[5]
        else:
            assert "rib_iter=" in cells[5], cells[5]
    # one classifier and one make_cam for every row (never retrained per row)
    index = json.load(open(work / "ablations.json"))
    assert index["smoke"] and set(index["tables"]) == {"5a", "fig5"}
    assert len(list((work / "base" / "sess").glob("res50_cam.pth"))) == 1
    assert not list((work / "runs").glob("*/seed0/sess/res50_cam.pth"))
    assert (out_dir / "table_5b.md").read_text().count("not run") == 5  # not run, never filled


def test_smoke_figures(smoke_tables):
    work, out_dir = smoke_tables
    from PIL import Image
    for name in ("figure5.png", "figure3.png"):
        with Image.open(out_dir / name) as img:
            assert img.size[0] > 200 and img.size[1] > 100
    rows = json.load(open(work / "runs" / "iters_gndrp" / "seed0" / "result" / "eval_rib_iters.json"))
    assert [r["k"] for r in rows] == [0, 1, 2]  # smoke K = 3, official aggregation: k = 0..K-1


def test_figure5_y_range_is_never_a_magnified_wiggle():
    low, high = paper_tables.fig5_ylim([32.74, 32.75, 32.76])
    assert high - low >= paper_tables.FIG5_MIN_SPAN and low < 32.74 < 32.76 < high
    low, high = paper_tables.fig5_ylim([32.7, 48.8, 56.5])  # the paper's points widen it as they need
    assert low < 32.7 and high > 56.5 and high - low < 30


# --- paper_tables on hand-made result files ---------------------------------------------------------------------


def write_result(path, miou, dataset="voc12", **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"miou": miou, "dataset": dataset, "per_class_iou": {}, "precision": 1.0,
                                "recall": 2.0, "f1": 3.0, "run": {"date": "2026-11-22", "flags": {"seed": 0}},
                                **extra}))


def fake_ablation(work, values, dataset="voc12", smoke=False):
    """An ablations.json with the default RIB row of Table 5a run once per value (one seed each)."""
    dirs = []
    for n, v in enumerate(values):
        d = f"runs/default/seed{n}"
        write_result(work / d / "result" / "eval_cam_rib.json", v, dataset)
        dirs.append(d)
    index = {"smoke": smoke, "dataset": dataset, "tables": {"5a": {"seeds": list(range(len(values))), "cells": [
        {"row": "L_RIB", "column": "seed", "run": "default", "source": "result/eval_cam_rib.json",
         "key": ["miou"], "dirs": dirs}]}}}
    (work / "ablations.json").write_text(json.dumps(index))


def test_seeds_give_mean_and_std_and_missing_rows_say_not_run(tmp_path):
    fake_ablation(tmp_path / "w", [56.0, 57.0, 58.0])
    paper_tables.main([str(tmp_path / "w"), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "table_5a.md").read_text()
    line = next(l for l in text.splitlines() if l.startswith("| L_RIB"))
    assert "57.00 ± 1.00 (n=3)" in line and "+0.50" in line  # 57.0 - 56.5
    assert "| Init. | seed | 48.80 | not run |" in text
    errorbar = (tmp_path / "out" / "errorbar.md").read_text()
    assert "| mean | 56.44 | 57.00 |" in errorbar and "| runs | 5 | 3 |" in errorbar


def test_pipeline_dir_fills_tables_1_2_6_7(tmp_path):
    res = tmp_path / "w" / "result"
    write_result(res / "eval_cam_rib.json", 60.0, crf={"miou": 65.0},
                 per_class_iou={"boat": 40.0, "train": 50.0})
    write_result(res / "eval_sem_seg.json", 70.0, source="rib")
    write_result(res / "eval_deeplab.json", 68.0, per_class_iou={"background": 90.0, "aeroplane": 80.0},
                 run={"flags": {"seg_eval_list": "voc12/val.txt"}, "date": "d"})
    paper_tables.main([str(tmp_path / "w"), "--out", str(tmp_path / "out")])
    t1 = (tmp_path / "out" / "table_1.md").read_text()
    assert "| RIB (Ours) | voc_seed | 56.50 | 60.00 | +3.50 |" in t1
    assert "| RIB (Ours) | voc_crf | 62.90 | 65.00 |" in t1
    assert "| RIB (Ours) | voc_mask_irn | 70.60 | 70.00 | -0.60 |" in t1
    assert "| RIB (Ours) | val | 68.30 | 68.00 |" in (tmp_path / "out" / "table_2.md").read_text()
    assert "| RIB (Ours) | boat | 38.80 | 40.00 |" in (tmp_path / "out" / "table_7.md").read_text()
    assert "| RIB (Ours) | val_aero |" in (tmp_path / "out" / "table_A2.md").read_text()


def test_bad_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no result files.*eval_cam.*ablations.py"):
        paper_tables.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    fake_ablation(tmp_path / "voc", [56.0])
    fake_ablation(tmp_path / "coco", [30.0], dataset="coco14")
    with pytest.raises(SystemExit, match=r"Table 5a would mix.*coco.*eval_cam_rib.json"):
        paper_tables.main([str(tmp_path / "voc"), str(tmp_path / "coco"), "--out", str(tmp_path / "out")])
    fake_ablation(tmp_path / "smoke", [30.0], smoke=True)
    with pytest.raises(SystemExit, match="smoke"):
        paper_tables.main([str(tmp_path / "voc"), str(tmp_path / "smoke"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        ablations.main(["--table", "9z", "--work_dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "no table '9z'; valid tables: 1, 5a, 5b, 5c, 6, 7, A1, fig5" in err
