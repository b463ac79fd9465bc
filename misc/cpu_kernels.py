"""Reproducible CPU numbers for the demo and the toy experiment.

float32 convolutions and matrix products round differently on different CPUs: oneDNN, MKL and ATen pick AVX2 or
AVX-512 kernels (and split reductions by thread count), and training amplifies the last-bit differences until
they show in the second decimal of an mIoU or an HGR. Pinning the kernels to the AVX2 level (which every x86-64
CPU of the last decade has) and the thread count makes the same command print the same numbers on any such
machine. The variables are read when torch's libraries start, so a process that does not have them yet sets them
and re-executes itself (once, before any work).
"""
import os
import sys

PINNED_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",   # oneDNN (convolutions): no AVX-512 / AMX kernels
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's own vectorised kernels
    "MKL_CBWR": "AVX2",             # MKL's conditional numerical reproducibility (matrix products)
    "OMP_NUM_THREADS": "2",         # reductions are split by thread count
}


def pinned():
    return all(os.environ.get(k) == v for k, v in PINNED_ENV.items())


def reexec_pinned(argv=None):
    """Re-execute this Python command with PINNED_ENV unless it already runs with it (or REPRO_CPU_KERNELS=native
    asks for the machine's own kernels)."""
    if pinned() or os.environ.get("REPRO_CPU_KERNELS") == "native":
        return
    env = {**os.environ, **PINNED_ENV}
    argv = sys.argv if argv is None else argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + list(argv), env)
