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
        out = [(n, m) for n, m, _ in STEPS if n in args.only]
    else:
        out = []
        for name, module, default in STEPS:
            flag = getattr(args, f"{name}_pass")
            on = flag if flag is not None else (default(args) if callable(default) else default)
            if on:
                out.append((name, module))
    idle = [n for n in args.overwrite if n not in {name for name, _ in out}]
    if idle:  # an overwrite that would silently do nothing
        chosen = f"--only {','.join(args.only)}" if args.only else "the steps this command runs"
        raise SystemExit(f"error: --overwrite {idle[0]} names a step that is not among {chosen}; add it to --only "
                         f"(or drop it from --overwrite)")
    return out


LIST_FLAGS = ("train_list", "infer_list", "eval_list", "seg_train_list", "seg_infer_list", "seg_eval_list")


def check_given_lists(args):
    """The id lists given on the command line are read now (missing, binary, empty, duplicate ids), not when the
    step that reads one comes, minutes or hours later."""
    from misc.datasets import load_id_list
    given = {a.lstrip("-").split("=")[0] for a in getattr(args, "_argv", ()) if a.startswith("--")}
    for flag in LIST_FLAGS:
        if flag in given:
            load_id_list(getattr(args, flag), f"--{flag}")


# (flag, checkpoint whose settings record holds the value, key in its settings): a later command that does not
# give the flag takes the backbone weights the first one trained with, instead of the default 'imagenet' (which
# downloads, and fails offline). --backbone_weights serves train_irn and train_aff too (PSA's ResNet-50).
RECORDED_WEIGHTS = (("backbone_weights", "cam_weights_path", "backbone_weights"),
                    ("seg_backbone_weights", "deeplab_weights_path", "init"))


def take_recorded_weights(args):
    from misc import resume
    given = {a.lstrip("-").split("=")[0] for a in getattr(args, "_argv", ()) if a.startswith("--")}
    for flag, path_attr, key in RECORDED_WEIGHTS:
        if flag in given or getattr(args, flag) != "imagenet":
            continue
        record = resume.read_record(getattr(args, path_attr), "file")
        value = (record or {}).get("settings", {}).get(key)
        if value and value not in ("imagenet", "round1"):
            setattr(args, flag, value)
            logging.getLogger("run_sample").info("--%s %s (from the record of %s; give the flag to change it)",
                                                 flag, value, getattr(args, path_attr))


TRAINING_STEPS = ("train_cam", "train_irn", "train_aff", "train_deeplab", "retrain_deeplab")


def multi_gpu_note(args, step_names, gpu_count=None):
    """What a plain `python run_sample.py` does on a multi-GPU machine (not launched by torchrun): the per-image
    steps start one worker per visible GPU, the training steps train in one process on one GPU."""
    import torch
    if not str(args.device).startswith("cuda") or ":" in str(args.device) or "WORLD_SIZE" in os.environ:
        return None
    gpu_count = torch.cuda.device_count() if gpu_count is None else gpu_count
    training = [n for n in step_names if n in TRAINING_STEPS]
    if gpu_count < 2 or not training:
        return None
    return (f"{gpu_count} GPUs and no torchrun: the per-image steps use one worker per GPU, but {', '.join(training)} "
            f"train(s) in one process on one GPU; `torchrun --standalone --nproc_per_node {gpu_count} run_sample.py "
            f"...` trains with DDP on all of them")


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
    check_given_lists(args)
    take_recorded_weights(args)
    note = multi_gpu_note(args, [name for name, _ in steps])
    if note:
        log.warning("%s", note)
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
        runlog.check_tensorboard(args)
        run_steps(args)
    except DataError as e:  # printed once, on the console by SystemExit; the log file gets it too
        runlog.log_to_file(log, f"error: {e}")
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        runlog.log_to_file(log, "error: interrupted; finished outputs are kept and a rerun resumes")
        raise SystemExit("error: interrupted; finished outputs are kept and a rerun resumes")
    except Exception as e:  # one line on the console, the traceback in run.log
        log.debug("traceback", exc_info=True)
        runlog.log_traceback_to_file(log)
        lines = str(e).strip().splitlines() or [""]
        first = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300 else "")
        raise SystemExit(f"error: {type(e).__name__}: {first} (traceback in {os.path.join(args.work_dir, 'run.log')})")


if __name__ == "__main__":
    main()
