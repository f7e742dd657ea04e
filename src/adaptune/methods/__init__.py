"""Adaptation methods. Importing this package registers the built-in ones."""

from adaptune.methods import bitfit, bottleneck, fusion, head, ia3, lora, prefix, prompt, stack  # noqa: F401
from adaptune.methods.base import AttachContext, Mergeable, Method

__all__ = ["AttachContext", "Mergeable", "Method"]
