"""Training speed on a decoder: SmolLM2-135M-Instruct + LoRA on Alpaca, adaptune vs peft, identical batches.

    .venv/bin/python benchmarks/train_speed_lm.py                       # auto, 48 rows: about 10 minutes here
    .venv/bin/python benchmarks/train_speed_lm.py --precisions fp32 bf16 --variants plain fast

The set-up of the issue: LoRA r=8, alpha 16, no dropout, on all seven projections (q, k, v, o, gate, up, down),
batch 8, up to 512 tokens, the first ``--rows`` rows of ``../shared/data/alpaca/alpaca_data.json`` in the
SmolLM2 chat template (adaptune's ``causal_lm`` encoding; loss on the response tokens only), one epoch of
adaptune's length-bucketed batches, which peft replays (each tool in its own process, so peak RSS is its own).
peft trains ``AutoModelForCausalLM`` with ``labels`` (transformers' loss: the LM head on every position);
adaptune runs its LM head on the labelled positions only. The same AdamW settings, warmup, clipping and seed.
adaptune runs once per variant (``VARIANTS``: ``plain``; ``fast``, padding-free: the real tokens only;
``fast_trimmed``, also freed memory returned to the OS at once; ``checkpoint_half`` / ``low_memory``, padding-free
with every second / every block's activations recomputed in the backward pass), peft once.

Per tool and precision: train tokens/s and examples/s (forward, loss, backward, clipping and the optimiser step, as
adaptune's loop times them), tokens/s after the first step with each step's seconds and tokens (the first step also
pays the process's first touch of its peak memory, which is slow in a virtual machine: a one-off cost that grows
with the peak RSS, and a large share of so short a run), peak RSS, the adapter folder's size, the held-out loss on
the next ``--dev-rows`` rows after training (``dev_metric``, lower is better), and MFU: ``4 * N * tokens/s`` over a
bf16/fp32 matmul peak measured in the same run (``N``: the non-embedding parameters plus the LM head, forward ``2N``
and backward to the inputs ``2N`` per token; frozen weights get no weight gradient). Records are upserted into
``benchmarks/results/train_speed.json`` (model ``HuggingFaceTB/SmolLM2-135M-Instruct``), and printed as a table.

Precisions (``--precisions``, default ``auto``): fp32, and bf16 autocast as well where adaptune's matmul probe
finds bf16 the faster precision on this host; both tools run at each. The headline pairs adaptune's fastest run
with peft's faster one there and the fp32 runs elsewhere (``speed_report.headline``: ``headline_precision`` and
``headline_why`` in every record, with the host).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_common import autocast, folder_bytes, optimizer_and_schedule, peak_rss_mb
from speed_report import headline, run_precisions

from adaptune.hardware import host_record, matmul_peak

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_data.json"
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ROLES = ["query", "key", "value", "attn_out", "ffn_gate", "ffn_in", "ffn_out"]
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HPARAMS = {"learning_rate": 3e-4, "weight_decay": 0.01, "warmup_ratio": 0.03, "max_grad_norm": 1.0, "seed": 42}
IGNORE = -100
#: adaptune's runs: training-config switches of each variant (peft runs once, plain).
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"fast_dropout": False},  # every switch off (training.fast_dropout defaults to auto)
    "fast": {"padding_free": True},
    "low_memory": {"padding_free": True, "activation_checkpointing": 1},
    "fast_trimmed": {"padding_free": True, "trim_memory": True},
    "checkpoint_half": {"padding_free": True, "activation_checkpointing": 2},
}
#: The variants a plain run measures (``--variants`` for the others).
DEFAULT_VARIANTS = ["plain", "fast", "low_memory"]


def run_config(args: argparse.Namespace, precision: str, out_dir: str, variant: str = "plain") -> Any:
    from adaptune.config import validate_config

    return validate_config(
        {
            "model": {"name_or_path": MODEL},
            "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "roles": ROLES},
            "task": {"name": "causal_lm"},
            "data": {
                "train": str(ALPACA),
                "max_length": args.max_length,
                "batch_size": args.batch,
                "bucket_by_length": True,
            },
            "training": {
                "epochs": 1,
                **{k: HPARAMS[k] for k in ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "seed")},
                "precision": precision,  # as the record says, on any host (not training.precision's auto)
                **VARIANTS[variant],
                "progress": False,
                "log_every": 1,
                "output_dir": out_dir,
            },
        }
    )


def encoded_rows(args: argparse.Namespace) -> tuple[Any, list[Any], list[Any], list[Any]]:
    """The backbone, the encoded training and held-out rows (adaptune's causal_lm encoding), the held-out
    examples."""
    from adaptune.backbone import load_backbone
    from adaptune.registry import build_task

    cfg = run_config(args, "fp32", tempfile.mkdtemp())
    backbone = load_backbone(cfg.model)
    task = build_task(cfg.task)
    examples = task.read(str(ALPACA), cfg.data, split="train")[: args.rows + args.dev_rows]
    encoded = [task.encode(ex, backbone.tokenizer, [], args.max_length) for ex in examples]
    return backbone, encoded[: args.rows], encoded[args.rows :], examples[args.rows :]


def batches_of(train: list[Any], args: argparse.Namespace) -> list[list[int]]:
    from adaptune.data.batching import train_batches

    return train_batches([len(e) for e in train], args.batch, seed=HPARAMS["seed"], epoch=0)


def hf_labels(target: list[int]) -> list[int]:
    """adaptune's next-token targets (position t predicts t+1) as transformers' labels (shifted inside)."""
    return [IGNORE, *target[:-1]]


def worker_adaptune(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    from adaptune.inference import run_model
    from adaptune.io import save_adapter
    from adaptune.model import AdaptedModel
    from adaptune.registry import build_method, build_task
    from adaptune.training.callbacks import Callback, StepRecord
    from adaptune.training.loop import Trainer

    work = tempfile.mkdtemp(prefix="adaptune-lm-speed-")
    cfg = run_config(args, precision, work, args.variant)
    backbone, train, dev, dev_examples = encoded_rows(args)
    assert batches_of(train, args) == batches_of(train, args)  # deterministic: what peft replays
    torch.manual_seed(HPARAMS["seed"])
    model = AdaptedModel(backbone, build_method(cfg.method), build_task(cfg.task), [])
    timed: dict[str, float] = {}

    steps: list[tuple[float, int]] = []

    class Timing(Callback):
        """Each optimiser step's compute seconds and real tokens; the run's totals after each epoch."""

        def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
            if step.tokens:
                steps.append((step.seconds, step.tokens))

        def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
            timed["seconds"], timed["tokens"] = trainer.train_seconds, trainer.train_tokens

    pad = int(backbone.tokenizer.pad_token_id)
    trainer = Trainer(
        model,
        train,
        cfg,
        out_dir=Path(work),
        evaluate=None,
        metric="loss",
        pad_id=pad,
        padding_side="right",
        callbacks=[Timing()],
    )
    trainer.fit()
    adapter = save_adapter(Path(work) / "adapter", model.trainable_state(), {"method": model.method.config_for_file()})
    result = run_model(model, dev, batch_size=args.batch, pad_id=pad, padding_side="right", bf16=precision == "bf16")
    dev_loss = model.task.evaluate(dev_examples, result.predictions, []).headline["loss"]  # token-weighted
    return {
        "seconds": timed["seconds"],
        "tokens": timed["tokens"],
        "dev_loss": float(dev_loss),
        "adapter_bytes": folder_bytes(adapter),
        "trainable_params": sum(p.numel() for p in model.trainable()),
        "steps": steps,
    }


def worker_peft(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    import peft
    from transformers import AutoModelForCausalLM

    from adaptune.backbone import resolve_model

    backbone, train, dev, _ = encoded_rows(args)
    pad = int(backbone.tokenizer.pad_token_id)
    del backbone  # peft loads its own copy, as a peft user does
    where = resolve_model(MODEL)
    torch.manual_seed(HPARAMS["seed"])
    base = AutoModelForCausalLM.from_pretrained(where.path, gguf_file=where.gguf_file, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=PEFT_TARGETS)
    model = peft.get_peft_model(base, config)
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    batches = batches_of(train, args)
    opt, sched = optimizer_and_schedule(params, HPARAMS, len(batches))

    def collate(rows: list[Any]) -> dict[str, torch.Tensor]:
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row.input_ids)
            ids[i, :n], mask[i, :n], labels[i, :n] = (
                torch.tensor(row.input_ids),
                1,
                torch.tensor(hf_labels(row.target)),
            )
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    seconds, tokens = 0.0, 0
    steps: list[tuple[float, int]] = []
    for indices in batches:
        started = time.perf_counter()
        batch = collate([train[i] for i in indices])
        with autocast(precision):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _n, p in params], HPARAMS["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        steps.append((time.perf_counter() - started, int(batch["attention_mask"].sum())))
        seconds, tokens = seconds + steps[-1][0], tokens + steps[-1][1]
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        adapter_bytes = folder_bytes(folder)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast(precision):
        for start in range(0, len(dev), args.batch):
            batch = collate(dev[start : start + args.batch])
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total, count = total + float(model(**batch).loss) * n, count + n
    return {
        "seconds": seconds,
        "tokens": tokens,
        "dev_loss": total / max(1, count),
        "adapter_bytes": adapter_bytes,
        "trainable_params": sum(p.numel() for _n, p in params),
        "steps": steps,
    }


def flops_per_token() -> int:
    """``4 N``: forward ``2N`` plus backward to the inputs ``2N`` (N: non-embedding weights + the LM head)."""
    from transformers import AutoConfig

    from adaptune.backbone import resolve_model

    where = resolve_model(MODEL)
    config = AutoConfig.from_pretrained(where.path, gguf_file=where.gguf_file)
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = d * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f
    return 4 * (layers * per_layer + d * config.vocab_size)


def upsert(records: list[dict[str, Any]]) -> None:
    path = RESULTS / "train_speed.json"
    existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    key = ("model", "method", "tool", "precision", "variant")
    fresh = {tuple(r.get(k) for k in key) for r in records}
    merged = [r for r in existing if tuple(r.get(k) for k in key) not in fresh] + records
    path.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")


def print_headline(records: list[dict[str, Any]], pairs: dict[str, Any]) -> None:
    """adaptune's fastest run against peft's faster one, over the headline precisions of this host."""
    used = [r for r in records if r["precision"] in pairs["precisions"]]
    ours = max((r for r in used if r["tool"] == "adaptune"), key=lambda r: r["tokens_per_s"], default=None)
    peer = max((r for r in used if r["tool"] == "peft"), key=lambda r: r["tokens_per_s"], default=None)
    if ours is None or peer is None:
        return
    print(
        f"headline ({pairs['headline_precision']}): adaptune {ours['precision']} {ours['variant']} / peft "
        f"{peer['precision']}: {ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x tokens/s; {pairs['headline_why']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48, help="training rows (one epoch)")
    parser.add_argument("--dev-rows", type=int, default=16, help="held-out rows for the loss after training")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["auto"],
        choices=["auto", "fp32", "bf16"],
        help="auto: fp32 and bf16 autocast where bf16 is the faster precision on this host, else fp32",
    )
    parser.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS), help="adaptune runs (switches)"
    )
    parser.add_argument("--worker", choices=["adaptune", "peft"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="plain", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true", help="print only; leave train_speed.json alone")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.worker:
        run = worker_adaptune if args.worker == "adaptune" else worker_peft
        measured = run(args, args.precision)
        measured["peak_rss_mb"] = peak_rss_mb()
        args.out.write_text(json.dumps(measured), encoding="utf-8")
        return
    per_token = flops_per_token()
    records: list[dict[str, Any]] = []
    precisions = run_precisions(args.precisions)
    pairs, host = headline(precisions), host_record(probe=True)
    for precision in precisions:
        peak = matmul_peak(precision)
        runs = [("peft", "plain")] + [("adaptune", variant) for variant in args.variants]
        for tool, variant in runs:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "measured.json"
                command = [sys.executable, __file__, "--worker", tool, "--precision", precision, "--out", str(out)]
                command += ["--variant", variant, "--rows", str(args.rows), "--dev-rows", str(args.dev_rows)]
                command += ["--max-length", str(args.max_length), "--batch", str(args.batch)]
                subprocess.run(command, check=True, cwd=ROOT)
                m = json.loads(out.read_text(encoding="utf-8"))
            tokens_per_s = m["tokens"] / m["seconds"]
            later = m["steps"][1:]  # the first step also pays the process's first touch of its peak memory
            later_tokens_per_s = sum(t for _s, t in later) / sum(s for s, _t in later) if later else None
            records.append(
                {
                    "model": MODEL,
                    "method": "lora",
                    "tool": tool,
                    "precision": precision,
                    "variant": variant,
                    "switches": VARIANTS[variant] if tool == "adaptune" else {},
                    "tokens_per_s": round(tokens_per_s, 1),
                    "tokens_per_s_after_first_step": later_tokens_per_s and round(later_tokens_per_s, 1),
                    "step_seconds": [round(s, 3) for s, _t in m["steps"]],
                    "step_tokens": [t for _s, t in m["steps"]],
                    "examples_per_s": round(args.rows / m["seconds"], 3),
                    "peak_rss_mb": m["peak_rss_mb"],
                    "dev_metric": round(m["dev_loss"], 4),
                    "dev_metric_name": "held-out loss (lower is better)",
                    "mfu": round(per_token * tokens_per_s / peak, 4),
                    "adapter_bytes": m["adapter_bytes"],
                    "trainable_params": m["trainable_params"],
                    "train_tokens": m["tokens"],
                    "rows": args.rows,
                    "batch_size": args.batch,
                    "max_length": args.max_length,
                    "headline_precision": pairs["headline_precision"],
                    "headline_why": pairs["headline_why"],
                    "host": host,
                }
            )
            print(json.dumps(records[-1]), flush=True)
        peer = records[-len(runs)]
        for ours in records[-len(runs) + 1 :]:
            print(
                f"{precision} {ours['variant']}: adaptune / peft tokens/s "
                f"{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x (target >= 2; after the first step "
                f"{ours['tokens_per_s_after_first_step'] / peer['tokens_per_s_after_first_step']:.2f}x), "
                f"peak RSS {ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x (target <= 0.5), "
                f"held-out loss {ours['dev_metric']} vs {peer['dev_metric']}",
                flush=True,
            )
    print_headline(records, pairs)
    if not args.no_save:
        upsert(records)


if __name__ == "__main__":
    main()
