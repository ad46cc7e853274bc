"""Data-parallel evaluation under ``torchrun`` / ``accelerate launch`` (lm-evaluation-harness style).

Every rank loads the same model and the same items and runs the same code; inside
:func:`sharding` (entered around a suite's model passes) each batched pass forms its batches
exactly as one process would, runs only the batches whose number is ``rank (mod world)``, and
the ranks then exchange what they computed (:func:`merge`), so every rank ends with the whole
result and rank 0 scores it and writes the run. Because a batch holds the same items, in the same
order and padding, as in a single process, the results are those of a single process (up to the
floating-point order of a matmul with another thread count).

Backends: ``gloo`` on CPU, ``nccl`` on CUDA (each rank on ``cuda:$LOCAL_RANK``). Nothing here
imports torch until a process group is needed; a single process never creates one.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

_STATE = {"active": False, "nested": 0}


def world() -> tuple[int, int]:
    """``(rank, world size)`` from the launcher's environment (``RANK``/``WORLD_SIZE``, set by
    torchrun and accelerate launch); ``(0, 1)`` in a single process."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init(device: str = "cpu") -> tuple[int, int]:
    """Join the process group when launched with several ranks (idempotent). Returns ``(rank, world)``."""
    rank, size = world()
    if size <= 1:
        return rank, size
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank, size


def device_for(device: str) -> str:
    """``cuda`` becomes ``cuda:$LOCAL_RANK`` under a multi-rank launch (one accelerator per rank)."""
    rank, size = world()
    if size > 1 and device == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


@contextmanager
def sharding():
    """Within this block (and only here), batched passes split their batches over the ranks."""
    _, size = world()
    before = _STATE["active"]
    _STATE["active"] = size > 1
    try:
        yield
    finally:
        _STATE["active"] = before


def active() -> bool:
    return _STATE["active"] and _STATE["nested"] == 0


def mine(starts):
    """The batch starts (or any per-batch sequence) this rank runs: every ``world``-th one."""
    starts = list(starts)
    if not active():
        return starts
    rank, size = world()
    return starts[rank::size]


@contextmanager
def local():
    """Passes inside run whole on this rank (an outer loop already split the work)."""
    _STATE["nested"] += 1
    try:
        yield
    finally:
        _STATE["nested"] -= 1


def merge(values: list) -> list:
    """Every rank's computed positions of ``values`` (a list that each rank filled where it ran a
    batch and left ``None`` elsewhere), combined in order; unchanged in a single process."""
    if not active():
        return values
    import torch.distributed as dist

    mine_ = [(i, v) for i, v in enumerate(values) if v is not None]
    parts: list = [None] * world()[1]
    dist.all_gather_object(parts, mine_)
    out = list(values)
    for part in parts:
        for i, v in part:
            out[i] = v
    return out


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (``flag`` itself in a single process)."""
    if not active():
        return bool(flag)
    import torch.distributed as dist

    flags: list = [None] * world()[1]
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def barrier() -> None:
    if world()[1] > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def finish() -> None:
    """Leave the process group (end of a multi-rank command)."""
    if world()[1] > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
