"""``fusion``: AdapterFusion, a trained attention over the outputs of several frozen, already trained adapters.

Pfeiffer et al., "AdapterFusion: Non-Destructive Task Composition for Transfer Learning", EACL 2021: adapters are
first trained one per task (knowledge extraction), then a small attention per layer learns, for a new task, how much
of each adapter's output to use at each token (knowledge composition); the base and the adapters stay frozen::

    method:
      name: fusion
      members:                                  # two or more trained adapter folders of this base model
        - {name: sentiment, adapter: runs/sst2/adapter}
        - {name: topic, adapter: runs/tnews/adapter}

**Where the fusion acts.** At every *fusion point*: a module of the base that at least one member adapts (a
bottleneck's host, the FFN output projection by default; a LoRA's host linear maps), in the blocks that ``layers``
selects. A point's frozen host maps its input ``x`` to ``y = host(x)`` of shape ``(B, T, d)``, ``d`` its output
width; each member ``i`` adapting it has the output ``delta_i`` ``(B, T, d)``, the change it alone makes to ``y``
from the same ``x`` (members act side by side, not on each other's output as in a stack):

* bottleneck member: ``delta_i = W_up f(W_down y)``, its adapter module's output at its placement (minus ``y``
  when the adapter is not residual), what AdapterHub fuses;
* LoRA member: ``delta_i = (alpha/r) B A x``, its update of that linear map (DoRA: its adapted output minus ``y``).

The point then computes, with ``N`` its members, ``W_Q, W_K, W_V: (d, d)`` and temperature ``tau``::

    q = W_Q y + b_Q          s_i = softmax_i(q . (W_K delta_i) / tau)          y' = y + W_V sum_i s_i delta_i

computed as ``(q W_K) . delta_i`` (one ``d x d`` product, not ``N``) and ``W_V`` applied once to the mixture (it is
linear). ``W_Q, W_K`` start as small normal noise (``init_std``), so the attention starts near uniform; with
``value_init: identity`` ``W_V = I + V`` with ``V`` trained from noise of std 1e-6 (``random``: ``W_V = V`` from
``init_std``), so a fusion starts as the mean of its members' outputs. Only ``W_Q, b_Q, W_K, V`` (and the head)
train; the members' tensors are frozen and stored with them.

**What a LoRA member's output at a layer is.** LoRA changes the query and value maps by default, whose effect on a
block's output passes through the attention softmax, the FFN and the layer norms: a per-*block* output of a LoRA
member exists only by running the block once more per member, ``N + 1`` times the cost of the fused blocks. This
module fuses per adapted *module* instead (its LoRA update there), at the cost of the members' own deltas plus three
``d x d`` products per point and token. So an attention chooses between members where two or more adapt the same
module: several bottlenecks, several LoRAs of the same roles, or a bottleneck and a LoRA with ``roles: [ffn_out]``.
A point adapted by one member alone gets ``s = 1`` (only ``W_V`` acts), as in AdapterHub; members that share no
module are refused.

**Differences from AdapterHub's ``Fuse`` / ``BertFusion``.** Its query is the sub-layer's output after the residual
add and LayerNorm, where its Pfeiffer adapters sit; here the query is the host output ``y`` that a bottleneck member
reads. Its key has a bias, which adds the same score to every member and cancels in the softmax: none here. Its
trainer adds the gradient of ``0.01 ||I - W_V||^2`` after every step; here weight decay on ``V`` pulls ``W_V``
toward ``I`` instead (the loop adds no method loss). Its ``temperature`` option (off by default) anneals ``T`` from
50 by 0.05 per forward call down to 1, in training and inference alike, and does not save it; here ``temperature``
is fixed, so a saved fusion predicts the same on every call. Its dropout on the scores is not offered here. It
fuses bottleneck adapters only; here LoRA members too, as above.

**The adapter file** is self-contained, like a stack's: it stores every member's tensors (``adapter.<member>.<name
in the member's own file>``) beside the fusion's (``adapter.<host>.fusion.query.weight`` ...), and its config
replaces each member's ``adapter`` folder with ``source`` (path and SHA-256 at training time), never read on load.
Members must come from this base (fingerprint checked) and be bottleneck or LoRA adapters: a nested fusion or
stack, or a prompt/prefix adapter (it changes the inputs, with no output at a module to weigh) is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, SerializeAsAny, field_validator, model_validator
from torch import nn

from adaptune.backbone import BaseFingerprint
from adaptune.config import MethodConfig, StrictModel
from adaptune.errors import AdapterFileError, ConfigError
from adaptune.io import check_base, read_adapter_config
from adaptune.methods.base import AttachContext, Method
from adaptune.methods.bottleneck import BottleneckAdapter
from adaptune.methods.linear import bias_of, weight_out_in
from adaptune.methods.lora import LoRA
from adaptune.methods.stack import MemberSource, StackMember, load_member, method_config, method_from_adapter
from adaptune.registry import build_method, register_method
from adaptune.targets import transformer_blocks

#: Std of the noise on ``V`` when ``W_V = I + V`` (AdapterHub puts 1e-6 off the diagonal).
VALUE_NOISE_STD = 1e-6

#: A member's output at a point: ``(member module, host input x, host output y, host) -> delta (..., d)``.
DeltaFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]


def bottleneck_delta(adapter: nn.Module, _x: torch.Tensor, y: torch.Tensor, _host: nn.Module) -> torch.Tensor:
    """A bottleneck's change to its host output ``y``: ``W_up f(W_down y)`` (minus ``y`` if not residual)."""
    assert isinstance(adapter, BottleneckAdapter)
    out = adapter.up(adapter.dropout(adapter.act(adapter.down(y))))
    return out if adapter.residual else out - y  # type: ignore[no-any-return]


def lora_delta(lora: nn.Module, x: torch.Tensor, y: torch.Tensor, host: nn.Module) -> torch.Tensor:
    """A LoRA's change to its host output: ``(alpha/r) B A x`` (DoRA: the adapted output minus ``y``)."""
    assert isinstance(lora, LoRA)
    if lora.magnitude is None:
        return lora(x)  # type: ignore[no-any-return]
    return lora.adapt(x, y, weight_out_in(host), bias_of(host)) - y


#: Member method name -> (the module class it adds, its output at a point). Only these can be fused.
FUSABLE: dict[str, tuple[type[nn.Module], DeltaFn]] = {
    "bottleneck": (BottleneckAdapter, bottleneck_delta),
    "lora": (LoRA, lora_delta),
}
DELTAS: dict[type[nn.Module], DeltaFn] = dict(FUSABLE.values())


def output_width(module: nn.Module) -> int:
    """The output width ``d`` of the host a member module adapts."""
    if isinstance(module, BottleneckAdapter):
        return module.up.out_features
    assert isinstance(module, LoRA)
    return module.lora_b.out_features


class FusionMember(StrictModel):
    """One fused adapter: a trained adapter folder (``adapter``), or, in a saved fusion, its ``source``."""

    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$",
        description="Member name: part of its module and tensor names (letters, digits, '_').",
    )
    method: SerializeAsAny[MethodConfig] = Field(
        description="The member's method config (bottleneck or lora); omit it to take it from 'adapter'."
    )
    adapter: str | None = Field(None, description="Trained adapter folder of the same base model.")
    source: MemberSource | None = Field(
        None,
        description="Written on save, in place of 'adapter': where the member came from (its tensors are in the "
        "fusion's own file); loading never reads this.",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_from_adapter(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if not data.get("adapter") and not data.get("source"):
            raise ConfigError(
                f"fusion member '{data.get('name')}' has no 'adapter' folder: a fusion weighs trained adapters"
            )
        return method_from_adapter(data)

    @field_validator("method", mode="before")
    @classmethod
    def _resolve_method(cls, value: Any) -> MethodConfig:
        return method_config(value, "method.members.method")

    @model_validator(mode="after")
    def _fusable(self) -> FusionMember:
        kind = self.method.name
        where = f"fusion member '{self.name}'"
        if kind in ("fusion", "stack"):
            raise ConfigError(f"{where} is itself a {kind}: members must be single bottleneck or lora adapters")
        if build_method(self.method).changes_inputs:
            raise ConfigError(
                f"{where} is a '{kind}' adapter, which changes the inputs (virtual tokens or key/value prefixes) "
                "and has no output at a module for the fusion to weigh; members must be bottleneck or lora adapters"
            )
        if kind not in FUSABLE:
            raise ConfigError(f"{where} is a '{kind}' adapter; a fusion weighs bottleneck and lora adapters only")
        return self


class FusionConfig(MethodConfig):
    """Configuration of AdapterFusion over trained adapters."""

    name: Literal["fusion"] = Field("fusion", description="AdapterFusion: attention over frozen trained adapters.")
    members: list[FusionMember] = Field(
        min_length=2, description="The trained adapters to fuse (two or more, same base); names must differ."
    )
    temperature: float = Field(1.0, gt=0, le=1000, description="Softmax temperature of the attention (fixed).")
    value_init: Literal["identity", "random"] = Field(
        "identity", description="W_V = I + V with V near zero ('identity'), or W_V = V small random ('random')."
    )
    init_std: float = Field(0.02, ge=0, description="Std of the normal init of W_Q and W_K (and of V if random).")
    layers: list[int] | None = Field(
        None, description="Block indices to fuse (negative counts from the top); members elsewhere are left out."
    )

    @model_validator(mode="after")
    def _distinct_names(self) -> FusionConfig:
        names = [m.name for m in self.members]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"config key 'method.members': member names must differ; repeated: {twice}")
        return self


class FusionPoint(nn.Module):
    """The attention over the members adapting one host of output width ``d`` (the module docstring's formula).

    ``forward(x (..., d_in), y (..., d), host) -> (..., d)``: the host's input and frozen output, the adapted
    output. ``members``: member name -> its module at this host (frozen, stored under ``members.<name>``).
    """

    def __init__(
        self, d: int, members: dict[str, nn.Module], temperature: float = 1.0, value_init: str = "identity"
    ) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d, bias=False)  # a key bias would add one score to every member: it cancels
        self.value = nn.Linear(d, d, bias=False)
        self.temperature = temperature
        self.identity = value_init == "identity"

    def init_weights(self, std: float) -> None:
        """Normal ``W_Q, W_K`` of std ``std``, zero ``b_Q``; ``V`` near zero (identity) or normal (random)."""
        nn.init.normal_(self.query.weight, std=std)
        nn.init.zeros_(self.query.bias)
        nn.init.normal_(self.key.weight, std=std)
        nn.init.normal_(self.value.weight, std=VALUE_NOISE_STD if self.identity else std)

    def fusion_parameters(self) -> dict[str, nn.Parameter]:
        """What trains: ``query.weight``, ``query.bias``, ``key.weight``, ``value.weight`` (not the members)."""
        return {
            f"{part}.{n}": p for part in ("query", "key", "value") for n, p in getattr(self, part).named_parameters()
        }

    def deltas(self, x: torch.Tensor, y: torch.Tensor, host: nn.Module) -> torch.Tensor:
        """Every member's output at this host, ``(..., N, d)`` in member order."""
        return torch.stack([DELTAS[type(m)](m, x, y, host) for m in self.members.values()], dim=-2)

    def attention(self, y: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """``s = softmax_i((W_Q y + b_Q) . (W_K delta_i) / tau)``: ``(..., d), (..., N, d) -> (..., N)``."""
        folded = self.query(y) @ self.key.weight  # (..., d): q W_K, so that q . (W_K delta) = (q W_K) . delta
        scores = (deltas @ folded.unsqueeze(-1)).squeeze(-1)
        return torch.softmax(scores / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, host: nn.Module) -> torch.Tensor:
        deltas = self.deltas(x, y, host)
        probs = self.attention(y, deltas)
        mixed = (probs.unsqueeze(-2).to(deltas.dtype) @ deltas).squeeze(-2)  # (..., d): sum_i s_i delta_i
        values = self.value(mixed)
        if self.identity:
            values = values + mixed
        return (y + values).to(y.dtype)


def _point_hook(point: FusionPoint, host: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def combine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return point(x, y, host)  # type: ignore[no-any-return]

    return combine


@register_method("fusion", FusionConfig)
class Fusion(Method):
    """AdapterFusion: a trained attention over frozen, trained adapters' outputs at each module they adapt."""

    # A starting point, not swept (AdapterHub's example trains fusion at 5e-5 for 10 epochs; the head shares it).
    default_learning_rate = 1e-3
    config: FusionConfig

    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        self.members: list[tuple[FusionMember, Method]] = []
        for member in config.members:
            method = build_method(member.method)
            method.attr_suffix = member.name
            self.members.append((member, method))
        self.unsupported_model_types = frozenset().union(*(m.unsupported_model_types for _, m in self.members))
        self._frozen: dict[str, nn.Parameter] = {}
        self._sources: dict[str, MemberSource] = {}

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Attach the members (:meth:`_attach_members`), freeze them, and put one :class:`FusionPoint` on every
        host they adapt in the chosen blocks (``layers``); members' modules outside those blocks are left out."""
        points = self._attach_members(model, ctx)
        kept = self._in_layers(model, ctx, points)
        _check_shared(points, kept)
        for param in self._frozen.values():
            param.requires_grad_(False)
        kept_ids = {id(p) for host in kept for m in points[host].values() for p in m.parameters()}
        self._frozen = {name: p for name, p in self._frozen.items() if id(p) in kept_ids}
        cfg = self.config
        for host_name in kept:
            members = points[host_name]
            point = FusionPoint(output_width(next(iter(members.values()))), members, cfg.temperature, cfg.value_init)
            point.init_weights(cfg.init_std)
            host = model.get_submodule(host_name)
            self.inject_around(host, "fusion", point, _point_hook(point, host))

    def _attach_members(self, model: nn.Module, ctx: AttachContext) -> dict[str, dict[str, nn.Module]]:
        """Host name -> member name -> that member's module there: each member attached alone, its folder's
        tensors loaded, its parameters recorded (:meth:`frozen_parameters`), then its hooks and modules removed
        from the model (the modules go into the fusion points). A member that fails leaves the model as it was."""
        base = BaseFingerprint(model, now=any(m.adapter for m, _ in self.members))  # before members add tensors
        points: dict[str, dict[str, nn.Module]] = {}
        for member, method in self.members:
            method.attach(model, ctx)
            try:
                if member.adapter:
                    self._sources[member.name] = self._load(member, method, model, base)
                owned = method.owned_parameters(model)
                self._frozen.update({f"{member.name}.{method.plain_name(k)}": p for k, p in owned.items()})
                for host_name, module in _member_modules(model, method):
                    points.setdefault(host_name, {})[member.name] = module
            finally:
                method.remove_injections()
        return points

    def _load(self, member: FusionMember, method: Method, model: nn.Module, base: BaseFingerprint) -> MemberSource:
        """Check that ``member.adapter`` is of this base and of the member's method, then copy its tensors."""
        assert member.adapter is not None
        where = f"fusion member '{member.name}': adapter {member.adapter}"
        described = read_adapter_config(member.adapter)
        try:
            check_base(described, base, where=where, this="the fusion's base", advice="fuse adapters of one base")
        except AdapterFileError as err:
            raise ConfigError(str(err)) from None
        theirs = method_config(described["method"], f"{member.adapter}: method").model_dump(mode="json")
        ours = member.method.model_dump(mode="json")
        if theirs != ours:
            raise ConfigError(f"{where} has method config {theirs}, the member says {ours}")
        as_stack = StackMember(name=member.name, method=member.method, trainable=False, adapter=member.adapter)
        return load_member(as_stack, method, model, base)

    def _in_layers(self, model: nn.Module, ctx: AttachContext, points: dict[str, Any]) -> list[str]:
        """The hosts inside the blocks that ``layers`` selects (all hosts without it), sorted by name."""
        layers = self.config.layers
        if layers is None:
            return sorted(points)
        if ctx.anatomy is None:
            raise ConfigError(
                f"config key 'method.layers' needs a known architecture, and '{ctx.model_type}' is not in the table"
            )
        count = len(transformer_blocks(model, ctx.anatomy))
        wrong = [i for i in layers if not -count <= i < count]
        if wrong:
            raise ConfigError(f"config key 'method.layers' = {wrong}: the model has layers 0..{count - 1}")
        prefixes = tuple(f"{ctx.anatomy.layers}.{i % count}." for i in layers)
        return sorted(name for name in points if name.startswith(prefixes))

    def owned_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The fusion points' ``W_Q, b_Q, W_K, V``, as ``<host>.fusion.<name>``; never the members'."""
        names = {id(module): name for name, module in model.named_modules()}
        return {
            f"{names[id(inj.host)]}.{inj.attr}.{name}": param
            for inj in self._injections
            for name, param in getattr(inj.host, inj.attr).fusion_parameters().items()
        }

    def frozen_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The fused members' tensors, as ``<member>.<name in its own adapter file>``: stored, never trained."""
        return dict(self._frozen)

    def config_for_file(self) -> dict[str, Any]:
        """The config with each member's ``adapter`` replaced by its ``source``: the file holds the tensors."""
        data = self.config.model_dump(mode="json")
        for member in data["members"]:
            if member["name"] in self._sources:
                member["source"] = self._sources[member["name"]].model_dump(mode="json")
                member["adapter"] = None
        return data


def _member_modules(model: nn.Module, method: Method) -> list[tuple[str, nn.Module]]:
    """``(host name, module)`` for every module ``method`` (attached alone, fusable) added to ``model``."""
    owned = {id(p) for p in method.owned_parameters(model).values()}
    found = []
    for host_name, host in model.named_modules():
        for child in host.children():
            params = [id(p) for p in child.parameters()]
            if type(child) in DELTAS and params and set(params) <= owned:
                found.append((host_name, child))
    return found


def _check_shared(points: dict[str, dict[str, nn.Module]], kept: list[str]) -> None:
    """Refuse a fusion where no host in the chosen blocks is adapted by two or more members."""
    if any(len(points[host]) > 1 for host in kept):
        return
    adapted: dict[str, list[str]] = {}
    for host in kept:
        for name in points[host]:
            adapted.setdefault(name, []).append(host)
    where = "; ".join(f"'{name}' adapts {hosts}" for name, hosts in adapted.items()) or "no module in method.layers"
    raise ConfigError(
        f"fusion members share no adapted module ({where}): the attention weighs members where two or more adapt "
        "the same module, e.g. bottlenecks of one placement, LoRAs of the same roles, or a pfeiffer bottleneck and "
        "a lora with roles: [ffn_out]"
    )
