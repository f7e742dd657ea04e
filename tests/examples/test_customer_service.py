"""examples/customer_service: the threshold choice, the confused pairs, and the whole example on a slice: prepare,
train the intent and out-of-scope classifiers (MiniLM) and the reply adapter (SmolLM2) briefly, evaluate, serve
both bases from one ``adaptune serve`` process and route messages over loopback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from example_kit import EXAMPLES, load_script, run
from serving_kit import serving

FOLDER = EXAMPLES / "customer_service"
evaluate = load_script(FOLDER / "evaluate.py")
prepare = load_script(FOLDER / "prepare_data.py")


def test_threshold_maximises_the_mean_of_accuracy_and_recall() -> None:
    in_conf = np.array([0.9, 0.8, 0.7, 0.3])
    in_correct = np.array([True, True, False, True])
    oos_conf = np.array([0.2, 0.5, 0.85])
    threshold, value = evaluate.choose_threshold(in_conf, in_correct, oos_conf)
    # at 0.9: in-scope 1/4 correct and kept, every oos rejected -> 0.625; at 0.7 only (2/4 + 2/3) / 2 = 0.583
    assert threshold == pytest.approx(0.9) and value == pytest.approx(0.625)
    # without the confident out-of-scope query, 0.7 wins: (2/4 + 2/2) / 2 = 0.75 against 0.625 at 0.9
    threshold, value = evaluate.choose_threshold(in_conf, in_correct, oos_conf[:2])
    assert threshold == pytest.approx(0.7) and value == pytest.approx(0.75)


def test_confused_pairs_count_both_directions() -> None:
    gold = ["a", "a", "b", "b", "c", "c", "a"]
    predicted = ["b", "b", "a", "b", "a", "c", "a"]
    assert evaluate.confused_pairs(gold, predicted, top=2) == [("a", "b", 2, 1), ("a", "c", 0, 1)]


def test_every_intent_has_a_reply(shared_data: Path) -> None:
    replies = json.loads((FOLDER / "replies.json").read_text(encoding="utf-8"))
    intents = json.loads((shared_data / "banking77" / "categories.json").read_text(encoding="utf-8"))
    assert set(replies) == set(intents) and all(len(r.split()) >= 8 for r in replies.values())


def test_the_dev_split_is_fixed_and_disjoint(shared_data: Path) -> None:
    rows = prepare.read_banking(shared_data / "banking77" / "train.csv")
    kept, held = prepare.stratified_holdout(rows, 0.1, 13)
    assert (kept, held) == prepare.stratified_holdout(rows, 0.1, 13)
    assert len(kept) + len(held) == len(rows) == 10_003
    assert {label for _, label in held} == {label for _, label in rows}


@pytest.mark.integration
def test_example_end_to_end_on_a_slice(shared_data: Path, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    slice_args = ["--per-intent", "3", "--eval-per-intent", "1", "--replies-per-intent", "1"]
    run([str(FOLDER / "prepare_data.py"), "--out", str(data), "--shared", str(shared_data), *slice_args])
    for name, extra in (("banking77", []), ("clinc150", []), ("replies", ["data.max_train_examples=16"])):
        split_files = {"banking77": "banking77", "clinc150": "clinc150", "replies": "replies"}[name]
        ext = "jsonl" if name == "replies" else "csv"
        overrides = [f"data.{s}={data / split_files / s}.{ext}" for s in ("train", "dev")]
        overrides += [] if name == "replies" else [f"data.test={data / split_files / 'test.csv'}"]
        overrides += ["training.epochs=1", f"training.output_dir={out / name}", *extra]
        if name == "replies":
            overrides += ["task.eval_generate=2", "data.max_eval_examples=4", "training.eval_at_start=false"]
        sets = [a for o in overrides for a in ("--set", o)]
        run(["-m", "adaptune.cli", "train", str(FOLDER / f"{name}.yaml"), *sets])
    common = ["--data", str(data), "--out", str(out)]
    done = run([str(FOLDER / "evaluate.py"), "banking77", *common])
    assert "BANKING77 test: accuracy" in done.stdout and (out / "banking77_confused.md").is_file()
    done = run([str(FOLDER / "evaluate.py"), "clinc150", *common])
    assert "out-of-scope recall" in done.stdout and (out / "clinc150_oos.png").stat().st_size > 10_000
    run([str(FOLDER / "evaluate.py"), "router", *common])
    threshold = json.loads((out / "router.json").read_text(encoding="utf-8"))["threshold"]
    assert 0.0 <= threshold <= 1.0
    adapters = tmp_path / "adapters"
    shutil.copytree(out / "banking77" / "adapter", adapters / "banking77-intents")
    shutil.copytree(out / "replies" / "adapter", adapters / "replies")
    bases = ["sentence-transformers/all-MiniLM-L6-v2", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    with serving(bases, adapters) as url:
        messages = ["my card still hasn't arrived", "what's the weather like in paris"]
        args = ["--server", url, "--router-file", str(out / "router.json")]
        done = run([str(FOLDER / "route.py"), *messages, *args])
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        assert [a["message"] for a in answers] == messages
        for answer in answers:
            assert answer["action"] in {"reply", "handoff"} and answer["reply"].strip()
            assert (answer["action"] == "handoff") == (answer["confidence"] < threshold)
        # a threshold above every confidence hands everything off; one of 0 answers everything
        handoffs = run([str(FOLDER / "route.py"), *messages, "--server", url, "--threshold", "1.01"])
        assert all(json.loads(line)["action"] == "handoff" for line in handoffs.stdout.splitlines())
        replies = run([str(FOLDER / "route.py"), *messages, "--server", url, "--threshold", "0"])
        assert all(json.loads(line)["action"] == "reply" for line in replies.stdout.splitlines())
