"""The rows of a multi-adapter forward batch (:mod:`adaptune.inference.multi`): one parsed, tokenised input of one
request for its adapter, and the predict context that hands a task the predictions its rows' shared forward pass
already made."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adaptune.inference.errors import AdapterUnloaded
from adaptune.inference.folder import Entry, Listing
from adaptune.tasks.base import Encoded


@dataclass
class Row:
    """One input of one request, parsed and tokenised for its adapter (``adapter``: its listing)."""

    adapter: Listing
    example: Any
    encoded: Encoded

    @property
    def entry(self) -> Entry:
        """The adapter's loaded weights (a running batch has loaded them)."""
        if self.adapter.entry is None:
            raise AdapterUnloaded(f"adapter {self.adapter.name!r} is not loaded")
        return self.adapter.entry


class Decoded:
    """The :class:`~adaptune.tasks.base.PredictContext` of rows whose forward pass already ran (in a mixed batch):
    :meth:`Task.predict` gets their decoded predictions from it, as it gets them from a Predictor's forward."""

    def __init__(self, labels: Sequence[str], predictions: list[Any]) -> None:
        self.labels = labels
        self.predictions = predictions

    def forward(self, examples: Sequence[Any]) -> list[Any]:
        return self.predictions

    def generate(self, prompts: Sequence[Any], config: Any) -> list[Any]:
        raise TypeError("rows of the forward batch do not generate (generation goes through generate_jobs)")
