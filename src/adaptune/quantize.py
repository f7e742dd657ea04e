"""Dynamic int8 inference for the frozen base: its ``nn.Linear`` layers run on int8 weights, everything else in float.

``Predictor.load(path, quantize="int8")``, ``adaptune predict/eval/serve --quantize int8``. Each base linear map
``y = W x + b`` (``W: (out, in)``) becomes

    W_q = round(W / s_w),  s_w[o] = max_i |W[o, i]| / 127         int8 weights, one scale per output channel
    x_q = round(x / s_x) + z_x                                      uint8 activations, scale and zero point taken
                                                                    from the min and max of each call's input
    y   = s_x s_w[o] (x_q - z_x) . W_q[o] + b                       int32 accumulation, float32 out, float bias

with the kernel PyTorch's own dynamic quantisation calls, ``torch.ops.quantized.linear_dynamic`` on a weight packed
once by ``torch.ops.quantized.linear_prepack`` (fbgemm on x86, qnnpack on ARM). Not through
``torch.ao.quantization.quantize_dynamic`` (deprecated): it swaps modules for new ones, which would drop the forward
hooks and child modules that adapters attach to their host layers. Here each layer stays the same module object
(:func:`quantize_base` turns it into an :class:`Int8Linear` in place, as ``torch.nn.utils.parametrize`` changes a
module's class), so its name, its hooks and the adapter modules under it are untouched: LoRA's ``B A x`` is still
added unmerged in float on top of the int8 output, a bottleneck still runs in float after its host, IA3 still
scales its host's input or output, prompt and prefix tensors are fed as before, BitFit's trained biases (float
parameters of the int8 layers) are added after the int8 product, and the task head is float.

Embeddings, LayerNorms, GPT-2's ``Conv1D`` layers and a decoder's LM head (outside the base model, and often the
embedding matrix itself) stay float. What needs the float base weight is refused with a :class:`QuantizeError`
(a :class:`~adaptune.errors.ConfigError`) the moment it asks for it (:attr:`Int8Linear.weight`): DoRA (its
magnitude divides by the norm of ``W0 + s B A`` at every forward), merging an adapter after quantising (merge first:
``Predictor.load(..., merge=True, quantize="int8")`` merges, then quantises the merged weights), training (int8
layers have no gradient; :meth:`Int8Linear.forward` refuses in training mode) and a base on a GPU (the kernel runs on
the CPU; use ``--precision bf16`` there). The adapter files are never touched: they are read as they are.

Speed: on an AVX512-VNNI CPU one MiniLM-sized layer (384 -> 1536) took about a quarter of the float time at
32 x 128 tokens and at one 32-token input in a single-thread check (fbgemm); the activations use all 8 bits
(``reduce_range`` off) where the CPU has VNNI, else 7 bits, as torch's dynamic quantisation does, because the
pre-VNNI instruction adds pairs of products into a saturating int16. Copies of the model (the multi-adapter
predictor's per-adapter module trees, :func:`~adaptune.inference.folder.structural_copy`) share the packed weights,
which are never written.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from adaptune.errors import ConfigError

#: The ``quantize`` values :func:`quantize_base` knows (None: float, the default).
MODES = ("int8",)


class QuantizeError(ConfigError):
    """A refusal of int8 quantisation: an unknown mode, a GPU, training, or a use of the float weight it dropped."""


def check_quantize(mode: str | None, device: torch.device | str = "cpu") -> None:
    """Refuse an unknown ``mode`` and, for int8, a ``device`` other than the CPU (before any model is loaded)."""
    if mode is None:
        return
    if mode not in MODES:
        raise QuantizeError(f"quantize={mode!r} is not known; use one of {list(MODES)} (or none, for float)")
    if torch.device(device).type != "cpu":
        raise QuantizeError(
            f"quantize={mode!r} runs on the CPU (dynamic int8 kernels: fbgemm, qnnpack), not on {device}; "
            "on a GPU use --precision bf16, or --device cpu with --quantize int8"
        )
    if not torch.backends.quantized.supported_engines or torch.backends.quantized.engine == "none":
        raise QuantizeError("this torch build has no int8 kernels (torch.backends.quantized lists no engine)")


class PackedWeight:
    """The prepacked int8 weight of one layer (an opaque ``LinearPackedParamsBase``). It is never written, so
    copies of the module share it (``deepcopy`` returns it as it is) as they share float parameters."""

    def __init__(self, params: Any) -> None:
        self.params = params

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedWeight:
        return self


def pack_int8(weight: torch.Tensor) -> PackedWeight:
    """``weight`` ``(out, in)`` as symmetric int8 with one scale per output channel, packed for the kernel."""
    w = weight.detach().float().contiguous()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    zero_points = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch >= 2.11 warns that quantized tensors will go; its packing needs one
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        qweight = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
    return PackedWeight(torch.ops.quantized.linear_prepack(qweight, None))


def reduce_range() -> bool:
    """7-bit activations on an x86 CPU without AVX512-VNNI (fbgemm's ``vpmaddubsw`` adds two u8 x s8 products into
    a saturating int16), 8 bits with VNNI and on ARM (qnnpack)."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return False
    has_vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)
    return not has_vnni()


class Int8Linear(nn.Linear):
    """An ``nn.Linear`` whose weight is int8 (see the module docstring): ``(..., in_features) -> (..., out_features)``,
    float32 in and out (another float input dtype is computed in float32 and returned in its dtype).

    Made in place from a float ``nn.Linear`` by :func:`quantize_base`, never constructed directly. Attributes:
    ``packed`` (the int8 weight), ``bias`` (the float bias parameter, or None), ``reduce_range`` and
    ``quantized_name`` (the layer's name in the base model, for messages).
    """

    packed: PackedWeight
    reduce_range: bool
    quantized_name: str

    @property  # type: ignore[override]
    def weight(self) -> torch.Tensor:
        """There is no float weight any more: whatever reads it (DoRA, merging, export) gets a clear refusal."""
        raise QuantizeError(
            f"the base layer '{self.quantized_name}' is quantised to int8 (quantize='int8') and has no float weight, "
            "which this needs (DoRA, merging or exporting an adapter, training); load without quantize, or with "
            "merge=True, which merges before quantising"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise QuantizeError(
                f"the base layer '{self.quantized_name}' is quantised to int8, which is for inference only; "
                "train on the float base (without quantize)"
            )
        out = torch.ops.quantized.linear_dynamic(x.float(), self.packed.params, self.reduce_range)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out if x.dtype == out.dtype else out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8 weights per output channel, activations quantised per call"


def quantize_base(model: nn.Module, mode: str | None, *, keep: Iterable[torch.Tensor] = ()) -> list[str]:
    """Quantise ``model``'s float ``nn.Linear`` layers in place (``mode`` "int8"; None does nothing); return their
    names. Layers whose weight is in ``keep`` (an adapter's own layers and a task head: the tensors an adapter file
    stores) stay float, and so does everything that is not an ``nn.Linear``. Call it on a model in eval mode, on the
    CPU, after the base fingerprint is taken (the float weights are dropped)."""
    if mode is None:
        return []
    check_quantize(mode, _device(model))
    kept = {id(t) for t in keep}
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and id(module.weight) not in kept
    ]
    if not targets:
        raise QuantizeError(
            f"quantize={mode!r}: the base model has no float nn.Linear layer to quantise "
            f"({type(model).__name__}; GPT-2's Conv1D layers are not quantised)"
        )
    narrow = reduce_range()
    for name, module in targets:
        _to_int8(module, name, narrow)
    return [name for name, _ in targets]


def _to_int8(module: nn.Linear, name: str, narrow: bool) -> None:
    """Turn ``module`` into an :class:`Int8Linear` in place: the same object, its hooks and children kept."""
    packed = pack_int8(module.weight)
    del module.weight  # the float weight is freed (unless something else holds it)
    module.__class__ = Int8Linear
    module.packed = packed
    module.reduce_range = narrow
    module.quantized_name = name


def int8_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s :class:`Int8Linear` layers."""
    return [name for name, module in model.named_modules() if isinstance(module, Int8Linear)]


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


__all__ = ["MODES", "Int8Linear", "QuantizeError", "check_quantize", "int8_layers", "quantize_base"]
