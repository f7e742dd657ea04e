"""train_speed workers for adaptune and peft (run with .venv/bin/python, one process per record).

    .venv/bin/python benchmarks/speed_workers.py adaptune --plan PLAN.json --method lora --precision bf16 \\
        --switches '{"bf16_base": true}' --out RESULT.json
    .venv/bin/python benchmarks/speed_workers.py peft --plan PLAN.json --method lora --precision bf16 --out R.json

adaptune runs its own Trainer (so every speed switch is the shipped code path) on the plan's examples; its batches
are checked to be the plan's. peft gets the plan's batches replayed by :func:`speed_common.train_peer` on MiniLM
with the shared mean-pooling head.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_common import (
    LORA,
    METHODS,
    PREFIX,
    MeanPoolHead,
    Measured,
    Plan,
    base_method,
    finish,
    folder_bytes,
    infer,
    set_threads,
    top_layers,
    train_peer,
)


def adaptune_config(plan: Plan, method: str, precision: str, switches: dict[str, Any], out_dir: str) -> Any:
    """The RunConfig that matches the plan (same batch size, epochs, seed and optimiser settings)."""
    from adaptune.config import validate_config

    hp = plan.hparams
    kind = base_method(method)
    method_cfg: dict[str, Any] = {"name": kind}
    if METHODS[method]["top"]:
        method_cfg["layers"] = list(range(-METHODS[method]["top"], 0))
    if kind == "lora":
        method_cfg.update(r=LORA["r"], alpha=LORA["alpha"])
    if kind == "prefix":
        method_cfg.update(num_virtual_tokens=PREFIX["num_virtual_tokens"], prefix_hidden=PREFIX["hidden"])
    training = {
        "epochs": len(plan.epochs),
        "learning_rate": hp["learning_rate"],
        "weight_decay": hp["weight_decay"],
        "warmup_ratio": hp["warmup_ratio"],
        "max_grad_norm": hp["max_grad_norm"],
        "seed": hp["seed"],
        "precision": precision,  # as the record says, on any host (not training.precision's auto)
        "progress": False,
        "log_every": 1,
        "output_dir": out_dir,
        **switches,
    }
    return validate_config(
        {
            "model": {"name_or_path": plan.model_dir, "pooling": "mean"},
            "method": method_cfg,
            "task": {"name": "seq_cls"},
            "data": {"batch_size": hp["batch_size"], "bucket_by_length": True},
            "training": training,
        }
    )


def run_adaptune(plan: Plan, method: str, precision: str, switches: dict[str, Any]) -> Measured:
    """Train with adaptune's Trainer on the plan's examples; time each epoch; dev accuracy (LoRA merged)."""
    from adaptune.backbone import load_backbone
    from adaptune.data.batching import train_batches
    from adaptune.model import AdaptedModel
    from adaptune.registry import build_method, build_task
    from adaptune.tasks.base import Encoded
    from adaptune.training.callbacks import Callback
    from adaptune.training.loop import Trainer

    work = tempfile.mkdtemp(prefix="adaptune-speed-")
    cfg = adaptune_config(plan, method, precision, switches, work)
    backbone = load_backbone(cfg.model)
    torch.manual_seed(cfg.training.seed)
    labels = [str(i) for i in range(plan.num_labels)]
    model = AdaptedModel(backbone, build_method(cfg.method), build_task(cfg.task), labels)
    train = [Encoded(r["input_ids"], target=r["label"]) for r in plan.train]
    for epoch, batches in enumerate(plan.epochs):
        made = train_batches([len(e) for e in train], cfg.data.batch_size, seed=cfg.training.seed, epoch=epoch)
        assert made == batches, "adaptune's batches must be the plan's"
    out = Measured()

    class EpochTiming(Callback):
        """Each epoch's compute seconds and real tokens (evaluation and checkpoints excluded)."""

        def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
            self.tokens, self.seconds = trainer.train_tokens, trainer.train_seconds

        def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
            out.epoch_seconds.append(trainer.train_seconds - self.seconds)
            out.epoch_tokens.append(trainer.train_tokens - self.tokens)

    trainer = Trainer(
        model,
        train,
        cfg,
        out_dir=Path(work),
        evaluate=None,
        metric="accuracy",
        pad_id=plan.pad_id,
        padding_side="right",
        callbacks=[EpochTiming()],
    )
    trainer.fit()
    measure_after_training(model, plan, method, Path(work), out, bf16=trainer.precision.bf16)
    shutil.rmtree(work, ignore_errors=True)
    return out


def measure_after_training(model: Any, plan: Plan, method: str, work: Path, out: Measured, *, bf16: bool) -> None:
    """Per-epoch counts, losses, the adapter folder's size, then dev accuracy and inference speed (LoRA merged)."""
    from adaptune.inference import merge_in_place, run_model
    from adaptune.io import save_adapter
    from adaptune.tasks.base import Encoded

    for batches in plan.epochs:
        out.epoch_examples.append(sum(len(b) for b in batches))
        out.epoch_sq_tokens.append(sum(len(plan.train[i]["input_ids"]) ** 2 for b in batches for i in b))
    log = (work / "metrics.jsonl").read_text().splitlines()
    out.train_losses = [json.loads(line)["train_loss"] for line in log if "train_loss" in line]
    out.trainable_params = sum(p.numel() for p in model.trainable())
    description = {"method": model.method.config_for_file(), "labels": list(model.labels)}
    out.adapter_bytes = folder_bytes(save_adapter(work / "adapter", model.trainable_state(), description))
    if base_method(method) == "lora":
        merge_in_place(model)
        out.notes.append("inference with the LoRA merged (Predictor.load(..., merge=True))")
    dev = [Encoded(r["input_ids"], target=r["label"]) for r in plan.dev]
    started = time.perf_counter()
    result = run_model(model, dev, batch_size=plan.hparams["eval_batch_size"], pad_id=plan.pad_id, bf16=bf16)
    out.infer_examples_per_s = len(dev) / (time.perf_counter() - started)
    correct = sum(pred[0][0] == r["label"] for pred, r in zip(result.predictions, plan.dev, strict=True))
    out.dev_metric = correct / len(dev)


def run_peft(plan: Plan, method: str, precision: str) -> Measured:
    """peft (or, for head-only, the frozen transformers model) with the shared head, replaying the plan."""
    import peft
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(plan.hparams["seed"])
    base = AutoModel.from_pretrained(plan.model_dir, add_pooling_layer=False, dtype=torch.float32)
    base.requires_grad_(False)
    kind = base_method(method)
    if kind == "lora":
        layers = top_layers(method, base.config.num_hidden_layers)
        config: Any = peft.LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=0.0,
            target_modules=["query", "value"],
            layers_to_transform=layers,
        )
    elif kind == "prefix":
        config = peft.PrefixTuningConfig(
            task_type="FEATURE_EXTRACTION",
            num_virtual_tokens=PREFIX["num_virtual_tokens"],
            prefix_projection=True,
            encoder_hidden_size=PREFIX["hidden"],
        )
    elif kind == "head":
        config = None
    else:
        raise SystemExit(f"peft has no {method}")
    model = peft.get_peft_model(base, config) if config is not None else base
    head = MeanPoolHead(base.config.hidden_size, plan.num_labels)
    model.train()
    head.train()

    # peft 0.21.2 refuses prefix tuning when the model's forward has no parameter named past_key_values, as from
    # transformers 5.24 (renamed to cache): then run what its forward would run, its prefixes (get_prompt) as
    # the cache and the mask extended by n ones.
    direct = kind == "prefix" and "past_key_values" not in inspect.signature(base.forward).parameters

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if direct:
            front = mask.new_ones(mask.shape[0], config.num_virtual_tokens)
            cache = model.get_prompt(batch_size=ids.shape[0])
            hidden = model.base_model(input_ids=ids, attention_mask=torch.cat([front, mask], 1), past_key_values=cache)
        else:
            hidden = model(input_ids=ids, attention_mask=mask)
        return head(hidden.last_hidden_state, mask)  # type: ignore[no-any-return]

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + list(head.named_parameters())
    out = train_peer(forward, params, plan, precision)
    if direct:
        out.notes.append("peft's prefix computation called directly (get_prompt as the cache): its forward refuses")
    with tempfile.TemporaryDirectory() as folder:
        if config is not None:
            model.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(Path(folder) / "head.safetensors"))
        out.adapter_bytes = folder_bytes(folder)
    model.eval()
    head.eval()
    if kind == "lora":
        model.merge_adapter()
        out.notes.append("inference with the LoRA merged (merge_adapter)")
    out.dev_metric, out.infer_examples_per_s = infer(forward, plan, precision)
    out.notes.append(f"peft {peft.__version__}, transformers {transformers.__version__}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", choices=["adaptune", "peft"])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--precision", choices=["fp32", "bf16"], required=True)
    parser.add_argument("--switches", default="{}", help="adaptune TrainingConfig speed switches as JSON")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    plan = Plan.read(args.plan)
    plan.hparams["learning_rate"] = METHODS[args.method]["learning_rate"]
    if args.tool == "adaptune":
        out = run_adaptune(plan, args.method, args.precision, json.loads(args.switches))
    else:
        out = run_peft(plan, args.method, args.precision)
    finish(out, args.out)


if __name__ == "__main__":
    main()
