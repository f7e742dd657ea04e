"""Combine LoRA (and DoRA) adapters of one base model and one task into one LoRA adapter file (DoRA if any is).

Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023): adapter ``i`` changes each
linear map it adapts by the weight delta

    ΔW_i = s_i B_i A_i        A_i: (r_i, in),  B_i: (out, r_i),  s_i = alpha_i / r_i  (alpha_i / sqrt(r_i): rsLoRA)

and a combination is a new delta built from the ``ΔW_i`` and one weight ``w_i`` per adapter. What each ``how``
computes, and how it is written (every written adapter has scaling 1: ``alpha = r``, no rsLoRA):

* ``linear``: ``Σ w_i ΔW_i``, written **exactly** as the concatenated factors ``A = [A_1; ...; A_n]`` and
  ``B = [w_1 s_1 B_1, ..., w_n s_n B_n]``, rank ``Σ r_i``.
* ``negation``: ``-ΔW_1`` (one input, weight -1) or ``ΔW_1 - ΔW_2`` (two inputs, weights 1, -1): ``linear`` with
  those weights, **exact**, rank ``Σ r_i``.
* ``svd``: ``Σ w_i ΔW_i`` refactored by truncated SVD to rank ``rank`` (default: the largest input rank):
  **exact** when ``rank >= Σ r_i`` (the sum has at most that rank), else the best rank-``rank`` approximation in
  Frobenius norm (Eckart-Young); the relative error is recorded.
* ``ties`` (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023): trim each
  ``ΔW_i`` to its ``density`` fraction of largest magnitudes, elect each entry's sign as the sign of the sum of the
  trimmed values, then take the mean of the weighted trimmed values ``w_i ΔW_i`` that agree with that sign
  (the order and weighting of peft's ``ties``). The sparse result is full rank: **approximate**, refactored by
  truncated SVD to ``rank`` (default ``Σ r_i``, the size ``linear`` writes), relative error recorded.
* ``dare_linear`` (Yu et al., "Language Models are Super Mario", ICML 2024): drop each entry of each ``ΔW_i`` with
  probability ``1 - density`` (a mask drawn from a ``torch.Generator`` seeded with ``seed``: hosts in sorted name
  order, inputs in the order given) and rescale the kept ones by ``1 / density``, then ``Σ w_i``; **approximate**
  (SVD to ``rank``, as ``ties``).
* ``dare_ties``: DARE's drop and rescale, then TIES' sign election and disjoint mean; **approximate**, as ``ties``.

The deltas are those of the full ``(out, in)`` maps, never of ``A`` and ``B`` separately (peft's ``linear`` and
``ties`` combine the factors, which is not the task-arithmetic sum).

DoRA (Liu et al. 2024) writes ``W'_i = diag(g_i) (W0 + L_i)`` with ``L_i = s_i B_i A_i`` and
``g_i = m_i / ||W0 + L_i||_c``; a plain LoRA has ``g_i = 1``. Then ``W0 + Σ w_i (W'_i - W0)`` equals
``diag(κ) (W0 + Σ_i diag(w_i g_i / κ) L_i)`` with ``κ = 1 + Σ w_i (g_i - 1)``: a DoRA adapter with the concatenated
factors ``B = [diag(w_i g_i / κ) s_i B_i]`` and magnitude ``m = κ ||W0 + B A||_c``. So ``linear``, ``negation``
(exact) and ``svd`` (truncating ``Σ diag(w_i g_i / κ) L_i``) are defined when any input is DoRA, and write a DoRA
adapter; ``ties`` and ``dare_*``, entrywise on deltas that DoRA's magnitude makes full rank, are refused.

The merges themselves, on plain tensors, are in :mod:`adaptune.merging`.

Heads are averaged (weights ``w_i / Σ w``) only when every input has the same labels in the same order, the same
task config and positive weights; otherwise the first input's head is kept, and the note saying so is recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptune.backbone import FULL_FINGERPRINT, Backbone, BaseFingerprint, load_backbone
from adaptune.config import ModelConfig
from adaptune.errors import ConfigError
from adaptune.inference import adapter_model
from adaptune.io import AdapterFile, check_base, describe, load_adapter, save_adapter
from adaptune.merging import (
    Factors,
    dare_linear,
    dare_ties,
    svd_factors,
    ties,
)
from adaptune.methods.linear import weight_out_in
from adaptune.methods.lora import LoRAConfig, row_norm
from adaptune.peft_interop.common import check_out, write_folder

HOWS = ("linear", "ties", "dare_linear", "dare_ties", "svd", "negation")
#: Written exactly as concatenated factors.
CONCAT = ("linear", "negation")
#: Entrywise merges of full deltas, refactored by SVD.
SPARSE = ("ties", "dare_linear", "dare_ties")
DEFAULT_DENSITY = 0.5
LORA_A, LORA_B, MAGNITUDE = ".lora.lora_a.weight", ".lora.lora_b.weight", ".lora.magnitude"


@dataclass(frozen=True)
class LoRAPart:
    """One adapter's update at one host: ``a`` ``(r, in)``, ``b`` ``(out, r)``, its scaling ``s`` and, for DoRA,
    its magnitude ``m`` ``(out,)``."""

    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    magnitude: torch.Tensor | None = None

    def low_rank(self) -> torch.Tensor:
        """``L = s B A`` ``(out, in)``: the delta of a plain LoRA."""
        return self.scaling * (self.b @ self.a)

    def gain(self, w0: torch.Tensor | None) -> torch.Tensor:
        """DoRA's ``g = m / ||W0 + s B A||_c`` ``(out,)`` (``W' = diag(g) (W0 + s B A)``); ones for plain LoRA."""
        if self.magnitude is None:
            return torch.ones(self.b.shape[0])
        assert w0 is not None
        return self.magnitude / row_norm(w0 + self.low_rank())


def lora_parts(adapter: AdapterFile) -> dict[str, LoRAPart]:
    """Host module name (in the base model) -> its :class:`LoRAPart`, from a LoRA adapter file (fp32)."""
    cfg = LoRAConfig.model_validate(adapter.config["method"])
    scaling = cfg.alpha / math.sqrt(cfg.r) if cfg.use_rslora else cfg.alpha / cfg.r
    tensors = {key: tensor.float() for key, tensor in adapter.tensors.items()}
    return {
        host: LoRAPart(
            tensors[f"adapter.{host}{LORA_A}"],
            tensors[f"adapter.{host}{LORA_B}"],
            scaling,
            tensors.get(f"adapter.{host}{MAGNITUDE}"),
        )
        for host in lora_hosts(adapter)
    }


def lora_hosts(adapter: AdapterFile) -> list[str]:
    """The names (in the base model) of the modules a LoRA adapter file adapts, sorted."""
    return sorted(key[len("adapter.") : -len(LORA_A)] for key in adapter.tensors if key.endswith(LORA_A))


# --- one host ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to compute: ``how``, one weight per input, ``density`` (ties/dare), the written ``rank``, the seed of
    DARE's masks, and whether the result is exact."""

    how: str
    weights: list[float]
    density: float | None
    rank: int
    seed: int
    exact: bool
    dora: bool


def combine_linear(parts: Sequence[LoRAPart], w0: torch.Tensor | None, plan: Plan) -> Factors:
    """``linear``/``negation`` (concatenated factors, exact) and ``svd`` (truncated), DoRA included (the module
    docstring's ``κ``)."""
    gains = [part.gain(w0) for part in parts]
    kappa = 1 + sum(w * (g - 1) for w, g in zip(plan.weights, gains, strict=True))
    if bool((kappa.abs() < 1e-6).any()):
        raise ConfigError(
            "the weights cancel the DoRA magnitudes of some output units (1 + Σ w_i (g_i - 1) = 0): choose others"
        )
    bs = [(w * g / kappa)[:, None] * (p.scaling * p.b) for w, g, p in zip(plan.weights, gains, parts, strict=True)]
    if plan.how == "svd":
        low_rank = sum((b @ p.a for b, p in zip(bs, parts, strict=True)), torch.zeros(()))
        factors = svd_factors(low_rank, plan.rank)
    else:
        factors = Factors(torch.cat([p.a for p in parts]), torch.cat(bs, dim=1))
    if not plan.dora:
        return factors
    assert w0 is not None
    magnitude = kappa * row_norm(w0 + factors.b @ factors.a)
    return Factors(factors.a, factors.b, magnitude, factors.error)


def combine_sparse(parts: Sequence[LoRAPart], plan: Plan, generator: torch.Generator) -> Factors:
    """``ties``, ``dare_linear``, ``dare_ties`` on the full deltas, refactored by truncated SVD to ``plan.rank``."""
    deltas = [part.low_rank() for part in parts]
    assert plan.density is not None
    if plan.how == "ties":
        merged = ties(deltas, plan.weights, plan.density)
    elif plan.how == "dare_linear":
        merged = dare_linear(deltas, plan.weights, plan.density, generator)
    else:
        merged = dare_ties(deltas, plan.weights, plan.density, generator)
    return svd_factors(merged, plan.rank)


# --- checks -----------------------------------------------------------------------------------------------------


def plan_combination(
    adapters: Sequence[AdapterFile],
    how: str,
    weights: Sequence[float] | None,
    density: float | None,
    rank: int | None,
    seed: int,
) -> Plan:
    """Check the inputs (method, task, base fingerprint, targets) and the options; the :class:`Plan`."""
    if how not in HOWS:
        raise ConfigError(f"--how {how!r}: choose one of {', '.join(HOWS)}")
    check_inputs(adapters)
    dora = any(bool(a.config["method"].get("use_dora")) for a in adapters)
    if dora and how in SPARSE:
        raise ConfigError(
            f"--how {how} is not defined for DoRA adapters: it works entrywise on weight deltas, and a DoRA "
            "magnitude rescales every base weight (a full-rank delta); use linear, negation or svd"
        )
    ranks = [int(a.config["method"]["r"]) for a in adapters]
    out_rank = _rank(how, ranks, rank)
    exact = how in CONCAT or (how == "svd" and out_rank >= sum(ranks))
    return Plan(how, _weights(how, len(adapters), weights), _density(how, density), out_rank, seed, exact, dora)


def check_inputs(adapters: Sequence[AdapterFile]) -> None:
    """Refuse non-LoRA methods, different task kinds, different recorded bases and different target modules."""
    if not adapters:
        raise ConfigError("give at least one adapter to combine")
    for adapter in adapters:
        method = adapter.config["method"].get("name")
        if method != "lora":
            raise ConfigError(f"adapter {adapter.path} uses method '{method}': combine takes LoRA (or DoRA) adapters")
    first = adapters[0]
    for adapter in adapters[1:]:
        difference = _difference(first, adapter)
        if difference is not None:
            raise ConfigError(f"adapter {adapter.path} {difference} than {first.path}: {_ONE_KIND}")


_ONE_KIND = "combine adapters of one base model and one task, with the same target modules"


def _difference(first: AdapterFile, other: AdapterFile) -> str | None:
    """How ``other`` differs from ``first`` in task kind, recorded base fingerprint or adapted modules."""
    task, task0 = other.config["task"].get("name"), first.config["task"].get("name")
    if task != task0:
        return f"is for another task ('{task}', not '{task0}')"
    base, base0 = other.config["base_model"], first.config["base_model"]
    prints = (base["fingerprint"], base0["fingerprint"])
    if prints[0] != prints[1] and all(p.startswith(FULL_FINGERPRINT) for p in prints):  # else check_base decides
        return (
            f"was trained on another base model ('{base['name_or_path']}', fingerprint {prints[0]}, not "
            f"'{base0['name_or_path']}', fingerprint {prints[1]})"
        )
    hosts, hosts0 = set(lora_hosts(other)), set(lora_hosts(first))
    if hosts != hosts0:
        only, only0 = sorted(hosts - hosts0)[:3], sorted(hosts0 - hosts)[:3]
        return f"adapts other modules (only in it: {only}, only in the other: {only0})"
    return None


def _weights(how: str, count: int, weights: Sequence[float] | None) -> list[float]:
    if how == "negation":
        if weights is not None:
            raise ConfigError(
                "--how negation sets the weights itself (-1 for one adapter, 1,-1 for A - B): give no --weights, or "
                "use --how linear with negative weights"
            )
        if count > 2:
            raise ConfigError(f"--how negation takes one adapter (-A) or two (A - B), not {count}")
        return [-1.0] if count == 1 else [1.0, -1.0]
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ConfigError(
            f"{len(weights)} weights given for {count} adapters: give one weight per adapter (--weights w1,w2,...)"
        )
    return [float(w) for w in weights]


def _density(how: str, density: float | None) -> float | None:
    if how not in SPARSE:
        if density is not None:
            raise ConfigError(f"--density applies to {', '.join(SPARSE)}, not to --how {how}")
        return None
    value = DEFAULT_DENSITY if density is None else float(density)
    if not 0 < value <= 1:
        raise ConfigError(f"--density {value}: the fraction of entries kept must be in (0, 1]")
    return value


def _rank(how: str, ranks: Sequence[int], rank: int | None) -> int:
    if how in CONCAT:
        if rank is not None:
            raise ConfigError(
                f"--rank does not apply to --how {how}, which writes the exact concatenation (rank {sum(ranks)}); "
                "use --how svd for a smaller rank"
            )
        return sum(ranks)
    if rank is not None and rank < 1:
        raise ConfigError(f"--rank {rank}: must be at least 1")
    return rank if rank is not None else (max(ranks) if how == "svd" else sum(ranks))


# --- heads ------------------------------------------------------------------------------------------------------


def _head_mismatch(adapters: Sequence[AdapterFile], weights: Sequence[float]) -> str | None:
    """Why the heads cannot be averaged, or None when they can."""
    first = adapters[0]
    for adapter in adapters[1:]:
        if adapter.labels != first.labels:
            order = "are in another order" if sorted(adapter.labels) == sorted(first.labels) else "differ"
            return (
                f"the labels of {adapter.path} {adapter.labels} {order} from {first.labels}; heads are averaged only "
                "where the label sets agree in the same order"
            )
        if adapter.config["task"] != first.config["task"]:
            return f"the task config of {adapter.path} differs ({adapter.config['task']} vs {first.config['task']})"
        shapes = {k: tuple(v.shape) for k, v in adapter.tensors.items() if k.startswith("head.")}
        if shapes != {k: tuple(v.shape) for k, v in first.tensors.items() if k.startswith("head.")}:
            return f"the head tensors of {adapter.path} have other names or shapes"
    if any(w <= 0 for w in weights):
        return f"heads are averaged with positive weights only (weights {list(weights)})"
    return None


def combine_heads(adapters: Sequence[AdapterFile], weights: Sequence[float]) -> tuple[dict[str, torch.Tensor], str]:
    """The head tensors (``head.*``) of the result, and a note on what was done: the weighted average
    ``Σ w_i h_i / Σ w_i`` where :func:`_head_mismatch` finds nothing, else the first input's head."""
    first = adapters[0]
    head = {k: v for k, v in first.tensors.items() if k.startswith("head.")}
    if not head:
        return head, "no task head to combine (the task has none)"
    if len(adapters) == 1:
        return head, f"kept the head of {first.path} (the only input)"
    why = _head_mismatch(adapters, weights)
    if why is not None:
        return head, f"kept the head of {first.path}: {why}"
    total = sum(weights)
    for key, tensor in head.items():
        if tensor.is_floating_point():
            mixed = sum(w * a.tensors[key].float() for w, a in zip(weights, adapters, strict=True)) / total
            head[key] = torch.as_tensor(mixed).to(tensor.dtype)
    shares = ", ".join(f"{w / total:.3g}" for w in weights)
    return head, f"averaged the heads of the {len(adapters)} inputs (shares {shares})"


# --- the whole --------------------------------------------------------------------------------------------------


def load_base(adapters: Sequence[AdapterFile]) -> Backbone:
    """The first input's base model (with its pooling), checked against every input's recorded fingerprint."""
    first = adapters[0]
    base = first.config["base_model"]
    cfg = ModelConfig(
        name_or_path=base["name_or_path"], gguf_file=base.get("gguf_file"), pooling=first.config["pooling"]
    )
    backbone = load_backbone(cfg)
    found = BaseFingerprint(backbone.model)  # before any method is attached
    for adapter in adapters:
        check_base(
            adapter.config,
            found,
            where=f"adapter {adapter.path}",
            this=f"'{cfg.name_or_path}' (the base of {first.path})",
            advice="combine adapters of one base",
        )
    return backbone


def combine_tensors(
    adapters: Sequence[AdapterFile], plan: Plan, backbone: Backbone
) -> tuple[dict[str, torch.Tensor], float]:
    """The combined method tensors (``adapter.<host>.lora.*``) and the largest relative SVD error over hosts."""
    parts = [lora_parts(adapter) for adapter in adapters]
    generator = torch.Generator().manual_seed(plan.seed)
    tensors: dict[str, torch.Tensor] = {}
    error = 0.0
    for host in sorted(parts[0]):
        w0 = weight_out_in(backbone.model.get_submodule(host)).detach().float() if plan.dora else None
        at_host = [p[host] for p in parts]
        factors = combine_sparse(at_host, plan, generator) if plan.how in SPARSE else combine_linear(at_host, w0, plan)
        tensors[f"adapter.{host}{LORA_A}"] = factors.a.contiguous()
        tensors[f"adapter.{host}{LORA_B}"] = factors.b.contiguous()
        if factors.magnitude is not None:
            tensors[f"adapter.{host}{MAGNITUDE}"] = factors.magnitude
        error = max(error, factors.error)
    return tensors, error


def combine_adapters(
    paths: Sequence[str | Path],
    how: str,
    weights: Sequence[float] | None = None,
    *,
    out: str | Path,
    density: float | None = None,
    seed: int = 0,
    rank: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Combine the LoRA adapters at ``paths`` (one base, one task) into one adapter folder ``out`` (see the
    module docstring for each ``how``: linear, ties, dare_linear, dare_ties, svd, negation).

    ``weights``: one per adapter (default 1 each; negation sets its own). ``density``: the fraction kept by ties
    and dare (default 0.5). ``seed``: DARE's masks. ``rank``: the written rank of svd, ties and dare (defaults:
    largest input rank for svd, their sum for the others). The folder is written beside ``out`` and renamed into
    place; an existing non-empty ``out`` needs ``overwrite``. Its description records ``combine`` (how, inputs,
    weights, density, rank, exact, error, head, notes) and the notes under ``metrics.notes``.
    """
    folder = check_out(out, overwrite)
    adapters = [load_adapter(path) for path in paths]
    plan = plan_combination(adapters, how, weights, density, rank, seed)
    backbone = load_base(adapters)
    base_params = sum(p.numel() for p in backbone.model.parameters())
    tensors, error = combine_tensors(adapters, plan, backbone)
    head, head_note = combine_heads(adapters, plan.weights)
    first = adapters[0]
    config = dict(first.config, method=_method_config(first, plan))
    model = adapter_model(AdapterFile(first.path, config, {**tensors, **head}), backbone)
    record: dict[str, Any] = {
        "how": plan.how,
        "inputs": [str(path) for path in paths],
        "weights": plan.weights,
        "density": plan.density,
        "seed": plan.seed if plan.how.startswith("dare") else None,
        "rank": plan.rank,
        "exact": plan.exact,
        "relative_error": round(error, 6),
        "head": head_note,
        "notes": [head_note, *setting_notes(adapters)],
    }
    base = first.config["base_model"]
    description = describe(
        model,
        name_or_path=base["name_or_path"],
        gguf_file=base.get("gguf_file"),
        base_fingerprint=base["fingerprint"],
        base_params=base_params,
        max_length=int(first.config["max_length"]),
        data=first.config.get("data", {}),
        metrics={"notes": record["notes"]},
        combine=record,
    )
    write_folder(folder, lambda staging: save_adapter(staging, model.trainable_state(), description))
    return folder


def setting_notes(adapters: Sequence[AdapterFile]) -> list[str]:
    """A note for each input whose pooling, max length or reading options differ from the first's, which the
    result keeps."""
    first, notes = adapters[0], []
    for adapter in adapters[1:]:
        for key in ("pooling", "max_length", "data"):
            if adapter.config.get(key) != first.config.get(key):
                notes.append(f"{key} of {adapter.path} differs from {first.path}'s; the result keeps {first.path}'s")
    return notes


def _method_config(first: AdapterFile, plan: Plan) -> dict[str, Any]:
    """The first input's LoRA config (its targets) with the written rank, scaling 1 and DoRA when any input was."""
    method = dict(first.config["method"])
    method.update(r=plan.rank, alpha=float(plan.rank), use_rslora=False, use_dora=plan.dora)
    return method
