"""The generation commands of the ``adaptune`` CLI (``generate``, ``chat``), registered on the app in
:mod:`adaptune.cli`; thin, over :meth:`Predictor.generate` and :meth:`Predictor.stream`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from adaptune.cli_common import err_console, fail, read_inputs
from adaptune.errors import AdaptuneError

if TYPE_CHECKING:
    from adaptune.config import GenerationConfig
    from adaptune.inference import Predictor


MaxNewTokens = Annotated[int, typer.Option(help="Most tokens to generate per prompt.")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature (with --sample).")]
TopP = Annotated[float, typer.Option(help="Nucleus sampling mass (with --sample).")]
TopK = Annotated[int, typer.Option(help="Keep the k most likely tokens (with --sample); 0 keeps all.")]
Sample = Annotated[bool, typer.Option("--sample/--greedy", help="Sample instead of greedy decoding.")]
Stop = Annotated[list[str] | None, typer.Option("--stop", help="A string that ends generation (repeatable).")]
Seed = Annotated[int | None, typer.Option(help="Seed of the sampler.")]
RepetitionPenalty = Annotated[
    float,
    typer.Option(help="Penalise tokens already in the prompt or output (1.0 off; 1.1-1.3 curbs loops)."),
]


def _generation_config(
    max_new_tokens: int,
    sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    stop: list[str] | None,
    seed: int | None,
    repetition_penalty: float = 1.0,
) -> GenerationConfig:
    from adaptune.config import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop or [],
        seed=seed,
        repetition_penalty=repetition_penalty,
    )


def generate(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder (a causal_lm adapter, or any on a decoder).")],
    source: Annotated[
        str, typer.Argument(help="Prompts: one per line, or JSONL with 'prompt' or 'messages'; - for stdin.")
    ] = "-",
    max_new_tokens: MaxNewTokens = 256,
    sample: Sample = False,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    top_k: TopK = 0,
    stop: Stop = None,
    seed: Seed = None,
    repetition_penalty: RepetitionPenalty = 1.0,
    batch_size: Annotated[int, typer.Option(help="Prompts decoded together (left-padded).")] = 8,
    raw: Annotated[bool, typer.Option(help="Continue plain-text prompts as they are, without the template.")] = False,
) -> None:
    """Generate for every prompt: JSONL out (prompt, text, token counts, finish_reason), one line per prompt."""
    from pydantic import ValidationError

    from adaptune.errors import ConfigError
    from adaptune.inference import Predictor

    try:
        config = _generation_config(max_new_tokens, sample, temperature, top_p, top_k, stop, seed, repetition_penalty)
        items = read_inputs(source)
        prompts = [_prompt_of(item, number) for number, item in enumerate(items, start=1)]
        predictor = Predictor.load(adapter)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            for prompt, out in zip(chunk, predictor.generate(chunk, config, chat=not raw), strict=True):
                key = "prompt" if isinstance(prompt, str) else "messages"
                record = {key: prompt, **asdict(out)}
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    except ValidationError as err:
        fail(ConfigError(str(err)))
    except AdaptuneError as err:
        fail(err)


def _prompt_of(item: str | dict[str, object], number: int) -> str | list[dict[str, str]]:
    from adaptune.errors import DataError

    if isinstance(item, str):
        return item
    if isinstance(item.get("messages"), list):
        messages = [m for m in item["messages"] if isinstance(m, dict)]  # type: ignore[union-attr]
        return [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in messages]
    if isinstance(item.get("prompt"), str):
        return str(item["prompt"])
    raise DataError("needs 'prompt' (a string) or 'messages' (a list of role/content objects)", line=number)


def chat(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder (a causal_lm adapter, or any on a decoder).")],
    system: Annotated[str | None, typer.Option(help="A system message at the start of the conversation.")] = None,
    max_new_tokens: MaxNewTokens = 256,
    sample: Sample = False,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.9,
    top_k: TopK = 0,
    stop: Stop = None,
    seed: Seed = None,
    repetition_penalty: RepetitionPenalty = 1.0,
) -> None:
    """Chat in the terminal: replies stream as they are generated; the conversation is kept (/reset, /exit)."""
    from adaptune.inference import Predictor

    try:
        config = _generation_config(max_new_tokens, sample, temperature, top_p, top_k, stop, seed, repetition_penalty)
        predictor = Predictor.load(adapter)
        err_console.print("chat: /reset forgets the conversation, /exit (or Ctrl-D) ends it", highlight=False)
        chat_loop(predictor, config, system, read=lambda: input("> "), write=sys.stdout.write)
    except AdaptuneError as err:
        fail(err)


def chat_loop(
    predictor: Predictor,
    config: GenerationConfig,
    system: str | None,
    *,
    read: Callable[[], str],
    write: Callable[[str], object],
) -> list[dict[str, str]]:
    """Read a line, stream the reply, repeat until /exit or end of input; returns the conversation."""
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    while True:
        try:
            line = read().strip()
        except EOFError:
            break
        if line == "/exit":
            break
        if line == "/reset":
            history = list(start)
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        reply = ""
        for piece in predictor.stream(history, config):
            write(piece)
            sys.stdout.flush()
            reply += piece
        write("\n")
        history.append({"role": "assistant", "content": reply})
    return history
