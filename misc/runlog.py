"""Run log (console + <work_dir>/run.log) and per-step wall time."""
import logging
import os
import time
from contextlib import contextmanager

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(log_path=None, level=logging.INFO):
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 reports and writes the log
        level, log_path = logging.WARNING, None
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        root.addHandler(console)
    if log_path:
        log_path = os.path.abspath(log_path)
        for h in list(root.handlers):  # one file handler: the current run's log
            if isinstance(h, logging.FileHandler):
                root.removeHandler(h)
                h.close()
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)


@contextmanager
def step_timer(name):
    log = logging.getLogger("run_sample")
    log.info("step %s: start", name)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        log.info("step %s: failed after %.1f s", name, time.perf_counter() - start)
        raise
    log.info("step %s: done in %.1f s", name, time.perf_counter() - start)


def log_to_file(logger, text, level=logging.ERROR):
    """Write `text` to the run log only: the console gets the error once, from the `error:` line of SystemExit."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logger.makeRecord(logger.name, level, __file__, 0, "%s", (text,), None))


def log_traceback_to_file(logger):
    """Write the exception being handled, with its traceback, to the run log only (the console gets one line)."""
    import traceback
    log_to_file(logger, traceback.format_exc().rstrip())


class Scalars:
    """TensorBoard scalars of one training step under <work_dir>/tb/<name> (--tensorboard true), written where the
    step already reads its numbers on the host (no extra syncs); a no-op without the flag and on ranks > 0.
    tensorboard is an optional dependency: without it the flag fails at once, naming the install command."""

    def __init__(self, args, name):
        self.writer = None
        if getattr(args, "tensorboard", False) and int(os.environ.get("RANK", 0)) == 0:
            self.writer = summary_writer(os.path.join(args.work_dir, "tb", name))

    def add(self, step, **values):
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), int(step))

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def summary_writer(log_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from misc.fileio import DataError
        raise DataError("--tensorboard true needs the tensorboard package: pip install tensorboard "
                        "(or run with --tensorboard false)") from None
    return SummaryWriter(log_dir=log_dir)


def check_tensorboard(args):
    """Fail before any work when --tensorboard true cannot write."""
    if getattr(args, "tensorboard", False):
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            from misc.fileio import DataError
            raise DataError("--tensorboard true needs the tensorboard package: pip install tensorboard "
                            "(or run with --tensorboard false)") from None
