"""``adaptune`` command line: thin commands over the Python API (:mod:`adaptune.api`, :class:`Predictor`)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from adaptune.errors import AdaptuneError
from adaptune.extras import as_missing_extra

if TYPE_CHECKING:
    from adaptune.api import TrainResult
    from adaptune.generation import GenerationConfig
    from adaptune.inference import Predictor

err_console = Console(stderr=True)
BUNDLED_CONFIGS = Path(__file__).parent / "configs"


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


class _Commands(TyperGroup):
    """adaptune's commands: one that reaches an optional module that is not installed (the server's fastapi,
    gguf, datasets) ends with one line naming the extra to install (:mod:`adaptune.extras`), not a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ImportError as err:
            missing = as_missing_extra(err, f"adaptune {ctx.invoked_subcommand}")
            if missing is None:
                raise
            _fail(missing)


app = typer.Typer(
    cls=_Commands, add_completion=False, no_args_is_help=True, help="Adapter fine-tuning of frozen transformers."
)


def _config_path(name: str) -> Path:
    """A config file path, or the name of a bundled config (``intents``, ``ner-demo``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    bundled = BUNDLED_CONFIGS / f"{name}.yaml"
    return bundled if bundled.exists() else path


@app.command()
def train(
    config: Annotated[str, typer.Argument(help="YAML config file, or a bundled config name (intents, ner-demo).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set training.epochs=3")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in the output folder.")] = False,
) -> None:
    """Train an adapter, evaluate it on dev and test, and save it.

    The config keys, with types, defaults and help: adaptune config --schema (or the README's Configuration
    table); adaptune config CONFIG --set ... shows the config a run would use; adaptune methods lists the methods.
    """
    from adaptune.api import train as run_train
    from adaptune.config import load_config

    try:
        cfg = load_config(_config_path(config), set_ or [])
        result = run_train(cfg, resume=resume)
    except AdaptuneError as err:
        _fail(err)
        return
    for split in result.results["splits"].values():
        typer.echo((result.output_dir / split["files"]["table"]).read_text(encoding="utf-8"))
    _echo_summary(result, "tables, plots and predictions")


def _echo_summary(result: TrainResult, beside: str) -> None:
    """The last lines of a run: the headline figure with the adapter, then the report (notes were warned of
    before training and are in results.json)."""
    from adaptune.api import headline_line

    headline = headline_line(result.results)
    typer.echo(f"{headline} | adapter: {result.adapter_dir}" if headline else f"adapter: {result.adapter_dir}")
    typer.echo(f"report:  {result.output_dir / 'results.json'} ({beside} beside it)")


@app.command("eval")
def evaluate(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder.")],
    data: Annotated[Path, typer.Argument(help="Labelled data file (same format options as at training).")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the report: eval_<name>.json/.txt/.md for DATA <name>.<ext>.")
    ] = None,
    data_format: Annotated[str | None, typer.Option("--format", help="Override the data format.")] = None,
) -> None:
    """Evaluate an adapter on a labelled file: per-class (or entity-level) table, results JSON."""
    from adaptune.evaluation.report import report_tables, write_eval_report
    from adaptune.inference import Predictor

    try:
        predictor = Predictor.load(adapter)
        overrides = {"format": data_format} if data_format else {}
        data_cfg = predictor.data.model_copy(update=overrides)
        examples = predictor.task.read(str(data), data_cfg, split="test")
        result, predictions = predictor.evaluate_examples(examples, str(data))
    except AdaptuneError as err:
        _fail(err)
        return
    typer.echo(report_tables(result.report, data.name))
    if out is not None:
        name = _report_name(data)
        summary = write_eval_report(
            out, name, str(data), result, predictor.task, examples, predictions, predictor.labels
        )
        beside = ", ".join(f for key, f in summary["files"].items() if key != "json")
        typer.echo(f"report: {out / summary['files']['json']} ({beside} beside it)")
    typer.echo(json.dumps(result.headline))


def _report_name(data: Path) -> str:
    """The split name in ``eval --out`` file names: the data file's name without its extension, so
    ``test.conll`` gives ``eval_test.json``, the name a training run gives its test report."""
    name = re.sub(r"[^\w.-]+", "_", Path(data.name).stem).strip("._")
    return name or "eval"


@app.command()
def predict(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder.")],
    source: Annotated[str, typer.Argument(help="Input file (one text or JSON object per line) or - for stdin.")] = "-",
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 32,
) -> None:
    """Predict: JSONL out, one line per input (labels and scores; NER: entity spans with character offsets)."""
    from adaptune.inference import Predictor

    try:
        lines = _read_inputs(source)
        predictor = Predictor.load(adapter, batch_size=batch_size)
        outputs = predictor.predict(lines)
    except AdaptuneError as err:
        _fail(err)
        return
    for output in outputs:
        sys.stdout.write(json.dumps(output, ensure_ascii=False) + "\n")


def _read_inputs(source: str) -> list[str | dict[str, object]]:
    from adaptune.errors import DataError

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read the file: {err.strerror}", file=source) from None
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        raise DataError(f"not UTF-8 (byte 0x{err.object[err.start]:02x})", file=source, line=line) from None
    items: list[str | dict[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"not valid JSON: {err.msg}", file=source, line=number) from None
        else:
            items.append(line)
    return items


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
    from adaptune.generation import GenerationConfig

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


@app.command()
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
        items = _read_inputs(source)
        prompts = [_prompt_of(item, number) for number, item in enumerate(items, start=1)]
        predictor = Predictor.load(adapter)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            for prompt, out in zip(chunk, predictor.generate(chunk, config, chat=not raw), strict=True):
                key = "prompt" if isinstance(prompt, str) else "messages"
                record = {key: prompt, **asdict(out)}
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    except ValidationError as err:
        _fail(ConfigError(str(err)))
    except AdaptuneError as err:
        _fail(err)


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


@app.command()
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
        _fail(err)


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


@app.command()
def info(adapter: Annotated[Path, typer.Argument(help="Adapter folder.")]) -> None:
    """Show what an adapter is: method, task, labels, base model, sizes, metrics."""
    from adaptune.io import read_adapter_config

    try:
        desc = read_adapter_config(adapter)
    except AdaptuneError as err:
        _fail(err)
        return
    weights = adapter / desc["weights"]["file"]
    summary = {
        "method": desc["method"],
        "task": desc["task"],
        "labels": desc["labels"],
        "base_model": desc["base_model"],
        "pooling": desc["pooling"],
        "max_length": desc["max_length"],
        "params": desc["params"],
        "file_bytes": weights.stat().st_size if weights.exists() else None,
        "metrics": desc.get("metrics", {}),
        "format_version": desc["format_version"],
    }
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))


@app.command()
def merge(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder (lora, ia3, bitfit or head).")],
    out: Annotated[Path, typer.Argument(help="Folder for the merged transformers model, tokenizer and head.")],
    base: Annotated[str | None, typer.Option(help="Base model folder, if not where the adapter says.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Fold the adapter into its base model and write a plain transformers folder (safetensors) plus the head."""
    from adaptune.export import merge_to_hf

    try:
        folder = merge_to_hf(adapter, out, base=base, overwrite=overwrite)
    except AdaptuneError as err:
        _fail(err)
        return
    typer.echo(f"merged model: {folder} (AutoModel.from_pretrained; head in head.safetensors, head_config.json)")


@app.command()
def export(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder (lora, ia3, prefix or prompt).")],
    out: Annotated[Path, typer.Argument(help="Folder for the exported adapter.")],
    format_: Annotated[str, typer.Option("--format", help="Output format: peft.")] = "peft",
    base: Annotated[str | None, typer.Option(help="Base model folder, if not where the adapter says.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Write the adapter in another library's format: peft's adapter_config.json + adapter_model.safetensors."""
    from adaptune.errors import ConfigError
    from adaptune.peft_interop import export_peft

    try:
        if format_ != "peft":
            raise ConfigError(f"--format {format_!r}: the only export format is 'peft' (adaptune merge writes a model)")
        result = export_peft(adapter, out, base=base, overwrite=overwrite)
    except AdaptuneError as err:
        _fail(err)
        return
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"peft adapter: {result.path} (PeftModel.from_pretrained; how to load it: load_with in adaptune.json)")


@app.command("import")
def import_(
    peft_dir: Annotated[Path, typer.Argument(help="peft adapter folder (LORA, IA3, PREFIX_TUNING, PROMPT_TUNING).")],
    out: Annotated[Path, typer.Argument(help="Folder for the adaptune adapter.")],
    base: Annotated[
        str | None, typer.Option(help="Base model, if not the peft config's base_model_name_or_path.")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="seq_cls, token_cls or causal_lm, when peft's task_type names none.")
    ] = None,
    labels: Annotated[str | None, typer.Option(help="Label names, comma-separated (default: LABEL_0, ...).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Turn a peft adapter folder into an adaptune adapter (then: adaptune predict / eval / info)."""
    from adaptune.peft_interop import import_peft

    names = [name.strip() for name in labels.split(",")] if labels else None
    try:
        result = import_peft(peft_dir, out, base=base, task=task, labels=names, overwrite=overwrite)
    except AdaptuneError as err:
        _fail(err)
        return
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"adapter: {result.path}")


@app.command()
def demo(
    output_dir: Annotated[str, typer.Option(help="Where the run goes.")] = "runs/intents",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key.")] = None,
) -> None:
    """The main job: train a bottleneck adapter on the bundled bilingual intents, evaluate, predict a few inputs."""
    from adaptune.api import train as run_train
    from adaptune.config import load_config
    from adaptune.inference import Predictor

    try:
        cfg = load_config(BUNDLED_CONFIGS / "intents.yaml", [f"training.output_dir={output_dir}", *(set_ or [])])
        result = run_train(cfg)
        predictor = Predictor.load(result.adapter_dir)
        samples = [
            "Where is my package? It was supposed to arrive yesterday.",
            "我想退款，衣服尺码不对",
            "how much is shipping to Canada",
            "你好，在吗？",
        ]
        outputs = predictor.predict(samples)
    except AdaptuneError as err:
        _fail(err)
        return
    typer.echo((result.output_dir / result.results["splits"]["test"]["files"]["table"]).read_text(encoding="utf-8"))
    for output in outputs:
        typer.echo(f"{output['label']:>16}  {output['score']:.3f}  {output['text']}")
    _echo_summary(result, "tables, confusion matrix, curves")


class MethodsFormat(StrEnum):
    """Output of ``adaptune methods``."""

    table = "table"
    json = "json"


class DataFormat(StrEnum):
    """Output of ``adaptune config``."""

    json = "json"
    yaml = "yaml"


@app.command()
def methods(
    format_: Annotated[MethodsFormat, typer.Option("--format", help="A table, or JSON.")] = MethodsFormat.table,
) -> None:
    """List the registered methods: what each trains, its default learning rate, tasks, refused architectures."""
    from adaptune.catalogue import dump, list_methods, methods_table

    infos = list_methods()
    if format_ is MethodsFormat.json:
        sys.stdout.write(dump([info.as_dict() for info in infos], "json"))
        return
    console = Console()
    console.print(methods_table(infos))
    console.print(
        "default LR: what training.learning_rate: null takes with the method's default config. "
        "Each method's keys: adaptune config --schema.",
        highlight=False,
    )


@app.command("config")
def show_config(
    config: Annotated[
        str | None, typer.Argument(help="YAML config file or bundled config name; none: the defaults.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set training.epochs=3")] = None,
    schema: Annotated[
        bool,
        typer.Option(
            "--schema",
            help="Print the JSON schema of a run config instead: every key with its type, default and help, "
            "the registered methods' and tasks' keys included.",
        ),
    ] = False,
    format_: Annotated[
        DataFormat | None, typer.Option("--format", help="json or yaml (default: json with --schema, else yaml).")
    ] = None,
) -> None:
    """Show the run config that train would use, every default filled in; or, with --schema, every key there is."""
    from adaptune.catalogue import config_schema, dump
    from adaptune.config import load_config
    from adaptune.errors import ConfigError

    try:
        if schema:
            if config is not None or set_:
                raise ConfigError("--schema describes every config: it takes no CONFIG and no --set")
            data, fmt = config_schema(), format_ or DataFormat.json
        else:
            path = _config_path(config) if config is not None else None
            data, fmt = load_config(path, set_ or []).model_dump(mode="json"), format_ or DataFormat.yaml
    except AdaptuneError as err:
        _fail(err)
        return
    sys.stdout.write(dump(data, fmt.value))


@app.command()
def serve(
    base: Annotated[str, typer.Option(help="Base model (hub id or folder) every adapter was trained on.")],
    adapters: Annotated[Path, typer.Option(help="Folder of adapter folders; each is served under its folder name.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="ADAPTUNE_API_KEY", help="Require 'Authorization: Bearer <key>'.")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most inputs per request and rows per forward pass.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait for a micro-batch to fill.")] = 5.0,
    max_input_tokens: Annotated[int, typer.Option(help="Longest input (or prompt) in tokens.")] = 512,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body in bytes.")] = 1_000_000,
    threads: Annotated[int | None, typer.Option(help="torch threads for the model (default: torch's).")] = None,
    padding_free: Annotated[
        bool, typer.Option(help="Run mixed batches on their real tokens only (encoder bases; same results).")
    ] = True,
) -> None:
    """Serve every adapter in a folder over HTTP (classify, tag, generate, OpenAI-compatible; needs the server
    extra: .venv/bin/pip install -e '.\\[server]', or scripts/setup.sh --test)."""
    from adaptune.server import serve as run_server
    from adaptune.server.app import ServerSettings

    settings = ServerSettings(max_batch, max_wait_ms, max_input_tokens, max_body_bytes, api_key, padding_free)
    try:
        run_server(str(base), adapters, host=host, port=port, settings=settings, threads=threads)
    except (AdaptuneError, FileNotFoundError) as err:
        _fail(err)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
