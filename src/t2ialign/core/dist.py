"""Several processes on one job: which process this is, its share of a work list, and a barrier.

``torchrun --nproc_per_node N -m t2ialign ...`` and ``accelerate launch --num_processes N -m t2ialign ...``
start N copies of the same command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in their environment. Every copy runs the same code on the same inputs; the stages that
scale out (generate, sample, reward embed, evaluate) give each process its share of the work (``shard``),
meet at ``barrier`` before reading what the others wrote, and leave files that one process must write
(metrics.json, a selection, a merged cache) to rank 0 (``is_main``). Without those variables this is one
process and every function here is a no-op, so single-process code pays nothing.

The barrier uses torch.distributed with the gloo backend (CPU, any machine), set up on first use; a
process group that the caller (accelerate) already set up is used as it is.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
import pickle
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")

# How long a process waits at a barrier for the others. A rank may sample for hours before it reaches
# the barrier that ends generate, so torch's 30-minute default would kill a long job; a rank that dies
# makes torchrun stop the others, so a long wait does not hang a failed job.
BARRIER_TIMEOUT = datetime.timedelta(hours=int(os.environ.get("T2IALIGN_BARRIER_TIMEOUT_H", "72")))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def world_size() -> int:
    """How many processes share the job (``WORLD_SIZE``; 1 without a launcher)."""
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_world_size()
    n = _env_int("WORLD_SIZE", 1)
    if n < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {n}")
    return n


def rank() -> int:
    """This process's index in the job, 0 .. world_size() - 1 (``RANK``; 0 without a launcher)."""
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank()
    r, n = _env_int("RANK", 0), world_size()
    if not 0 <= r < n:
        raise ValueError(f"RANK={r} is not in 0..{n - 1} (WORLD_SIZE={n})")
    return r


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``): which GPU it should use."""
    return _env_int("LOCAL_RANK", rank())


def is_main() -> bool:
    """True in the one process that prints and writes the files every process would otherwise race on."""
    return rank() == 0


def device() -> torch.device:
    """This process's accelerator: ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def _group_ready() -> bool:
    """Set up the gloo process group on first use (a no-op for one process); True when there is one."""
    if world_size() == 1:
        return False
    if not tdist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world_size()} but {' and '.join(missing)} are not set: start several processes "
                "with `torchrun --nproc_per_node N -m t2ialign ...` or `accelerate launch -m t2ialign ...`"
            )
        tdist.init_process_group("gloo", rank=rank(), world_size=world_size(), timeout=BARRIER_TIMEOUT)
        atexit.register(_close_group)  # torch warns at exit about a group that was never destroyed
    return True


def _close_group() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (a no-op for one process)."""
    if _group_ready():
        tdist.barrier()


def shard(items: Sequence[T], chunk: int = 1) -> list[list[T]]:
    """This process's share of ``items``: the list cut into consecutive chunks of ``chunk`` items, and
    every world_size()-th chunk from rank() on (round robin, so the shares differ by at most one chunk).

    Every process must pass the same list in the same order (``check_same`` verifies it). Chunks, not
    single items, because a batch of a GPU kernel may round differently from another batch: with a
    stage's batch size as ``chunk``, each item is computed in exactly the batch one process would put it
    in, so N processes give the bytes of one.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunks = [list(items[i : i + chunk]) for i in range(0, len(items), chunk)]
    return chunks[rank() :: world_size()]


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` in every process (pickled; for results, not for tensors of data)."""
    if not _group_ready():
        return obj
    box = [obj if is_main() else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, in every process."""
    if not _group_ready():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def check_same(obj: Any, what: str) -> None:
    """ValueError in every process unless all of them hold the same ``obj`` (compared by a hash of its
    pickle): processes that split a list they do not agree on would skip or repeat work silently."""
    if world_size() == 1:
        return
    digest = hashlib.sha256(pickle.dumps(obj, protocol=4)).hexdigest()
    digests = gather(digest)
    if len(set(digests)) != 1:
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise ValueError(
            f"the processes disagree on {what} (ranks {differ} differ from rank 0): every process must run "
            "the same command on the same run"
        )
