"""Summarisation recipe before and after: SmolLM2-135M-Instruct + LoRA on the Alpaca rows that ask for a summary.

Data: Stanford Alpaca (Taori et al. 2023, https://github.com/tatsu-lab/stanford_alpaca; CC BY-NC 4.0), the copy
in ``../shared/data/alpaca/alpaca_data.json``. Kept: the rows whose ``instruction`` asks for a summary (the regex
:data:`ASKS_FOR_SUMMARY`) and whose ``input`` is a passage of at least :data:`MIN_WORDS` words (not a URL or a
title), with a non-empty ``output``; each becomes ``{"document": input, "summary": output}``. They are shuffled
with ``random.Random(0)``: the first ``--heldout`` rows are the held-out file, the next ``--train-rows`` the
training file, written to a temporary folder (never the repository).

The run is ``src/adaptune/configs/smollm2_summarisation.yaml`` (recipe ``summarisation``, LoRA r 8, greedy
generation of up to 96 tokens) with ``training.eval_at_start``: "before" is the base model on the held-out file,
"after" the trained adapter on the same file; ROUGE-1/2/L (rouge-score F1), loss and perplexity.

    nice -n 5 .venv/bin/python benchmarks/recipe_quality.py [--train-rows 300] [--heldout 50] [--epochs 2]

Records (dataset ``alpaca_summaries``, with ``value_at_start``, the data selection and the host) are upserted
into ``benchmarks/results/quality.json`` and ``quality.md`` (``quality.py``'s helpers); the README tables are
left alone here: ``.venv/bin/python benchmarks/quality.py --tables`` rewrites them from quality.json. Before and
after samples go to ``benchmarks/results/generations_recipe_summarisation.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_data.json"
CONFIG = ROOT / "src" / "adaptune" / "configs" / "smollm2_summarisation.yaml"
NAME = "recipe_summarisation"
#: An instruction that asks for a summary ("Summarize ...", "Generate a summary of ...", "summarise").
ASKS_FOR_SUMMARY = re.compile(r"summar(?:y|ies|i[sz]e)", re.IGNORECASE)
#: The shortest input kept: shorter ones are titles, URLs or single sentences.
MIN_WORDS = 15
METRICS = ("rouge_1", "rouge_2", "rouge_l", "loss", "perplexity")


def summary_rows() -> list[dict[str, str]]:
    """The Alpaca rows that ask for a summary of a passage, as document/summary pairs, in file order."""
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    return [
        {"document": r["input"].strip(), "summary": r["output"].strip()}
        for r in rows
        if ASKS_FOR_SUMMARY.search(r["instruction"]) and len(r["input"].split()) >= MIN_WORDS and r["output"].strip()
    ]


def write_split(folder: Path, train_rows: int, heldout: int) -> tuple[Path, Path, int]:
    """``train.jsonl`` and ``heldout.jsonl`` in ``folder``; also the number of rows the filter kept."""
    rows = summary_rows()
    random.Random(0).shuffle(rows)
    if len(rows) < heldout + train_rows:
        raise SystemExit(f"only {len(rows)} summary rows: ask for fewer than {heldout} + {train_rows}")
    paths = []
    for name, part in (("train.jsonl", rows[heldout : heldout + train_rows]), ("heldout.jsonl", rows[:heldout])):
        path = folder / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1], len(rows)


def records(result: Any, cfg: Any, selection: dict[str, Any], command: str) -> list[dict[str, Any]]:
    """One quality.json record per metric, with the before figure and the run's cost."""
    from adaptune.hardware import host_record

    host = host_record(probe=True)
    before, after = result.results["at_start"], result.results["splits"]["dev"]["headline"]
    return [
        {
            "task": cfg.task.name,
            "dataset": "alpaca_summaries",
            "split": "dev",
            "model": cfg.model.name_or_path,
            "method": cfg.method.name,
            "metric": metric,
            "value": round(after[metric], 4),
            "value_at_start": round(before[metric], 4),
            "trainable_params": result.trainable_params,
            "train_tokens_per_s": result.results["train_tokens_per_s"],
            "peak_rss_mb": result.results["peak_rss_mb"],
            "wall_s": result.results["wall_s"],
            "recipe": cfg.task.recipe,
            "data": selection,
            "precision": result.results["precision"]["chosen"],  # what training.precision (auto) chose
            "host": host,
            "command": command,
        }
        for metric in METRICS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=300)
    parser.add_argument("--heldout", type=int, default=50)
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()
    import quality

    from adaptune import load_config, train

    with tempfile.TemporaryDirectory(prefix="adaptune_recipe_") as tmp:
        train_file, heldout_file, kept = write_split(Path(tmp), args.train_rows, args.heldout)
        overrides = [
            f"data.train={train_file}",
            f"data.dev={heldout_file}",
            f"task.eval_generate={args.heldout}",
            f"training.epochs={args.epochs}",
            "training.progress=false",
            f"training.output_dir={ROOT / 'runs' / NAME}",
        ]
        cfg = load_config(CONFIG, overrides)
        result = train(cfg, overwrite=True)
    selection = {
        "source": "alpaca_data.json (Taori et al. 2023, CC BY-NC 4.0)",
        "filter": f"instruction ~ /{ASKS_FOR_SUMMARY.pattern}/i, input >= {MIN_WORDS} words, output non-empty",
        "rows_kept": kept,
        "split": "random.Random(0).shuffle; first heldout rows held out, next train_rows trained",
        "train_rows": args.train_rows,
        "heldout_rows": args.heldout,
        "epochs": args.epochs,
    }
    command = (
        f"nice -n 5 .venv/bin/python benchmarks/recipe_quality.py --train-rows {args.train_rows} "
        f"--heldout {args.heldout} --epochs {args.epochs:g}"
    )
    found = records(result, cfg, selection, command)
    quality.READMES = ()  # quality.md and quality.json only; `quality.py --tables` writes the README tables
    quality.upsert(found)
    quality.write_generations(NAME, ROOT / "runs" / NAME)
    print(json.dumps(found, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
