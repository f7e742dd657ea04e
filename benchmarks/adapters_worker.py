"""train_speed worker for AdapterHub ``adapters`` (run with .venv-adapters/bin/python: it pins transformers 4.57).

    .venv-adapters/bin/python benchmarks/adapters_worker.py --plan PLAN.json --method lora --precision bf16 \\
        --out RESULT.json

Loads MiniLM from its folder (the plan's ``model_dir``), adds the method's AdapterHub counterpart (``seq_bn`` for
bottleneck, ``LoRAConfig`` on q/v, ``PrefixTuningConfig`` with the MLP; ``leave_out`` for the top-2 variants),
puts the shared mean-pooling head on top and replays the plan. Never imports adaptune.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_common import (
    BOTTLENECK,
    LORA,
    METHODS,
    PREFIX,
    MeanPoolHead,
    Plan,
    base_method,
    finish,
    folder_bytes,
    infer,
    set_threads,
    top_layers,
    train_peer,
)

NAME = "bench"


def adapter_config(method: str, num_layers: int) -> Any:
    """The AdapterHub config that matches adaptune's method (None for head-only)."""
    from adapters import LoRAConfig, PrefixTuningConfig, SeqBnConfig

    top = top_layers(method, num_layers)
    leave_out = [i for i in range(num_layers) if top is not None and i not in top]
    kind = base_method(method)
    if kind == "lora":
        return LoRAConfig(
            r=LORA["r"], alpha=int(LORA["alpha"]), dropout=0.0, attn_matrices=["q", "v"], leave_out=leave_out
        )
    if kind == "bottleneck":
        return SeqBnConfig(
            reduction_factor=BOTTLENECK["reduction_factor"], non_linearity=BOTTLENECK["activation"], leave_out=leave_out
        )
    if kind == "prefix":
        return PrefixTuningConfig(
            prefix_length=PREFIX["num_virtual_tokens"], bottleneck_size=PREFIX["hidden"], flat=False
        )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--precision", choices=["fp32", "bf16"], required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    set_threads(args.threads)
    import adapters
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.set_verbosity_error()
    plan = Plan.read(args.plan)
    plan.hparams["learning_rate"] = METHODS[args.method]["learning_rate"]
    torch.manual_seed(plan.hparams["seed"])
    model = AutoModel.from_pretrained(plan.model_dir, add_pooling_layer=False, torch_dtype=torch.float32)
    model.requires_grad_(False)
    config = adapter_config(args.method, model.config.num_hidden_layers)
    if config is not None:
        adapters.init(model)
        model.add_adapter(NAME, config=config)
        model.train_adapter(NAME)
    head = MeanPoolHead(model.config.hidden_size, plan.num_labels)
    model.train()
    head.train()

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return head(hidden, batch["attention_mask"])  # type: ignore[no-any-return]

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + list(head.named_parameters())
    out = train_peer(forward, params, plan, args.precision)
    with tempfile.TemporaryDirectory() as folder:
        if config is not None:
            model.save_adapter(folder, NAME)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(Path(folder) / "head.safetensors"))
        out.adapter_bytes = folder_bytes(folder)
    model.eval()
    head.eval()
    if base_method(args.method) == "lora":
        model.merge_adapter(NAME)
        out.notes.append("inference with the LoRA merged (merge_adapter)")
    out.dev_metric, out.infer_examples_per_s = infer(forward, plan, args.precision)
    out.notes.append(f"adapters {adapters.__version__}, transformers {transformers.__version__}")
    finish(out, args.out)


if __name__ == "__main__":
    main()
