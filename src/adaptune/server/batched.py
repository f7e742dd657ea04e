"""Per-row adapter selection: one forward pass of the shared base model serves rows of many adapters.

Every adapted linear map (LoRA) and every adapted output (bottleneck) of the base model gets one *multi-adapter*
hook that holds the weights of all loaded adapters stacked along a leading adapter axis. A batch carries a
row -> adapter index ``rows: (B,)`` (0 = the plain base model); :meth:`MultiAdapterLayers.select` sets it on every
hook for the duration of one forward and clears it afterwards, so no state outlives the batch.

LoRA (Hu et al. 2021), for host ``y = W0 x + b`` and row ``i`` served by adapter ``a = rows[i]``::

    y_i = W0 x_i + b + x_i A_a^T (s_a B_a)^T        A: (n, r_max, d_in) -> stored as (n, d_in, r_max)
                                                    B: (n, d_out, r_max) -> stored as (n, r_max, d_out)

ranks below ``r_max`` are zero-padded and the scaling ``s_a`` (alpha/r or alpha/sqrt(r)) is folded into ``B``;
the gather ``A[rows]`` and two ``bmm`` calls compute every row's update at once, whatever the mix of adapters.

Bottleneck (Houlsby et al. 2019; Pfeiffer et al. 2021) after host output ``h``::

    h_i' = keep_a h_i + W_up,a f_a(W_down,a h_i + b_down,a) + b_up,a

with ``keep_a`` = 1 for residual adapters (0 otherwise) and zero-padded bottleneck widths. A row whose adapter does
not touch a host gets slot 0, whose weights are zero: the host's output passes unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from adaptune.methods.bottleneck import ACTIVATIONS, BottleneckAdapter
from adaptune.methods.lora import LoRA
from adaptune.padding_free import Packing

#: One adapter's contribution at one host: LoRA ``(A^T (d_in, r), (s B)^T (r, d_out))`` or a bottleneck adapter.
LoRAWeights = tuple[torch.Tensor, torch.Tensor]


class _SlotTable:
    """Global adapter index -> local slot at one host (slot 0: no adapter here), rebuilt on load and unload."""

    def __init__(self) -> None:
        self.slot_of = torch.zeros(1, dtype=torch.long)
        self.local: torch.Tensor | None = None  # (B,) local slots of the batch being run; None outside a batch
        # a packed (padding-free) batch: (slot, start, end) token ranges of the one packed row, slot 0 left out
        self.segments: list[tuple[int, int, int]] | None = None
        self.tokens = 0

    def rebuild(self, indices: list[int]) -> None:
        """``indices``: the global index of each adapter at this host, in slot order (slots 1..n)."""
        table = torch.zeros(max([0, *indices]) + 1, dtype=torch.long)
        for slot, index in enumerate(indices, start=1):
            table[index] = slot
        self.slot_of = table

    def bind(self, rows: torch.Tensor) -> bool:
        """Set the batch's local slots; True when some row uses an adapter at this host."""
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

    def packed(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is the packed row of the bound padding-free batch."""
        return self.segments is not None and x.dim() == 3 and x.shape[0] == 1 and x.shape[1] == self.tokens

    def clear(self) -> None:
        self.local, self.segments, self.tokens = None, None, 0


class MultiLoRA:
    """All loaded LoRA updates of one host linear map ``d_in -> d_out``, applied per row.

    ``__call__(x (B, ..., d_in), out (B, ..., d_out)) -> (B, ..., d_out)`` adds row ``i``'s update; rows whose
    slot is 0 (no LoRA here) get ``out`` unchanged (their padded weights are zero).
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        self.d_in, self.d_out = d_in, d_out
        self.slots = _SlotTable()
        self.members: dict[int, LoRAWeights] = {}
        self.a_t = torch.zeros(1, d_in, 1)  # (n + 1, d_in, r_max)
        self.b_t = torch.zeros(1, 1, d_out)  # (n + 1, r_max, d_out), scaling folded in
        self.active = False

    def rebuild(self) -> None:
        """Stack the members' matrices, zero-padding ranks to the largest; slot 0 stays zero."""
        order = sorted(self.members)
        r_max = max([1, *(self.members[i][0].shape[1] for i in order)])
        device = self.members[order[0]][0].device if order else None
        a_t = torch.zeros(len(order) + 1, self.d_in, r_max, device=device)
        b_t = torch.zeros(len(order) + 1, r_max, self.d_out, device=device)
        for slot, index in enumerate(order, start=1):
            a, b = self.members[index]
            a_t[slot, :, : a.shape[1]] = a
            b_t[slot, : b.shape[0]] = b
        self.a_t, self.b_t = a_t, b_t
        self.slots.rebuild(order)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        local = self.slots.local
        if local is None or not self.active:
            return out
        if self.slots.packed(x):  # padding-free: each adapter's tokens are one contiguous range
            assert self.slots.segments is not None
            tokens, result = x[0], out[0] if not torch.is_grad_enabled() else out[0].clone()
            for slot, start, end in self.slots.segments:
                delta = (tokens[start:end].to(self.a_t.dtype) @ self.a_t[slot]) @ self.b_t[slot]
                result[start:end] += delta.to(result.dtype)
            return result.unsqueeze(0)
        flat = x.reshape(x.shape[0], -1, self.d_in)
        delta = torch.bmm(torch.bmm(flat, self.a_t[local]), self.b_t[local])
        return out + delta.reshape(out.shape).to(out.dtype)


class MultiBottleneck:
    """All loaded bottleneck adapters after one host module of output width ``d``, applied per row.

    ``__call__(h (B, ..., d)) -> (B, ..., d)``: row ``i`` gets its adapter's ``keep h + up(f(down(h)))``;
    rows of slot 0 get ``h``.
    """

    def __init__(self, d: int) -> None:
        self.d = d
        self.slots = _SlotTable()
        self.members: dict[int, BottleneckAdapter] = {}
        self.down_t = torch.zeros(1, d, 1)  # (n + 1, d, k_max)
        self.down_b = torch.zeros(1, 1)  # (n + 1, k_max)
        self.up_t = torch.zeros(1, 1, d)  # (n + 1, k_max, d)
        self.up_b = torch.zeros(1, d)  # (n + 1, d)
        self.keep = torch.ones(1)  # (n + 1,) 1 = residual
        self.act_id = torch.zeros(1, dtype=torch.long)  # (n + 1,) index into ACTIVATION_ORDER
        self.acts: list[tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor | None]] = []
        self.act_list: list[int] = [0]  # act_id and keep as Python numbers, for the packed path
        self.keep_list: list[float] = [1.0]
        self.active = False

    def rebuild(self) -> None:
        """Stack the members' weights, zero-padding bottleneck widths to the largest; slot 0 stays zero."""
        order = sorted(self.members)
        k_max = max([1, *(self.members[i].down.out_features for i in order)])
        n = len(order) + 1
        dev = self.members[order[0]].down.weight.device if order else None
        self.down_t, self.down_b = torch.zeros(n, self.d, k_max, device=dev), torch.zeros(n, k_max, device=dev)
        self.up_t, self.up_b = torch.zeros(n, k_max, self.d, device=dev), torch.zeros(n, self.d, device=dev)
        self.keep, self.act_id = torch.ones(n, device=dev), torch.zeros(n, dtype=torch.long)
        with torch.no_grad():
            for slot, index in enumerate(order, start=1):
                adapter = self.members[index]
                k = adapter.down.out_features
                self.down_t[slot, :, :k] = adapter.down.weight.T
                self.down_b[slot, :k] = adapter.down.bias
                self.up_t[slot, :k] = adapter.up.weight.T
                self.up_b[slot] = adapter.up.bias
                self.keep[slot] = 1.0 if adapter.residual else 0.0
                self.act_id[slot] = ACTIVATION_ORDER.index(activation_name(adapter.act))
        self.act_list, self.keep_list = self.act_id.tolist(), self.keep.tolist()
        self.slots.rebuild(order)

    def bind_activations(self) -> None:
        """Group the batch's rows by non-linearity (one group, no mask, in the common case)."""
        local = self.slots.local
        assert local is not None
        kinds = self.act_id[local]
        present = sorted({int(k) for k in kinds.unique()})
        if len(present) == 1:
            self.acts = [(_ACT_FNS[present[0]], None)]
        else:
            self.acts = [(_ACT_FNS[k], kinds == k) for k in present]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        local = self.slots.local
        if local is None or not self.active:
            return h
        if self.slots.packed(h):
            return self._packed(h)
        flat = h.reshape(h.shape[0], -1, self.d)
        z = torch.baddbmm(self.down_b[local].unsqueeze(1), flat, self.down_t[local])
        z = self._activate(z)
        delta = torch.baddbmm(self.up_b[local].unsqueeze(1), z, self.up_t[local])
        out = flat * self.keep[local].view(-1, 1, 1).to(flat.dtype) + delta.to(flat.dtype)
        return out.reshape(h.shape)

    def _packed(self, h: torch.Tensor) -> torch.Tensor:
        """Padding-free batch ``(1, T, d)``: every adapter's contiguous token range with its own weights."""
        assert self.slots.segments is not None
        tokens = h[0]
        out = tokens.clone()
        for slot, start, end in self.slots.segments:
            part = tokens[start:end].to(self.down_t.dtype)
            z = _ACT_FNS[self.act_list[slot]](torch.addmm(self.down_b[slot], part, self.down_t[slot]))
            adapted = part * self.keep_list[slot] + torch.addmm(self.up_b[slot], z, self.up_t[slot])
            out[start:end] = adapted.to(out.dtype)
        return out.unsqueeze(0)

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        if len(self.acts) == 1:
            return self.acts[0][0](z)
        out = z.clone()
        for fn, mask in self.acts:
            assert mask is not None
            out[mask] = fn(z[mask])
        return out


#: The bottleneck non-linearities in a fixed order (their index is stored per slot).
ACTIVATION_ORDER: list[str] = sorted(ACTIVATIONS)
_ACT_FNS: list[Callable[[torch.Tensor], torch.Tensor]] = [ACTIVATIONS[name]() for name in ACTIVATION_ORDER]


def activation_name(module: nn.Module) -> str:
    """The :data:`ACTIVATIONS` name of a bottleneck's non-linearity module."""
    for name, cls in ACTIVATIONS.items():
        if type(module) is cls:
            return name
    raise ValueError(f"unknown bottleneck activation {type(module).__name__}")


def lora_weights(lora: LoRA) -> LoRAWeights:
    """A plain LoRA's ``(A^T (d_in, r), (s B)^T (r, d_out))``; DoRA and merged LoRAs have no per-row form."""
    if lora.magnitude is not None or lora.merged:
        raise ValueError("DoRA and merged LoRA updates cannot be applied per row")
    a = lora.lora_a.weight.detach()
    b = lora.lora_b.weight.detach() * lora.scaling
    return a.T.contiguous().float(), b.T.contiguous().float()


class MultiAdapterLayers:
    """The multi-adapter hooks of one shared base model, by host module name.

    Adapters are added with :meth:`add` (their harvested per-host modules) under a global index >= 1 and removed
    with :meth:`remove`; :meth:`select` sets the row -> adapter index for one forward pass.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.lora: dict[str, MultiLoRA] = {}
        self.bottleneck: dict[str, MultiBottleneck] = {}
        self._handles: list[RemovableHandle] = []

    def add(self, index: int, loras: dict[str, LoRA], bottlenecks: dict[str, BottleneckAdapter]) -> None:
        """Register adapter ``index``: its LoRA modules and bottleneck adapters by host module name."""
        for host_name, lora in loras.items():
            layer = self._lora_layer(host_name, lora)
            layer.members[index] = lora_weights(lora)
            layer.rebuild()
        for host_name, adapter in bottlenecks.items():
            layer_b = self._bottleneck_layer(host_name, adapter.up.out_features)
            layer_b.members[index] = adapter
            layer_b.rebuild()

    def remove(self, index: int) -> None:
        """Forget adapter ``index`` everywhere (its slots disappear; hooks of empty hosts stay, inert)."""
        for layer in [*self.lora.values(), *self.bottleneck.values()]:
            if layer.members.pop(index, None) is not None:
                layer.rebuild()

    def _lora_layer(self, host_name: str, lora: LoRA) -> MultiLoRA:
        layer = self.lora.get(host_name)
        if layer is None:
            layer = MultiLoRA(lora.lora_a.in_features, lora.lora_b.out_features)
            host = self.model.get_submodule(host_name)
            self._handles.append(host.register_forward_hook(_lora_hook(layer)))
            self.lora[host_name] = layer
        return layer

    def _bottleneck_layer(self, host_name: str, width: int) -> MultiBottleneck:
        layer = self.bottleneck.get(host_name)
        if layer is None:
            layer = MultiBottleneck(width)
            host = self.model.get_submodule(host_name)
            self._handles.append(host.register_forward_hook(_bottleneck_hook(layer)))
            self.bottleneck[host_name] = layer
        return layer

    @contextmanager
    def select(self, rows: torch.Tensor, packing: Packing | None = None) -> Iterator[None]:
        """Serve row ``i`` of the next forward pass with adapter ``rows[i]`` (0: the base model), then clear.

        ``rows``: ``(B,)`` long. Hosts that no row's adapter touches are switched off for this batch. With
        ``packing`` (a padding-free pass, :mod:`adaptune.padding_free`) the hosts see the packed row; rows of
        one adapter should then be next to each other (one token range per adapter).
        """
        layers: list[MultiLoRA | MultiBottleneck] = [*self.lora.values(), *self.bottleneck.values()]
        try:
            for layer in layers:
                layer.active = layer.slots.bind(rows)
                if layer.active and packing is not None:
                    layer.slots.bind_packing(packing)
            for bottleneck in self.bottleneck.values():
                if bottleneck.active:
                    bottleneck.bind_activations()
            yield
        finally:
            for layer in layers:
                layer.active = False
                layer.slots.clear()
            for bottleneck in self.bottleneck.values():
                bottleneck.acts = []

    def close(self) -> None:
        """Remove every hook: the base model as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.lora.clear()
        self.bottleneck.clear()


def _lora_hook(layer: MultiLoRA) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], torch.Tensor]:
    def hook(_mod: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return layer(args[0], output)

    return hook


def _bottleneck_hook(layer: MultiBottleneck) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], torch.Tensor]:
    def hook(_mod: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return layer(output)

    return hook
