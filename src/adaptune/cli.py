"""``adaptune`` command line: thin commands over the Python API (:mod:`adaptune.api`, :class:`Predictor`)."""

from __future__ import annotations

import json
import os
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from adaptune.cli_board import board
from adaptune.cli_combine import combine
from adaptune.cli_common import (
    DEVICE_HELP,
    PRECISION_HELP,
    QUANTIZE_HELP,
    Precision,
    Quantize,
    err_console,
    fail,
    input_name,
    read_inputs,
)
from adaptune.cli_data import audit, select
from adaptune.cli_generate import chat, generate
from adaptune.cli_serve import serve
from adaptune.cli_tune import tune
from adaptune.errors import AdaptuneError, DataError
from adaptune.extras import as_missing_extra

if TYPE_CHECKING:
    from adaptune.api import TrainResult

BUNDLED_CONFIGS = Path(__file__).parent / "configs"


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
            fail(missing)


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
    overwrite: Annotated[
        bool, typer.Option(help="Replace a run already in the output folder (else such a folder is refused).")
    ] = False,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP + " Default: training.device (auto).")] = None,
    nproc: Annotated[
        int | None,
        typer.Option(help="Train on N processes of this machine: starts torchrun --standalone --nproc-per-node N."),
    ] = None,
) -> None:
    """Train an adapter, evaluate it on dev and test, and save it.

    The config keys, with types, defaults and help: adaptune config --schema (or the README's Configuration
    table); adaptune config CONFIG --set ... shows the config a run would use; adaptune methods lists the methods.
    Under torchrun (several processes or machines) every rank trains its share and rank 0 writes.
    """
    from adaptune.api import train as run_train
    from adaptune.config import load_config
    from adaptune.training.distributed import launched_world_size

    try:
        overrides = [*(set_ or []), *([f"training.device={device}"] if device else [])]
        cfg = load_config(_config_path(config), overrides)
        if nproc is not None and nproc > 1 and launched_world_size() == 1:  # a bad config fails here, once
            raise typer.Exit(_torchrun(nproc, sys.argv[1:]))
        result = run_train(cfg, resume=resume, overwrite=overwrite)
    except AdaptuneError as err:
        fail(err)
        return
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun rank 0 reports
    for split in result.results["splits"].values():
        typer.echo((result.output_dir / split["files"]["table"]).read_text(encoding="utf-8"))
    _echo_summary(result, "tables, plots and predictions")


def _torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``adaptune ARGV`` (without ``--nproc``) on ``nproc`` local processes under torchrun; its exit code."""
    import subprocess

    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*launcher, "-m", "adaptune", *args])


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
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.auto,
    quantize: Annotated[Quantize | None, typer.Option(help=QUANTIZE_HELP)] = None,
) -> None:
    """Evaluate an adapter on a labelled file: per-class (or entity-level) table, results JSON."""
    from adaptune.evaluation.report import report_tables, write_eval_report
    from adaptune.inference import Predictor

    try:
        predictor = Predictor.load(
            adapter, device=device, precision=precision.value, quantize=quantize.value if quantize else None
        )
        overrides = {"format": data_format} if data_format else {}
        data_cfg = predictor.data.model_copy(update=overrides)
        examples = predictor.task.read(str(data), data_cfg, split="test")
        result, predictions = predictor.evaluate_examples(examples, str(data))
        generated = predictor.task.extra_evaluation(predictor.model, examples, out, _report_name(data))
        if generated:  # causal_lm with eval_generate: the recipe's generation metrics, samples file in --out
            result.headline.update(generated)
            result.report["generation"] = generated
    except AdaptuneError as err:
        fail(err)
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
    source: Annotated[
        str, typer.Argument(help="Input file (one text or JSON object per line, no blank lines) or - for stdin.")
    ] = "-",
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.auto,
    quantize: Annotated[Quantize | None, typer.Option(help=QUANTIZE_HELP)] = None,
) -> None:
    """Predict: JSONL out, one line per input line (labels and scores; NER: entity spans with character offsets)."""
    from adaptune.inference import Predictor

    try:
        lines = read_inputs(source)
        predictor = Predictor.load(
            adapter,
            batch_size=batch_size,
            device=device,
            precision=precision.value,
            quantize=quantize.value if quantize else None,
        )
        try:
            outputs = predictor.predict(lines)
        except DataError as err:  # input i is line i + 1 (read_inputs refuses blank lines): name the file too
            if err.file:
                raise
            raise DataError(err.message, file=input_name(source), line=err.line, field=err.field) from None
    except AdaptuneError as err:
        fail(err)
        return
    for output in outputs:
        sys.stdout.write(json.dumps(output, ensure_ascii=False) + "\n")


# generate and chat live in adaptune.cli_generate; listed here, after predict, in the help's order
app.command()(generate)
app.command()(chat)
app.command()(combine)  # adaptune.cli_combine: several LoRA adapters into one
app.command()(board)  # adaptune.cli_board: the web board (train, evaluate, try)
app.command()(select)  # adaptune.cli_data: pool rows closest to a target sample, or most uncertain
app.command()(audit)  # adaptune.cli_data: training rows ranked by how likely their label is wrong
app.command()(tune)  # adaptune.cli_tune: hyper-parameter search with optuna
app.command()(serve)  # adaptune.cli_serve: every adapter of a folder over HTTP


@app.command()
def info(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder.")],
    reseal: Annotated[
        bool,
        typer.Option(
            help="Re-sign a hand-edited adapter_config.json: its labels, method, task, pooling, max length "
            "and reading options become what the tensor file vouches for (prints what changed)."
        ),
    ] = False,
) -> None:
    """Show what an adapter is: method, task, labels, base model, sizes, metrics, and whether the description
    still matches what the tensors were saved with."""
    from adaptune.io import edited_fields, header_metadata, read_adapter_config
    from adaptune.io import reseal as reseal_adapter

    try:
        if reseal:
            changed = reseal_adapter(adapter)
            for line in changed or ["nothing to re-sign: the description is what the tensors were saved with"]:
                err_console.print(f"re-signed {line}" if changed else line, highlight=False, markup=False)
        desc = read_adapter_config(adapter)
    except AdaptuneError as err:
        fail(err)
        return
    weights = adapter / desc["weights"]["file"]
    edited = edited_fields(desc, header_metadata(weights.read_bytes())) if weights.is_file() else []
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
        "edited_since_saved": edited,
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
        fail(err)
        return
    typer.echo(f"merged model: {folder} (AutoModel.from_pretrained; head in head.safetensors, head_config.json)")


@app.command()
def export(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder (lora, ia3, prefix or prompt).")],
    out: Annotated[Path, typer.Argument(help="Folder for the exported adapter (a .gguf file for gguf).")],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="Output format: peft, onnx (encoder seq_cls/token_cls: one graph) or gguf (causal_lm LoRA for "
            "llama.cpp).",
        ),
    ] = "peft",
    base: Annotated[str | None, typer.Option(help="Base model folder, if not where the adapter says.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder or file.")] = False,
) -> None:
    """Write the adapter in another library's format: peft's adapter_config.json + adapter_model.safetensors;
    or, with --format onnx, base + adapter + head as one ONNX graph with its tokenizer (checked with onnxruntime);
    or, with --format gguf, a causal_lm LoRA as one GGUF file for llama.cpp (--lora) and Ollama (ADAPTER)."""
    from adaptune.errors import ConfigError
    from adaptune.peft_interop import export_peft

    if format_ == "onnx":
        _export_onnx(adapter, out, base=base, overwrite=overwrite)
        return
    if format_ == "gguf":
        from adaptune.export_gguf import export_gguf

        try:
            path = export_gguf(adapter, out, base=base, overwrite=overwrite)
        except AdaptuneError as err:
            fail(err)
            return
        typer.echo(f"gguf LoRA adapter: {path} (llama-cli -m BASE.gguf --lora {path}; Ollama: ADAPTER {path})")
        return
    try:
        if format_ != "peft":
            raise ConfigError(
                f"--format {format_!r}: the export formats are 'peft', 'onnx' and 'gguf' "
                "(adaptune merge writes a model)"
            )
        result = export_peft(adapter, out, base=base, overwrite=overwrite)
    except AdaptuneError as err:
        fail(err)
        return
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"peft adapter: {result.path} (PeftModel.from_pretrained; how to load it: load_with in adaptune.json)")


def _export_onnx(adapter: Path, out: Path, *, base: str | None, overwrite: bool) -> None:
    """``adaptune export --format onnx``: :func:`adaptune.export_onnx.export_onnx`, then what its check found."""
    from adaptune.export_onnx import ONNX_CONFIG, ONNX_FILE, export_onnx

    try:
        result = export_onnx(adapter, out, base=base, overwrite=overwrite)
    except AdaptuneError as err:
        fail(err)
        return
    check = result.check
    how = "method merged into the weights" if result.merged else "method modules kept in the graph"
    typer.echo(
        f"checked with {check['runtime']} ({check['provider']}): max abs logit difference from adaptune "
        f"{result.max_abs_diff:.2g} on {check['inputs']} inputs, batch sizes {check['batch_sizes']}"
    )
    typer.echo(f"onnx model: {result.path / ONNX_FILE} ({how}; tokenizer and {ONNX_CONFIG} beside it)")


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
        fail(err)
        return
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"adapter: {result.path}")


@app.command()
def demo(
    output_dir: Annotated[str, typer.Option(help="Where the run goes (a previous demo run there is replaced).")] = (
        "runs/intents"
    ),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key.")] = None,
) -> None:
    """The main job: train a bottleneck adapter on the bundled bilingual intents, evaluate, predict a few inputs."""
    from adaptune.api import train as run_train
    from adaptune.config import load_config
    from adaptune.inference import Predictor

    try:
        cfg = load_config(BUNDLED_CONFIGS / "intents.yaml", [f"training.output_dir={output_dir}", *(set_ or [])])
        result = run_train(cfg, overwrite=True)
        predictor = Predictor.load(result.adapter_dir)
        samples = [
            "Where is my package? It was supposed to arrive yesterday.",
            "我想退款，衣服尺码不对",
            "how much is shipping to Canada",
            "你好，在吗？",
        ]
        outputs = predictor.predict(samples)
    except AdaptuneError as err:
        fail(err)
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
        fail(err)
        return
    sys.stdout.write(dump(data, fmt.value))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
