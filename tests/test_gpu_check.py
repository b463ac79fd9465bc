"""scripts/gpu_check.py, the one command for a lent GPU machine, dry-run on the CPU (--device cpu --tiny): every part
writes its JSON and markdown, a failing part is recorded and the next one still runs, a spent budget is said."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from misc.fileio import load_image_rgb
from voc12.synthetic import make_dataset

PART_LETTERS = "abcde"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A synthetic VOC-format root laid out like the carry pack (ImageSets/train_subset.txt with masks,
    train_aug_subset.txt, cls_labels.npz)."""
    root = tmp_path_factory.mktemp("gpu_check_data")
    data = make_dataset(str(root), num_train=12, num_eval=4, size=64, seed=0)
    shutil.copy(data["train"], root / "ImageSets" / "train_aug_subset.txt")
    shutil.copy(data["eval"], root / "ImageSets" / "train_subset.txt")
    return root


# The lent GPU machine has neither: the dry run hides them (a sitecustomize on PYTHONPATH that refuses the import)
HIDE_OPTIONAL = """import sys
class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pydensecrf", "pycocotools"):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/test_gpu_check.py)", name=name)
        return None
sys.meta_path.insert(0, _Hidden())
"""


def gpu_check(out, *flags, timeout=400):
    hide = out.parent / "hide_optional"
    hide.mkdir(parents=True, exist_ok=True)
    (hide / "sitecustomize.py").write_text(HIDE_OPTIONAL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out), *flags]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def load_part(out, letter):
    with open(out / f"part_{letter}.json") as f:
        return json.load(f)


def test_cpu_dry_run_writes_every_part(tiny_root, tmp_path):
    out = tmp_path / "check"
    # budgets far above the tiny work: a busy CI machine must not turn a part "over budget" (tested below)
    roomy = [x for part in PART_LETTERS for x in (f"--budget_{part}", "400")]
    proc = gpu_check(out, "--voc12_root", str(tiny_root), *roomy, timeout=1500)
    for letter in PART_LETTERS:
        data = load_part(out, letter)
        md = (out / f"part_{letter}.md").read_text()
        assert data["status"] == "ok", (letter, data["error"], data["notes"])
        assert data["rows"], letter
        for key in ("gpu", "torch", "cuda", "cudnn", "python", "numpy", "date_utc", "command", "budget_s"):
            assert key in data, (letter, key)
        assert data["command"].startswith("python scripts/gpu_check.py --device cpu --tiny")
        assert "--part_child" not in data["command"]
        assert 0 < data["elapsed_s"] <= data["budget_s"] + 30
        assert md.startswith(f"## Part {letter}:") and "status: **ok**" in md and "\n|---|" in md
        assert data["torch"] in md and data["command"] in md
        assert f"part {letter} (" in proc.stdout
    a = {r["item"]: r["value"] for r in load_part(out, "a")["rows"]}
    assert a["cuda_available"] is False and "rc 0" in a["pytest -m cuda"] and "skipped" in a["pytest -m cuda"]
    # run as on the lent machine: without pydensecrf and pycocotools, said, and nothing needed them
    assert a["has_pydensecrf"] is False and a["has_pycocotools"] is False
    notes = " ".join(load_part(out, "a")["notes"])
    assert "pydensecrf is not installed" in notes and "pycocotools is not installed" in notes
    b = {r["variant"]: r for r in load_part(out, "b")["rows"]}
    ref = b["reference (fp32, official structure)"]
    assert b["fast (step.rib; on the CPU fp32, contiguous)"]["s_per_image"] > 0
    # on the CPU in fp32 the fast path computes exactly what the reference loop does
    assert ref["max_abs_diff_vs_fast"] == 0 and ref["seed_pixels_equal_vs_fast"] == 1.0
    assert 0 <= ref["seed_miou"] <= 100
    c = [r["what"] for r in load_part(out, "c")["rows"]]
    assert "training fp32" in c and any(w.startswith("inference") for w in c)
    d = [r["what"].split()[0] for r in load_part(out, "d")["rows"]]
    assert d == ["make_cam", "random", "train_cam", "train_irn"]
    e = {r["what"]: r for r in load_part(out, "e")["rows"]}
    assert 1 <= e["seed mIoU, plain CAM"]["images"] == e["seed mIoU, RIB"]["images"] <= 2  # as many as fit
    assert all(0 <= e[k]["seed_miou"] <= 100 for k in ("seed mIoU, plain CAM", "seed mIoU, RIB"))
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary) == list(PART_LETTERS)
    assert all(f"## Part {x}:" in (out / "summary.md").read_text() for x in PART_LETTERS)


def test_a_failing_part_is_recorded_and_the_next_still_runs(tmp_path):
    out = tmp_path / "check"
    gpu_check(out, "--parts", "db", "--voc12_root", str(tmp_path / "no_such_root"), timeout=200)
    for letter in "db":
        data = load_part(out, letter)
        assert data["status"] == "error" and "no_such_root" in data["error"], data
        assert "error:" in (out / f"part_{letter}.md").read_text()
    assert sorted(json.loads((out / "summary.json").read_text())) == ["b", "d"]


def test_a_spent_budget_skips_the_rest_of_a_part(tiny_root, tmp_path):
    out = tmp_path / "check"
    gpu_check(out, "--parts", "c", "--budget_c", "0", "--voc12_root", str(tiny_root), timeout=200)
    data = load_part(out, "c")
    assert data["status"] == "over budget" and data["rows"] == []
    for what in ("training bf16", "training fp32", "inference", "training bf16+compile"):
        assert f"not run: {what} (budget of 0 s spent)" in data["notes"], data["notes"]


def test_carry_pack_is_a_voc_root_within_its_budget(voc_root, tmp_path):
    """scripts/make_carry_pack.py on the shipped real sample with a 2 MiB budget (1 MiB of it kept for lists and
    labels): the masked images first, then others, sizes within the budget, a VOC root gpu_check reads; a budget
    too small for anything is one clear error."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_carry_pack
    from misc.datasets import load_id_list
    from voc12 import dataloader as voc
    out = tmp_path / "pack"
    with pytest.raises(SystemExit, match="--max_mb 1 leaves no room"):
        make_carry_pack.main(["--voc12_root", voc_root, "--out", str(out), "--max_mb", "1"])
    summary = make_carry_pack.main(["--voc12_root", voc_root, "--out", str(out), "--max_mb", "2"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 2 * 2 ** 20
    masked = load_id_list(str(out / "ImageSets" / "train_subset.txt"))
    every = load_id_list(str(out / "ImageSets" / "train_aug_subset.txt"))
    assert summary["images"] == len(every) == len(list((out / "JPEGImages").iterdir())) > len(masked) > 0
    assert set(masked) <= set(every) and summary["with_masks"] == len(masked)
    spec = voc.make_spec(str(out), label_file=str(out / "cls_labels.npz"))
    for img_id in masked:
        assert spec.load_gt(img_id).shape == load_image_rgb(spec.image_path(img_id)).shape[:2]
    assert json.loads((out / "PACK.json").read_text())["jpeg_quality"] == summary["jpeg_quality"]
