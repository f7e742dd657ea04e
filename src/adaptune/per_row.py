"""Per-row adapter selection: one forward pass of a shared base model serves rows of many adapters.

Every host module that some loaded adapter adapts gets one *multi-adapter kernel* per kind of change (a LoRA
update, a bottleneck after the output ...): a forward hook that holds the weights of all loaded adapters at that
host stacked along a leading adapter axis. Methods declare what they attached through
:class:`~adaptune.methods.base.PerRowBatched` (``per_row_parts``); each :class:`~adaptune.methods.base.PerRowPart`
names its host, its module and the kernel class that serves it (the kernels live beside their methods:
``MultiLoRA`` in :mod:`adaptune.methods.lora`, ``MultiBottleneck`` in :mod:`adaptune.methods.bottleneck`).

A batch carries a row -> adapter index ``rows: (B,)`` (0 = the plain base model); :meth:`MultiAdapterLayers.select`
binds it to every kernel for the duration of one forward and clears it afterwards, so no state outlives the
batch. At each host a :class:`SlotTable` maps the global adapter index to the local slot of that host's stacked
weights; slot 0 holds zeros (or the identity), so a row whose adapter does not touch a host passes unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from adaptune.padding_free import Packing

if TYPE_CHECKING:
    from adaptune.methods.base import PerRowPart

W = TypeVar("W")  # one member adapter's weights at a host, as a kernel takes them


class SlotTable:
    """Global adapter index -> local slot at one host (slot 0: no adapter here), reassigned on load and unload."""

    def __init__(self) -> None:
        self.slot_of = torch.zeros(1, dtype=torch.long)
        self.local: torch.Tensor | None = None  # (B,) local slots of the batch being run; None outside a batch
        # a packed (padding-free) batch: (slot, start, end) token ranges of the one packed row, slot 0 left out
        self.segments: list[tuple[int, int, int]] | None = None
        self.tokens = 0
        self._padded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def assign(self, slot_of: dict[int, int]) -> None:
        """Global adapter index -> its slot here (slots need not be dense: a kernel may reuse freed ones)."""
        table = torch.zeros(max([0, *slot_of]) + 1, dtype=torch.long)
        for index, slot in slot_of.items():
            table[index] = slot
        self.slot_of = table

    def bind(self, rows: torch.Tensor) -> bool:
        """Set the batch's local slots from ``rows: (B,)``; True when some row uses an adapter at this host."""
        size = self.slot_of.numel()
        local = torch.where(rows < size, self.slot_of[rows.clamp(max=size - 1)], 0)  # newer adapters: not here
        self.local = local
        return bool(local.any())

    def bind_packing(self, packing: Packing) -> None:
        """Token ranges per slot for a padding-free pass (rows of one slot next to each other merge into one)."""
        assert self.local is not None
        segments: list[tuple[int, int, int]] = []
        for row, slot in enumerate(self.local.tolist()):
            start, end = packing.row_starts[row], packing.row_starts[row + 1]
            if segments and segments[-1][0] == slot and segments[-1][2] == start:
                segments[-1] = (slot, segments[-1][1], end)
            else:
                segments.append((slot, start, end))
        self.segments = [seg for seg in segments if seg[0] != 0 and seg[2] > seg[1]]
        self.tokens = packing.tokens
        self._padded = None

    def padded_segments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The bound packed batch's segments side by side, for one batched matmul over all of them instead of
        one per segment: token positions ``(k, L)`` (padding points at token 0), their mask ``(k, L)`` and the
        segments' slots ``(k,)``; ``L`` is the longest segment. Built once per batch."""
        if self._padded is None:
            assert self.segments is not None
            table = torch.tensor(self.segments, dtype=torch.long).view(-1, 3)
            slots, starts, lengths = table[:, 0], table[:, 1], table[:, 2] - table[:, 1]
            steps = torch.arange(int(lengths.max()) if len(self.segments) else 0)
            mask = steps.unsqueeze(0) < lengths.unsqueeze(1)
            positions = torch.where(mask, starts.unsqueeze(1) + steps.unsqueeze(0), 0)
            self._padded = (positions, mask, slots)
        return self._padded

    def packed(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is the packed row ``(1, T, d)`` of the bound padding-free batch."""
        return self.segments is not None and x.dim() == 3 and x.shape[0] == 1 and x.shape[1] == self.tokens

    def clear(self) -> None:
        self.local, self.segments, self.tokens, self._padded = None, None, 0, None


@runtime_checkable
class PerRowKernel(Protocol):
    """All loaded adapters' change at one host module, applied row by row (see the module docstring).

    ``for_member(module)`` makes an empty kernel sized for the host that ``module`` (a method's attached module)
    adapts; ``add``/``remove`` take members by global adapter index, ``rebuild`` stacks their weights after a
    change; ``bind(rows (B,), packing)`` and ``clear()`` bracket one forward pass; the kernel itself is the host's
    forward hook, ``kernel(host, args, output) -> output`` with the host's output shape.
    """

    slots: SlotTable
    active: bool

    @classmethod
    def for_member(cls, module: nn.Module) -> PerRowKernel: ...

    def add(self, index: int, module: nn.Module) -> None: ...

    def remove(self, index: int) -> bool: ...

    def rebuild(self) -> None: ...

    def bind(self, rows: torch.Tensor, packing: Packing | None) -> None: ...

    def clear(self) -> None: ...

    def __call__(self, host: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor: ...


class SlotKernel(Generic[W]):
    """The bookkeeping a :class:`PerRowKernel` shares: the members' weights stacked along a leading slot axis (the
    stack is the only copy: ``members`` keeps each member's width), the host's :class:`SlotTable`, and whether the
    bound batch uses this host at all.

    A load (:meth:`add_weights`, then :meth:`rebuild`) writes the member into a free slot; an unload zeroes its slot
    for reuse. The stack grows by doubling, and re-pads when a wider member (a larger rank, a wider bottleneck)
    arrives, so loading or evicting one of n adapters costs one slot, not a restack of all n. Kernels define the
    stack itself: ``capacity``/``width`` (its size), ``weights_width``, ``grow``, ``write`` and ``zero``, and the
    maths.
    """

    def __init__(self) -> None:
        self.slots = SlotTable()
        self.members: dict[int, int] = {}  # member index -> its width
        self.slot_of: dict[int, int] = {}  # member index -> its slot (1..capacity)
        self.free: list[int] = []
        self.incoming: dict[int, W] = {}  # added, written into a slot at the next rebuild
        self.active = False

    # -- the stack (each kernel) -------------------------------------------------------------------------------
    def capacity(self) -> int:  # pragma: no cover - every kernel defines it
        """Slots besides slot 0."""
        raise NotImplementedError

    def width(self) -> int:  # pragma: no cover
        """The padded width of every slot."""
        raise NotImplementedError

    def weights_width(self, weights: W) -> int:  # pragma: no cover
        raise NotImplementedError

    def grow(self, capacity: int, width: int, device: torch.device) -> None:  # pragma: no cover
        """Room for ``capacity`` members of width up to ``width``: the stack copied into a larger one."""
        raise NotImplementedError

    def write(self, slot: int, weights: W) -> None:  # pragma: no cover
        """A member's weights into a zeroed slot (zero-padded to the stack's width)."""
        raise NotImplementedError

    def zero(self, slot: int) -> None:  # pragma: no cover
        """A slot back to slot 0's value (no change to the host's output)."""
        raise NotImplementedError

    def device_of(self, weights: W) -> torch.device:  # pragma: no cover
        raise NotImplementedError

    # -- membership --------------------------------------------------------------------------------------------
    def add_weights(self, index: int, weights: W) -> None:
        """Adapter ``index``'s weights at this host (call :meth:`rebuild` after)."""
        self.incoming[index] = weights
        self.members[index] = self.weights_width(weights)

    def remove(self, index: int) -> bool:
        """Forget adapter ``index`` here; True if it was a member (the caller then rebuilds)."""
        self.incoming.pop(index, None)
        return self.members.pop(index, None) is not None

    def rebuild(self) -> None:
        """Zero and free the slots of removed members, then write the incoming ones into free slots (growing the
        stack first when it is full or a member is wider than any before); slot 0 stays as it is."""
        for index in [i for i in self.slot_of if i not in self.members]:
            slot = self.slot_of.pop(index)
            self.zero(slot)
            self.free.append(slot)
        if self.incoming:
            width = max(self.width(), *(self.weights_width(w) for w in self.incoming.values()))
            needed = len(self.incoming) - len(self.free)
            if needed > 0 or width > self.width():
                capacity = self.capacity()
                grown = max(capacity, 1) * 2 if needed > 0 else capacity
                new_capacity = max(grown, capacity + needed)
                self.grow(new_capacity, width, self.device_of(next(iter(self.incoming.values()))))
                self.free.extend(range(new_capacity, capacity, -1))  # popped from the end: the lowest new slot first
            for index, weights in self.incoming.items():
                slot = self.free.pop()  # zero: freed slots are zeroed above, grown ones start so
                self.write(slot, weights)
                self.slot_of[index] = slot
            self.incoming.clear()
        self.slots.assign(self.slot_of)

    # -- one batch ---------------------------------------------------------------------------------------------
    def bind(self, rows: torch.Tensor, packing: Packing | None) -> None:
        """Bind a batch's ``rows: (B,)`` (and its packing, for a padding-free pass) for one forward."""
        self.active = self.slots.bind(rows)
        if self.active and packing is not None:
            self.slots.bind_packing(packing)

    def clear(self) -> None:
        """Forget the bound batch: the hook passes outputs through unchanged."""
        self.active = False
        self.slots.clear()


class MultiAdapterLayers:
    """The multi-adapter kernels of one shared base model: one per (host module name, kernel class).

    Adapters are added with :meth:`add` (their :class:`~adaptune.methods.base.PerRowPart` list) under a global
    index >= 1 and removed with :meth:`remove`; :meth:`select` sets the row -> adapter index for one forward pass.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._kernels: dict[tuple[str, type], PerRowKernel] = {}
        self._handles: list[RemovableHandle] = []

    def add(self, index: int, parts: Sequence[PerRowPart]) -> None:
        """Register adapter ``index``: each part joins the kernel of its host and kind (made on first use)."""
        for part in parts:
            kernel = self._kernel(part)
            kernel.add(index, part.module)
            kernel.rebuild()

    def remove(self, index: int) -> None:
        """Forget adapter ``index`` everywhere (its slots disappear; hooks of empty hosts stay, inert)."""
        for kernel in self._kernels.values():
            if kernel.remove(index):
                kernel.rebuild()

    def kernels(self) -> list[PerRowKernel]:
        """Every kernel, in the order their hooks were registered."""
        return list(self._kernels.values())

    def _kernel(self, part: PerRowPart) -> PerRowKernel:
        key = (part.host, part.kernel)
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = part.kernel.for_member(part.module)
            host = self.model.get_submodule(part.host)
            self._handles.append(host.register_forward_hook(kernel))
            self._kernels[key] = kernel
        return kernel

    @contextmanager
    def select(self, rows: torch.Tensor, packing: Packing | None = None) -> Iterator[None]:
        """Serve row ``i`` of the next forward pass with adapter ``rows[i]`` (0: the base model), then clear.

        ``rows``: ``(B,)`` long. Hosts that no row's adapter touches are switched off for this batch. With
        ``packing`` (a padding-free pass, :mod:`adaptune.padding_free`) the hosts see the packed row; rows of
        one adapter should then be next to each other (one token range per adapter).
        """
        kernels = self.kernels()
        try:
            for kernel in kernels:
                kernel.bind(rows, packing)
            yield
        finally:
            for kernel in kernels:
                kernel.clear()

    def close(self) -> None:
        """Remove every hook: the base model as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._kernels.clear()
