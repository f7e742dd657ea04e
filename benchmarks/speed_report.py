"""train_speed records, analytic FLOPs and MFU, the issue's target ratios, and the JSON / markdown / PNG files.

FLOPs are counted from the model's shape, per epoch, for the work each record actually executes:

- forward, per block and real token: ``2 * P_block`` (the block's matmul weights: ``4 d^2 + 2 d d_ff``) plus
  ``4 d T`` for attention (scores and weighted values over the example's ``T`` tokens), i.e. ``4 d sum T_i^2``
  per batch; prefix tuning adds ``4 d n_virtual`` per token and block;
- backward, for the blocks from the lowest trained one up: the input gradients (``2 * P_block`` per token and
  ``8 d T`` for attention); head-only has none;
- the adapter's own tensors: ``6 * params`` per token (forward, input and weight gradients);
- with adaptune's activation cache, epochs after the first skip the frozen blocks (their forward is not counted,
  because it is not executed).

MFU = executed FLOPs / training seconds / the peak of a square matmul at the same precision, measured in the
same run (so a contended machine lowers both).

Which precision the headline pairs come from is the host's (:func:`headline`): where adaptune's matmul probe finds
bf16 at least 1.3x as fast as fp32 (``training.precision: auto`` picks bf16 there: AMX), every tool runs in fp32
and in bf16 autocast and adaptune's fastest run is paired with the peer's faster one; elsewhere the fp32 pair is
the headline. Every record says which (``headline_precision``, ``headline_why``) and carries the host.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from speed_common import METHODS, PREFIX, Plan, base_method

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
README = Path(__file__).resolve().parents[1] / "README.md"
#: the peer a method's target ratio is taken against (the issue: peft; for bottleneck AdapterHub's seq_bn)
PEER = {"bottleneck": "adapters", "bottleneck_top2": "adapters"}


def auto_choice() -> Any:
    """``training.precision: auto`` on this CPU (:func:`adaptune.hardware.choose_precision`, the cached probe)."""
    import torch

    from adaptune.hardware import choose_precision

    return choose_precision("auto", torch.device("cpu"))


def run_precisions(asked: Sequence[str]) -> list[str]:
    """The precisions to run: ``auto`` is fp32 and bf16 autocast where bf16 is the faster one here, else fp32."""
    if "auto" not in asked:
        return list(asked)
    auto = ["fp32", "bf16"] if auto_choice().bf16 else ["fp32"]
    return [p for p in ("fp32", "bf16") if p in auto or p in asked]


def headline(ran: Sequence[str]) -> dict[str, Any]:
    """Which of the precisions ``ran`` the headline pairs come from on this host, and why: each tool's faster run
    where bf16 is the faster precision here, else the fp32 runs (``precisions``; the rest goes into records)."""
    choice = auto_choice()
    if choice.bf16:
        used = [p for p in ("fp32", "bf16") if p in ran]
        why = f"{choice.reason}: every tool ran in {' and '.join(used)}, each paired in its faster run"
    else:
        used = ["fp32"] if "fp32" in ran else list(ran)
        why = f"{choice.reason}: bf16 is not the faster precision on this host, so the {used[0]} pair is the headline"
    return {"headline_precision": "/".join(used), "headline_why": why, "precisions": used}


def model_shape(plan: Plan) -> dict[str, int]:
    """Hidden size, blocks and FFN width from the model's config.json."""
    config = json.loads((Path(plan.model_dir) / "config.json").read_text(encoding="utf-8"))
    return {"d": config["hidden_size"], "layers": config["num_hidden_layers"], "ffn": config["intermediate_size"]}


def trained_blocks(method: str, layers: int) -> int:
    """How many top blocks the backward pass runs through."""
    if method == "head":
        return 0
    top = METHODS[method]["top"]
    return int(top) if top else layers


def epoch_flops(
    shape: dict[str, int], method: str, tokens: int, sq_tokens: int, adapter_params: int, forward_blocks: int
) -> float:
    """Executed training FLOPs of one epoch (see the module docstring)."""
    d, layers = shape["d"], shape["layers"]
    block = 2 * (4 * d * d + 2 * d * shape["ffn"])
    extra_keys = 4 * d * PREFIX["num_virtual_tokens"] * tokens if base_method(method) == "prefix" else 0
    forward = forward_blocks * (block * tokens + 4 * d * sq_tokens + extra_keys)
    backward = trained_blocks(method, layers) * (block * tokens + 8 * d * sq_tokens + 2 * extra_keys)
    return float(forward + backward + 6 * adapter_params * tokens)


def build_record(
    plan: Plan,
    method: str,
    tool: str,
    precision: str,
    variant: str,
    switches: dict[str, Any],
    measured: dict[str, Any],
    peaks: dict[str, float],
    command: str,
) -> dict[str, Any]:
    """One result row: throughput overall and after the first epoch, memory, file size, quality, MFU."""
    shape = model_shape(plan)
    seconds, tokens = measured["epoch_seconds"], measured["epoch_tokens"]
    examples, sq = measured["epoch_examples"], measured["epoch_sq_tokens"]
    cached = "activation_cache" in switches and switches["activation_cache"] != "off"
    adapter_params = 0 if method == "head" else measured["trainable_params"]
    trained = trained_blocks(method, shape["layers"])
    flops = [
        epoch_flops(shape, method, tokens[e], sq[e], adapter_params, trained if cached and e else shape["layers"])
        for e in range(len(seconds))
    ]
    later = slice(1, None) if len(seconds) > 1 else slice(0, None)
    return {
        "model": MODEL,
        "dataset": "sst2",
        "method": method,
        "tool": tool,
        "variant": variant,
        "switches": switches,
        "precision": precision,
        "tokens_per_s": round(sum(tokens) / sum(seconds), 1),
        "examples_per_s": round(sum(examples) / sum(seconds), 2),
        "tokens_per_s_first_epoch": round(tokens[0] / seconds[0], 1),
        "tokens_per_s_later_epochs": round(sum(tokens[later]) / sum(seconds[later]), 1),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "peak_rss_mb": measured["peak_rss_mb"],
        "adapter_file_kb": round(measured["adapter_bytes"] / 1024, 1),
        "trainable_params": measured["trainable_params"],
        "dev_metric": round(measured["dev_metric"], 4),
        "dev_metric_name": "accuracy",
        "infer_examples_per_s": round(measured["infer_examples_per_s"], 1),
        "mfu": round(sum(flops) / sum(seconds) / peaks[precision], 4),
        "matmul_peak_gflops": round(peaks[precision] / 1e9, 1),
        "train_gflop": round(sum(flops) / 1e9, 1),
        "steps": sum(len(b) for b in plan.epochs),
        "train_examples": len(plan.train),
        "epochs": len(plan.epochs),
        "batch_size": plan.hparams["batch_size"],
        "final_train_loss": round(sum(measured["train_losses"][-10:]) / max(1, len(measured["train_losses"][-10:])), 4),
        "wall_s": measured.get("wall_s"),
        "notes": measured.get("notes", []),
        "command": command,
    }


def best(records: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The record with the highest ``key``."""
    return max(records, key=lambda r: r[key]) if records else None


def targets(records: list[dict[str, Any]], precisions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per method: adaptune's faster run over the peer's faster run (overall and after the first epoch), RSS
    ratio and dev-metric difference of those two runs; then adaptune's lowest-memory run against the peer's faster
    run (the peak RSS target). Only runs at ``precisions`` (the :func:`headline` ones) count when given."""
    rows = []
    records = [r for r in records if precisions is None or r["precision"] in precisions]
    for method in dict.fromkeys(r["method"] for r in records):
        peer = PEER.get(method, "peft")
        ours = [r for r in records if r["method"] == method and r["tool"] == "adaptune"]
        theirs = [r for r in records if r["method"] == method and r["tool"] == peer]
        for key in ("tokens_per_s", "tokens_per_s_later_epochs"):
            a, b = best(ours, key), best(theirs, key)
            if a is None or b is None:
                continue
            rows.append(
                {
                    "method": method,
                    "peer": peer,
                    "figure": key,
                    "adaptune_run": f"{a['precision']} {a['variant']}",
                    "peer_run": b["precision"],
                    "speed_ratio": round(a[key] / b[key], 2),
                    "rss_ratio": round(a["peak_rss_mb"] / b["peak_rss_mb"], 2),
                    "dev_delta_points": round(100 * (a["dev_metric"] - b["dev_metric"]), 2),
                }
            )
        lean, fast_peer = (min(ours, key=lambda r: r["peak_rss_mb"]) if ours else None), best(theirs, "tokens_per_s")
        if lean is not None and fast_peer is not None:  # the memory target: adaptune's leanest run
            rows.append(
                {
                    "method": method,
                    "peer": peer,
                    "figure": "peak_rss_mb (adaptune's lowest)",
                    "adaptune_run": f"{lean['precision']} {lean['variant']}",
                    "peer_run": fast_peer["precision"],
                    "speed_ratio": round(lean["tokens_per_s"] / fast_peer["tokens_per_s"], 2),
                    "rss_ratio": round(lean["peak_rss_mb"] / fast_peer["peak_rss_mb"], 2),
                    "dev_delta_points": round(100 * (lean["dev_metric"] - fast_peer["dev_metric"]), 2),
                }
            )
    return rows


def markdown(
    records: list[dict[str, Any]], peaks: dict[str, float], command: str, pairs: dict[str, Any] | None = None
) -> str:
    """The results table and the target ratios (from the ``pairs`` precisions of :func:`headline`, when given)."""
    lines = [
        f"Command: `.venv/bin/python {command}`. Matmul peak in this run: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s."
        + (f" Headline pairs: {pairs['headline_precision']} ({pairs['headline_why']})." if pairs else ""),
        "",
        "| method | tool | variant | precision | tokens/s | examples/s | tokens/s after epoch 1 | peak RSS MB "
        "| adapter KB | dev acc | inference ex/s | MFU |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in records:
        lines.append(
            f"| {r['method']} | {r['tool']} | {r['variant']} | {r['precision']} | {r['tokens_per_s']:,.0f} | "
            f"{r['examples_per_s']:,.1f} | {r['tokens_per_s_later_epochs']:,.0f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['adapter_file_kb']:,.1f} | {r['dev_metric']:.4f} | {r['infer_examples_per_s']:,.0f} | {r['mfu']:.3f} |"
        )
    lines += [
        "",
        "Targets (adaptune's faster run / the peer's faster run, identical batches):",
        "",
        "| method | peer | figure | adaptune run | peer run | speed ratio | peak RSS ratio | dev difference (points) |",
        "|---|---|---|---|---|--:|--:|--:|",
    ]
    lines += [
        f"| {t['method']} | {t['peer']} | {t['figure']} | {t['adaptune_run']} | {t['peer_run']} | "
        f"{t['speed_ratio']:.2f} | {t['rss_ratio']:.2f} | {t['dev_delta_points']:+.2f} |"
        for t in targets(records, pairs["precisions"] if pairs else None)
    ]
    return "\n".join(lines) + "\n"


def chart(records: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: training tokens/s per method, one bar per tool and variant, one panel per precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precisions = list(dict.fromkeys(r["precision"] for r in records))
    fig, axes = plt.subplots(1, len(precisions), figsize=(7 * len(precisions), 4.5), squeeze=False)
    for ax, precision in zip(axes[0], precisions, strict=True):
        rows = [r for r in records if r["precision"] == precision]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        series = list(dict.fromkeys(f"{r['tool']} {r['variant']}" for r in rows))
        width = 0.8 / max(1, len(series))
        for k, name in enumerate(series):
            values = [
                next((r["tokens_per_s"] for r in rows if r["method"] == m and f"{r['tool']} {r['variant']}" == name), 0)
                for m in methods
            ]
            ax.bar([i + k * width for i in range(len(methods))], values, width, label=name)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(methods))], methods, rotation=20)
        ax.set_title(f"MiniLM-L6 + SST-2, batch 32, {precision}")
        ax.set_ylabel("training tokens/s (non-pad)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What one train_speed.json record measures: model, method, tool, precision and adaptune variant."""
    return tuple(record.get(k) for k in ("model", "method", "tool", "precision", "variant"))


def write_results(
    folder: Path,
    records: list[dict[str, Any]],
    peaks: dict[str, float],
    command: str,
    *,
    quick: bool,
    pairs: dict[str, Any] | None = None,
) -> None:
    """``train_speed.json`` (the records, upserted by :func:`record_key`), ``train_speed.md`` (this run's, with
    the target ratios) and ``train_speed.png``
    (quick runs write ``train_speed_quick.*``, so that they never replace the full table)."""
    stem = "train_speed_quick" if quick else "train_speed"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    # upserted: a run of some methods (``--methods``) keeps the other rows, and train_speed_lm.py's SmolLM2 rows
    fresh = {record_key(r) for r in records}
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    kept = [r for r in previous if record_key(r) not in fresh]
    path.write_text(json.dumps(kept + records, indent=2) + "\n", encoding="utf-8")
    table = markdown(records, peaks, command, pairs)
    (folder / f"{stem}.md").write_text(table, encoding="utf-8")
    if records:
        chart(records, folder / f"{stem}.png")
    if not quick and README.is_file():
        update_readme(table)


def update_readme(table: str, marker: str = "train-speed") -> None:
    """Put ``table`` between ``<!-- train-speed -->`` and ``<!-- /train-speed -->`` in README.md and
    README.zh-CN.md (where present)."""
    for readme in (README, README.with_name("README.zh-CN.md")):
        if not readme.is_file():
            continue
        text = readme.read_text(encoding="utf-8")
        start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            readme.write_text(head + start + "\n" + table + end + rest.split(end, 1)[1], encoding="utf-8")
