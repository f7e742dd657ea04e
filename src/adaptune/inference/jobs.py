"""Generation requests that arrived together, and which of them the multi-adapter predictor decodes together."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from adaptune.generation import GenerationConfig, Prompt, shared_settings

E = TypeVar("E")  # the loaded adapter a job was checked against


@dataclass
class GenerationJob:
    """One non-streaming generation request: adapter name, prompts, decoding options, chat flag."""

    name: str
    prompts: Sequence[Prompt]
    config: GenerationConfig
    chat: bool

    def merge_key(self) -> tuple[Any, ...] | None:
        """What requests decoded together share, or None for one that must run alone: a seeded sampled request
        (the sampler's draws would depend on the other rows)."""
        if self.config.do_sample and self.config.seed is not None:
            return None
        return (self.name, self.chat, shared_settings(self.config))


def job_batches(
    jobs: Sequence[GenerationJob], checked: Sequence[tuple[int, E]], max_prompts: int
) -> Iterator[list[tuple[int, E]]]:
    """Batches of ``checked`` (job positions with the adapter each was checked against): jobs of one adapter with
    the same :meth:`GenerationJob.merge_key` together, in order of arrival, at most ``max_prompts`` prompts per
    batch (a bigger job alone); a job with no merge key alone."""
    groups: dict[Any, list[tuple[int, E]]] = {}
    for i, entry in checked:
        key = jobs[i].merge_key()
        groups.setdefault((id(entry), key) if key is not None else i, []).append((i, entry))
    for members in groups.values():
        batch: list[tuple[int, E]] = []
        size = 0
        for member in members:
            prompts = len(jobs[member[0]].prompts)
            if batch and size + prompts > max_prompts:
                yield batch
                batch, size = [], 0
            batch.append(member)
            size += prompts
        if batch:
            yield batch
