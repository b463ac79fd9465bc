"""Multi-node as users launch it: `torchrun --nnodes 2 --nproc_per_node 1 --node_rank R --master_addr 127.0.0.1`
started as two processes on this machine (gloo, two "nodes" of one CPU process each), against one plain process:

* train_cam (DDP) then rib (a per-image step: disjoint shards by rank) in one launch: the classifier equals the
  one-process classifier within float all-reduce noise, each node fine-tunes its half of the images, and the union
  of the RIB maps equals the one-process maps;
* make_seg_labels then train_deeplab (DDP, the iteration-indexed batch order) in one launch: the DeepLab weights
  equal the one-process weights within tolerance.
The data are synthetic and left-right symmetric (PNG content), so that the classifier's random flip changes
nothing and the two data orders see the same crops: what is compared is the distributed arithmetic.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from misc.fileio import load_cam_npz, load_label_png, save_png
from voc12.synthetic import make_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def symmetric(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    data = make_dataset(str(root), num_train=4, num_eval=4, size=64, seed=2)
    ids = open(data["train"]).read().split()
    for i in ids:
        path = root / "JPEGImages" / f"{i}.jpg"
        img = np.asarray(Image.open(path).convert("RGB"))
        half = img[:, :32]
        Image.fromarray(np.concatenate([half, half[:, ::-1]], 1)).save(path, format="PNG")  # lossless
        mask_path = root / "SegmentationClass" / f"{i}.png"
        m = load_label_png(str(mask_path))[:, :32]
        save_png(str(mask_path), np.concatenate([m, m[:, ::-1]], 1).astype(np.uint8))
    return root, data, ids


def common_flags(root, data, work):
    return ["--voc12_root", str(root), "--cls_labels", data["labels"], "--train_list", data["train"],
            "--infer_list", data["train"], "--work_dir", str(work), "--device", "cpu", "--backbone_weights", "none",
            "--num_workers", "0", "--cam_num_epoches", "1", "--cam_batch_size", "4", "--cam_crop_size", "64",
            "--cam_resize_long", "64,64", "--cam_learning_rate", "0.01", "--official_momentum_bug", "false",
            "--cam_scales", "1.0", "--check_classifier", "false", "--rib_iter", "1", "--rib_batch", "1",
            "--rib_crop_size", "32", "--rib_loss_scales", "1.0", "--rib_loader_workers", "0",
            "--seg_train_list", data["train"], "--seg_arch", "resnet50", "--seg_backbone_weights", "none",
            "--seg_crop_size", "32", "--seg_batch_size", "2", "--seg_num_iters", "2", "--seg_scales", "1.0",
            "--seg_learning_rate", "1e-4", "--seg_log_every", "1", "--seg_eval_every", "0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(flags):
    """Both nodes' torchrun, started as two processes; returns their (rc, stderr)."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
               "run_sample.py", *flags]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        outs.append((p.returncode, out))
    return outs


def one_process(flags):
    out = subprocess.run([sys.executable, "run_sample.py", *flags], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


def assert_state_close(path_a, path_b, rtol, atol):
    a = torch.load(path_a, weights_only=True)["state_dict"]
    b = torch.load(path_b, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=rtol, atol=atol), (k, worst)
    return worst


def training_change(ckpt_path, model):
    """Largest |trained - initial| over the floating-point tensors: the DDP-vs-one difference must be far below it,
    else the comparison says nothing."""
    trained = torch.load(ckpt_path, weights_only=True)["state_dict"]
    init = model.state_dict()
    return max(float((trained[k].float() - init[k].float()).abs().max()) for k in trained
               if trained[k].is_floating_point())


def parsed(flags):
    import run_sample
    from misc.datasets import build_spec, load_id_list
    from misc.torchutils import seed_everything
    args = run_sample.parse_args(flags)
    seed_everything(args.seed)
    return args, build_spec(args), load_id_list(args.train_list)


def test_train_cam_and_rib_on_two_nodes_equal_one_process(symmetric, tmp_path):
    root, data, ids = symmetric
    steps = ["--only", "train_cam,rib"]
    nodes = two_nodes(common_flags(root, data, tmp_path / "two") + steps)
    for rc, out in nodes:
        assert rc == 0, out[-3000:]
        # each node fine-tuned its own half: its RIB bar counts 2 of the 4 images
        assert f"| {len(ids) // 2}/{len(ids) // 2} [" in out and f"/{len(ids)} [" not in out, out[-1500:]
    assert "batch 2 x 2 process(es)" in (tmp_path / "two" / "run.log").read_text()
    one_process(common_flags(root, data, tmp_path / "one") + steps)
    cam = "sess/res50_cam.pth"
    worst = assert_state_close(tmp_path / "one" / cam, tmp_path / "two" / cam, rtol=1e-4, atol=1e-6)
    from step.train_cam import build_model
    args, spec, train_ids = parsed(common_flags(root, data, tmp_path / "one"))
    assert worst < 1e-3 * training_change(tmp_path / "one" / cam, build_model(args, spec, train_ids))
    one_dir, two_dir = tmp_path / "one" / "result" / "cam_rib", tmp_path / "two" / "result" / "cam_rib"
    assert sorted(os.listdir(one_dir)) == sorted(os.listdir(two_dir))
    for i in ids:
        a, b = load_cam_npz(str(one_dir / f"{i}.npz")), load_cam_npz(str(two_dir / f"{i}.npz"))
        assert np.array_equal(a["keys"], b["keys"])
        assert np.allclose(a["high_res"], b["high_res"], rtol=1e-3, atol=1e-4 * max(1.0, np.abs(a["high_res"]).max()))


def test_train_deeplab_on_two_nodes_equals_one_process(symmetric, tmp_path):
    root, data, ids = symmetric
    steps = ["--only", "make_seg_labels,train_deeplab"]
    for name in ("one", "two"):  # pseudo masks = ground truth, confident walk scores
        for i in ids:
            gt = load_label_png(str(root / "SegmentationClass" / f"{i}.png"))
            sem = tmp_path / name / "result" / "sem_seg"
            save_png(str(sem / f"{i}.png"), np.where(gt == 255, 0, gt).astype(np.uint8))
            save_png(str(tmp_path / name / "result" / "sem_seg_score" / f"{i}.png"),
                     np.where(gt > 0, 200, 20).astype(np.uint8))
    nodes = two_nodes(common_flags(root, data, tmp_path / "two") + steps)
    for rc, out in nodes:
        assert rc == 0, out[-3000:]
    assert "batch 1 x 2 process(es)" in nodes[0][1]
    one_process(common_flags(root, data, tmp_path / "one") + steps)
    worst = assert_state_close(tmp_path / "one" / "sess" / "deeplab.pth", tmp_path / "two" / "sess" / "deeplab.pth",
                               rtol=1e-4, atol=1e-6)
    from deeplab.train import initial_model
    args, spec, train_ids = parsed(common_flags(root, data, tmp_path / "one"))
    init = initial_model(args, spec, train_ids, args.seg_label_dir, "make_seg_labels", "none", None)
    assert worst < 1e-3 * training_change(tmp_path / "one" / "sess" / "deeplab.pth", init)
