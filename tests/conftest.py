"""Shared test helpers: the real VOC subset (../shared/data/voc12_subset), args built through run_sample's own
parser, and a tiny random classifier checkpoint."""
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# RIB_TEST_VOC: another copy of the subset (a lent GPU machine has no ../shared: scripts/gpu_check.py points it at
# the carry pack, .devdata/voc_pack)
SHARED_VOC = Path(os.environ.get("RIB_TEST_VOC") or REPO.parent / "shared" / "data" / "voc12_subset")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def voc_root():
    if not (SHARED_VOC / "JPEGImages").is_dir():
        pytest.skip(f"real VOC subset not found at {SHARED_VOC}")
    return str(SHARED_VOC)


def train_subset_ids(n=None):
    ids = (SHARED_VOC / "ImageSets" / "train_subset.txt").read_text().split()
    return ids[:n] if n else ids


def write_list(path, ids):
    Path(path).write_text("\n".join(ids) + "\n")
    return str(path)


def make_args(work_dir, *extra, **flags):
    """run_sample args (defaults from the real parser) with `--flag value` overrides; CPU, random init."""
    import run_sample
    argv = ["--work_dir", str(work_dir), "--device", "cpu", "--backbone_weights", "none", "--num_workers", "0"]
    for k, v in flags.items():
        argv += [f"--{k}", ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    args = run_sample.parse_args(argv + list(extra))
    args.device = "cpu"
    return args


def save_random_classifier(path, num_classes=20, seed=0, calibrate_with=None):
    """A classifier checkpoint as train_cam writes it, from a random (BN-calibrated) network."""
    from misc.fileio import save_checkpoint
    from net.resnet50 import calibrate_batchnorm
    from net.resnet50_cam import Net
    torch.manual_seed(seed)
    model = Net(num_classes)
    batch = calibrate_with if calibrate_with is not None else torch.randn(2, 3, 64, 64)
    calibrate_batchnorm(model, [batch])
    save_checkpoint(str(path), model.state_dict(), num_classes=num_classes)
    return model


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one): python -m pytest -m cuda")
