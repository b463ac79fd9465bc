"""Optimiser, seeding and device helpers shared by the training steps."""
import contextlib
import os
import random

import numpy as np
import torch


class PolyOptimizer(torch.optim.SGD):
    """SGD with IRN's poly learning-rate decay: lr_k = lr_0 * (1 - k / max_step) ** 0.9, applied before step k.

    IRN's PolyOptimizer (used unchanged by RIB for the classifier, RIB fine-tuning and IRNet) calls
    `SGD.__init__(params, lr, weight_decay)`, which lands the weight decay in SGD's *momentum* slot: momentum is
    1e-4 (effectively none) and the decay is set only per parameter group. The published numbers were made that
    way, so `official_momentum_bug=True` (the default everywhere) reproduces it; False uses `momentum`.
    """

    def __init__(self, param_groups, lr, weight_decay, max_step, momentum=0.9, official_momentum_bug=True,
                 power=0.9):
        effective_momentum = weight_decay if official_momentum_bug else momentum
        super().__init__(param_groups, lr=lr, momentum=effective_momentum, weight_decay=weight_decay)
        self.max_step = max(int(max_step), 1)
        self.power = power
        self.global_step = 0
        self.initial_lrs = [g["lr"] for g in self.param_groups]

    def step(self, closure=None):
        if self.global_step < self.max_step:
            factor = (1 - self.global_step / self.max_step) ** self.power
            for group, lr0 in zip(self.param_groups, self.initial_lrs):
                group["lr"] = lr0 * factor
        out = super().step(closure)
        self.global_step += 1
        return out


def poly_param_groups(backbone_params, head_params, lr, weight_decay, head_lr_mult=10.0):
    """Backbone at lr, newly added layers at head_lr_mult x lr (IRN/RIB: 10x on the classifier)."""
    return [{"params": backbone_params, "lr": lr, "weight_decay": weight_decay},
            {"params": head_params, "lr": head_lr_mult * lr, "weight_decay": weight_decay}]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def resolve_device(name):
    """'cuda' / 'cuda:1' / 'cpu'; None = cuda when available."""
    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    from misc.errors import DataError
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine; use --device cpu (or auto)")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0.."
                        f"cuda:{torch.cuda.device_count() - 1})")
    return name


def autocast(device, enabled):
    """bf16 autocast on CUDA when enabled; a no-op context on CPU (bf16 on CPU is slower than fp32 here)."""
    if enabled and str(device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x, device, channels_last=False):
    """Move an image batch to the device (non-blocking from pinned memory), channels-last when asked."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def bind_worker(device, cpu_processes):
    """Set up a worker process for `device`: make it the current CUDA device (when it names one), or on the CPU take
    this worker's share of the cores, one of `cpu_processes` (set_cpu_threads)."""
    if str(device).startswith("cuda"):
        if torch.device(device).index is not None:
            torch.cuda.set_device(torch.device(device))
    else:
        set_cpu_threads(cpu_processes)


def set_cpu_threads(num_processes):
    """Threads of one of `num_processes` CPU workers: OMP_NUM_THREADS when set, else the cores split among them
    (no oversubscription). oneDNN's results depend on the thread count, so bit-identical CPU outputs across
    worker counts need a fixed count: set OMP_NUM_THREADS."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1) // max(1, num_processes)
    torch.set_num_threads(max(1, threads))


@contextlib.contextmanager
def denormals_flushed(enabled=True):
    """Flush denormal floats to zero on the CPU while the block runs: a randomly initialised backbone (tests, the
    demo) produces them by the million, and x86 handles each one ~100x slower than a normal float."""
    if not enabled:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
