"""scripts/report.py on a small work dir (synthetic VOC-format data, make_cam + eval_cam run for real, a run.log,
a pseudo mask, TensorBoard scalars): the HTML parses, every picture it references exists, and it renders in a
headless Chromium with every picture loaded and no script error. Also --tensorboard with and without the package."""
import builtins
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import REPO, make_args, save_random_classifier

sys.path.insert(0, str(REPO / "scripts"))
import report  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    from misc.fileio import save_png
    from misc.runlog import Scalars
    from step import eval_cam, make_cam
    from voc12 import synthetic
    w = tmp_path_factory.mktemp("report_work")
    data = synthetic.make_dataset(str(w / "demo_data"), num_train=6, num_eval=6, size=96)
    flags = dict(voc12_root=data["root"], infer_list=data["eval"], eval_list=data["eval"], cls_labels=data["labels"],
                 cam_scales="1.0,0.5", save_cam_png=0)
    args = make_args(w, **flags)
    n = len(synthetic.CLASS_NAMES)
    save_random_classifier(args.cam_weights_path, num_classes=n, seed=0)
    make_cam.run(args)
    # a second classifier stands in for RIB's maps (the report only reads result/cam_rib)
    other = make_args(w, **flags, cam_dir=args.rib_out_dir, cam_weights_name=str(w / "sess" / "other.pth"))
    save_random_classifier(other.cam_weights_path, num_classes=n, seed=1)
    make_cam.run(other)
    eval_cam.run(args)
    ids = open(data["eval"]).read().split()
    mask = np.zeros((96, 96), np.uint8)
    mask[20:60, 30:70] = 1
    save_png(os.path.join(args.sem_seg_out_dir, ids[0] + ".png"), mask)
    (w / "run.log").write_text(
        "2026-12-01 10:00:00,000 INFO run_sample: command: run_sample.py --work_dir x\n"
        "2026-12-01 10:00:00,001 INFO run_sample: step make_cam: start\n"
        "2026-12-01 10:00:03,000 INFO run_sample: step make_cam: done in 3.0 s\n"
        "2026-12-01 10:00:03,001 INFO run_sample: step rib: start\n")
    args.tensorboard = True
    scalars = Scalars(args, "train_cam")
    for step in (1, 2):
        scalars.add(step, loss=1.0 / step, lr=0.1)
    scalars.close()
    return w


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.stack, self.ids = [], [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a":
            self.links.append(a["href"])
        if "id" in a:
            self.ids.add(a["id"])


def test_report_is_complete_and_self_contained(work_dir):
    path = report.build(report.parse([str(work_dir)]))
    text = open(path, encoding="utf-8").read()
    page = Page()
    page.feed(text)
    page.close()
    assert {"steps", "evals", "sweep", "classes", "gallery", "tb"} <= page.ids
    # the steps of run.log, the settings records, both seed evaluations, the sweep curves and the class bars
    assert "make_cam" in text and "started, not done" in text and "result/cam/settings.json" in text
    assert "eval_cam_cam" in text and "eval_cam_rib" in text and text.count("<svg") >= 2
    # gallery: 6 images scored, every picture a file under report/, no network address anywhere
    assert "6 images scored" in text and len(page.images) >= 6 * 4
    for src in page.images:
        assert not src.startswith(("http:", "https:", "//", "/")), src
        assert os.path.isfile(os.path.join(work_dir, "report", src)), src
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    for href in page.links:  # evaluation markdown and the tb folder, relative to the report
        assert os.path.exists(os.path.normpath(os.path.join(work_dir, "report", href))), href
    assert "../tb/" in page.links and "tensorboard --logdir" in text


def test_report_of_an_empty_and_a_missing_work_dir(tmp_path):
    path = report.build(report.parse([str(tmp_path)]))
    text = open(path).read()
    assert "nothing has run" in text and "No evaluation has run yet" in text
    with pytest.raises(SystemExit, match="not a folder"):
        report.build(report.parse([str(tmp_path / "nope")]))


def find_browser():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.mark.skipif(find_browser() is None, reason="no Chromium installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(work_dir, tmp_path):
    path = report.build(report.parse([str(work_dir)]))
    cmd = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", "file://" + os.path.abspath(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # the page's own check: every <img> loaded (naturalWidth > 0); a script error leaves the marker unset
    assert 'data-report="ok"' in out.stdout, out.stdout[-1000:] + out.stderr[-2000:]
    console = [line for line in out.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    shot = tmp_path / "shot.png"
    subprocess.run(cmd[:-2] + ["--window-size=1280,900", f"--screenshot={shot}", "file://" + os.path.abspath(path)],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # a rendered page, not a blank one


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (requirements.txt)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from misc.runlog import Scalars
    args = make_args(tmp_path, tensorboard="true")
    scalars = Scalars(args, "train_irn")
    scalars.add(8, **{"loss/loss": 2.5, "lr": 0.05})
    scalars.add(16, **{"loss/loss": 2.0, "lr": 0.02})
    scalars.close()
    acc = EventAccumulator(str(tmp_path / "tb" / "train_irn"))
    acc.Reload()
    loss = acc.Scalars("loss/loss")
    assert [(e.step, e.value) for e in loss] == [(8, 2.5), (16, 2.0)]
    assert [round(e.value, 6) for e in acc.Scalars("lr")] == [0.05, 0.02]
    off = Scalars(make_args(tmp_path / "off"), "train_irn")  # the default writes nothing
    off.add(1, loss=1.0)
    assert not (tmp_path / "off" / "tb").exists()


def test_tensorboard_missing_is_one_clear_error(tmp_path, monkeypatch):
    import run_sample
    from misc.fileio import DataError
    from misc.runlog import Scalars, check_tensorboard
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    for mod in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, mod)
    args = make_args(tmp_path, tensorboard="true")
    with pytest.raises(DataError, match="pip install tensorboard"):
        check_tensorboard(args)
    with pytest.raises(DataError, match="pip install tensorboard"):
        Scalars(args, "train_cam")
    # through the CLI: one line, before any step runs
    with pytest.raises(SystemExit, match="^error: --tensorboard true needs the tensorboard package: pip install "
                                         "tensorboard"):
        run_sample.main(["--work_dir", str(tmp_path), "--tensorboard", "true", "--only", "train_cam",
                         "--device", "cpu"])
    assert not (tmp_path / "sess").exists()


def test_evaluation_table_shows_each_crf_column_as_its_evaluation_means_it():
    # eval_cam's "crf" is the seeds' mIoU after a CRF, eval_deeplab's whether its predictions had one
    html = report.evals_html({"eval_cam_cam": {"miou": 44.0, "crf": {"miou": 47.25}},
                              "eval_deeplab": {"miou": 60.0, "crf": True},
                              "eval_sem_seg": {"miou": 55.0}})
    rows = {r.split("</a>")[0].rsplit(">", 1)[-1]: r for r in html.split("<tr>")[2:]}
    assert rows["eval_cam_cam"].endswith("<td class=num>47.25</td></tr>")
    assert rows["eval_deeplab"].endswith("<td class=num>yes</td></tr>")
    assert rows["eval_sem_seg"].split("</tr>")[0].endswith("<td class=num>—</td>")
