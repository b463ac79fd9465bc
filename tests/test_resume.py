"""misc/resume.py's skip rules (the one mechanism every step uses) and the permissions of atomic outputs."""
import os

import pytest

from misc import resume
from misc.fileio import atomic_path, save_text


def test_pending_keeps_the_ids_with_a_missing_file(tmp_path):
    for name in ("a.png", "b.png", "b_score.png"):
        save_text(tmp_path / name, "x")
    one = resume.pending(["a", "b", "c"], lambda i: str(tmp_path / f"{i}.png"))
    assert one == ["c"]
    both = resume.pending(["a", "b", "c"], lambda i: [str(tmp_path / f"{i}_score.png"), str(tmp_path / f"{i}.png")])
    assert both == ["a", "c"]  # a lacks its score file
    assert resume.pending([], lambda i: []) == []


def test_checkpoint_done_loads_an_existing_checkpoint_once(tmp_path, caplog):
    path = tmp_path / "model.pth"
    loaded = []
    assert resume.checkpoint_done(str(path), "train_x", loaded.append) is False and loaded == []
    save_text(path, "weights")
    with caplog.at_level("INFO", logger="misc.resume"):
        assert resume.checkpoint_done(str(path), "train_x", loaded.append) is True
    assert loaded == [str(path)] and "--overwrite train_x" in caplog.text

    def broken(p):
        raise ValueError(f"{p} is broken")
    with pytest.raises(ValueError, match="broken"):  # a broken checkpoint is reported, not kept silently
        resume.checkpoint_done(str(path), "train_x", broken)


def test_atomic_outputs_follow_the_process_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            with open(tmp, "w") as f:
                f.write("x")
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "out.txt").st_mode & 0o777) == oct(0o640)
    assert os.listdir(tmp_path) == ["out.txt"]  # no temp file left
