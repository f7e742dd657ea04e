"""``head``: train the task head alone on top of the frozen backbone (a linear probe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from adaptune.config import MethodConfig
from adaptune.methods.base import AttachContext, Method, PerRowPart
from adaptune.registry import register_method


class HeadOnlyConfig(MethodConfig):
    """No change to the backbone; only the task head trains."""

    name: Literal["head"] = Field("head", description="Train the task head alone.")


@register_method("head", HeadOnlyConfig)
class HeadOnly(Method):
    """Train only the task head: the backbone is a fixed feature extractor."""

    default_learning_rate = 1e-2  # best of 3e-3/1e-2/3e-2 on an SST-2 subset

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Nothing to attach: every backbone parameter stays frozen."""

    def merge(self, model: nn.Module) -> None:
        """Nothing to fold into the backbone."""

    def unmerge(self, model: nn.Module) -> None:
        """Nothing to take out of the backbone."""

    def merge_and_unload(self, model: nn.Module) -> None:
        """Nothing to fold or remove: the backbone is the base model."""

    def per_row_parts(self, model: nn.Module) -> list[PerRowPart]:
        """Nothing per row but the head: rows of head-only adapters share the plain base's forward pass
        (:class:`~adaptune.methods.base.PerRowBatched`)."""
        return []
