"""Trying an adapter on typed text: one :class:`~adaptune.inference.Predictor` per run, loaded on first use and
kept for the next tries (the two used last; loading a base model takes seconds)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adaptune.errors import DataError
from adaptune.inference import Predictor

#: Most tokens one streamed try generates.
MAX_NEW_TOKENS = 64


def as_input(text: str) -> str | dict[str, Any]:
    """Typed text as a predictor input: a JSON object where it starts with ``{`` (a text pair, a question with
    its passage), else the text, as ``adaptune predict`` reads a line."""
    if not text.strip():
        raise DataError("empty input: type a text", file="<input>", line=1)
    if not text.lstrip().startswith("{"):
        return text
    try:
        item = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON: {err.msg}", file="<input>", line=err.lineno) from None
    if not isinstance(item, dict):
        raise DataError("a JSON input must be an object", file="<input>", line=1)
    return item


class Predictors:
    """Predictors by adapter folder, least recently used dropped beyond ``keep``."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._loaded: OrderedDict[Path, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, adapter: Path) -> Predictor:
        with self._lock:
            if adapter in self._loaded:
                self._loaded.move_to_end(adapter)
                return self._loaded[adapter]
        predictor = Predictor.load(adapter, device="cpu")
        with self._lock:
            self._loaded[adapter] = predictor
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
        return predictor

    def forget(self, adapter: Path) -> None:
        """Drop a predictor (its run is training again: the adapter will change)."""
        with self._lock:
            self._loaded.pop(adapter, None)

    def predict(self, adapter: Path, text: str) -> dict[str, Any]:
        """The prediction for one input, with the task's kind (what the page draws: probabilities, entities ...)."""
        predictor = self.get(adapter)
        return {"kind": predictor.task.kind, "prediction": predictor.predict([as_input(text)])[0]}

    def stream(self, adapter: Path, text: str) -> Iterator[str]:
        """The reply to one prompt, in pieces as it is decoded (generation tasks)."""
        yield from self.get(adapter).stream(text, max_new_tokens=MAX_NEW_TOKENS)

    def kind(self, adapter: Path) -> str:
        return str(self.get(adapter).task.kind)
