"""What every method provides, and the one injection mechanism they share.

A method is attached to a frozen base model. It may add small modules (attached as children of the module they
modify, so base parameter names never change) that act through forward hooks, or it may unfreeze a few existing
parameters. ``owned_parameters`` names exactly what it trains and what the adapter file stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from adaptune.config import MethodConfig
from adaptune.targets import Anatomy


@dataclass
class AttachContext:
    """What a method may know about the model it is attached to."""

    model_type: str
    anatomy: Anatomy | None
    hidden_size: int
    num_layers: int


@dataclass
class Injection:
    """A module added to a host module, with the hook that applies it."""

    host: nn.Module
    attr: str
    handle: RemovableHandle


@dataclass
class InputPrep:
    """Backbone inputs after a method's input hook, and how many virtual positions it prepended."""

    inputs: dict[str, torch.Tensor]
    n_virtual: int = 0


class Method(ABC):
    """Base of every method. Subclasses register with ``@register_method(name, ConfigClass)``.

    Life cycle: ``attach(model, ctx)`` once on a frozen model; ``owned_parameters(model)`` lists the trained
    tensors by name; ``detach(model)`` restores the base model exactly.
    """

    #: Recommended AdamW learning rate when the user gives none (training.learning_rate: null).
    default_learning_rate: float = 1e-3

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self._injections: list[Injection] = []

    @abstractmethod
    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Modify ``model`` (frozen) in place: add modules or unfreeze parameters."""

    def owned_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """Name -> parameter for everything this method trains (default: the injected modules')."""
        owned: dict[str, nn.Parameter] = {}
        prefixes = {id(inj.host): inj.attr for inj in self._injections}
        for host_name, host in model.named_modules():
            attr = prefixes.get(id(host))
            if attr is None:
                continue
            for pname, param in getattr(host, attr).named_parameters():
                owned[f"{host_name}.{attr}.{pname}" if host_name else f"{attr}.{pname}"] = param
        return owned

    def prepare_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> InputPrep:
        """Input hook for methods that change the inputs (prompt tuning); the default leaves them as they are."""
        return InputPrep(inputs)

    def detach(self, model: nn.Module) -> None:
        """Remove every injected module and hook."""
        for inj in self._injections:
            inj.handle.remove()
            delattr(inj.host, inj.attr)
        self._injections.clear()

    def inject_after(self, host: nn.Module, attr: str, module: nn.Module) -> None:
        """Apply ``module`` to ``host``'s output: ``host(x)`` becomes ``module(host(x))``."""
        host.add_module(attr, module)

        def hook(_mod: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            return module(output)  # type: ignore[no-any-return]

        self._injections.append(Injection(host, attr, host.register_forward_hook(hook)))

    def inject_around(
        self, host: nn.Module, attr: str, module: nn.Module, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        """Combine ``host``'s input and output: ``host(x)`` becomes ``fn(x, host(x))`` (e.g. LoRA's W0 x + B A x)."""
        host.add_module(attr, module)

        def hook(_mod: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return fn(args[0], output)

        self._injections.append(Injection(host, attr, host.register_forward_hook(hook)))


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
