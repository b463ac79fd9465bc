"""Sharding per-image work over processes: torchrun ranks across machines, one worker per GPU on a machine.

Per-image steps (RIB fine-tuning, random walk) shard their id list twice: first by torchrun's RANK/WORLD_SIZE
(disjoint shards per rank), then across local workers. Shards are strided (ids[i::n]) like the official split so
that large and small images spread evenly. Training steps use DDP through `init_distributed` instead.
"""
import os
import traceback

import torch
import torch.multiprocessing as mp


def torchrun_rank_world():
    """(rank, world_size) from torchrun's environment; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard(ids, index, count):
    return list(ids)[index::count]


def local_devices(device, num_workers):
    """Devices for `num_workers` local workers: one per visible GPU on CUDA (round-robin if more workers than
    GPUs), all 'cpu' on CPU. num_workers <= 0 means one per GPU (1 on CPU)."""
    if str(device).startswith("cuda"):
        n_gpu = torch.cuda.device_count()
        if ":" in str(device):  # a single explicit GPU
            return [device] * max(1, num_workers)
        count = num_workers if num_workers > 0 else n_gpu
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if "LOCAL_RANK" in os.environ and num_workers <= 0:  # under torchrun each rank already owns a GPU
            return [f"cuda:{local_rank % n_gpu}"]
        return [f"cuda:{i % n_gpu}" for i in range(count)]
    return ["cpu"] * max(1, num_workers)


def cpu_workers(num_workers, num_images):
    """CPU processes for a per-image CPU step: --num_workers, at most one per image, at least one."""
    return ["cpu"] * max(1, min(num_workers, num_images))


def image_workers(device, num_workers, num_images):
    """Devices of a per-image network step: one process per visible GPU on CUDA, else cpu_workers."""
    if str(device).startswith("cuda"):
        return local_devices(device, 0)
    return cpu_workers(num_workers, num_images)


def _worker_entry(worker_idx, worker_fn, shards, devices, args, error_queue):
    from misc.errors import DataError
    try:
        worker_fn(worker_idx, shards[worker_idx], devices[worker_idx], args)
    except BaseException as e:  # report, then exit non-zero
        error_queue.put((isinstance(e, DataError), f"{type(e).__name__}: {e}", traceback.format_exc()))
        raise SystemExit(1)


def run_sharded(worker_fn, ids, args, devices):
    """Run worker_fn(worker_idx, ids_shard, device, args) over this rank's shard of `ids`, one process per entry
    of `devices` (in-process when there is one). A failing worker makes this raise with its message."""
    rank, world = torchrun_rank_world()
    ids = shard(ids, rank, world)
    shards = [shard(ids, i, len(devices)) for i in range(len(devices))]
    if len(devices) == 1:
        worker_fn(0, shards[0], devices[0], args)
        return
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker_entry, args=(i, worker_fn, shards, devices, args, errors))
             for i in range(len(devices))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p for p in procs if p.exitcode != 0]
    if failed:
        reports = []
        while not errors.empty():
            reports.append(errors.get())
        _raise_worker_failure(reports, [p.exitcode for p in failed])


def _raise_worker_failure(reports, exit_codes):
    """Re-raise a worker's failure in the parent: a DataError stays a one-line DataError; anything else becomes a
    RuntimeError whose first line is the worker's error, with the workers' tracebacks logged to the run log."""
    import logging
    from misc.errors import DataError
    log = logging.getLogger(__name__)
    for _, _, trace in reports:
        log.debug("worker traceback:\n%s", trace)
    data_errors = [msg for is_data, msg, _ in reports if is_data]
    if data_errors:
        raise DataError(data_errors[0].split(": ", 1)[1])
    if reports:
        first = reports[0][1]
        for _, _, trace in reports:
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler):
                    handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "worker traceback:\n%s",
                                                  (trace.rstrip(),), None))
        raise RuntimeError(f"a worker process failed: {first}")
    raise RuntimeError(f"worker process(es) failed with exit codes {exit_codes} (killed? out of memory?)")


def init_distributed(device):
    """Join the torchrun process group when launched by torchrun; returns (rank, world_size, device)."""
    rank, world = torchrun_rank_world()
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist
    if str(device).startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return rank, world, device


def start_training(args):
    """What every trainer does first: seed every generator, join torchrun's process group (when launched by it)
    and take this process's device. Returns (rank, world, device, channels_last)."""
    from misc.torchutils import seed_everything
    seed_everything(args.seed)
    rank, world, device = init_distributed(args.device)
    return rank, world, device, str(device).startswith("cuda") and args.channels_last


def per_process_batch(batch_size, num_items, world, step):
    """The per-process batch that keeps the global batch `batch_size`, lowered (with a warning) when the items of
    a process are fewer than one batch."""
    per_process = batch_size // world
    if per_process < 1 or num_items // world < per_process:
        per_process = max(1, min(per_process, num_items // world))
        import logging
        logging.getLogger(__name__).warning("%s: %d images over %d process(es) are fewer than a batch; batch %d "
                                            "per process", step, num_items, world, per_process)
    return per_process


def barrier():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


_STEP_GROUP = None


def step_barrier(device):
    """Under torchrun, wait until every rank has finished the current step: the next step reads the outputs of
    all ranks' shards. A gloo group with a long timeout, as one rank's CRF shard may end hours after another's."""
    global _STEP_GROUP
    _, world = torchrun_rank_world()
    if world == 1:
        return
    import datetime
    import torch.distributed as dist
    init_distributed(device)
    if _STEP_GROUP is None:
        _STEP_GROUP = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=24))
    dist.barrier(group=_STEP_GROUP)


def train_loader(dataset, batch_size, args, rank, world, on_cuda):
    """Shuffled, drop-last training DataLoader seeded by --seed; under torchrun a DistributedSampler gives each
    rank its share. Returns (loader, sampler or None); call sampler.set_epoch(epoch) each epoch."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    sampler = DistributedSampler(dataset, world, rank, seed=args.seed, drop_last=True) if world > 1 else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=args.num_workers, pin_memory=on_cuda, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed),
                        persistent_workers=args.num_workers > 0)
    return loader, sampler


def wrap_ddp(model, world, device):
    """The module to train: DDP under torchrun (never nn.DataParallel), the model itself otherwise."""
    if world == 1:
        return model
    on_cuda = str(device).startswith("cuda")
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if on_cuda else None)
