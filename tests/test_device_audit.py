"""Device audit of the hot loops (RIB's per-image fine-tuning, DeepLab training), run on the CPU:

* host syncs: every Tensor.item / tolist / cpu / numpy / __bool__ / __float__ / __int__ / nonzero call is counted
  (torch's own calls included) while the loop runs K and K + 1 (RIB) or 1 and 3 (DeepLab) steps; the difference may only be the documented ones
  (RIB: one `tolist` per step, the early-stop flags; DeepLab: one `item` per --seg_log_every iterations);
* tensor devices: every torch factory call made from this project's code without a device (torch.zeros, tensor,
  from_numpy, ...) is recorded; on CUDA those are CPU tensors. None may be made per step (data loading aside, which
  makes CPU tensors on purpose and moves them with misc.torchutils.to_device).
Adding `.item()` to the RIB step, or `torch.zeros(n)` to the DeepLab iteration, fails these tests.
"""
import contextlib
import os
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import REPO, make_args, write_list
from test_gpu_paths import flushed_denormals  # noqa: F401 (autouse fixture)

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero")
FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "as_tensor", "arange", "linspace", "rand", "randn",
             "randint", "eye", "from_numpy")
# data loading makes CPU tensors by design (moved by misc.torchutils.to_device, pinned on CUDA)
LOADER_FILES = {os.path.join(REPO, p) for p in ("deeplab/data.py", "misc/datasets.py", "misc/imutils.py")}


@contextlib.contextmanager
def audit():
    """Counter of host syncs and Counter of (file:line) of device-less factory calls from the repo."""
    syncs, creations = Counter(), Counter()
    saved = {}

    def count_sync(name, fn):
        def wrapper(self, *a, **k):
            syncs[name] += 1
            return fn(self, *a, **k)
        return wrapper

    def record_creation(name, fn):
        def wrapper(*a, **k):
            if name == "from_numpy" or k.get("device") is None:
                frame = sys._getframe(1)
                path = os.path.abspath(frame.f_code.co_filename)
                if path.startswith(str(REPO)) and "/tests/" not in path and path not in LOADER_FILES:
                    creations[f"{os.path.relpath(path, REPO)}:{frame.f_lineno} torch.{name}"] += 1
            return fn(*a, **k)
        return wrapper

    for name in SYNC_METHODS:
        saved[("T", name)] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, count_sync(name, saved[("T", name)]))
    saved[("torch", "nonzero_fn")] = torch.nonzero
    torch.nonzero = (lambda fn: lambda *a, **k: (syncs.update(["nonzero"]), fn(*a, **k))[1])(torch.nonzero)
    for name in FACTORIES:
        saved[("torch", name)] = getattr(torch, name)
        setattr(torch, name, record_creation(name, saved[("torch", name)]))
    try:
        yield syncs, creations
    finally:
        for (where, name), fn in saved.items():
            if where == "T":
                setattr(torch.Tensor, name, fn)
            elif name == "nonzero_fn":
                torch.nonzero = fn
            else:
                setattr(torch, name, fn)


def test_audit_catches_an_added_sync_and_a_cpu_tensor():
    """The audit itself: project code (a file under misc/) with one .item() and one device-less torch.zeros per
    step is caught; a device given, or a seed, is not."""
    code = compile("import torch\n"
                   "def loop(n):\n"
                   "    x = torch.ones(3, device='cpu')\n"
                   "    for _ in range(n):\n"
                   "        x = x + torch.zeros(3)\n"
                   "        x.sum().item()\n", os.path.join(REPO, "misc", "audit_probe.py"), "exec")
    ns = {}
    exec(code, ns)
    with audit() as (s2, c2):
        ns["loop"](2)
    with audit() as (s4, c4):
        ns["loop"](4)
    assert s4["item"] - s2["item"] == 2
    assert dict(c2) == {"misc/audit_probe.py:5 torch.zeros": 2} and sum(c4.values()) == 4
    from misc import torchutils
    with audit() as (syncs, creations):
        torchutils.seed_everything(0)
    assert not creations and not syncs


# --- RIB ----------------------------------------------------------------------------------------------------------


def rib_counts(iters):
    from test_gpu_paths import fresh_classifier, rib_inputs, synthetic_images
    from step import rib
    images = synthetic_images()
    cfg, target, batches = rib_inputs(images, k_max=iters + 1)
    # both early stops on, neither ever fires: every step pays its documented sync
    cfg = rib.RIBConfig(iters=iters, cam_scales=(1.0,), loss_scales=(1.0,), explode_stop=True, explode_ratio=1.0,
                        margin_mode="official", margin=1e12)
    model = fresh_classifier()
    with audit() as (syncs, creations):
        result = rib.rib_finetune_image(model, target, lambda k: batches[k], cfg, "cpu")
    assert result.stop == "completed" and result.updates == iters
    return syncs, creations


def test_rib_step_makes_one_host_sync_and_no_cpu_tensor():
    s2, c2 = rib_counts(1)
    s4, c4 = rib_counts(2)
    per_step = {k: s4[k] - s2[k] for k in set(s4) | set(s2) if s4[k] != s2[k]}
    assert per_step == {"tolist": 1}, (s2, s4)  # read_flags: one per step, nothing else
    assert s2["item"] == s2["cpu"] == s2["numpy"] == 0
    assert c4 == c2 and not c2, (c2, c4)  # no device-less tensor from the project's code


# --- DeepLab ------------------------------------------------------------------------------------------------------


def deeplab_counts(tmp_path, iters):
    from misc.fileio import load_label_png, save_png
    from step import make_seg_labels, train_deeplab
    from test_gpu_paths import synthetic_root
    root, ids = synthetic_root()
    args = make_args(tmp_path / f"w{iters}", voc12_root=root, cls_labels=os.path.join(root, "cls_labels.npz"),
                     seg_train_list=write_list(tmp_path / "ids.txt", ids[:4]), seg_num_iters=iters,
                     seg_save_every=1000, seg_log_every=1000, seg_scales="1.0", seg_arch="resnet50",
                     seg_backbone_weights="none", seg_crop_size=32, seg_batch_size=2, seg_learning_rate=1e-5,
                     seg_eval_every=0)
    for img_id in ids[:4]:
        gt = load_label_png(os.path.join(root, "SegmentationClass", img_id + ".png"))
        save_png(os.path.join(args.sem_seg_out_dir, img_id + ".png"), np.where(gt == 255, 0, gt).astype(np.uint8))
        save_png(os.path.join(args.sem_seg_score_dir, img_id + ".png"),
                 np.where(gt > 0, 200, 20).astype(np.uint8))
    make_seg_labels.run(args)
    with audit() as (syncs, creations):
        train_deeplab.run(args)
    return syncs, creations


def test_deeplab_iteration_makes_no_host_sync_and_no_cpu_tensor(tmp_path):
    s2, c2 = deeplab_counts(tmp_path, 1)
    s4, c4 = deeplab_counts(tmp_path, 3)
    per_two = {k: s4[k] - s2[k] for k in set(s4) | set(s2) if s4[k] != s2[k]}
    assert per_two == {}, (s2, s4)  # the loss is read once per --seg_log_every (and at the end): not per step
    assert s2["item"] >= 1  # that one read happened
    assert c4 == c2, (c2, c4)
