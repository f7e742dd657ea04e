"""Length-bucketed batches with dynamic padding.

Training order is a pure function of ``(seed, epoch)``, so a resumed run sees exactly the batches an
uninterrupted one would: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by length, cut into
batches, shuffle the batches. Evaluation batches are sorted by length and carry the original indices back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def train_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, bucket: bool = True, pool_batches: int = 50
) -> list[list[int]]:
    """Index batches for one training epoch; similar lengths share a batch when ``bucket`` is set."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if bucket:
        pool = batch_size * pool_batches
        lens = np.asarray(lengths)
        order = (
            np.concatenate(
                [
                    chunk[np.argsort(lens[chunk], kind="stable")]
                    for chunk in np.array_split(order, max(1, -(-len(order) // pool)))
                ]
            )
            if len(order)
            else order
        )
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches for inference: sorted by length (least padding), order restored by the caller."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
