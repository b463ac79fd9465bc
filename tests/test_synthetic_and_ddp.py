"""The synthetic demo dataset, and classifier training under torchrun (2 CPU processes, gloo DDP)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from misc.fileio import load_image_rgb, load_label_png
from misc.datasets import load_id_list
from voc12 import dataloader as voc
from voc12.synthetic import DEMO_CLASSES, make_dataset


def test_synthetic_dataset_is_consistent_and_idempotent(tmp_path):
    lists = make_dataset(str(tmp_path / "d"), num_train=12, num_eval=4, size=64, seed=3)
    spec = voc.make_spec(str(tmp_path / "d"), label_file=lists["labels"])
    ids = load_id_list(lists["train"])
    assert len(ids) == 12 and load_id_list(lists["eval"]) == ids[:4]
    assert spec.class_names == tuple(DEMO_CLASSES) == ("cat", "dog", "bird", "sheep")  # named in the label file
    allowed = {1, 2, 3, 4}
    saw_void = False
    for img_id in ids:
        mask = load_label_png(spec.gt_path(img_id))
        img = load_image_rgb(spec.image_path(img_id))
        assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
        present = set(np.unique(mask)) - {0, 255}
        assert present and present <= allowed
        # the label is exactly the set of visible classes of the mask
        assert set(np.flatnonzero(spec.label(img_id)) + 1) == present
        saw_void |= bool((mask == 255).any())
    assert saw_void
    mtime = os.stat(lists["train"]).st_mtime_ns
    make_dataset(str(tmp_path / "d"), num_train=12, num_eval=4, size=64, seed=3)
    assert os.stat(lists["train"]).st_mtime_ns == mtime  # complete dataset kept


def test_train_cam_under_torchrun_ddp(tmp_path):
    data = make_dataset(str(tmp_path / "d"), num_train=8, num_eval=2, size=64)
    lists, label_file = data, data["labels"]
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "run_sample.py",
           "--voc12_root", str(tmp_path / "d"), "--train_list", lists["train"], "--cls_labels", label_file,
           "--work_dir", str(work), "--device", "cpu", "--backbone_weights", "none", "--num_workers", "0",
           "--cam_num_epoches", "1", "--cam_batch_size", "2", "--cam_crop_size", "64", "--cam_resize_long", "64,80",
           "--cam_learning_rate", "0.01", "--only", "train_cam"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 process(es)" in out.stderr
    ckpt = torch.load(work / "sess" / "res50_cam.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_demo_kernel_pinning_follows_the_cpu(monkeypatch):
    from misc import cpu_kernels
    monkeypatch.setattr(cpu_kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl"})
    assert cpu_kernels.pinned_env()["ATEN_CPU_CAPABILITY"] == "avx512"
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: {"avx2", "avx512f"})  # no full AVX512_CORE: AVX2
    env = cpu_kernels.pinned_env()
    assert (env["ONEDNN_MAX_CPU_ISA"], env["ATEN_CPU_CAPABILITY"], env["MKL_CBWR"]) == ("AVX2", "avx2", "AVX2")
    monkeypatch.setattr(cpu_kernels.platform, "machine", lambda: "aarch64")
    assert cpu_kernels.pinned_env() == {"OMP_NUM_THREADS": "2"}
    # a process already running with the pinned values is not re-executed
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(cpu_kernels.os, "execve", lambda *a: (_ for _ in ()).throw(AssertionError("re-executed")))
    cpu_kernels.reexec_pinned(["x"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(AssertionError, match="re-executed"):
        cpu_kernels.reexec_pinned(["x"])


def test_bind_worker_sets_cpu_threads_or_the_named_cuda_device(monkeypatch):
    from misc import torchutils
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torchutils.bind_worker("cpu", 2)
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        torchutils.bind_worker("cpu", 1)
        assert torch.get_num_threads() == max(1, os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(str(d)))
    torchutils.bind_worker("cuda:1", 4)
    torchutils.bind_worker("cuda", 4)  # no index: the current device stays
    assert chosen == ["cuda:1"] and torch.get_num_threads() == before
