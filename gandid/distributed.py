"""How the processes of one run share the work: which share is this process's, and how their
statistics and results meet.

A run is ``world_size`` processes (ranks). Sample ``i`` depends only on (seed, i) and the analyses keep
mergeable statistics (:mod:`gandid.stats`), so splitting is deterministic: each rank streams a
contiguous range of whole batches (the same batches one process would make, so every per-sample
number is computed identically) or a contiguous range of whole unit chunks, and the ranks exchange
what they computed with :meth:`Collective.all_gather` (in rank order, so every rank merges the same
values in the same order and holds the same statistics afterwards).

Passes whose result *decides* what a run does next (dissection thresholds, ACE's insertion values) are
marked ``decides=True``: processes of a group split them like any other, but shards, which cannot wait
for each other, each run them whole.

- :class:`Collective`: one process (the default; every call is trivial).
- :class:`ProcessGroup`: ``torch.distributed`` as ``torchrun`` sets it up (gloo on CPU, NCCL for CUDA
  devices; objects travel through the CPU and land on the receiver's device).
- :class:`Shard`: shard K of N with no process group (``gandid run --shard K/N``): it runs its share of
  each stage up to the stage's first exchange, leaves what it would have sent in
  ``state/exchange/STAGE.pt`` and stops that stage (:class:`ShardStop`).
- :class:`Merge`: ``gandid merge``: one process that starts each stage from shard 0's state, takes
  the shards' contributions at that first exchange and does the rest of the stage itself.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

from .state import exchange_path, load_exchange_file, load_state_file, save_state_file, state_path

# How long a finished process waits for the others to finish too (rank 0 still writing the report).
LEAVE_TIMEOUT = timedelta(minutes=10)


class _Accelerated:
    """A tensor that lived on an accelerator, travelling on the CPU: it lands on the receiver's device."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def _walk(value, leaf):
    if isinstance(value, dict):
        return {k: _walk(v, leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_walk(v, leaf) for v in value)
    return leaf(value)


def pack(value):
    """``value`` (tensors in dicts, lists, tuples) ready to travel: every tensor on the CPU, those that
    were on a GPU marked so that :func:`unpack` puts them on the receiving process's GPU."""
    def leaf(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu() if v.device.type == "cpu" else _Accelerated(v.detach().cpu())
        return v
    return _walk(value, leaf)


def unpack(value, device: str | torch.device = "cpu"):
    """The inverse of :func:`pack` on the receiving side (``device``: this process's device)."""
    def leaf(v):
        if isinstance(v, _Accelerated):
            return v.tensor.to(device) if torch.device(device).type != "cpu" else v.tensor
        return v
    return _walk(value, leaf)


def split_range(total: int, parts: int, part: int) -> range:
    """The ``part``-th of ``parts`` contiguous, balanced slices of range(total) (sizes differ by at most 1)."""
    return range(total * part // parts, total * (part + 1) // parts)


class Collective:
    """One process alone: its share is everything and a gather returns its own value."""

    rank = 0
    world_size = 1
    local_rank = 0
    local_world_size = 1
    stage = ""  # the stage (analysis) running now

    @property
    def is_writer(self) -> bool:
        """The rank that writes the output folder."""
        return self.rank == 0

    @property
    def waits_for_others(self) -> bool:
        """Whether other live processes wait for this one at each exchange (a process group)."""
        return False

    def begin_stage(self, name: str) -> None:
        """A stage (analysis) starts: exchanges from here on belong to it."""
        self.stage = name

    def initial_state(self, local: dict) -> dict:
        """The state a stage starts from, given what this process saved (``local``)."""
        return local

    def share(self, total: int, block: int = 1, decides: bool = False) -> range:
        """This rank's contiguous part of range(total) in whole blocks of ``block`` items (the last block
        may be short): batches of samples, chunks of units."""
        blocks = -(-total // block) if total else 0
        mine = split_range(blocks, self.world_size, self.rank)
        return range(min(total, mine.start * block), min(total, mine.stop * block))

    def all_gather(self, value, decides: bool = False) -> list:
        """Every rank's ``value``, in rank order, on every rank (tensors keep their device kind)."""
        return [value]

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        return value

    def close(self, finished: bool = True) -> None:
        """End the collective; ``finished``: this process completed its run (not an error on the way)."""
        return None

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": None}


class ProcessGroup(Collective):
    """``torch.distributed`` (``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...)."""

    def __init__(self, device: str = "cpu"):
        import torch.distributed as dist

        self.dist = dist
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self.device = process_device(device, self)
        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)
        self.owned = not dist.is_initialized()
        if self.owned:
            backend = "nccl" if device.startswith("cuda") and dist.is_nccl_available() else "gloo"
            dist.init_process_group(backend=backend)
        self.backend = dist.get_backend()
        # Objects go through the CPU: a gloo group (and the object collectives) need no device.
        self.group = dist.new_group(backend="gloo") if self.backend != "gloo" else None

    def initial_state(self, local: dict) -> dict:
        # Rank 0's saved state is the truth for everything the processes share (what they gathered and
        # derived from it), so every process takes the same path through a resumed stage even if one was
        # killed before saving as far as another; each keeps its own stream positions ("tally").
        shared = self.broadcast({k: v for k, v in local.items() if k != "tally"})
        return {**shared, "tally": local.get("tally", {})}

    def all_gather(self, value, decides: bool = False) -> list:
        out = [None] * self.world_size
        self.dist.all_gather_object(out, pack(value), group=self.group)
        return [unpack(v, self.device) for v in out]

    def broadcast(self, value):
        box = [pack(value) if self.rank == 0 else None]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        return unpack(box[0], self.device)

    def close(self, finished: bool = True) -> None:
        if self.owned and self.dist.is_initialized():
            if finished and self.world_size > 1:
                # Leave together. A helper rank that tore down its group and exited while rank 0 was
                # still writing the report aborted at exit now and then ("terminate called without an
                # active exception", gloo: once in 70 two-process runs here, once in CI); a barrier
                # before destroy_process_group is how PyTorch's own tests cured such a teardown flake.
                # Not after an error (the others may be gone), and not forever: a peer that failed after
                # the last exchange never arrives, and not every launcher kills the survivors.
                try:
                    self.dist.monitored_barrier(group=self.group, timeout=LEAVE_TIMEOUT)
                except RuntimeError as exc:
                    print(f"[rank {self.rank}] not every process arrived to finish together ({exc}); "
                          "leaving anyway: this process's share is done", file=sys.stderr)
            self.dist.destroy_process_group()

    @property
    def waits_for_others(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend, "local_world_size": self.local_world_size}


class ShardStop(Exception):
    """A shard reached the first exchange of a stage: its contribution is on disk, the rest is the merge's."""


class Shard(Collective):
    """Shard ``index`` of ``count`` (``gandid run --shard K/N``): no process group and no waiting."""

    def __init__(self, index: int, count: int, out_dir: str | Path):
        self.rank, self.world_size = index, count
        self.out_dir = Path(out_dir)

    @property
    def is_writer(self) -> bool:
        return True  # a shard writes its own folder

    def share(self, total: int, block: int = 1, decides: bool = False) -> range:
        return range(total) if decides else super().share(total, block)

    def all_gather(self, value, decides: bool = False) -> list:
        if decides:
            return [value]
        path = exchange_path(self.out_dir, self.stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        value = _walk(value, lambda v: v.detach().cpu() if isinstance(v, torch.Tensor) else v)
        save_state_file(path, value, "exchange")
        raise ShardStop(self.stage)

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": None, "shard": self.rank}


class Merge(Collective):
    """``gandid merge``: one process standing in for every shard. A stage the shards contributed to
    starts from shard 0's saved state; until the shards' exchange is taken, the stage's split passes
    are left to the shards (empty shares), and that exchange returns the shards' contributions in
    shard order. Everything after it runs here, whole."""

    def __init__(self, shard_dirs: list[str | Path], contributed: set[str]):
        self.shard_dirs = [Path(d) for d in shard_dirs]
        self.contributed = set(contributed)
        self.pending = False

    def begin_stage(self, name: str) -> None:
        super().begin_stage(name)
        self.pending = name in self.contributed

    def initial_state(self, local: dict) -> dict:
        if not self.pending:
            return local
        path = state_path(self.shard_dirs[0], self.stage)
        state = load_state_file(path, self.stage) if path.exists() else {}
        return {k: v for k, v in state.items() if k != "tally"}

    def share(self, total: int, block: int = 1, decides: bool = False) -> range:
        return range(total, total) if self.pending and not decides else range(total)

    def all_gather(self, value, decides: bool = False) -> list:
        if not self.pending or decides:
            return [value]
        self.pending = False
        return [load_exchange_file(exchange_path(folder, self.stage), self.stage) for folder in self.shard_dirs]

    def describe(self) -> dict:
        return {"world_size": len(self.shard_dirs), "backend": None, "merged_from": [str(d) for d in self.shard_dirs]}


def launched_by_torchrun() -> bool:
    """True when the environment describes a process group of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def from_environment(device: str) -> Collective:
    """The collective the environment asks for: a process group under ``torchrun`` (WORLD_SIZE > 1),
    else one process."""
    return ProcessGroup(device) if launched_by_torchrun() else Collective()


def process_device(device: str, collective: Collective) -> str:
    """Each process its own GPU: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a multi-process run."""
    if device == "cuda" and collective.world_size > 1:
        return f"cuda:{collective.local_rank}"
    return device


def split_threads(collective: Collective) -> int:
    """Give each of the processes on this machine its part of the CPU cores (GANDID_THREADS overrides):
    N processes each running as many OpenMP threads as there are cores slow each other down several
    times over. Returns the thread count set."""
    if "GANDID_THREADS" in os.environ:
        threads = max(1, int(os.environ["GANDID_THREADS"]))
    elif collective.local_world_size > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // collective.local_world_size)
    else:
        return torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads
