"""Reproducible CPU numbers for the demo and the toy experiment.

float32 convolutions and matrix products round differently with different kernels: oneDNN, MKL and ATen pick
AVX2, AVX-512 or AMX code (and split reductions by thread count), and training amplifies the last-bit
differences until they show in the second decimal of an mIoU or an HGR. Pinning the kernel family and the thread
count makes the same command print the same numbers on every CPU of that family. The family is AVX-512 (without
AMX) where the CPU has it (the numbers in the README were made so, and AVX2 kernels made the demo 1.5x slower
there), AVX2 otherwise; other architectures only get the thread count. The variables are read when torch's
libraries start, so a process that does not have them yet sets them and re-executes itself (once, before any
work).
"""
import os
import platform
import sys

AVX512_CORE_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl")


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FAMILIES = ("avx512", "avx2")


def pinned_env(family=None):
    """The environment that pins the kernels: `family` avx512 or avx2 (default: REPRO_CPU_KERNELS when it names
    one, else AVX-512 where the CPU has it, AVX2 otherwise). scripts/bench_demo_kernels.py runs the demo under both."""
    env = {"OMP_NUM_THREADS": "2"}  # reductions are split by thread count
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return env
    family = family or os.environ.get("REPRO_CPU_KERNELS")
    if family not in FAMILIES:
        family = "avx512" if all(f in cpu_flags() for f in AVX512_CORE_FLAGS) else "avx2"
    if family == "avx512":
        env.update(ONEDNN_MAX_CPU_ISA="AVX512_CORE",  # oneDNN (convolutions): no AMX / VNNI-bf16 kernels
                   ATEN_CPU_CAPABILITY="avx512",      # ATen's own vectorised kernels
                   MKL_CBWR="AVX512")                 # MKL's conditional numerical reproducibility
    else:
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="AVX2")
    return env


def pinned(env=None):
    env = pinned_env() if env is None else env
    return all(os.environ.get(k) == v for k, v in env.items())


def reexec_pinned(argv=None):
    """Re-execute this Python command with pinned_env() unless it already runs with it (REPRO_CPU_KERNELS=native
    asks for the machine's own kernels, =avx2 or =avx512 for that family)."""
    env = pinned_env()
    if pinned(env) or os.environ.get("REPRO_CPU_KERNELS") == "native":
        return
    argv = sys.argv if argv is None else argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + list(argv), {**os.environ, **env})
