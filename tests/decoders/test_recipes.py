"""Text-to-text recipes of causal_lm: translation and summarisation rows become instruction records, ShareGPT
dialogues train every reply and score each one, the generation metrics equal rouge-score's and sacrebleu's, and
the shipped recipe configs train on the tiny Llama with their metrics reported before and after training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from adaptune import load_config, train
from adaptune.cli import BUNDLED_CONFIGS, app
from adaptune.config import DataConfig
from adaptune.data.chat import Message
from adaptune.data.recipes import reply_prompts
from adaptune.errors import ConfigError
from adaptune.evaluation.generation import generation_scores
from adaptune.tasks.causal_lm import IGNORE, CausalLM, CausalLMConfig
from bad_input_kit import data_error, jsonl, write

PAIRS = [("good morning", "bonjour"), ("thank you", "merci"), ("see you soon", "à bientôt")]
DIALOGUE = {
    "conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "human", "value": "hello there"},
        {"from": "gpt", "value": "hi friend"},
        {"from": "human", "value": "what is two plus two"},
        {"from": "gpt", "value": "four"},
    ]
}


def _task(**kw: object) -> CausalLM:
    return CausalLM(CausalLMConfig(**kw))


def _translation(**kw: object) -> CausalLM:
    return _task(recipe="translation", source_language="English", target_language="French", **kw)


def test_translation_rows_become_instruction_records(tmp_path: Path) -> None:
    path = jsonl(tmp_path, "pairs.jsonl", [{"source": s, "target": t} for s, t in PAIRS])
    examples = _translation().read(str(path), DataConfig(), split="train")
    assert [ex.messages for ex in examples] == [
        (Message("user", f"Translate from English to French:\n\n{s}"), Message("assistant", t)) for s, t in PAIRS
    ]
    assert examples[1].source == f"{path}:2" and examples[2].reference == "à bientôt"
    only_target = _task(recipe="translation", target_language="German").read(str(path), DataConfig(), split="dev")
    assert only_target[0].prompt[0].content == "Translate to German:\n\ngood morning"


def test_translation_csv_and_tsv_with_named_columns(tmp_path: Path) -> None:
    csv = write(tmp_path, "pairs.csv", 'id,en,fr\n1,good morning,bonjour\n2,"thank you, friend",merci\n')
    tsv = write(tmp_path, "pairs.tsv", "en\tfr\ngood morning\tbonjour\nthank you, friend\tmerci\n")
    data = DataConfig(text_column="en", label_column="fr")
    task = _translation(prompt_template="{source_language} -> {target_language}: {source}")
    for path in (csv, tsv):
        first, second = task.read(str(path), data, split="train")
        assert first.messages == (Message("user", "English -> French: good morning"), Message("assistant", "bonjour"))
        assert second.prompt[0].content == "English -> French: thank you, friend" and second.source == f"{path}:3"


def test_summarisation_rows_and_the_text_field(tmp_path: Path) -> None:
    rows = [{"document": "A long text about cats.", "summary": "Cats."}]
    examples = _task(recipe="summarisation").read(str(jsonl(tmp_path, "d.jsonl", rows)), DataConfig(), split="dev")
    assert examples[0].messages == (
        Message("user", "Summarize the following text:\n\nA long text about cats."),
        Message("assistant", "Cats."),
    )
    plain = jsonl(tmp_path, "t.jsonl", [{"text": "Dogs bark at night.", "summary": "Dogs bark."}])
    (example,) = _task(recipe="summarisation", prompt_template="TL;DR {source}").read(
        str(plain), DataConfig(), split="dev"
    )
    assert example.messages == (Message("user", "TL;DR Dogs bark at night."), Message("assistant", "Dogs bark."))


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"source": "good morning"}, "target", "no field 'target'"),
        ({"source": "good morning", "target": "  "}, "target", "non-empty"),
        ({"source": 3, "target": "trois"}, "source", "a number"),
        ({"target": "bonjour"}, "source", "no field 'source'"),
    ],
)
def test_bad_pair_rows_name_file_line_and_field(tmp_path: Path, row: dict, field: str, words: str) -> None:
    path = jsonl(tmp_path, "bad.jsonl", [{"source": "hello", "target": "salut"}, row])
    err = data_error(_translation().read, str(path), DataConfig(), split="train")
    assert (err.file, err.line, err.field) == (str(path), 2, field) and words in err.message


def test_bad_recipe_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="task.target_language' is required"):
        load_config(None, ["task.name=causal_lm", "task.recipe=translation"])
    with pytest.raises(ConfigError, match=r"no \{source\} placeholder"):
        load_config(None, ["task.name=causal_lm", "task.recipe=summarisation", "task.prompt_template=Summarise"])
    with pytest.raises(ConfigError, match=r"unknown placeholder \{text\}"):
        load_config(None, ["task.name=causal_lm", "task.recipe=summarisation", "task.prompt_template=Summarise {text}"])
    with pytest.raises(ConfigError, match="task.target_language' is required: task.prompt_template uses"):
        load_config(
            None,
            ["task.name=causal_lm", "task.recipe=summarisation", "task.prompt_template=To {target_language} {source}"],
        )
    with pytest.raises(ConfigError, match="only for task.recipe translation or summarisation"):
        load_config(None, ["task.name=causal_lm", "task.recipe=dialogue", "task.target_language=French"])


def test_recipe_metrics_and_prediction_inputs() -> None:
    assert _translation().config.generation_metrics == ("bleu", "chrf")
    assert _task(recipe="summarisation").config.generation_metrics == ("rouge_1", "rouge_2", "rouge_l")
    assert _task(recipe="dialogue", metrics=["chrf"]).config.generation_metrics == ("chrf",)
    assert _task().config.generation_metrics == ("exact_match", "rouge_l", "chrf", "bleu")
    prompt = _translation().parse_input({"source": " good morning "})  # predict/serve: a row's text gets the prompt
    assert prompt.messages == (Message("user", "Translate from English to French:\n\ngood morning"),)


def test_sharegpt_dialogue_trains_every_reply_and_scores_each(tmp_path: Path, tiny_lm: Path) -> None:
    path = jsonl(tmp_path, "chat.jsonl", [DIALOGUE])
    (example,) = _task(recipe="dialogue").read(str(path), DataConfig(), split="train")
    assert [m.role for m in example.messages] == ["system", "user", "assistant", "user", "assistant"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    enc = _task(recipe="dialogue").encode(example, tokenizer, [], 256)
    trained = tokenizer.decode([t for t in enc.target if t != IGNORE])
    assert trained == "hi friend <|im_end|> four <|im_end|>"  # the gpt turns only, each with its end of turn
    replies = reply_prompts(example)
    assert [(len(history), reference) for history, reference in replies] == [(2, "hi friend"), (4, "four")]
    assert replies[1][0][-1] == Message("user", "what is two plus two")


ENGLISH = (
    ["the cat sat on the mat", "a quick brown fox jumps", "hello world"],
    ["the cat is on the mat", "the quick brown fox jumped", "Hello, world!"],
)
CHINESE = (["今天天气很好。", "我喜欢吃苹果和香蕉", "他明天去北京"], ["今天天气不错。", "我喜欢吃香蕉", "他去北京了"])


class _Spaces:
    """Whitespace tokeniser: rouge-score's scoring applied to text already split into characters."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


@pytest.mark.parametrize(("refs", "gens"), [ENGLISH, CHINESE], ids=["english", "chinese"])
def test_metrics_equal_rouge_score_and_sacrebleu(refs: list[str], gens: list[str]) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    chinese = refs is CHINESE[0]
    got = generation_scores(refs, gens, ["rouge_1", "rouge_2", "rouge_l", "bleu", "chrf", "exact_match"])
    assert list(got) == ["rouge_1", "rouge_2", "rouge_l", "bleu", "chrf", "exact_match"]
    if chinese:  # per character: the reference splits every character off and scores with rouge-score
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Spaces())
        pairs = [(" ".join(r), " ".join(g)) for r, g in zip(refs, gens, strict=True)]
    else:
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
        pairs = list(zip(refs, gens, strict=True))
    rows = [scorer.score(r, g) for r, g in pairs]
    for ours, theirs in (("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l", "rougeL")):
        assert got[ours] == pytest.approx(sum(row[theirs].fmeasure for row in rows) / len(rows), abs=1e-12)
    bleu = sacrebleu.corpus_bleu(gens, [refs], tokenize="zh" if chinese else "13a").score
    assert got["bleu"] == pytest.approx(bleu, abs=1e-9) and got["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(gens, [refs]).score, abs=1e-9
    )
    assert got["exact_match"] == 0.0 and 0.0 < got["rouge_2"] < got["rouge_1"] < 1.0
    if chinese:  # rouge-score's own tokeniser drops CJK characters: the per-character scores are not its zeros
        assert rouge_scorer.RougeScorer(["rouge1"]).score(refs[0], gens[0])["rouge1"].fmeasure == 0.0


def test_metrics_refuse_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown generation metric"):
        generation_scores(["a"], ["a"], ["meteor"])
    assert generation_scores(["a b"], ["a b"], ["exact_match", "rouge_2"]) == {"exact_match": 1.0, "rouge_2": 1.0}


def _recipe_data(folder: Path, recipe: str) -> tuple[Path, Path]:
    colours = ["red", "green", "blue", "yellow", "black", "white"]
    if recipe == "dialogue":
        rows = [
            {
                "conversations": [
                    {"from": "human", "value": f"say {c}"},
                    {"from": "gpt", "value": c},
                    {"from": "human", "value": "again"},
                    {"from": "gpt", "value": f"{c} {c}"},
                ]
            }
            for c in colours * 3
        ]
    else:
        names = ("source", "target") if recipe == "translation" else ("document", "summary")
        rows = [{names[0]: f"the colour {c} and more words", names[1]: c} for c in colours * 3]
    return jsonl(folder, "train.jsonl", rows[:12]), jsonl(folder, "dev.jsonl", rows[12:])


RECIPE_METRICS = {
    "translation": {"bleu", "chrf"},
    "summarisation": {"rouge_1", "rouge_2", "rouge_l"},
    "dialogue": {"rouge_l", "bleu", "chrf"},
}


@pytest.mark.parametrize("recipe", sorted(RECIPE_METRICS))
def test_shipped_recipe_config_reports_its_metrics_before_and_after(recipe: str, tiny_lm: Path, tmp_path: Path) -> None:
    train_file, dev_file = _recipe_data(tmp_path, recipe)
    overrides = [
        f"model.name_or_path={tiny_lm}",
        f"data.train={train_file}",
        f"data.dev={dev_file}",
        "data.max_length=64",
        "task.eval_generate=3",
        "task.generation.max_new_tokens=4",
        "training.max_steps=3",
        "training.progress=false",
        f"training.output_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(BUNDLED_CONFIGS / f"smollm2_{recipe}.yaml", overrides)
    assert cfg.task.recipe == recipe and cfg.training.eval_at_start
    run = train(cfg)
    wanted = RECIPE_METRICS[recipe]
    before, after = run.results["at_start"], run.results["splits"]["dev"]["headline"]
    assert wanted <= set(before) and wanted <= set(after) and "exact_match" not in after
    assert (run.output_dir / "generations_dev_start.jsonl").is_file()
    samples = (run.output_dir / "generations_dev.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(samples) == 3
    table = (run.output_dir / "eval_dev.txt").read_text(encoding="utf-8")
    assert all(metric in table for metric in wanted)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(run.adapter_dir), str(dev_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    headline = json.loads(result.stdout.strip().splitlines()[-1])
    assert wanted <= set(headline)
    for metric in wanted:  # the same adapter on the same held-out file: the figures of the training run
        assert headline[metric] == pytest.approx(after[metric], abs=1e-6)
    assert len((out / "generations_dev.jsonl").read_text(encoding="utf-8").splitlines()) == 3
