"""Quality runs: train each named config on the full shared dataset and record the headline figures.

    .venv/bin/python benchmarks/quality.py sst2_bottleneck sst2_head conll2003_bottleneck resume_ner_bottleneck
    .venv/bin/python benchmarks/quality.py sst2_bottleneck --seeds 13 14 15 --set training.precision=fp32

Each name is ``configs/<name>.yaml``, run in its own process (so peak RSS is that run's). Records are upserted
into ``benchmarks/results/quality.json`` (one per task/dataset/split/model/method/metric) and the table
``benchmarks/results/quality.md`` is rewritten, and so are the two tables in README.md (and README.zh-CN.md) between the
``<!-- methods-table -->`` and ``<!-- quality-records -->`` markers (``--tables`` does only that).

With ``--seeds`` each config trains once per seed (``training.seed``) and its record holds the mean (``value``),
the sample standard deviation (``std``), the per-seed ``values`` and ``seeds``; tokens/s and seconds are the
seeds' means and peak RSS their maximum. It replaces a single-seed record of the same key.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
#: Both READMEs carry the generated tables between the same markers (tests/test_readme_zh.py keeps them in step).
READMES = (README, ROOT / "README.zh-CN.md")
KEY = ("task", "dataset", "split", "model", "method", "metric", "combine", "precision", "train_rows", "setting")
#: Records from before ``training.precision`` existed carry no precision: they ran in fp32 (the default then).
LEGACY_PRECISION = "fp32"
#: The model of the method x dataset table (other models' records are listed in the records table only).
TABLE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def run_one(name: str, overrides: list[str]) -> list[dict]:
    """Train ``configs/<name>.yaml`` in this process and return its records."""
    from adaptune import load_config, train
    from adaptune.hardware import host_record

    cfg = load_config(ROOT / "configs" / f"{name}.yaml", [f"training.output_dir=runs/{name}", *overrides])
    result = train(cfg, overwrite=True)  # a rerun replaces the config's previous run
    dataset = Path(cfg.data.train or "").parent.name
    splits = result.results["splits"]
    split = "test" if "test" in splits else "dev"
    metric = result.results["metric"]
    command = " ".join([".venv/bin/python benchmarks/quality.py", name, *(f"--set {o}" for o in overrides)])
    at_start = result.results.get("at_start", {})
    headline = splits[split]["headline"]
    metrics = [metric] + [m for m in EXTRA_METRICS.get(cfg.task.name, ()) if m in headline]
    records = []
    for m in metrics:
        record = {
            "task": cfg.task.name,
            "dataset": dataset,
            "split": split,
            "model": cfg.model.name_or_path,
            "method": cfg.method.name,
            "metric": "entity_f1" if m == "f1" and cfg.task.name == "token_cls" else m,
            "value": round(headline[m], 4),
            "trainable_params": result.trainable_params,
            "learning_rate": result.results["learning_rate"],
            "train_tokens_per_s": result.results["train_tokens_per_s"],
            "peak_rss_mb": result.results["peak_rss_mb"],
            "wall_s": result.results["wall_s"],
            "precision": result.results["precision"]["chosen"],  # what training.precision (auto) chose
            "precision_setting": cfg.training.precision,
            "host": host_record(probe=True),
            "command": command,
        }
        if m in at_start:
            record["value_at_start"] = round(at_start[m], 4)
        records.append(record)
    write_generations(name, Path(cfg.training.output_dir))
    return records


#: Further dev/test figures recorded per task, besides the headline metric.
EXTRA_METRICS = {
    "causal_lm": ("perplexity", "rouge_l", "chrf"),
    "relation_cls": ("accuracy",),
    "extractive_qa": ("exact_match",),
}
#: Before/after generations shown in the README.
SAMPLES = 5


def write_generations(name: str, run_dir: Path) -> None:
    """Before/after samples (``training.eval_at_start``) as ``generations_<name>.md``, and in the README."""
    before_path, after_path = run_dir / "generations_dev_start.jsonl", run_dir / "generations_dev.jsonl"
    if not (before_path.is_file() and after_path.is_file()):
        return
    before = [json.loads(x) for x in before_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    after = [json.loads(x) for x in after_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    lines = []
    for i, (b, a) in enumerate(zip(before[:SAMPLES], after[:SAMPLES], strict=False), 1):
        prompt = " / ".join(m["content"] for m in b["prompt"] if m["role"] == "user")
        lines += [
            f"**{i}. {one_line(prompt)}**",
            "",
            f"- reference: {one_line(b['reference'])}",
            f"- before: {one_line(b['generation'])}",
            f"- after: {one_line(a['generation'])}",
            "",
        ]
    (RESULTS / f"generations_{name}.md").write_text("\n".join(lines), encoding="utf-8")
    for readme in READMES:
        if readme.is_file() and f"<!-- generations-{name} -->" in readme.read_text(encoding="utf-8"):
            text = replace_between(readme.read_text(encoding="utf-8"), f"generations-{name}", lines[:-1])
            readme.write_text(text, encoding="utf-8")


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_records(path: Path) -> list[dict]:
    """The records of ``path`` (none when it is missing), each with its ``precision`` (legacy ones: fp32)."""
    records = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    for record in records:
        record.setdefault("precision", LEGACY_PRECISION)
    return records


@contextlib.contextmanager
def results_lock() -> Iterator[None]:
    """Hold ``benchmarks/results/.lock`` (an exclusive ``flock``) while a results file or a README is read, merged
    and rewritten, so benchmarks running side by side never drop each other's records."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upsert(records: list[dict], path: Path | None = None, *, tables: bool = True) -> None:
    """Replace the records of ``path`` (``quality.json``) that have the same :data:`KEY` by ``records``, then
    (``tables``) rewrite ``quality.md`` and the README tables, all under :func:`results_lock`."""
    path = path or RESULTS / "quality.json"
    if missing := [r for r in records if not r.get("precision")]:
        raise ValueError(f"quality records need their 'precision' (what the run trained in): {missing[0]}")
    keys = {tuple(r.get(k) for k in KEY) for r in records}
    with results_lock():
        merged = [r for r in load_records(path) if tuple(r.get(k) for k in KEY) not in keys] + records
        merged.sort(key=lambda r: tuple(str(r.get(k, "")) for k in KEY))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if tables:
            write_tables(merged)


def method_table(records: list[dict]) -> list[str]:
    """Methods as rows, datasets as columns: the headline figure with the trainable parameter count (MiniLM)."""
    records = [r for r in records if r["model"] == TABLE_MODEL and in_method_table(r)]
    datasets = sorted({r["dataset"] for r in records})
    methods = sorted({r["method"] for r in records}, key=lambda m: (m != "head", m))
    cells: dict[tuple[str, str], dict] = {}
    for r in records:  # one record per cell: the fp32 one where a cell was measured in several precisions
        key = (r["method"], r["dataset"])
        if key not in cells or r.get("precision") == "fp32":
            cells[key] = r
    header = [f"{d} ({cells_metric(records, d)})" for d in datasets]
    lines = ["| method | default LR | " + " | ".join(header) + " |", "|---|--:|" + "--:|" * len(datasets)]
    for method in methods:
        row = [method_table_cell(cells[(method, d)]) if (method, d) in cells else "–" for d in datasets]
        lines.append(f"| {method} | {default_learning_rate(method):g} | " + " | ".join(row) + " |")
    return lines


#: The defaults of the methods that ``benchmarks/sweep_defaults.py`` changed, as they were before: records made
#: before records carried their ``learning_rate`` trained with these (unless their command set one).
DEFAULTS_BEFORE_SWEEP = {"lora": 1e-3, "ia3": 3e-3, "bitfit": 1e-3}


def record_learning_rate(record: dict) -> float:
    """The learning rate ``record``'s run trained with."""
    if "learning_rate" in record:
        return float(record["learning_rate"])
    for word in record.get("command", "").split():
        if word.startswith("training.learning_rate="):
            return float(word.rsplit("=", 1)[1])
    return DEFAULTS_BEFORE_SWEEP.get(record["method"]) or default_learning_rate(record["method"])


def method_table_cell(record: dict) -> str:
    """The figure and trainable parameters; the learning rate too when it is not the method's default now."""
    lr = record_learning_rate(record)
    at = "" if math.isclose(lr, default_learning_rate(record["method"])) else f", LR {lr:g}"
    return f"{record['value']:.4f} ({record['trainable_params']:,} params{at})"


def precision_table(records: list[dict]) -> list[str]:
    """Every run measured in fp32 and in another precision (what ``precision: auto`` chose on a bf16 host): the
    two headline figures side by side, the difference in points, and the hosts' bf16/fp32 matmul rates."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if in_method_table(r):
            by_key.setdefault(tuple(r.get(k) for k in KEY if k != "precision"), {})[r.get("precision")] = r
    lines = [
        "| dataset (split) | model | method | metric | fp32 | other precision | difference (points) "
        "| wall s fp32 / other |",
        "|---|---|---|---|--:|--:|--:|--:|",
    ]
    for by_precision in by_key.values():
        fp32 = by_precision.get("fp32")
        for precision, other in sorted(by_precision.items()):
            if fp32 is None or precision == "fp32":
                continue
            setting = f" ({other['precision_setting']})" if other.get("precision_setting") else ""
            lines.append(
                f"| {other['dataset']} ({other['split']}) | {other['model'].rsplit('/', 1)[-1]} | {other['method']} | "
                f"{other['metric']} | {spread(fp32)} | {spread(other)} {precision}{setting} | "
                f"{100 * (other['value'] - fp32['value']):+.2f} | {fp32['wall_s']:,.0f} / {other['wall_s']:,.0f} |"
            )
    return lines


def spread(record: dict) -> str:
    """The value, with '± std (n seeds)' for a mean over seeds."""
    if "std" in record:
        return f"{record['value']:.4f} ± {record['std']:.4f} ({len(record.get('values', []))} seeds)"
    return f"{record['value']:.4f}"


def in_method_table(record: dict) -> bool:
    """One adapter trained on a dataset's whole training split: not a merge (``combine``), an example's scenario
    figure (``scenario``), a run on a subset (``train_rows``) or a data audit (``audit_*`` metrics)."""
    return not ({"combine", "scenario", "train_rows"} & record.keys() or record["metric"].startswith("audit_"))


def default_learning_rate(method: str) -> float:
    """The learning rate a method trains with when the config gives none."""
    from adaptune.registry import method_registration

    return float(method_registration(method).factory.default_learning_rate)


def cells_metric(records: list[dict], dataset: str) -> str:
    record = next(r for r in records if r["dataset"] == dataset)
    return f"{record['split']} {record['metric']}"


def records_table(records: list[dict]) -> list[str]:
    """Every record, with the command that reproduces it."""
    lines = [
        "| task | dataset (split) | model | method | metric | value | precision | trainable params | train tok/s "
        "| peak RSS MB | wall s | command |",
        "|---|---|---|---|---|--:|---|--:|--:|--:|--:|---|",
    ]
    lines += [
        f"| {r['task']} | {r['dataset']} ({r['split']}) | {r['model'].rsplit('/', 1)[-1]} | {method_cell(r)} | "
        f"{r['metric']} | {value_cell(r)} | {r.get('precision', LEGACY_PRECISION)} | {r['trainable_params']:,} | "
        f"{r['train_tokens_per_s']:,.0f} | "
        f"{r['peak_rss_mb']:,.0f} | {r['wall_s']:,.0f} | `{r['command']}` |"
        for r in records
    ]
    return lines


def method_cell(record: dict) -> str:
    """The method, with the merge of ``adaptune combine`` (or ``alone:<dataset>``, an input) when there is one, and
    the setting and training rows of a run on a subset (``benchmarks/low_resource.py``)."""
    if "combine" in record:
        return f"{record['method']} ({record['combine']})"
    if "setting" in record:
        return f"{record['method']} ({record['setting']}, {record.get('train_rows', '?')} rows)"
    return record["method"]


def value_cell(record: dict) -> str:
    """The value, as 'before → after' when the run evaluated dev before training too."""
    if "value_at_start" in record:
        return f"{record['value_at_start']:.4f} → {record['value']:.4f}"
    return spread(record)


def write_tables(merged: list[dict]) -> None:
    """``quality.md`` (the method x dataset table, then every record) and the same two tables in README.md."""
    lines = [*method_table(merged), "", *precision_table(merged), "", *records_table(merged)]
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for readme in READMES:
        if readme.is_file():
            text = readme.read_text(encoding="utf-8")
            text = replace_between(text, "methods-table", method_table(merged))
            text = replace_between(text, "quality-records", records_table(merged))
            text = replace_between(text, "precision-table", precision_table(merged))
            readme.write_text(text, encoding="utf-8")


def replace_between(text: str, marker: str, lines: list[str]) -> str:
    """``text`` with what lies between ``<!-- marker -->`` and ``<!-- /marker -->`` replaced by ``lines``."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    return head + start + "\n" + "\n".join(lines) + "\n" + end + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="config names under configs/")
    parser.add_argument("--tables", action="store_true", help="only rewrite the tables (quality.md, README)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--seeds", type=int, nargs="+", help="train each config once per seed; record mean and std")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tables:
        write_tables(load_records(RESULTS / "quality.json"))
        return
    if args.in_process:
        print(json.dumps(run_one(args.names[0], args.overrides)))
        return
    for name in args.names:
        if args.seeds:
            runs = [run_in_process(name, [*args.overrides, f"training.seed={seed}"]) for seed in args.seeds]
            records = over_seeds(runs, args.seeds, name, args.overrides)
        else:
            records = run_in_process(name, args.overrides)
        upsert(records)
        print(json.dumps(records, indent=2, ensure_ascii=False))


def run_in_process(name: str, overrides: list[str]) -> list[dict]:
    """:func:`run_one` in a process of its own (so its peak RSS is that run's)."""
    cmd = [sys.executable, __file__, name, "--in-process", *(f"--set={o}" for o in overrides)]
    proc = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def over_seeds(runs: list[list[dict]], seeds: list[int], name: str, overrides: list[str]) -> list[dict]:
    """One record per metric from the same config trained with each of ``seeds`` (``runs[i]``: seed ``i``'s
    records): the mean as ``value``, with ``std``, ``values`` and ``seeds``."""
    sets = [f"--set {o}" for o in overrides]
    command = " ".join([".venv/bin/python benchmarks/quality.py", name, "--seeds", *map(str, seeds), *sets])
    if len({r[0]["precision"] for r in runs}) != 1:
        raise ValueError(f"{name}: the seeds trained in different precisions: {[r[0]['precision'] for r in runs]}")
    merged = []
    for i, first in enumerate(runs[0]):
        same = [run[i] for run in runs]
        values = [r["value"] for r in same]
        record = {
            **first,
            "value": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "values": values,
            "seeds": list(seeds),
            "train_tokens_per_s": round(statistics.fmean(r["train_tokens_per_s"] for r in same), 1),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in same),
            "wall_s": round(statistics.fmean(r["wall_s"] for r in same), 1),
            "command": command,
        }
        if "value_at_start" in first:
            record["value_at_start"] = round(statistics.fmean(r["value_at_start"] for r in same), 4)
        merged.append(record)
    return merged


if __name__ == "__main__":
    main()
