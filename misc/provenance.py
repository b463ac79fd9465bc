"""What made an output: every step records the settings of its outputs beside them, and a rerun with other
settings stops instead of silently keeping (or mixing in) the old outputs.

The record of an output folder is `<folder>/settings.json`; of a file output (a checkpoint) `<name>.settings.json`
beside it. It holds
    step, settings   the values that decide the outputs (compared on every rerun),
    inputs           the record ids of the outputs this one was made from (a retrained classifier makes the CAMs
                     made from the old one stale, even with the same CAM settings),
    id               a fresh id each time the outputs are started from scratch,
    run              the command, all flags, the git commit, the versions and the date of the run (for reading,
                     not compared).
Resuming with the same settings keeps the record (and its id); `--overwrite <step>` deletes the step's outputs
and starts again. Evaluation JSONs embed `run_info(args)` and the records of what they scored.
"""
import datetime
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import uuid

from misc.fileio import DataError, remove_stale_temps, save_json

log = logging.getLogger(__name__)
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record_path(output, kind):
    if kind == "dir":
        return os.path.join(output, "settings.json")
    return os.path.splitext(output)[0] + ".settings.json"


def read_record(output, kind="dir"):
    path = record_path(output, kind)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"settings record {path} is unreadable ({e}); delete it, or remake the outputs with "
                        f"--overwrite") from e


def file_digest(path, flag="--train_list"):
    """Short hash of the ids of a list file: a list given by another path, or with CRLF line ends or blank lines,
    but with the same ids in the same order is the same list."""
    from misc.datasets import load_id_list
    return hashlib.sha1("\n".join(load_id_list(path, flag)).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def git_commit():
    try:
        out = subprocess.run(["git", "-C", REPO_DIR, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        commit = out.stdout.strip() or None
        if commit:
            dirty = subprocess.run(["git", "-C", REPO_DIR, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def versions():
    import numpy
    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "cuda": torch.version.cuda}


def jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def run_info(args):
    """The run's command, flags, commit, versions and date, as saved with results."""
    return {"command": " ".join(sys.argv), "flags": jsonable({k: v for k, v in vars(args).items()
                                                              if not k.startswith("_")}),
            "git_commit": git_commit(), "versions": versions(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node()}


def differences(old, new, prefix=""):
    """[(name, old value, new value)] of the keys whose values differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if jsonable(a) != jsonable(b):
            out.append((prefix + key, a, b))
    return out


def _rank():
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def remove_outputs(output, kind):
    if kind == "dir" and os.path.isdir(output):
        shutil.rmtree(output)
    elif kind == "file":
        for path in (output, record_path(output, kind)):
            if os.path.isfile(path):
                os.remove(path)


def prepare(args, step, output, settings, inputs=(), kind="dir", extra_outputs=()):
    """Before a step writes `output`: apply --overwrite, compare with the recorded settings, write the record.

    settings: {name: value} deciding the outputs; inputs: [(name, output path, kind)] of upstream outputs whose
    record ids are part of the comparison. extra_outputs: more (path, kind) that --overwrite removes with it.
    Returns the record. Raises DataError when the existing outputs were made with other settings.
    """
    rank, world = _rank()
    settings = jsonable(settings)
    input_ids, input_made, input_paths = {}, {}, {}
    for name, path, input_kind in inputs:
        record = read_record(path, input_kind)
        input_ids[name] = record["id"] if record else None
        input_paths[name] = path
        if record:  # for reading only: what changed when an input was remade (not compared)
            input_made[name] = {"date": (record.get("run") or {}).get("date"), "settings": record.get("settings")}
    if step in (getattr(args, "overwrite", None) or ()):
        if rank == 0 and not getattr(args, "_overwritten", {}).get(step):
            for path, path_kind in ((output, kind), *extra_outputs):
                remove_outputs(path, path_kind)
            log.info("%s: --overwrite: removed the old outputs %s", step, output)
        args._overwritten = {**getattr(args, "_overwritten", {}), step: True}  # once per run, not per call
        _barrier(args, world)
    existing = read_record(output, kind)
    has_outputs = (os.path.isdir(output) and any(n != "settings.json" and not n.startswith(".")
                                                 for n in os.listdir(output))) if kind == "dir" \
        else os.path.isfile(output)
    if existing is not None and not has_outputs:
        existing = None  # nothing was made under the old settings: nothing to protect
    if existing is not None:
        diff = differences(existing.get("settings", {}), settings)
        changed_inputs = differences(existing.get("inputs", {}), input_ids)
        if diff or changed_inputs:
            shown = [f"{name} {_short(a)} (now {_short(b)})" for name, a, b in diff[:6]]
            shown += [input_change(name, input_paths.get(name), (existing.get("inputs_made") or {}).get(name),
                                   input_made.get(name)) for name, _, _ in changed_inputs]
            more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
            shown = "; ".join(shown)
            raise DataError(f"{output} was made with other settings: {shown}{more}. Use another --work_dir to "
                            f"keep both, or add --overwrite {step} to replace it")
        record = existing
    else:
        if has_outputs:
            log.warning("%s: %s holds outputs without a settings record (an older version of this code?); "
                        "keeping them and recording the current settings (--overwrite %s to remake them)",
                        step, output, step)
        record = {"step": step, "id": uuid.uuid4().hex[:16], "settings": settings, "inputs": input_ids,
                  "inputs_made": input_made}
    record["run"] = run_info(args)
    if rank == 0:
        if kind == "dir":
            os.makedirs(output, exist_ok=True)
            remove_stale_temps(output)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
            remove_stale_temps(os.path.dirname(os.path.abspath(output)))
        save_json(record_path(output, kind), record)
    _barrier(args, world)
    return record


def input_change(name, path, then, now):
    """Readable words for an input whose record id changed: which file, when each was made, which of its
    settings differ (records of older versions lack `inputs_made`: then only the new date is known)."""
    where = f"input {name} ({path})" if path else f"input {name}"
    if now is None:
        return f"{where} has no settings record now"
    text = f"{where} was remade on {now.get('date') or 'an unknown date'}"
    if then:
        text += f" (these outputs come from the one of {then.get('date') or 'an unknown date'}"
        diff = differences(then.get("settings") or {}, now.get("settings") or {})
        text += (", other settings: " + ", ".join(f"{k} {_short(a)} (now {_short(b)})" for k, a, b in diff[:4])
                 if diff else ", same settings") + ")"
    return text


def _short(value):
    text = json.dumps(jsonable(value))
    return text if len(text) <= 40 else text[:37] + "..."


def _barrier(args, world):
    if world > 1:
        from misc import dist
        dist.init_distributed(args.device)
        dist.barrier()


def describe(output, kind="dir"):
    """The record of an output for evaluation JSONs: step, id, settings, inputs (None when unrecorded)."""
    record = read_record(output, kind)
    if record is None:
        return None
    return {k: record.get(k) for k in ("step", "id", "settings", "inputs")}
