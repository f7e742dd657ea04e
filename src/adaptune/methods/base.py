"""What every method provides, and the one injection mechanism they share.

A method is attached to a frozen base model. It may add small modules (attached as children of the module they
modify, so base parameter names never change) that act through forward hooks, or it may unfreeze a few existing
parameters. ``owned_parameters`` names exactly what it trains and what the adapter file stores.

Several methods can sit on one model (a ``stack``, :mod:`adaptune.methods.stack`): each then carries an
``attr_suffix`` (the stack member's name), so that the modules it adds are named ``<attr>_<suffix>`` and two
members never take the same attribute of the same host (``bottleneck_lang`` beside ``bottleneck_task``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from adaptune.config import MethodConfig, TrainingConfig
from adaptune.targets import Anatomy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class AttachContext:
    """What a method may know about the model it is attached to."""

    model_type: str
    anatomy: Anatomy | None
    hidden_size: int
    num_layers: int
    #: Causal decoder (left padding, last-token pooling): prompt/prefix methods number positions from the mask.
    is_decoder: bool = False
    #: The backbone's tokenizer, for methods initialised from text or vocabulary (prompt tuning).
    tokenizer: PreTrainedTokenizerBase | None = None


@dataclass
class Injection:
    """A module added to a host module, with the hook that applies it (None: the method's ``prepare_inputs``
    applies it, as prompt and prefix tuning do)."""

    host: nn.Module
    attr: str
    handle: RemovableHandle | None


@dataclass
class InputPrep:
    """Backbone inputs after a method's input hook, and how many virtual positions it prepended.

    ``inputs`` are keyword arguments of the backbone's forward: the batch's ``input_ids`` (or ``inputs_embeds``
    ``(B, n_virtual + T, d)``), an ``attention_mask`` that may be longer than ``T`` (virtual tokens in front),
    and optionally ``token_type_ids`` and ``position_ids``. The model drops the first ``n_virtual`` hidden
    states, so the task head always sees ``(B, T, d)`` aligned with the batch. ``kv_prefix``: how many key/value
    pairs every attention layer sees in front of the row's own (prefix tuning), so that no two examples may
    share a row and the padding-free pass does not apply.
    """

    inputs: dict[str, Any]
    n_virtual: int = 0
    kv_prefix: int = 0


class Method(ABC):
    """Base of every method. Subclasses register with ``@register_method(name, ConfigClass)``.

    Life cycle: ``attach(model, ctx)`` once on a frozen model; ``owned_parameters(model)`` lists the trained
    tensors by name; ``detach(model)`` restores the base model exactly.
    """

    #: Recommended AdamW learning rate when the user gives none (training.learning_rate: null).
    default_learning_rate: float = 1e-3

    #: ``config.model_type`` values of architectures this method refuses at attach (with a ConfigError), declared
    #: so that tools and the shared method x task test matrix know without trying. Empty: every architecture
    #: (tasks need no declaration: methods and tasks are orthogonal, every method serves every task).
    unsupported_model_types: frozenset[str] = frozenset()

    #: Declared: :meth:`prepare_inputs` changes the backbone inputs (prompt and prefix tuning, a stack holding
    #: one). Such a method reaches every block from the input, so no bottom block is ever frozen (training's
    #: activation cache) and rows of other adapters cannot share its forward pass. See :class:`InputHook`.
    changes_inputs: bool = False

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self._injections: list[Injection] = []
        #: Appended to the names of the modules this method adds (``bottleneck`` -> ``bottleneck_<suffix>``);
        #: empty, and names unchanged, unless a stack sets it to the member's name before ``attach``.
        self.attr_suffix = ""

    def attr_name(self, attr: str) -> str:
        """The attribute name under which a module called ``attr`` by the method is added to its host."""
        return f"{attr}_{self.attr_suffix}" if self.attr_suffix else attr

    def plain_name(self, name: str) -> str:
        """An owned parameter name as it would be without :attr:`attr_suffix` (as a single-method adapter file
        names it): ``...dense.bottleneck_lang.up.weight`` -> ``...dense.bottleneck.up.weight``."""
        if not self.attr_suffix:
            return name
        ours = {inj.attr for inj in self._injections}
        cut = len(self.attr_suffix) + 1
        return ".".join(part[:-cut] if part in ours else part for part in name.split("."))

    @abstractmethod
    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Modify ``model`` (frozen) in place: add modules or unfreeze parameters."""

    def owned_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Name -> parameter for everything this method trains (default: the injected modules')."""
        owned: dict[str, nn.Parameter] = {}
        attrs: dict[int, list[str]] = {}
        for inj in self._injections:
            attrs.setdefault(id(inj.host), []).append(inj.attr)
        for host_name, host in model.named_modules():
            for attr in attrs.get(id(host), []):
                for pname, param in getattr(host, attr).named_parameters():
                    owned[f"{host_name}.{attr}.{pname}" if host_name else f"{attr}.{pname}"] = param
        return owned

    def frozen_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Name -> parameter for tensors the method keeps frozen yet stores in the adapter file (a stack's frozen
        members); disjoint from :meth:`owned_parameters`. Default: none."""
        return {}

    def config_for_file(self) -> dict[str, Any]:
        """The method config as ``adapter_config.json`` records it (default: the config itself)."""
        return self.config.model_dump(mode="json")

    def prepare_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> InputPrep:
        """The one input hook, for methods that change the inputs (prompt and prefix tuning); the default leaves
        them as they are. ``inputs``: ``input_ids``, ``attention_mask`` (and ``token_type_ids``), each ``(B, T)``."""
        return InputPrep(inputs)

    def detach(self, model: nn.Module) -> None:
        """Remove every injected module and hook."""
        self.remove_injections()

    def remove_injections(self) -> None:
        """Remove every injected module and hook, leaving the host modules' own weights as they are now."""
        for inj in self._injections:
            if inj.handle is not None:
                inj.handle.remove()
            delattr(inj.host, inj.attr)
        self._injections.clear()

    def inject_after(self, host: nn.Module, attr: str, module: nn.Module) -> None:
        """Apply ``module`` to ``host``'s output: ``host(x)`` becomes ``module(host(x))``. ``module`` is added as
        ``host.<attr_name(attr)>``, as in the other ``inject_*`` helpers."""
        attr = self.attr_name(attr)
        host.add_module(attr, module)

        def hook(_mod: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            return module(output)  # type: ignore[no-any-return]

        self._injections.append(Injection(host, attr, host.register_forward_hook(hook)))

    def inject_before(self, host: nn.Module, attr: str, module: nn.Module) -> None:
        """Apply ``module`` to ``host``'s first input: ``host(x)`` becomes ``host(module(x))`` (a forward pre-hook;
        e.g. IA3's scaling of the feed-forward activations)."""
        attr = self.attr_name(attr)
        host.add_module(attr, module)

        def pre_hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (module(args[0]), *args[1:])

        self._injections.append(Injection(host, attr, host.register_forward_pre_hook(pre_hook)))

    def add_input_module(self, host: nn.Module, attr: str, module: nn.Module) -> None:
        """Add ``module`` under ``host`` with no hook: the method applies it in :meth:`prepare_inputs` (prompt and
        prefix tuning). It is owned, saved and detached like any injected module."""
        attr = self.attr_name(attr)
        host.add_module(attr, module)
        self._injections.append(Injection(host, attr, None))

    def inject_around(
        self, host: nn.Module, attr: str, module: nn.Module, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        """Combine ``host``'s input and output: ``host(x)`` becomes ``fn(x, host(x))`` (e.g. LoRA's W0 x + B A x)."""
        attr = self.attr_name(attr)
        host.add_module(attr, module)

        def hook(_mod: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return fn(args[0], output)

        self._injections.append(Injection(host, attr, host.register_forward_hook(hook)))


@runtime_checkable
class InputHook(Protocol):
    """A method that changes the backbone inputs (prompt and prefix tuning): ``changes_inputs`` is True and
    :meth:`Method.prepare_inputs` returns the changed inputs (virtual tokens, key/value prefixes)."""

    changes_inputs: bool

    def prepare_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> InputPrep: ...


def changes_inputs(method: Method) -> bool:
    """Whether ``method`` declares that it changes the inputs (:attr:`Method.changes_inputs`)."""
    return bool(method.changes_inputs)


@dataclass(frozen=True)
class ParamGroup:
    """Owned parameters (names as :meth:`Method.owned_parameters` gives them) that train at ``lr_scale`` times
    the run's learning rate, e.g. LoRA+'s B matrices (Hayou et al. 2024)."""

    names: tuple[str, ...]
    lr_scale: float = 1.0
    #: What the group is, for messages and the optimiser's records (``"lora_b"``).
    label: str = ""


@runtime_checkable
class ParamGroups(Protocol):
    """A method that asks for optimiser groups of its own, from the training config (LoRA owns LoRA+:
    ``training.loraplus_lr_ratio``). Parameters in no group train at the run's rate."""

    def param_groups(self, model: nn.Module, training: TrainingConfig) -> list[ParamGroup]: ...


@runtime_checkable
class PerRowBatched(Protocol):
    """A method whose change the server can apply **per row** on one shared base model (plain LoRA, bottleneck,
    head-only), so that rows of many adapters share one forward pass.

    ``per_row_parts(model)`` returns the method's attached modules as :class:`PerRowPart` (one per adapted host
    module, named as in ``model``; an empty list when nothing but the head changes), or None when this instance
    has no per-row form (DoRA, a merged LoRA). Each part's ``kernel`` is the multi-adapter layer class that stacks
    many adapters' parts at one host; it lives beside the method (``methods/lora.py``, ``methods/bottleneck.py``)
    and follows :class:`adaptune.per_row.PerRowKernel`.
    """

    def per_row_parts(self, model: nn.Module) -> list[PerRowPart] | None: ...


@dataclass(frozen=True)
class PerRowPart:
    """One adapted host module of a per-row method: ``host`` (its name in the base model), the ``module`` the
    method attached there, and the multi-adapter ``kernel`` class that serves it per row."""

    host: str
    module: nn.Module
    kernel: type


@runtime_checkable
class Mergeable(Protocol):
    """A method whose change can be folded into the base weights (LoRA, IA3; trivially BitFit and head).

    ``merge`` and ``unmerge`` are explicit calls, never a side effect of ``train()``/``eval()``; while merged the
    method's hooks add nothing, so outputs are the same (to float tolerance) merged or not. ``merge_and_unload``
    merges and then removes the method's modules, leaving a plain base model (for export).
    """

    def merge(self, model: nn.Module) -> None: ...

    def unmerge(self, model: nn.Module) -> None: ...

    def merge_and_unload(self, model: nn.Module) -> None: ...


@dataclass
class ParamCount:
    """Trainable parameters split by where they live."""

    method: int = 0
    head: int = 0
    total_base: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        return self.method + self.head
