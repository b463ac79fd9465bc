"""RIB pipeline driver (IRN-style): parse every flag (step/flags.py), then run the enabled steps in order (STEPS in
step/__init__.py); --demo first makes the demo's data and settings (step/demo.py). `python run_sample.py --help`
lists every flag, the example commands and the rule for where a default comes from.
"""
import importlib
import logging
import os
import sys
import time

from misc import dist, runlog
from step import EVALUATION_STEPS, STEPS
from step.flags import finalize_args, get_args_parser, parse_args  # noqa: F401 (run_sample.parse_args for scripts)


def enabled_steps(args):
    """[(name, module)] to run: --only when given, else every step whose --<step>_pass is not false and whose
    default says on."""
    if args.only:
        explicit_off = [n for n in args.only if getattr(args, f"{n}_pass") is False]
        if explicit_off:
            raise SystemExit(f"error: --only names {explicit_off[0]} but --{explicit_off[0]}_pass is false")
        return [(n, m) for n, m, _ in STEPS if n in args.only]
    out = []
    for name, module, default in STEPS:
        flag = getattr(args, f"{name}_pass")
        on = flag if flag is not None else (default(args) if callable(default) else default)
        if on:
            out.append((name, module))
    return out


def run_steps(args):
    from misc.fileio import check_writable_dir
    from misc.torchutils import resolve_device
    check_writable_dir(args.work_dir)
    runlog.setup(os.path.join(args.work_dir, "run.log"))
    log = logging.getLogger("run_sample")
    args.device = resolve_device(args.device)
    log.info("command: %s", " ".join(sys.argv))
    log.info("dataset %s at %s, device %s, work dir %s", args.dataset, args.data_root, args.device, args.work_dir)
    steps = enabled_steps(args)
    if not steps:
        log.warning("no step enabled")
    total = time.perf_counter()
    rank, world = dist.torchrun_rank_world()
    if world > 1:
        dist.init_distributed(args.device)  # one process group for the run (steps and misc/resume.py barriers)
    for name, module_name in steps:
        if name in EVALUATION_STEPS and rank != 0:
            continue  # under torchrun one rank evaluates; the others wait at the barrier
        module = importlib.import_module(module_name)
        with runlog.step_timer(name):
            module.run(args)
        dist.step_barrier(args.device)
    log.info("all steps done in %.1f s", time.perf_counter() - total)


def main(argv=None):
    from misc.errors import DataError
    args = parse_args(argv)
    if args.demo:
        if argv is None:  # a command, not a call from Python: pin the CPU kernels (misc/cpu_kernels.py)
            from misc.cpu_kernels import reexec_pinned
            reexec_pinned()
        from step import demo
        args = demo.coco_demo_args(args) if args.demo == "coco14" else demo.demo_args(args)
    log = logging.getLogger("run_sample")
    try:
        run_steps(args)
    except DataError as e:
        log.error("%s", e)
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept and a rerun resumes")
        raise SystemExit("error: interrupted")
    except Exception as e:  # one line on the console, the traceback in run.log
        log.debug("traceback", exc_info=True)
        runlog.log_traceback_to_file(log)
        lines = str(e).strip().splitlines() or [""]
        first = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300 else "")
        raise SystemExit(f"error: {type(e).__name__}: {first} (traceback in {os.path.join(args.work_dir, 'run.log')})")


if __name__ == "__main__":
    main()
