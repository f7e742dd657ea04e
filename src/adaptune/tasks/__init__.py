"""Tasks. Importing this package registers the built-in ones."""

from adaptune.tasks import causal_lm, extractive_qa, relation_cls, seq_cls, text_pair_rank, token_cls  # noqa: F401
from adaptune.tasks.base import Encoded, EvalOutput, Task

__all__ = ["Encoded", "EvalOutput", "Task"]
