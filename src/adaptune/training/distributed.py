"""Training on several processes with torch.distributed: ``torchrun`` (or ``accelerate launch``) starts the
processes, this module joins them.

One process per rank runs the same config. Each loads the base, the data and the adapter itself; the training
batches of an epoch (:func:`~adaptune.data.batching.train_batches`, length-bucketed as in one process) are dealt
out in turn, batch ``j`` of rank ``r`` being global batch ``r + N*j`` (:meth:`Distributed.shard`), so every rank
has the same number of batches and one optimiser step of ``N`` ranks with ``grad_accum_steps = a`` takes the same
``N * a`` batches, with the same gradient (the mean of the batch means), as one process with
``grad_accum_steps = N * a``. Gradients of the trained parameters only are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on CUDA); accumulation steps skip the
all-reduce (``no_sync``). Evaluation is sharded by example and the predictions gathered, so every rank scores
the whole split with the figures of one process. Rank 0 alone writes (the output folder lock, metrics log,
checkpoints, reports, the adapter) and reads checkpoints, which it sends to the others: the output folder needs
to be on rank 0's disk only; the data must be readable by every rank at the same path.

A rank that dies makes the others fail in their next collective (gloo notices the closed connection; any other
wait ends after ``training.dist_timeout_s``) and torchrun stops the run with the failed rank named.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from adaptune.errors import AdaptuneError, ConfigError

T = TypeVar("T")


class DistributedError(AdaptuneError):
    """Ranks that cannot train together: different configs or data, or a failed start."""


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``, set by torchrun); 1 outside a launcher."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass
class Distributed:
    """This process's place among the ranks; the one-process defaults make every method a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batches: list[list[int]]) -> list[list[int]]:
        """This rank's batches of ``batches``: global batch ``rank + world * j`` is its ``j``-th. The list is first
        padded to a multiple of ``world`` by repeating batches from its start (as torch's DistributedSampler pads
        examples), so every rank has the same number of batches."""
        if not self.active or not batches:
            return batches
        padded = list(batches)
        while len(padded) % self.world:
            padded.append(batches[(len(padded) - len(batches)) % len(batches)])
        return padded[self.rank :: self.world]

    def shard_count(self, n_batches: int) -> int:
        """How many of ``n_batches`` global batches each rank gets."""
        return -(-n_batches // self.world)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over the ranks."""
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()  # type: ignore[no-any-return]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and give its result to every rank; an :class:`AdaptuneError` (or OS error) it
        raises is raised on every rank, so no rank waits for one that failed."""
        if not self.active:
            return fn()
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn())
            except (AdaptuneError, OSError) as err:
                outcome = (False, err)
        ok, value = self.broadcast(outcome)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def check_same(self, what: str, value: Any) -> None:
        """Refuse to train when the ranks disagree on ``value`` (a config fingerprint, a data digest), naming
        the ranks that differ from rank 0."""
        values = self.all_gather(value)
        odd = [rank for rank, v in enumerate(values) if v != values[0]]
        if odd:
            raise DistributedError(
                f"ranks {', '.join(map(str, odd))} have a different {what} than rank 0 ({values[odd[0]]!r} vs "
                f"{values[0]!r}): every rank must run the same config on the same data (share the files, or copy "
                "them to the same path on every machine)"
            )

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Distributed()


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """The torch device for ``training.device`` / ``--device``: ``auto`` (CUDA when torch sees one, under a
    launcher the rank's own ``cuda:LOCAL_RANK``), ``cpu``, ``cuda`` or ``cuda:N``."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(
                f"device {spec!r}: torch {torch.__version__} ({build}) sees no CUDA device; use --device cpu or auto"
            )
        index = local_rank if spec == "cuda" else int(spec[5:])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")


@contextmanager
def distributed_session(device_spec: str = "auto", timeout_s: float = 600.0) -> Iterator[Distributed]:
    """This process's :class:`Distributed`: under a launcher (``WORLD_SIZE`` > 1) the process group is joined
    (gloo on CPU, nccl on CUDA) for the ``with`` block and left after it, unless the caller had joined it."""
    world = launched_world_size()
    if world <= 1:
        yield Distributed(device=resolve_device(device_spec))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    joined_here = not dist.is_initialized()
    if joined_here:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as err:
            raise DistributedError(f"joining the {world} training processes failed: {err}") from None
    try:
        yield Distributed(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device)
    finally:
        if joined_here and dist.is_initialized():
            dist.destroy_process_group()


#: Training switches that cannot run under several processes, with the reason.
REFUSED_UNDER_DDP = {
    "activation_cache": (
        "mmap",
        "its cache file lies in the output folder, one per process; use training.activation_cache=memory",
    ),
    "compile": (True, "torch.compile under DistributedDataParallel is not supported here; leave it off"),
}


def check_switches(training: Any, world: int) -> None:
    """Refuse the training switches of :data:`REFUSED_UNDER_DDP` when ``world`` > 1, naming the switch."""
    if world <= 1:
        return
    for key, (value, why) in REFUSED_UNDER_DDP.items():
        if getattr(training, key) == value:
            raise ConfigError(f"config key 'training.{key}' = {value!r} does not work with {world} processes: {why}")


@contextmanager
def claim_on_main(dist_: Distributed, output_dir: str, *, resume: bool, overwrite: bool) -> Iterator[Any]:
    """:func:`~adaptune.training.run_folder.claim_output_folder` on rank 0 (which alone writes there) for the
    ``with`` block; the other ranks get the same path and no notes, and rank 0's refusal (a locked or used
    folder) is raised on every rank."""
    from contextlib import ExitStack

    from adaptune.training.run_folder import ClaimedFolder, claim_output_folder

    with ExitStack() as stack:
        claimed: list[ClaimedFolder] = []

        def claim() -> Any:
            claimed.append(stack.enter_context(claim_output_folder(output_dir, resume=resume, overwrite=overwrite)))
            return claimed[0].path

        path = dist_.on_main(claim)
        yield claimed[0] if claimed else ClaimedFolder(path)


def gather_in_order(dist_: Distributed, n: int, mine: list[Any]) -> list[Any]:
    """The ``n`` results of the whole split from every rank's share (rank ``r`` had items ``r, r + N, ...``)."""
    if not dist_.active:
        return mine
    out: list[Any] = [None] * n
    for rank, part in enumerate(dist_.all_gather(mine)):
        out[rank :: dist_.world] = part
    return out
