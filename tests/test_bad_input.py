"""Bad input as a new user gives it: every case ends in one `error:` line naming the flag or file and the fix,
never a traceback; stale outputs are never reused silently; a killed write leaves nothing behind."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import run_sample
from conftest import REPO, make_args, save_random_classifier, train_subset_ids, write_list
from misc import provenance
from misc.fileio import DataError, atomic_path, load_checkpoint, remove_stale_temps


def cli_error(capsys, argv):
    """run_sample.main(argv) must stop with SystemExit; returns the message it printed (or carried)."""
    with pytest.raises(SystemExit) as exc:
        run_sample.main(argv)
    err = capsys.readouterr().err
    message = exc.value.code if isinstance(exc.value.code, str) else err
    assert message.startswith("error:"), message
    assert "Traceback" not in message and len(message.strip().splitlines()) == 1, message
    return message


@pytest.mark.parametrize("flag,value,expected", [
    ("--cam_scales", "", "needs at least one scale"),
    ("--cam_scales", "0", "scales must lie in"),
    ("--cam_scales", "-1", "scales must lie in"),
    ("--cam_eval_sweep", "0.2,0.5,0", "step must be > 0"),
    ("--cam_eval_sweep", "0.2,0.5", "start,stop,step"),
    ("--cam_eval_sweep", "0.5,0.2,0.01", "start <= stop"),
    ("--device", "foo", "expected cpu, cuda"),
    ("--num_workers", "-1", "integer >= 0"),
    ("--cam_crop_size", "0", "integer >= 16"),
    ("--cam_batch_size", "0", "integer >= 1"),
    ("--cam_num_epoches", "0", "integer >= 1"),
    ("--rib_batch", "-1", "integer >= 0"),
    ("--rib_score_th", "1.5", "number in [0, 1]"),
    ("--cam_learning_rate", "0", "number in (0"),
    ("--cam_resize_long", "640,320", "low <= high"),
    ("--only", "rib,bogus", "unknown name(s) bogus"),
    ("--make_cam_pass", "maybe", "expected true or false"),
])
def test_numeric_flags_are_checked_at_parse_time(capsys, tmp_path, flag, value, expected):
    message = cli_error(capsys, ["--work_dir", str(tmp_path), flag, value])
    assert flag in message and expected in message


def test_cuda_without_a_gpu(capsys, tmp_path, voc_root, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, also on a GPU host
    message = cli_error(capsys, ["--work_dir", str(tmp_path), "--voc12_root", voc_root, "--device", "cuda",
                                 "--only", "make_cam"])
    assert "--device cuda" in message and "--device cpu" in message


def test_a_checkpoint_of_another_network_is_one_line(capsys, tmp_path, voc_root):
    ids = train_subset_ids(1)
    lst = write_list(tmp_path / "ids.txt", ids)
    (tmp_path / "w" / "sess").mkdir(parents=True)
    torch.save({"state_dict": {"classifier.weight": torch.zeros(20, 2048, 1, 1), "backbone.conv1.weight":
                               torch.zeros(1)}}, tmp_path / "w" / "sess" / "res50_cam.pth")
    message = cli_error(capsys, ["--work_dir", str(tmp_path / "w"), "--voc12_root", voc_root, "--device", "cpu",
                                 "--infer_list", lst, "--only", "make_cam", "--num_workers", "0"])
    assert "res50_cam.pth is not a classifier checkpoint" in message and "--overwrite train_cam" in message


def test_an_unexpected_failure_is_one_line_with_the_traceback_in_run_log(capsys, tmp_path, monkeypatch):
    import step.eval_sem_seg

    def explode(args):
        raise ValueError("something deep went wrong\nwith a second line")
    monkeypatch.setattr(step.eval_sem_seg, "run", explode)
    message = cli_error(capsys, ["--work_dir", str(tmp_path / "w"), "--device", "cpu", "--only", "eval_sem_seg"])
    assert message.startswith("error: ValueError: something deep went wrong ...") and "run.log" in message
    log_text = (tmp_path / "w" / "run.log").read_text()
    assert "Traceback" in log_text and "with a second line" in log_text and "step eval_sem_seg: failed" in log_text


def test_random_file_as_checkpoint_is_one_short_line(tmp_path):
    path = tmp_path / "res50_cam.pth"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(DataError) as exc:
        load_checkpoint(str(path), "classifier checkpoint", made_by="train_cam")
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400 and "--overwrite train_cam" in text


def test_corrupt_and_truncated_images_are_caught_up_front(tmp_path, voc_root):
    from misc.datasets import DatasetSpec
    (tmp_path / "JPEGImages").mkdir()
    good = train_subset_ids(1)[0]
    data = open(os.path.join(voc_root, "JPEGImages", good + ".jpg"), "rb").read()
    (tmp_path / "JPEGImages" / "ok.jpg").write_bytes(data)
    (tmp_path / "JPEGImages" / "half.jpg").write_bytes(data[:len(data) // 2])  # a cut download
    (tmp_path / "JPEGImages" / "junk.jpg").write_bytes(b"not an image at all")
    labels = {i: np.ones(20, np.float32) for i in ("ok", "half", "junk")}
    spec = DatasetSpec("voc12", str(tmp_path), tuple(f"c{i}" for i in range(20)), labels)
    spec.check_ids(["ok"], "--train_list")
    for bad, why in (("half", "truncated JPEG"), ("junk", "cannot identify")):
        with pytest.raises(DataError, match=f"{bad}.jpg.*{why}"):
            spec.check_ids(["ok", bad], "--train_list")


class _FailingDataset(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, idx):
        raise DataError("image /data/x.jpg is corrupt; replace the file")


def test_data_error_inside_a_loader_worker_keeps_its_one_line():
    loader = DataLoader(_FailingDataset(), num_workers=1)
    with pytest.raises(DataError) as exc:
        next(iter(loader))
    assert str(exc.value) == "image /data/x.jpg is corrupt; replace the file"


def test_ground_truth_with_values_above_the_class_count_and_wrong_size(tmp_path, voc_root):
    from voc12 import dataloader as voc
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    img_id = train_subset_ids(1)[0]
    h, w = np.asarray(Image.open(os.path.join(voc_root, "JPEGImages", img_id + ".jpg"))).shape[:2]
    bad = np.zeros((h, w), np.uint8)
    bad[0, 0] = 37
    Image.fromarray(bad).save(gt_dir / f"{img_id}.png")
    spec = voc.make_spec(voc_root, gt_dir=str(gt_dir))
    with pytest.raises(DataError, match=f"{img_id}.png has value 37.*20 classes"):
        spec.load_gt(img_id)
    Image.fromarray(np.zeros((h, w + 3), np.uint8)).save(gt_dir / f"{img_id}.png")
    with pytest.raises(DataError, match=f"ground-truth mask .*{img_id}.png is {h}x{w + 3} but image"):
        spec.load_gt(img_id, image_size=(h, w))


def test_killed_write_leaves_a_temp_file_that_the_next_run_removes(tmp_path):
    out = tmp_path / "out.npz"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(out)) as tmp:
            open(tmp, "wb").write(b"partial")
            raise KeyboardInterrupt  # the context cleans up after itself ...
    assert os.listdir(tmp_path) == []
    # ... but a kill -9 does not run it: simulate the leftover of a process that is gone (pid 999999999)
    import socket
    host = socket.gethostname().replace(".", "_")
    dead = tmp_path / f".out.{host}-999999999.ab12cd.tmp.npz"
    dead.write_bytes(b"partial")
    alive = tmp_path / f".other.{host}-{os.getpid()}.ab12cd.tmp.npz"  # a write in progress: kept
    alive.write_bytes(b"partial")
    assert remove_stale_temps(str(tmp_path)) == 1
    assert not dead.exists() and alive.exists()


# --- stale outputs --------------------------------------------------------------------------------------------


def test_rerun_with_other_settings_stops_and_overwrite_replaces(tmp_path, voc_root):
    from step import make_cam
    ids = train_subset_ids(2)
    lst = write_list(tmp_path / "ids.txt", ids)
    args = make_args(tmp_path / "w", voc12_root=voc_root, infer_list=lst, cam_scales="0.25")
    save_random_classifier(args.cam_weights_path)
    make_cam.run(args)
    first = os.path.getmtime(os.path.join(args.cam_out_dir, ids[0] + ".npz"))
    make_cam.run(args)  # same settings: resumes (nothing to do), the files are kept
    assert os.path.getmtime(os.path.join(args.cam_out_dir, ids[0] + ".npz")) == first
    other = make_args(tmp_path / "w", voc12_root=voc_root, infer_list=lst, cam_scales="0.25,0.5")
    with pytest.raises(DataError) as exc:
        make_cam.run(other)
    text = str(exc.value)
    assert "cam_scales [0.25] (now [0.25, 0.5])" in text and "--work_dir" in text and "--overwrite make_cam" in text
    # a retrained classifier makes the CAMs stale too, whatever the CAM settings
    os.remove(args.cam_weights_path)
    provenance.prepare(args, "train_cam", args.cam_weights_path, {"retrained": True}, kind="file")
    save_random_classifier(args.cam_weights_path, seed=1)
    with pytest.raises(DataError, match="input classifier"):
        make_cam.run(args)
    replaced = make_args(tmp_path / "w", voc12_root=voc_root, infer_list=lst, cam_scales="0.25,0.5",
                         overwrite="make_cam")
    make_cam.run(replaced)
    record = provenance.read_record(args.cam_out_dir)
    assert record["settings"]["cam_scales"] == [0.25, 0.5] and record["run"]["git_commit"]
    assert record["run"]["versions"]["torch"] == torch.__version__


def test_cli_help_lists_every_flag_with_help_and_typed_defaults():
    out = subprocess.run([sys.executable, "run_sample.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    parser = run_sample.get_args_parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), action.option_strings
    text = " ".join(out.stdout.split())
    assert "(default: 1.0,0.5,1.5,2.0)" in text and "(default: 0.20,0.49,0.01)" in text
    assert "python run_sample.py --voc12_root R --only rib,eval_cam" in out.stdout  # description kept as written


def test_a_diverged_classifier_stops_train_cam_with_one_line(tmp_path, voc_root):
    # the recipe: random init, 6 real images, 1 epoch, batch 3, crop 96, lr 0.1 -> class maps of ~1e29
    from step import train_cam
    lst = write_list(tmp_path / "ids.txt", train_subset_ids(6))
    args = make_args(tmp_path / "w", voc12_root=voc_root, train_list=lst, cam_num_epoches=1, cam_batch_size=3,
                     cam_crop_size=96, cam_learning_rate=0.1)
    with pytest.raises(DataError) as exc:
        train_cam.run(args)
    text = str(exc.value)
    assert "diverged" in text and "--cam_learning_rate" in text and "--cam_batch_size" in text
    assert not os.path.exists(args.cam_weights_path)  # nothing a later step could pick up
