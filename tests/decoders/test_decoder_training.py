"""causal_lm end to end on the tiny Llama: training lowers held-out loss, generation scores and samples are written,
the adapter round-trips exactly, and the CLI generates and chats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lm_tools import write_alpaca
from typer.testing import CliRunner

from adaptune import Predictor, load_config, train
from adaptune.api import TrainResult
from adaptune.cli import app
from adaptune.cli_generate import chat_loop
from adaptune.generation import GenerationConfig


@pytest.fixture(scope="module")
def run(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    folder = tmp_path_factory.mktemp("sft")
    data = write_alpaca(folder / "alpaca.json", 72)
    overrides = [
        f"model.name_or_path={tiny_lm}",
        "method.name=lora",
        "method.roles=[query, value, ffn_out]",
        "method.r=16",
        "task.name=causal_lm",
        "task.holdout=12",
        "task.eval_generate=4",
        "task.generation.max_new_tokens=6",
        f"data.train={data}",
        f"data.dev={data}",
        "data.max_length=48",
        "data.batch_size=8",
        "training.epochs=8",
        "training.learning_rate=0.03",
        "training.eval_at_start=true",
        "training.progress=false",
        f"training.output_dir={folder / 'run'}",
    ]
    return train(load_config(None, overrides))


def test_training_lowers_held_out_loss(run: TrainResult) -> None:
    dev = run.results["splits"]["dev"]["headline"]
    predictor = Predictor.load(run.adapter_dir)
    examples = predictor.task.read(str(run.results["splits"]["dev"]["path"]), predictor.data, split="dev")
    assert len(examples) == 72  # the adapter's data settings do not carry the holdout file split
    trained = predictor.evaluate_examples(examples[-12:])[0].headline["loss"]
    assert trained == pytest.approx(dev["loss"], rel=1e-4)
    with torch.no_grad():  # B = 0: the LoRA update vanishes, the base model is back
        for name, param in predictor.model.adapter_parameters().items():
            if name.endswith("lora_b.weight"):
                param.zero_()
    base = predictor.evaluate_examples(examples[-12:])[0].headline["loss"]
    assert trained < 0.9 * base, (trained, base)
    start = run.results["at_start"]  # training.eval_at_start: the base model's dev figures, before step 1
    assert start["loss"] == pytest.approx(base, rel=1e-4)
    samples = (run.output_dir / "generations_dev_start.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(samples) == 4 and set(start) >= {"loss", "perplexity", "rouge_l"}
    assert dev["perplexity"] == pytest.approx(torch.tensor(dev["loss"]).exp().item(), rel=1e-5)


def test_generation_scores_and_samples_file(run: TrainResult) -> None:
    dev = run.results["splits"]["dev"]["headline"]
    assert {"exact_match", "rouge_l", "chrf", "bleu"} <= set(dev)
    lines = (run.output_dir / "generations_dev.jsonl").read_text(encoding="utf-8").splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) == 4 and set(samples[0]) == {"prompt", "reference", "generation", "finish_reason"}
    assert samples[0]["prompt"][-1]["role"] == "user"
    assert "language modelling" in (run.output_dir / "eval_dev.txt").read_text(encoding="utf-8")


def test_adapter_round_trip_is_exact(run: TrainResult) -> None:
    config = GenerationConfig(max_new_tokens=8)
    prompts = ["repeat the colour twice\n\nblue", [{"role": "user", "content": "repeat the colour twice\n\nred"}]]
    first, second = Predictor.load(run.adapter_dir), Predictor.load(run.adapter_dir)
    assert first.generate(prompts, config) == second.generate(prompts, config)
    state_a, state_b = first.model.trainable_state(), second.model.trainable_state()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not any(k.startswith("head.") for k in state_a)  # the frozen LM head is never saved
    predicted = first.predict(["repeat the colour twice\n\nblue"])
    assert (
        predicted[0]["text"]
        == first.generate(["repeat the colour twice\n\nblue"], first.task.config.generation)[0].text
    )


def test_cli_generate_reads_lines_and_jsonl(run: TrainResult, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        'repeat the colour twice\n{"prompt": "hello"}\n{"messages": [{"role": "user", "content": "hi"}]}\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["generate", str(run.adapter_dir), str(prompts), "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [("prompt" in r, "messages" in r) for r in records] == [(True, False), (True, False), (False, True)]
    assert all(r["completion_tokens"] <= 5 and r["finish_reason"] in ("stop", "length") for r in records)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n', encoding="utf-8")
    failed = CliRunner().invoke(app, ["generate", str(run.adapter_dir), str(bad)])
    assert failed.exit_code == 2 and "prompt" in failed.output


def test_chat_loop_keeps_history_and_exits(run: TrainResult) -> None:
    predictor = Predictor.load(run.adapter_dir)
    lines = iter(["repeat the colour twice\n\nblue", "", "and again", "/exit", "never read"])
    shown: list[str] = []
    config = GenerationConfig(max_new_tokens=6)
    history = chat_loop(predictor, config, "be brief", read=lambda: next(lines), write=shown.append)
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
    first_reply = predictor.generate([history[:2]], config)[0].text
    assert history[2]["content"] == first_reply
    assert "".join(shown) == f"{history[2]['content']}\n{history[4]['content']}\n"


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_free_gives_the_padded_causal_lm_loss_and_gradients(tiny_lm: Path, tmp_path: Path, side: str) -> None:
    """``training.padding_free`` on a decoder: the same loss and LoRA gradients as the padded batch."""
    from lm_tools import adapted, randomise_adapter

    from adaptune.config import TrainingConfig
    from adaptune.data.chat import ChatExample, Message
    from adaptune.padding_free import worth_packing
    from adaptune.training.fast import FastPath

    model = adapted(tiny_lm, {"name": "lora", "roles": ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]})
    randomise_adapter(model, 0.1)  # B != 0: every projection's update is in the output
    model.mark_trainable()
    tokenizer = model.info.tokenizer
    chats = [
        ChatExample((Message("user", "hi"), Message("assistant", "red"))),
        ChatExample((Message("user", "say a long list of colours"), Message("assistant", "red green blue black"))),
        ChatExample((Message("user", "one"), Message("assistant", "blue blue"))),
    ]
    encoded = [model.task.encode(c, tokenizer, [], 64) for c in chats]
    batch = model.task.collate(encoded, int(tokenizer.pad_token_id), side)
    assert worth_packing(batch["attention_mask"])

    def run(fast: FastPath) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model.task.loss(fast.forward(batch, [0, 1, 2]), batch)
        loss.backward()
        return float(loss.detach()), {
            k: p.grad.clone() for k, p in model.adapter_parameters().items() if p.grad is not None
        }

    lengths = [len(e.input_ids) for e in encoded]
    padded = run(FastPath(model, TrainingConfig(), lengths, tmp_path, side))
    packed = run(FastPath(model, TrainingConfig(padding_free=True), lengths, tmp_path, side))
    assert model.padding_free and padded[1]
    assert packed[0] == pytest.approx(padded[0], abs=1e-5)
    assert packed[1].keys() == padded[1].keys()
    for name, grad in padded[1].items():
        torch.testing.assert_close(packed[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
