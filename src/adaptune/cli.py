"""``adaptune`` command line: thin commands over the Python API (:mod:`adaptune.api`, :class:`Predictor`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from adaptune.errors import AdaptuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Adapter fine-tuning of frozen transformers.")
err_console = Console(stderr=True)
BUNDLED_CONFIGS = Path(__file__).parent / "configs"


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


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
    """Train an adapter, evaluate it on dev and test, and save it."""
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
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"adapter: {result.adapter_dir}")
    typer.echo(f"report:  {result.output_dir / 'results.json'} (tables, plots and predictions beside it)")


@app.command("eval")
def evaluate(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder.")],
    data: Annotated[Path, typer.Argument(help="Labelled data file (same format options as at training).")],
    out: Annotated[Path | None, typer.Option(help="Folder for the report files.")] = None,
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
        write_eval_report(out, "eval", str(data), result, predictor.task, examples, predictions, predictor.labels)
        typer.echo(f"report: {out}")
    typer.echo(json.dumps(result.headline))


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
    typer.echo(f"peft adapter: {result.path} (PeftModel.from_pretrained; labels and pooling in adaptune.json)")


@app.command("import")
def import_(
    peft_dir: Annotated[Path, typer.Argument(help="peft adapter folder (LORA, IA3, PREFIX_TUNING, PROMPT_TUNING).")],
    out: Annotated[Path, typer.Argument(help="Folder for the adaptune adapter.")],
    base: Annotated[
        str | None, typer.Option(help="Base model, if not the peft config's base_model_name_or_path.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="seq_cls or token_cls, when peft's task_type names neither.")] = None,
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
    for note in result.notes:
        typer.echo(f"note: {note}")
    for output in outputs:
        typer.echo(f"{output['label']:>16}  {output['score']:.3f}  {output['text']}")
    typer.echo(f"adapter: {result.adapter_dir}")
    typer.echo(f"report:  {result.output_dir / 'results.json'} (tables, confusion matrix, curves beside it)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
