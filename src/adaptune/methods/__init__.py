"""Adaptation methods. Importing this package registers the built-in ones."""

from adaptune.methods import bottleneck, head  # noqa: F401
from adaptune.methods.base import AttachContext, Method

__all__ = ["AttachContext", "Method"]
