"""CUDA checks (marker `cuda`, skipped without a GPU): bf16 vs fp32 RIB on one image, channels-last, torch.compile,
two RIB workers sharing one GPU, train_cam and train_irn under torchrun, the random walk on CUDA vs CPU.

    python -m pytest -q -m cuda tests/test_cuda.py        # on a GPU machine
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, make_args, save_random_classifier, train_subset_ids, write_list
from misc import indexing
from misc.fileio import load_cam_npz

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def rib_setup(voc_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("cuda_rib")
    ids = train_subset_ids(3)
    lst = write_list(work / "ids.txt", ids)
    ckpt = work / "res50_cam.pth"
    save_random_classifier(ckpt, num_classes=20, seed=0)
    return work, ids, lst, ckpt, voc_root


def run_rib(setup, name, **flags):
    from step import rib
    work, ids, lst, ckpt, root = setup
    out = work / name
    (out / "sess").mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt, out / "sess" / "res50_cam.pth")
    args = make_args(out, voc12_root=root, train_list=lst, infer_list=lst, rib_iter=3, rib_batch=4,
                     rib_crop_size=256, rib_loader_workers=2, **flags)
    args.device = "cuda"
    rib.run(args)
    return {i: load_cam_npz(os.path.join(args.rib_out_dir, i + ".npz")) for i in ids}


def agreement(a, b):
    """Share of pixels whose seed (argmax over [0.25 background, classes]) agrees, and the max |difference|."""
    same, total, worst = 0, 0, 0.0
    for i in a:
        x, y = a[i]["high_res"], b[i]["high_res"]
        sx = np.pad(x, ((1, 0), (0, 0), (0, 0)), constant_values=0.25).argmax(0)
        sy = np.pad(y, ((1, 0), (0, 0), (0, 0)), constant_values=0.25).argmax(0)
        same += int((sx == sy).sum())
        total += sx.size
        worst = max(worst, float(np.abs(x - y).max()))
    return same / total, worst


def test_bf16_and_fp32_rib_agree(rib_setup):
    fp32 = run_rib(rib_setup, "fp32", amp="false", channels_last="false")
    bf16 = run_rib(rib_setup, "bf16", amp="true", channels_last="false")
    share, worst = agreement(fp32, bf16)
    assert share > 0.98, (share, worst)


def test_channels_last_and_compile_change_nothing_that_matters(rib_setup):
    plain = run_rib(rib_setup, "plain", amp="false", channels_last="false")
    cl = run_rib(rib_setup, "cl", amp="false", channels_last="true")
    assert agreement(plain, cl)[0] > 0.995
    compiled = run_rib(rib_setup, "compiled", amp="false", channels_last="true", rib_compile="true")
    assert agreement(plain, compiled)[0] > 0.995


def test_two_workers_on_one_gpu_equal_one_worker(rib_setup):
    one = run_rib(rib_setup, "one", rib_workers=1)
    two = run_rib(rib_setup, "two", rib_workers=2)
    share, worst = agreement(one, two)
    assert share > 0.999 and worst < 1e-2


@pytest.mark.parametrize("step", ["train_cam", "train_irn"])
def test_training_under_torchrun_one_process(step, voc_root, tmp_path):
    if step == "train_irn":  # its IR labels come from cam_to_ir_label's dense CRF
        pytest.importorskip("pydensecrf", reason="cam_to_ir_label needs pydensecrf (absent on the lent GPU machine)")
    ids = train_subset_ids(8)
    lst = write_list(tmp_path / "ids.txt", ids)
    work = tmp_path / "w"
    common = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "run_sample.py",
              "--voc12_root", voc_root, "--train_list", lst, "--infer_list", lst, "--work_dir", str(work),
              "--device", "cuda", "--backbone_weights", "none", "--num_workers", "2"]
    small = ["--cam_num_epoches", "1", "--cam_batch_size", "4", "--cam_crop_size", "256",
             "--cam_learning_rate", "0.01", "--irn_crop_size", "256", "--irn_batch_size", "4",
             "--irn_num_epoches", "1", "--cam_scales", "1.0"]
    steps = "train_cam" if step == "train_cam" else "train_cam,make_cam,cam_to_ir_label,train_irn"
    out = subprocess.run(common + small + ["--only", steps], cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    name = "res50_cam.pth" if step == "train_cam" else "res50_irn.pth"
    ckpt = torch.load(work / "sess" / name, weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_random_walk_cuda_equals_cpu():
    g = torch.Generator().manual_seed(0)
    h, w = 94, 125  # the stride-4 grid of a 375 x 500 VOC image
    edge = torch.rand(h, w, generator=g) ** 4
    cams = torch.rand(3, h, w, generator=g) ** 2
    cpu = indexing.random_walk_lean(cams, edge)
    cuda = indexing.random_walk_lean(cams.cuda(), edge.cuda()).cpu()
    assert torch.allclose(cpu, cuda, rtol=1e-6, atol=1e-8)
