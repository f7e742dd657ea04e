"""BitFit (Ben Zaken et al. 2021): train the bias terms of the backbone and nothing else (plus the task head).

Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", ACL 2022. Every ``y = W x + b`` of the backbone keeps ``W`` frozen and trains ``b``; LayerNorm
biases included, as in the paper. No module is added: the trained tensors *are* base parameters, stored in the
adapter file under their base names (``encoder.layer.0.attention.self.query.bias``, shape ``(out,)``) and copied
back onto a fresh base on load. ``detach`` restores the pretrained values (kept at attach; biases are small).

Architectures without biases (Llama, Qwen2, Mistral) have nothing to train and are refused.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from adaptune.config import MethodConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, Method
from adaptune.registry import register_method


class BitFitConfig(MethodConfig):
    """Configuration of BitFit."""

    name: Literal["bitfit"] = Field("bitfit", description="BitFit: train the backbone biases.")
    bias_filter: list[str] | None = Field(
        None,
        description="Train only the biases whose parameter name contains one of these substrings "
        "(e.g. ['attention.self.query', 'intermediate']); None: every bias of the backbone.",
    )


def is_bias(name: str) -> bool:
    """True for a parameter named ``bias`` (``...dense.bias``, ``...LayerNorm.bias``)."""
    return name.rsplit(".", 1)[-1] == "bias"


@register_method("bitfit", BitFitConfig)
class BitFit(Method):
    """BitFit: train the backbone's bias terms (optionally only some), nothing else."""

    # The sweep's best on SST-2 (3.6e-3) and CoNLL-2003 (4.5e-3), geometric mean (README 'Defaults, swept'; the
    # paper searched 1e-4..1e-3 for BERT with many more steps); was 1e-3.
    default_learning_rate = 4e-3
    #: Their standard configs have no bias at all (``attention_bias``/``mlp_bias`` false); Qwen2 (q/k/v biases)
    #: and GPT-2 work. A Llama built with biases would work too, but is not what these model types ship as.
    unsupported_model_types = frozenset({"llama", "mistral", "qwen3"})
    config: BitFitConfig

    def __init__(self, config: BitFitConfig) -> None:
        super().__init__(config)
        self._biases: dict[str, nn.Parameter] = {}
        self._pretrained: dict[str, torch.Tensor] = {}

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Unfreeze the selected biases and keep a copy of their pretrained values."""
        wanted = self.config.bias_filter
        chosen = {
            name: param
            for name, param in model.named_parameters()
            if is_bias(name) and (wanted is None or any(part in name for part in wanted))
        }
        if not chosen:
            what = f"whose name contains one of {wanted}" if wanted else "at all"
            raise ConfigError(f"method 'bitfit': model type '{ctx.model_type}' has no bias parameters {what}")
        self._biases = chosen
        self._pretrained = {name: param.detach().clone() for name, param in chosen.items()}
        for param in chosen.values():
            param.requires_grad_(True)

    def owned_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The trained biases by their base names."""
        return dict(self._biases)

    def merge(self, model: nn.Module) -> None:
        """Nothing to fold: the trained biases already are base weights."""

    def unmerge(self, model: nn.Module) -> None:
        """Nothing to take out (see :meth:`merge`); :meth:`detach` restores the pretrained biases."""

    def merge_and_unload(self, model: nn.Module) -> None:
        """Keep the trained biases in the base model, frozen, and forget the pretrained values."""
        self._release()

    def detach(self, model: nn.Module) -> None:
        """Put the pretrained biases back and freeze them."""
        with torch.no_grad():
            for name, param in self._biases.items():
                param.copy_(self._pretrained[name])
        self._release()

    def _release(self) -> None:
        for param in self._biases.values():
            param.requires_grad_(False)
        self._biases, self._pretrained = {}, {}
