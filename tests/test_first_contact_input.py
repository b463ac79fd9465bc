"""Input a new user gets wrong (issue 21): every case is one `error:` line naming the file or flag and the fix,
printed once; nothing silent. Also `bad_input_battery()`, the count of the issue's closing note."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import run_sample
from conftest import REPO, make_args, write_list
from misc import provenance
from misc.datasets import load_id_list
from misc.fileio import DataError


def cli_error(capsys, argv):
    """run_sample.main(argv) stops with one `error:` line, and the console shows the error once."""
    with pytest.raises(SystemExit) as exc:
        run_sample.main(argv)
    err = capsys.readouterr().err
    message = exc.value.code if isinstance(exc.value.code, str) else err
    assert message.startswith("error:") and "Traceback" not in message, message
    assert len(message.strip().splitlines()) == 1, message
    if isinstance(exc.value.code, str):  # SystemExit prints it: the log must not print it too
        assert message[len("error: "):][:60] not in err, err
    return message


# --- id lists ------------------------------------------------------------------------------------------------------


def test_duplicate_ids_are_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("a\nb\n\nc\nb\n")
    with pytest.raises(DataError) as exc:
        load_id_list(str(path), "--eval_list")
    text = str(exc.value)
    assert "--eval_list" in text and "image b twice (lines 2 and 5)" in text and "remove line 5" in text


def test_crlf_list_has_the_same_ids_and_the_same_record(tmp_path):
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_text("2007_000032\n2007_000039\n")
    crlf.write_bytes(b"2007_000032\r\n2007_000039\r\n\r\n")
    assert load_id_list(str(lf)) == load_id_list(str(crlf)) == ["2007_000032", "2007_000039"]
    assert provenance.file_digest(str(lf)) == provenance.file_digest(str(crlf))
    other = tmp_path / "other.txt"
    other.write_text("2007_000039\n2007_000032\n")  # another order is another list (another batch order)
    assert provenance.file_digest(str(other)) != provenance.file_digest(str(lf))


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"])
def test_binary_file_as_a_list_names_the_flag_and_the_fix(tmp_path, content):
    path = tmp_path / "labels.npz"
    path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        load_id_list(str(path), "--train_list")
    text = str(exc.value)
    assert "--train_list" in text and "not a text list" in text and "one image id per line" in text


def test_list_flags_given_are_checked_before_any_step(capsys, tmp_path):
    bad = tmp_path / "dup.txt"
    bad.write_text("x\nx\n")
    message = cli_error(capsys, ["--work_dir", str(tmp_path / "w"), "--device", "cpu", "--eval_list", str(bad)])
    assert "--eval_list" in message and "twice" in message
    assert not os.path.exists(tmp_path / "w" / "sess")  # train_cam never started


# --- flags ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--only", "--overwrite"])
@pytest.mark.parametrize("value", ["", ",", " , "])
def test_empty_step_lists_are_refused(capsys, tmp_path, flag, value):
    message = cli_error(capsys, ["--work_dir", str(tmp_path), flag, value])
    assert flag in message and "at least one name" in message


def test_overwrite_of_a_step_that_does_not_run_is_refused(capsys, tmp_path):
    message = cli_error(capsys, ["--work_dir", str(tmp_path), "--device", "cpu", "--overwrite", "infer_deeplab",
                                 "--only", "eval_deeplab"])
    assert "--overwrite infer_deeplab" in message and "--only eval_deeplab" in message
    message = cli_error(capsys, ["--work_dir", str(tmp_path), "--device", "cpu", "--overwrite", "rib",
                                 "--rib_pass", "false"])
    assert "--overwrite rib" in message


def test_demo_keeps_the_users_lists_and_refuses_other_data(capsys, tmp_path):
    message = cli_error(capsys, ["--demo", "--work_dir", str(tmp_path), "--eval_list", "/nonexistent"])
    assert "--eval_list /nonexistent: no such list file" in message
    message = cli_error(capsys, ["--demo", "--work_dir", str(tmp_path), "--voc12_root", "/data/VOC2012"])
    assert "--voc12_root" in message and "--demo" in message
    # a list given with --demo is used, not replaced
    args = run_sample.parse_args(["--demo", "--work_dir", str(tmp_path), "--eval_list", "mine.txt"])
    args = run_sample.demo_args(args)
    assert args.eval_list == "mine.txt" and args.infer_list.endswith("eval.txt")


def test_a_data_error_is_printed_once_and_logged(tmp_path):
    out = subprocess.run([sys.executable, "run_sample.py", "--work_dir", str(tmp_path / "w"), "--device", "cpu",
                          "--voc12_root", str(tmp_path / "nowhere"), "--only", "make_cam"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if "does not exist; pass --voc12_root" in line]
    assert len(errors) == 1 and errors[0].startswith("error: dataset root"), out.stderr
    assert " ERROR " not in out.stderr, out.stderr
    assert errors[0] in (tmp_path / "w" / "run.log").read_text()


# --- files ---------------------------------------------------------------------------------------------------------


def test_corrupt_saliency_png_names_the_role_and_the_fix(tmp_path):
    from step.make_seg_labels import load_saliency
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError) as exc:
        load_saliency(str(path), "x", (4, 4))
    text = str(exc.value)
    assert "saliency map" in text and "--seg_saliency_dir" in text and "replace it" in text and "\n" not in text


def test_export_with_a_root_lacking_the_test_image(capsys, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("export_voc_test", os.path.join(REPO, "scripts",
                                                                                   "export_voc_test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "pred").mkdir()
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "pred" / "2008_000001.png")
    (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
    lst = write_list(tmp_path / "test.txt", ["2008_000001"])
    with pytest.raises(SystemExit) as exc:
        module.main(["--pred_dir", str(tmp_path / "pred"), "--list", lst, "--out", str(tmp_path / "t.tar.gz"),
                     "--voc12_root", str(tmp_path / "VOC2012")])
    text = str(exc.value.code)
    assert text.startswith("error: --voc12_root has no image") and "2008_000001.jpg" in text and "\n" not in text
    assert not os.path.exists(tmp_path / "t.tar.gz")


def test_refusal_after_an_input_was_remade_says_when_and_what_changed(tmp_path):
    args = make_args(tmp_path / "w")
    ckpt = os.path.join(args.sess_dir, "deeplab.pth")
    out = os.path.join(args.result_dir, "pred")
    provenance.prepare(args, "train_deeplab", ckpt, {"learning_rate": 2e-4, "iterations": 40}, kind="file")
    open(ckpt, "w").write("x")
    provenance.prepare(args, "infer_deeplab", out, {"scales": [1.0]}, inputs=[("deeplab", ckpt, "file")])
    open(os.path.join(out, "a.png"), "w").write("x")
    os.remove(ckpt)  # retrained with another rate
    provenance.prepare(args, "train_deeplab", ckpt, {"learning_rate": 1e-4, "iterations": 40}, kind="file")
    open(ckpt, "w").write("y")
    with pytest.raises(DataError) as exc:
        provenance.prepare(args, "infer_deeplab", out, {"scales": [1.0]}, inputs=[("deeplab", ckpt, "file")])
    text = str(exc.value)
    assert f"input deeplab ({ckpt}) was remade on 20" in text and "these outputs come from the one of 20" in text
    assert "learning_rate 0.0002 (now 0.0001)" in text and "--overwrite infer_deeplab" in text
    record = json.load(open(os.path.join(out, "settings.json")))
    assert len(record["inputs"]["deeplab"]) == 16  # the compared id stays; the words are extra
