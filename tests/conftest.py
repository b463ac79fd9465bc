"""Shared test helpers: the real VOC and MNIST samples shipped in tests/data (and the larger shared data when
present), args built through run_sample's own parser, a tiny random classifier checkpoint, and the CI skip rule.

Real data. The real-data tests run on tests/data/voc12_sample (15 VOC train images with masks, 6 without) and
tests/data/mnist_sample (tests/data/SOURCES.md), so a fresh clone runs them all. The larger shared data
(RIB_SHARED_DATA, default <repo>/../shared/data) adds extended checks: a test that takes the `voc_data` or
`mnist_data` fixture runs once per data set found ([sample] always, [shared] when present, marker shared_data); the
pytest header says which were found. RIB_SHARED_DATA=none runs as a fresh clone; a RIB_SHARED_DATA that names a
folder without the data stops the run.

CI rule: with CI=true (.ci/run's environment) any skip of a test not marked `cuda` fails the run.
"""
import os
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLE_VOC = REPO / "tests" / "data" / "voc12_sample"
SAMPLE_MNIST = REPO / "tests" / "data" / "mnist_sample"

_SHARED_ENV = os.environ.get("RIB_SHARED_DATA", "")
SHARED_DATA = None if _SHARED_ENV.lower() == "none" else Path(_SHARED_ENV or REPO.parent / "shared" / "data")
SHARED_VOC = SHARED_DATA / "voc12_subset" if SHARED_DATA else None
SHARED_MNIST = SHARED_DATA / "mnist" if SHARED_DATA else None
if SHARED_VOC is not None and not (SHARED_VOC / "JPEGImages").is_dir():
    SHARED_VOC = None
if SHARED_MNIST is not None and not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
    SHARED_MNIST = None

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def read_ids(root, name):
    return (Path(root) / "ImageSets" / name).read_text().split()


@pytest.fixture(scope="session")
def voc_root():
    """The shipped real VOC sample (always present)."""
    return str(SAMPLE_VOC)


def train_subset_ids(n=None):
    """The first n VOC train ids with image + mask of the shipped sample (the first ids of the shared subset)."""
    ids = read_ids(SAMPLE_VOC, "train_subset.txt")
    if n is not None and n > len(ids):
        raise ValueError(f"the shipped VOC sample has {len(ids)} train ids with masks, a test asked for {n}")
    return ids[:n] if n else ids


def _voc_data(name, root):
    return types.SimpleNamespace(name=name, root=str(root), train_ids=read_ids(root, "train_subset.txt"),
                                 train_aug_ids=read_ids(root, "train_aug_subset.txt"))


def pytest_generate_tests(metafunc):
    """`voc_data` / `mnist_data`: one run on the shipped sample, one more on the shared data when it is present."""
    for fixture, sample, shared, make in (
            ("voc_data", SAMPLE_VOC, SHARED_VOC, _voc_data),
            ("mnist_data", SAMPLE_MNIST, SHARED_MNIST, lambda name, root: types.SimpleNamespace(name=name,
                                                                                                root=str(root)))):
        if fixture in metafunc.fixturenames:
            params = [pytest.param(make("sample", sample), id="sample")]
            if shared is not None:
                params.append(pytest.param(make("shared", shared), id="shared", marks=pytest.mark.shared_data))
            metafunc.parametrize(fixture, params)


def miou_by_hand(pairs, num_classes=21):
    """mIoU (fraction) of [(gt, pred)] label maps, written out: 255 in gt ignored, a confusion by bincount, the
    mean IoU of the classes in the ground truth or the predictions. The tests' independent check of the metric."""
    import numpy as np
    conf = np.zeros((num_classes, num_classes), np.int64)
    for gt, pred in pairs:
        valid = gt != 255
        conf += np.bincount(gt[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64),
                            minlength=num_classes ** 2).reshape(num_classes, num_classes)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    return float(np.mean(np.diag(conf)[union > 0] / union[union > 0]))


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
    config.addinivalue_line("markers", "shared_data: an extended check on the shared data (RIB_SHARED_DATA, "
                                       "default ../shared/data); generated only when that data is present")
    if _SHARED_ENV and _SHARED_ENV.lower() != "none" and SHARED_VOC is None and SHARED_MNIST is None:
        raise pytest.UsageError(f"RIB_SHARED_DATA={_SHARED_ENV} holds neither voc12_subset/JPEGImages nor "
                                "mnist/t10k-images-idx3-ubyte.gz: point it at the shared data folder, or set "
                                "RIB_SHARED_DATA=none to test on the shipped samples only")


def pytest_report_header(config):
    where = SHARED_DATA if SHARED_DATA else "RIB_SHARED_DATA=none"
    found = [n for n, p in (("voc12_subset", SHARED_VOC), ("mnist", SHARED_MNIST)) if p is not None]
    shared = (f"shared data {where}: {', '.join(found)} (the [shared] extended checks run)" if found else
              f"shared data not found ({where}): only the [sample] variants run, no [shared] ones")
    rule = "CI=true: a skip outside the cuda tests fails" if in_ci() else "not CI: skips are reported as skips"
    return [f"real data: tests/data/voc12_sample, tests/data/mnist_sample; {shared}", rule]


def _ci_skip_failure(report, what):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"{what} skipped under CI=true, which allows only the cuda tests to skip "
                       f"(tests/conftest.py); skip reason: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skip of a test not marked cuda is a failure (an xfail is not a skip)."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("cuda") is None:
        _ci_skip_failure(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (pytest.skip(allow_module_level=True), importorskip)."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and collector.get_closest_marker("cuda") is None:
        _ci_skip_failure(report, collector.nodeid)
