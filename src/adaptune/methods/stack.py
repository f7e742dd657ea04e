"""``stack``: several adapters on one base model, each trainable or frozen (composition as plain data).

Pfeiffer et al., "MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer", EMNLP 2020: a
language adapter, trained once and frozen, under a task adapter that trains on top of it; AdapterHub's ``Stack``.
Here the composition is a config, not code::

    method:
      name: stack
      members:
        - {name: lang, adapter: runs/lang/adapter, trainable: false}   # method taken from that adapter
        - {name: task, method: {name: bottleneck, reduction_factor: 16}}

Members are attached in order, each as the method it names, so the first is closest to the base: two bottlenecks
after the same FFN compute ``h -> task(lang(h))``; LoRA updates add up; IA3 scales multiply. Every member adds its
modules under its own name (``bottleneck_lang``, ``lora_task``; :attr:`Method.attr_suffix`), so members never
clash, and the adapter file names every tensor ``adapter.<member>.<parameter>``, e.g.
``adapter.task.encoder.layer.0.output.dense.bottleneck_task.up.weight``.

* A member with ``adapter`` starts from that adapter folder's method tensors (its head is not used). The folder
  must come from the same base weights (its fingerprint is checked) and its method config must equal the
  member's (omit ``method`` to take it from the folder).
* ``trainable: false`` members stay as loaded: :meth:`Stack.frozen_parameters`, never given to the optimiser.
* The saved adapter is self-contained: it stores the tensors of *every* member, frozen ones included, so it loads
  without the member folders. Its config replaces each member's ``adapter`` with ``source`` (the folder's path
  and the SHA-256 of its weights at training time), a record of where the member came from that loading never
  reads.

Limits: at most one member may change the inputs (``prompt`` or ``prefix``: the input hook composes badly and
two prefixes would compete for the key/value cache); a member may not be a stack; no two members may own the same
tensor (two BitFits). A stack is not mergeable (``adaptune merge``) as a whole.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator
from torch import nn

from adaptune.backbone import BaseFingerprint
from adaptune.config import MethodConfig, StrictModel, TrainingConfig, _describe_validation
from adaptune.errors import AdapterFileError, ConfigError
from adaptune.io import BaseMismatch, check_base, load_adapter, read_adapter_config
from adaptune.methods.base import AttachContext, InputPrep, Method, ParamGroup, ParamGroups
from adaptune.registry import build_method, method_registration, register_method

#: Learning rate when no member trains (only the task head does): the ``head`` method's default.
HEAD_ONLY_LEARNING_RATE = 1e-2


class MemberSource(StrictModel):
    """Where a member's tensors came from when the stack was trained (written on save, never read on load)."""

    path: str = Field(description="The adapter folder the member was loaded from.")
    sha256: str = Field(description="SHA-256 of that folder's adapter.safetensors at training time.")


def method_config(value: Any, where: str) -> MethodConfig:
    """A registered method's config from plain data, with errors that name ``where`` (the config key)."""
    if isinstance(value, MethodConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"config key '{where}' needs a mapping with a method 'name', got {value!r}")
    config_cls = method_registration(str(value["name"])).config_cls
    try:
        return config_cls.model_validate(value)  # type: ignore[return-value]
    except ValidationError as err:
        raise ConfigError(_describe_validation(err, prefix=where, model=config_cls)) from None


def method_from_adapter(data: Any) -> Any:
    """A member's raw config with its ``method`` read from its ``adapter`` folder when it gives none (stack and
    fusion members); a :class:`ConfigError` naming ``method.members.adapter`` when that folder cannot be read."""
    if isinstance(data, dict) and data.get("method") is None and data.get("adapter"):
        try:
            data = {**data, "method": read_adapter_config(data["adapter"])["method"]}
        except AdapterFileError as err:
            raise ConfigError(f"config key 'method.members.adapter' = {data['adapter']!r}: {err}") from None
    return data


class StackMember(StrictModel):
    """One adapter of a stack."""

    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$",
        description="Member name: part of its module and tensor names (letters, digits, '_').",
    )
    method: SerializeAsAny[MethodConfig] = Field(
        description="The member's method config (any registered method but 'stack'); may be omitted when "
        "'adapter' is given, which then supplies it."
    )
    trainable: bool = Field(True, description="Train this member (true) or keep it as loaded (false).")
    adapter: str | None = Field(
        None, description="Adapter folder (same base model) whose method tensors the member starts from."
    )
    source: MemberSource | None = Field(
        None,
        description="Written on save, in place of 'adapter': where the member's tensors came from. The tensors "
        "themselves are in the stack's own adapter file; loading never reads this.",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_from_adapter(cls, data: Any) -> Any:
        return method_from_adapter(data)

    @field_validator("method", mode="before")
    @classmethod
    def _resolve_method(cls, value: Any) -> MethodConfig:
        return method_config(value, "method.members.method")

    @model_validator(mode="after")
    def _frozen_needs_tensors(self) -> StackMember:
        if self.method.name == "stack":
            raise ConfigError(f"stack member '{self.name}': a member cannot itself be a stack")
        if not self.trainable and self.adapter is None and self.source is None:
            raise ConfigError(
                f"stack member '{self.name}' is frozen (trainable: false) and has no 'adapter' to load: "
                "it would stay at its initialisation"
            )
        return self


class StackConfig(MethodConfig):
    """Configuration of a stack of adapters."""

    name: Literal["stack"] = Field("stack", description="Several adapters on one base, each trainable or frozen.")
    members: list[StackMember] = Field(
        min_length=1, description="The adapters, bottom (closest to the base) to top; names must differ."
    )

    @model_validator(mode="after")
    def _distinct_names(self) -> StackConfig:
        names = [m.name for m in self.members]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"config key 'method.members': member names must differ; repeated: {twice}")
        return self


@register_method("stack", StackConfig)
class Stack(Method):
    """Several adapters on one base (e.g. a frozen language adapter under a task adapter), saved as one."""

    config: StackConfig

    def __init__(self, config: StackConfig) -> None:
        super().__init__(config)
        self.members: list[tuple[StackMember, Method]] = []
        for member in config.members:
            method = build_method(member.method)
            method.attr_suffix = member.name
            self.members.append((member, method))
        hooks = [m.name for m, method in self.members if method.changes_inputs]
        if len(hooks) > 1:
            raise ConfigError(f"stack members {hooks} all change the inputs (prompt/prefix); at most one may")
        rates = [method.default_learning_rate for member, method in self.members if member.trainable]
        self.default_learning_rate = min(rates) if rates else HEAD_ONLY_LEARNING_RATE
        self.unsupported_model_types = frozenset().union(*(m.unsupported_model_types for _, m in self.members))
        self.changes_inputs = bool(hooks)
        self._sources: dict[str, MemberSource] = {}

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Attach every member in order; members with an ``adapter`` get its tensors (same base checked)."""
        base = BaseFingerprint(model, now=any(m.adapter for m, _ in self.members))  # before members add tensors
        for member, method in self.members:
            method.attach(model, ctx)
            if member.adapter:
                self._sources[member.name] = load_member(member, method, model, base)
        self._check_disjoint(model)

    def _check_disjoint(self, model: nn.Module) -> None:
        owner: dict[int, str] = {}
        for member, method in self.members:
            for name, param in method.owned_parameters(model).items():
                if id(param) in owner:
                    raise ConfigError(
                        f"stack members '{owner[id(param)]}' and '{member.name}' both own '{name}'; "
                        "members must adapt different tensors"
                    )
                owner[id(param)] = member.name

    def _parameters(self, model: nn.Module, *, trainable: bool) -> dict[str, nn.Parameter]:
        return {
            f"{member.name}.{name}": param
            for member, method in self.members
            if member.trainable == trainable
            for name, param in method.owned_parameters(model).items()
        }

    def owned_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The trainable members' parameters, as ``<member>.<name>``."""
        return self._parameters(model, trainable=True)

    def frozen_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The frozen members' parameters, as ``<member>.<name>``: stored in the adapter file, never trained."""
        return self._parameters(model, trainable=False)

    def param_groups(self, model: nn.Module, training: TrainingConfig) -> list[ParamGroup]:
        """The trainable members' own groups (LoRA+ on a LoRA member), names as ``<member>.<name>``."""
        groups = []
        for member, method in self.members:
            if member.trainable and isinstance(method, ParamGroups):
                for group in method.param_groups(model, training):
                    names = tuple(f"{member.name}.{name}" for name in group.names)
                    groups.append(ParamGroup(names, group.lr_scale, group.label))
        return groups

    def prepare_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> InputPrep:
        """The input hook of the one member that has one (prompt or prefix), else the inputs unchanged."""
        for _member, method in self.members:
            if method.changes_inputs:
                return method.prepare_inputs(model, inputs)
        return InputPrep(inputs)

    def detach(self, model: nn.Module) -> None:
        """Detach the members top to bottom: the base model as it was."""
        for _member, method in reversed(self.members):
            method.detach(model)

    def config_for_file(self) -> dict[str, Any]:
        """The config with each member's ``adapter`` replaced by its ``source``: the file holds the tensors."""
        data = self.config.model_dump(mode="json")
        for member in data["members"]:
            if member["name"] in self._sources:
                member["source"] = self._sources[member["name"]].model_dump(mode="json")
                member["adapter"] = None
        return data


def load_member(
    member: StackMember, method: Method, model: nn.Module, base_fingerprint: str | Callable[[str], str]
) -> MemberSource:
    """Copy the method tensors of ``member.adapter`` into the attached ``method`` (names without the member's
    suffix, as that single-method adapter stores them); the same base and the same method config are required."""
    assert member.adapter is not None
    adapter = load_adapter(member.adapter)
    where = f"stack member '{member.name}': adapter {member.adapter}"
    try:
        check_base(
            adapter.config, base_fingerprint, where=where, this="the stack's base", advice="stack adapters of one base"
        )
    except BaseMismatch as err:
        raise ConfigError(str(err)) from None
    theirs = method_config(adapter.config["method"], f"{member.adapter}: method")
    if _dump(theirs) != _dump(member.method):
        raise ConfigError(f"{where} has method config {_dump(theirs)}, the member says {_dump(member.method)}")
    tensors = {k[len("adapter.") :]: v for k, v in adapter.tensors.items() if k.startswith("adapter.")}
    owned = {method.plain_name(k): p for k, p in method.owned_parameters(model).items()}
    missing, unexpected = sorted(owned.keys() - tensors.keys()), sorted(tensors.keys() - owned.keys())
    if missing or unexpected:
        raise ConfigError(f"{where} does not fit: missing tensors {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, param in owned.items():
            tensor = tensors[name]
            if param.shape != tensor.shape:
                raise ConfigError(f"{where}: tensor {name} has shape {tuple(tensor.shape)}, not {tuple(param.shape)}")
            param.copy_(tensor)
    return MemberSource(path=str(Path(member.adapter).resolve()), sha256=adapter.config["weights"]["sha256"])


def _dump(config: BaseModel) -> dict[str, Any]:
    return config.model_dump(mode="json")
