"""The GPU fast paths, checked on the CPU: bf16 autocast (torch.autocast("cpu")) through one RIB image and a few
DeepLab iterations, channels-last, --rib_compile (inductor on the CPU), a host-sync and tensor-device audit of the
hot loops, and numpy 2 / torch deprecation hygiene.

The steps' `autocast(device, amp)` is a no-op on the CPU (bf16 is slower than fp32 there), so these tests swap in a
CPU bf16 autocast: the code between the casts, the `.float()` before every reduction, is exactly what runs on CUDA.
Tolerances, with what this 2-core CPU measured (random classifiers, see each test):
* RIB, bf16 vs fp32 through K = 1 step (two CAMs summed): CAM within 5% of its peak (measured 0.5-1.3%), seeds equal
  on >= 90% of the pixels (measured 94%: a random classifier's maps are flat, its classes nearly tie), loss within
  3% (measured 1.5%);
* DeepLab, two iterations: loss within 2% (measured 0.03-0.1%), argmax of the prediction equal on >= 97% of the
  pixels (measured 100%), probabilities within 0.05 (measured 0.022).
"""
import contextlib
import functools
import os
import re
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
import torch

from conftest import REPO

from misc.cams import resize_and_sum
from misc.imutils import classification_augment, scale_pyramid
from misc.fileio import load_image_rgb
from step import rib
from voc12.synthetic import make_dataset


def cpu_bf16_autocast(device, enabled):
    """Stands in for misc.torchutils.autocast: the same casts on the CPU as the step makes on CUDA."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def synthetic_root():
    """A small synthetic VOC-format dataset (4 classes, 96x96), made once per test process: (root, ids)."""
    root = tempfile.mkdtemp(prefix="gpu_paths_")
    data = make_dataset(root, num_train=8, num_eval=2, size=96, seed=1)
    return root, open(data["train"]).read().split()


def synthetic_images():
    root, ids = synthetic_root()
    return [load_image_rgb(os.path.join(root, "JPEGImages", i + ".jpg")) for i in ids]


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_images()


@pytest.fixture(autouse=True)
def flushed_denormals():
    """As step.rib's CPU workers and DeepLab's CPU training: a random network's denormals are 3-4x slower."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def rib_inputs(images, num_classes=4, others=1, crop=64, k_max=4, iters=1):
    label = torch.zeros(num_classes)
    label[[0, 2]] = 1
    cfg = rib.RIBConfig(iters=iters, cam_scales=(1.0,), loss_scales=(1.0,), explode_stop=False)
    target = {"img": [torch.from_numpy(p) for p in scale_pyramid(images[0], cfg.forward_scales)], "label": label}
    rng = np.random.default_rng(0)
    batches = []
    for k in range(k_max):
        imgs = np.stack([classification_augment(images[1 + (k * others + n) % (len(images) - 1)], crop, rng,
                                                (64, 96)) for n in range(others)])
        lab = torch.zeros(others, num_classes)
        lab[:, 1] = 1
        batches.append({"img": torch.from_numpy(imgs), "label": lab})
    return cfg, target, batches


def fresh_classifier(num_classes=4, seed=0):
    from net.resnet50 import calibrate_batchnorm
    from net.resnet50_cam import Net
    torch.manual_seed(seed)
    model = Net(num_classes)
    calibrate_batchnorm(model, [torch.randn(2, 3, 64, 64)])
    return model


def run_rib_image(images, forward_wrap=None, channels_last=False, amp=False, model=None, **inputs):
    cfg, target, batches = rib_inputs(images, **inputs)
    model = model or fresh_classifier()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = model.class_maps if forward_wrap is None else forward_wrap(model.class_maps)
    result = rib.rib_finetune_image(model, target, lambda k: batches[k], cfg, "cpu", forward, amp=amp,
                                    channels_last=channels_last)
    return result, model


def seeds(maps, bg=0.25):
    m = maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    return torch.cat([torch.full_like(m[:1], bg), m]).argmax(0)


# --- bf16 -----------------------------------------------------------------------------------------------------


def test_rib_bf16_autocast_agrees_with_fp32_and_keeps_reductions_in_fp32(synthetic, monkeypatch):
    recorded = {"forward": set(), "pool": set(), "loss": []}
    real_pool, real_loss = rib.gndrp_pool, rib.finetune_loss

    def pool(maps, labels, tau, norm):  # GNDRP's threshold and sums: fp32 maps in, fp32 logits out
        recorded["pool"].add(maps.dtype)
        out = real_pool(maps, labels, tau, norm)
        recorded["pool"].add(out.dtype)
        return out

    def loss(logits, labels, *a):
        recorded["pool"].add(logits.dtype)
        out = real_loss(logits, labels, *a)
        recorded["loss"].append((out.dtype, float(out.detach())))
        return out

    def wrap(fn):
        def forward(x):
            out = fn(x)
            recorded["forward"].add(out.dtype)
            return out
        return forward

    monkeypatch.setattr(rib, "gndrp_pool", pool)
    monkeypatch.setattr(rib, "finetune_loss", loss)
    fp32, _ = run_rib_image(synthetic, wrap)
    fp32_loss = recorded["loss"][:]
    assert recorded["forward"] == {torch.float32}
    recorded.update(forward=set(), pool=set(), loss=[])
    monkeypatch.setattr(rib, "autocast", cpu_bf16_autocast)
    bf16, _ = run_rib_image(synthetic, wrap, amp=True)
    assert recorded["forward"] == {torch.bfloat16}  # the forward really ran in bf16
    assert recorded["pool"] == {torch.float32}  # but GNDRP and the loss see fp32
    assert all(dt == torch.float32 for dt, _ in recorded["loss"])
    assert bf16.terms == fp32.terms and bf16.updates == fp32.updates == 1
    for a, b in zip(fp32.sums, bf16.sums):
        assert b.dtype == torch.float32  # the CAM sum over K is fp32
        rel = float((a - b).abs().max() / a.abs().max())
        (_, high_a), (_, high_b) = resize_and_sum([a], (96, 96)), resize_and_sum([b], (96, 96))
        same = float((seeds(high_a) == seeds(high_b)).float().mean())  # at the image's size, as eval_cam
        print(f"RIB bf16 vs fp32: max |dCAM| / peak {rel:.4f}, seeds equal {same:.4f}, map {tuple(a.shape)}")
        assert rel < 0.05, rel
        assert same >= 0.9, same
    for (_, la), (_, lb) in zip(fp32_loss, recorded["loss"]):
        print(f"RIB loss fp32 {la:.5g} bf16 {lb:.5g}")
        assert abs(la - lb) <= 0.03 * abs(la) + 1e-3, (la, lb)


def deeplab_iterations(amp, channels_last=False, iters=2, seed=0):
    from deeplab.losses import balanced_cross_entropy, msc_loss
    from deeplab.model import build_deeplab, parameter_groups
    from deeplab.train import RANDOM_INIT_BRANCH_SCALE, damp_residual_branches
    from net.resnet50 import calibrate_batchnorm
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 33, 33, generator=g)
    model = build_deeplab(5, "resnet50")
    calibrate_batchnorm(model.base, [x])  # as train_deeplab's random init: calibrated BN, damped branches
    damp_residual_branches(model.base.backbone, RANDOM_INIT_BRANCH_SCALE)
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameter_groups(model, 1e-4, 5e-4), lr=1e-4, momentum=0.9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 5, (1, 33, 33), generator=g, dtype=torch.uint8)
    labels[:, :, :8] = 255
    losses = []
    for _ in range(iters):
        optimizer.zero_grad(set_to_none=True)
        with cpu_bf16_autocast("cpu", amp):
            outputs = model(x)
        loss = msc_loss(outputs, labels, balanced_cross_entropy)
        assert loss.dtype == torch.float32
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses, [o.dtype for o in outputs]


def test_deeplab_bf16_autocast_agrees_with_fp32(synthetic, monkeypatch):
    from deeplab import predict
    m32, l32, _ = deeplab_iterations(amp=False)
    m16, l16, dtypes = deeplab_iterations(amp=True)
    assert set(dtypes) == {torch.bfloat16}
    print(f"DeepLab losses fp32 {l32} bf16 {l16}")
    for a, b in zip(l32, l16):
        assert abs(a - b) <= 0.02 * abs(a), (l32, l16)
    img = synthetic[0]
    p32 = predict.probabilities(predict.predict_logits(m32, img, "cpu", (1.0, 0.5), True, False), img.shape[:2])
    monkeypatch.setattr(predict, "autocast", cpu_bf16_autocast)
    logits16 = predict.predict_logits(m16, img, "cpu", (1.0, 0.5), True, True)
    p16 = predict.probabilities(logits16, img.shape[:2])
    assert logits16.dtype == p16.dtype == torch.float32  # the softmax for the CRF is fp32
    assert torch.allclose(p16.sum(0), torch.ones(img.shape[:2]), atol=1e-5)
    same, worst = float((p32.argmax(0) == p16.argmax(0)).float().mean()), float((p32 - p16).abs().max())
    print(f"DeepLab prediction bf16 vs fp32: argmax equal {same:.4f}, max |dp| {worst:.4f}")
    assert same >= 0.97
    assert worst < 0.05


# --- channels-last and compile -------------------------------------------------------------------------------


def test_channels_last_equals_contiguous(synthetic):
    plain, _ = run_rib_image(synthetic)
    cl, _ = run_rib_image(synthetic, channels_last=True)
    for a, b in zip(plain.sums, cl.sums):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())), float((a - b).abs().max())
    m_a, l_a, _ = deeplab_iterations(amp=False, iters=1)
    m_b, l_b, _ = deeplab_iterations(amp=False, channels_last=True, iters=1)
    assert np.allclose(l_a, l_b, rtol=1e-4)
    x = torch.randn(1, 3, 33, 33, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = m_a(x, (1.0,)), m_b(x.contiguous(memory_format=torch.channels_last), (1.0,))
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max()))


def test_rib_compile_inductor_matches_eager(synthetic, monkeypatch):
    """step.rib's --rib_compile wiring (torch.compile of class_maps, used with and without gradient, backward
    through the compiled graph) on the project's own blocks: a ResNet of 1 Bottleneck per stage instead of
    3/4/6/3 (FixedBatchNorm, dilation, the frozen stem), so that inductor's CPU compile stays under a minute or
    two here; the full ResNet-50 is compiled by tests/test_cuda.py and scripts/gpu_check.py part b on a GPU."""
    from net import resnet50_cam
    from net.resnet50 import ResNet
    from torch._inductor import config as inductor_config
    monkeypatch.setattr(resnet50_cam, "resnet50", lambda strides: ResNet([1, 1, 1, 1], strides))
    monkeypatch.setattr(inductor_config, "compile_threads", 1)  # no worker pool on a 2-core machine
    assert any(os.access(os.path.join(d, c), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)
               for c in ("g++", "c++", "cc")), "inductor on the CPU needs a C++ compiler (apt-get install g++)"
    torch._dynamo.reset()
    # the other images' batch has the target pair's shape (2, 3, 96, 96): two graphs (with and without gradient)
    # instead of a recompile per shape, which keeps the CPU compile time down
    same_shape = {"others": 2, "crop": 96}
    eager, _ = run_rib_image(synthetic, model=fresh_classifier(), **same_shape)
    compiled, _ = run_rib_image(synthetic, lambda fn: torch.compile(fn, dynamic=None), model=fresh_classifier(),
                                **same_shape)
    assert compiled.terms == eager.terms
    for a, b in zip(eager.sums, compiled.sums):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max())), float((a - b).abs().max())


# --- numpy 2 / Python 3.12 / torch 2.11 idioms ----------------------------------------------------------------

REMOVED_NUMPY = re.compile(r"\bnp\.(float|int|bool|object|str|long|unicode|complex|product|cumproduct|sometrue|"
                           r"alltrue|in1d|row_stack|trapz|round_|asfarray|find_common_type|msort|NaN|Inf|PINF|"
                           r"NINF|infty|Infinity|float_|complex_|string_|unicode_|cast|mat)\b(?!\w)")


def test_no_removed_numpy_aliases_or_deprecated_torch_calls():
    """numpy 2 removed aliases, torch calls that 2.x deprecates, Python 3.12 removals (the lent machine's stack)."""
    bad = []
    deprecated_torch = re.compile(r"torch\.cuda\.amp\.(autocast|GradScaler)|torch\.cpu\.amp\.autocast|"
                                  r"torch\.load\((?![^)]*weights_only)|\.type\(torch\.cuda|"
                                  r"torch\.set_default_tensor_type|torch\.testing\.assert_allclose")
    py312 = re.compile(r"datetime\.utcnow|datetime\.utcfromtimestamp|\bdistutils\b|^\s*import imp\b|pkg_resources|"
                       r"locale\.getdefaultlocale|\bast\.(Num|Str|Bytes|NameConstant|Ellipsis)\b")
    for folder in ("misc", "net", "step", "voc12", "coco14", "deeplab", "scripts", "toy", "tests"):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if not name.endswith(".py") or name == "test_gpu_paths.py":
                    continue
                path = os.path.join(dirpath, name)
                for n, line in enumerate(open(path, encoding="utf-8"), 1):
                    code = line.split("#")[0]
                    if REMOVED_NUMPY.search(code) or deprecated_torch.search(code) or py312.search(code):
                        bad.append(f"{os.path.relpath(path, REPO)}:{n}: {line.strip()}")
    for name in ("run_sample.py",):
        for n, line in enumerate(open(os.path.join(REPO, name), encoding="utf-8"), 1):
            if REMOVED_NUMPY.search(line.split("#")[0]):
                bad.append(f"{name}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_hot_paths_raise_no_deprecation_warning(synthetic, monkeypatch):
    """One RIB image (bf16 casts included) and two DeepLab iterations with torch's and numpy's DeprecationWarning /
    FutureWarning turned into errors."""
    monkeypatch.setattr(rib, "autocast", cpu_bf16_autocast)
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.filterwarnings("error", category=category, module=r"(torch|numpy)(\.|$)")
            warnings.filterwarnings("error", category=category, module=r"(misc|net|step|deeplab|voc12)(\.|$)")
        result, _ = run_rib_image(synthetic, amp=True)
        _, losses, _ = deeplab_iterations(amp=False, iters=1)
    assert result.updates == 1 and all(np.isfinite(losses))


def test_make_cam_merges_the_flip_in_fp32_under_bf16(synthetic):
    """make_cam's image + flipped-image sum is made in fp32 from the bf16 maps, as RIB's CAM of theta_0."""
    from misc.cams import multiscale_cam_maps
    from net.resnet50_cam import flip_merged_cam
    model = fresh_classifier().eval()
    pyramid = [torch.from_numpy(p) for p in scale_pyramid(synthetic[0][:64, :64], (1.0,))]
    with torch.no_grad():
        maps = multiscale_cam_maps(model, pyramid, "cpu", False, lambda: cpu_bf16_autocast("cpu", True))
        with cpu_bf16_autocast("cpu", True):
            raw = model.class_maps(pyramid[0])
        assert raw.dtype == torch.bfloat16
        assert maps[0].dtype == torch.float32
        assert torch.equal(maps[0], flip_merged_cam(raw.float()))
        assert not torch.equal(maps[0], flip_merged_cam(raw).float())  # what the bf16 sum would have given
