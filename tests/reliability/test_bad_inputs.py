"""The catalogue of bad inputs: each gives our own error (or a warning) naming the file, line and field it can.

Every entry of the list in issue 6, with the tests that cover it. Tests in this file are marked (here); the others
live next to the code they test.

=====================================  ==========================================================================
bad input                              tests
=====================================  ==========================================================================
empty file                             data/test_readers.py::test_empty_file, ::test_header_only_has_no_examples,
                                       data/test_readers_tokens.py::test_conll_without_sentences;
                                       (here) test_cli_empty_training_file
missing column                         data/test_readers.py::test_missing_column_lists_columns_present,
                                       ::test_jsonl_missing_field_lists_fields; (here) test_train_names_a_missing_column
extra / missing tab                    data/test_readers.py::test_tsv_extra_tab_names_file_line_and_expectation,
                                       ::test_tsv_missing_tab; (here) test_conll_line_with_an_extra_column
bad encoding (latin-1 as UTF-8)        data/test_readers.py::test_latin1_file_is_reported_as_not_utf8,
                                       ::test_utf16_file_is_reported, data/test_readers_tokens.py::test_conll_not_utf8;
                                       (here) test_cli_predict_input_not_utf8
empty text                             data/test_readers.py::test_empty_text_names_field_and_line,
                                       ::test_json_array_item_error_names_item; (here) test_predict_empty_text
label missing                          data/test_readers.py::test_empty_label_when_required, ::test_jsonl_bad_values,
                                       data/test_readers_hf.py::test_missing_label_names_the_row;
                                       (here) test_row_without_a_label_field
unknown label at eval                  core/test_train.py::test_unknown_label_at_evaluation;
                                       (here) test_unknown_dev_label_at_training, test_unknown_dev_tag_at_training,
                                       test_cli_eval_unknown_label
CoNLL line with too few columns        data/test_readers_tokens.py::test_conll_line_with_too_few_columns,
                                       ::test_conll_single_column; (here) test_cli_conll_line_with_too_few_columns
tags that break BIO                    evaluation/test_tagging.py::test_validate_tags_names_position_and_tag,
                                       ::test_validate_tags_locates_file_and_line;
                                       (here) test_broken_bio_is_an_error_when_asked, test_broken_bio_warns_by_default
BMES sequence ending in B              evaluation/test_tagging.py::test_validate_tags_names_position_and_tag;
                                       (here) test_bmes_sentence_ending_in_b
JSONL line not JSON                    data/test_readers.py::test_jsonl_bad_line, ::test_json_malformed_array,
                                       core/test_cli.py::test_predict_bad_json_line;
                                       (here) test_token_jsonl_line_not_json
JSON of the wrong shape                data/test_readers.py::test_jsonl_line_not_an_object,
                                       ::test_json_single_object_is_rejected, ::test_json_array_item_error_names_item,
                                       data/test_readers_tokens.py::test_jsonl_bad_token_rows, ::test_cluener_bad_spans;
                                       (here) test_json_array_of_lists_for_tokens
numbers and names mixed in labels      data/test_readers.py::test_mixed_numeric_and_named_labels,
                                       ::test_jsonl_mixed_int_and_named_labels,
                                       data/test_readers_tokens.py::test_conll_mixed_numeric_and_named_tags
too-long inputs                        (here) test_too_long_inputs_are_truncated_and_counted
duplicate label names                  data/test_readers.py::test_duplicate_header_column (a column named twice);
                                       (here) test_labels_differing_only_in_case_or_width,
                                       test_label_given_twice_counts_once, test_label_whitespace_is_not_a_new_label
config key misspelt                    core/test_config.py::test_misspelt_key_names_it_and_suggests,
                                       ::test_misspelt_method_key, core/test_cli.py::test_config_error_is_a_message;
                                       (here) test_misspelt_section_names_the_file
config value out of range              core/test_config.py::test_value_out_of_range_names_key_value_and_bound,
                                       ::test_bad_choice_lists_allowed_values; (here) test_cli_value_out_of_range,
                                       test_unknown_metric
adapter for another base model         core/test_train.py::test_other_base_model_is_refused;
                                       (here) test_cli_adapter_for_another_base_model, test_adapter_base_model_missing
adapter from a newer format version    core/test_train.py::test_newer_format_is_refused;
                                       (here) test_cli_info_newer_format, test_adapter_with_an_unknown_method,
                                       test_adapter_config_missing_a_field
model path missing                     core/test_train.py::test_missing_adapter_and_missing_model (the adapter);
                                       (here) test_missing_model_path, test_model_folder_without_config,
                                       test_cli_missing_model_path, test_cli_predict_missing_input_file
hub id, no hub reachable               (here) test_hub_id_without_a_hub
adapter description edited by hand     (here) test_swapped_labels_are_refused_until_resealed,
                                       test_any_edit_that_changes_predictions_is_refused
label count the head does not have     (here) test_label_count_that_the_head_does_not_have
unknown tag in a CoNLL file            (here) test_unknown_tag_names_file_line_and_field
=====================================  ==========================================================================

The second fault tour (lone surrogates, predict's input lines, typeless tags, text pairs, the server's answers,
output folders, resumed data, base fingerprints) is catalogued beside this file in ``test_bad_inputs_data.py``,
``test_bad_inputs_server.py`` and ``test_bad_inputs_training.py``; ``benchmarks/faults.py`` counts all four.

Corrupt and truncated checkpoint and adapter files: ``tests/reliability/test_kill_resume.py`` and
``core/test_train.py::test_truncated_weights_are_refused``.

Decisions recorded here: a label is stripped of surrounding whitespace, so ``"refund "`` is ``"refund"``; a label
listed twice in one cell (``"a|a"``, ``["a", "a"]``) counts once; labels that differ only in case or character
width (``"Refund"``, ``"ｒｅｆｕｎｄ"``) are refused, since they would train as separate classes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adaptune import Predictor, load_config, train
from adaptune.api import TrainResult
from adaptune.backbone import load_backbone
from adaptune.cli import app
from adaptune.config import DataConfig, ModelConfig, validate_config
from adaptune.data.readers import read_text_examples, read_token_examples
from adaptune.errors import AdapterFileError, ConfigError
from adaptune.io import CONFIG_FILE, reseal
from adaptune.registry import build_task
from bad_input_kit import cli_error, data_error, write
from bad_input_kit import short_config as config

runner = CliRunner()


def yaml_config(folder: Path, model: Path, train_file: Path, task: str = "seq_cls") -> Path:
    path = folder / "config.yaml"
    path.write_text(
        f"model: {{name_or_path: '{model}'}}\ntask: {{name: {task}}}\ndata: {{train: '{train_file}'}}\n"
        f"training: {{max_steps: 1, progress: false, output_dir: '{folder / 'run'}'}}\n",
        encoding="utf-8",
    )
    return path


INTENTS = [
    ("where is my parcel", "order_status"),
    ("I want my money back", "refund_request"),
    ("hello there", "greeting"),
    ("has my order shipped", "order_status"),
]


def intents_file(folder: Path, name: str = "train.jsonl", rows: list[tuple[str, str]] = INTENTS) -> Path:
    return write(folder, name, "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))


NER = "Alice B-PER\nlives O\nin O\nParis B-LOC\n\nBob B-PER\nSmith I-PER\nwent O\n\n"


# --- data files --------------------------------------------------------------------------------------------


def test_cli_empty_training_file(tiny_bert: Path, tmp_path: Path) -> None:
    empty = write(tmp_path, "train.csv", "\n\n")
    output = cli_error(["train", str(yaml_config(tmp_path, tiny_bert, empty))])
    assert f"{empty}: file is empty" in output


def test_train_names_a_missing_column(tiny_bert: Path, tmp_path: Path) -> None:
    path = intents_file(tmp_path)
    error = data_error(train, config(tiny_bert, tmp_path, f"data.train={path}", "data.label_column=intent"))
    assert (error.file, error.line, error.field) == (str(path), 1, "intent")
    assert "fields present: text, label" in str(error)


def test_conll_line_with_an_extra_column(tmp_path: Path) -> None:
    path = write(tmp_path, "x.conll", "EU B-ORG\nrejects O\tEXTRA\n")
    error = data_error(read_token_examples, path)
    assert (error.file, error.line) == (str(path), 2) and "expected 2 columns" in str(error) and "found 3" in str(error)


def test_row_without_a_label_field(tmp_path: Path) -> None:
    path = write(tmp_path, "n.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n')
    error = data_error(read_text_examples, path)
    assert (error.file, error.line, error.field) == (str(path), 2, "label")
    assert "no field 'label'; fields present: text" in str(error)


def test_token_jsonl_line_not_json(tiny_bert: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"tokens": ["Bob"], "tags": ["B-PER"]}\n{"tokens": ["x"], "tags": [O]}\n')
    error = data_error(train, config(tiny_bert, tmp_path, "task.name=token_cls", f"data.train={path}"))
    assert (error.file, error.line) == (str(path), 2) and "not valid JSON" in str(error)


def test_json_array_of_lists_for_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, "t.json", '[\n  {"tokens": ["EU"], "tags": ["B-ORG"]},\n  ["rejects", "O"]\n]\n')
    error = data_error(read_token_examples, path)
    assert (error.file, error.line) == (str(path), 3)
    assert "expected a JSON object, found a list (array item 1)" in str(error)


def test_too_long_inputs_are_truncated_and_counted(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [*INTENTS, ("please " * 40 + "refund me", "refund_request")]
    path = intents_file(tmp_path, rows=rows)
    result = train(config(tiny_bert, tmp_path, f"data.train={path}", "data.max_length=8", "training.max_steps=1"))
    truncation, precision = result.notes  # the data's notes, then the run's precision (tests/test_precision.py)
    assert truncation == "train: 1 of 5 examples truncated to 8 tokens (37 tokens dropped)"
    assert precision.startswith("precision fp32 (auto)")
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["notes"] == result.notes


# --- labels ------------------------------------------------------------------------------------------------


def test_unknown_dev_label_at_training(tiny_bert: Path, tmp_path: Path) -> None:
    dev = intents_file(tmp_path, "dev.jsonl", [("hi", "greeting"), ("this is awful", "complaint")])
    cfg = config(tiny_bert, tmp_path, f"data.train={intents_file(tmp_path)}", f"data.dev={dev}")
    error = data_error(train, cfg)
    assert (error.file, error.line, error.field) == (str(dev), 2, "label")
    assert "'complaint' never occurs in the training data" in str(error)


def test_unknown_dev_tag_at_training(tiny_bert: Path, tmp_path: Path) -> None:
    dev = write(tmp_path, "dev.conll", "Bob B-PER\n\nAcme B-ORG\nsells O\n")
    train_file = write(tmp_path, "t.conll", NER)
    cfg = config(tiny_bert, tmp_path, "task.name=token_cls", f"data.train={train_file}", f"data.dev={dev}")
    error = data_error(train, cfg)
    assert (error.file, error.line, error.field) == (str(dev), 3, "tag") and "'B-ORG'" in str(error)


def test_cli_eval_unknown_label(adapter: Path, tmp_path: Path) -> None:
    data = intents_file(tmp_path, "eval.jsonl", [("hi", "greeting"), ("awful", "complaint")])
    output = cli_error(["eval", str(adapter), str(data)])
    assert f"{data}:2: field 'label': label 'complaint' never occurs" in output


def test_labels_differing_only_in_case_or_width(tmp_path: Path) -> None:
    path = intents_file(tmp_path, rows=[("a", "refund"), ("b", "greeting"), ("c", "Refund")])
    error = data_error(read_text_examples, path)
    assert (error.file, error.line, error.field) == (str(path), 3, "label")
    assert "'Refund' differs from 'refund' (line 1) only in case or width" in str(error)
    wide = intents_file(tmp_path, "wide.jsonl", rows=[("a", "refund"), ("b", "ｒｅｆｕｎｄ")])
    assert data_error(read_text_examples, wide).line == 2


def test_label_given_twice_counts_once(tmp_path: Path) -> None:
    cells = write(tmp_path, "m.csv", "text,label\na,sports|sports\nb,news|sports|news\n")
    assert [e.labels for e in read_text_examples(cells, label_separator="|")] == [("sports",), ("news", "sports")]
    listed = write(tmp_path, "l.jsonl", '{"text": "a", "label": ["pos", "pos"]}\n{"text": "b", "label": "neg"}\n')
    assert [e.labels for e in read_text_examples(listed)] == [("pos",), ("neg",)]


def test_label_whitespace_is_not_a_new_label(tmp_path: Path) -> None:
    path = write(tmp_path, "w.tsv", "text\tlabel\na\trefund \nb\t refund\nc\tgreeting\n")
    assert {e.labels for e in read_text_examples(path)} == {("refund",), ("greeting",)}


# --- tag schemes -------------------------------------------------------------------------------------------

BROKEN_BIO = "Alice B-PER\nlives O\n\nin O\nParis I-LOC\n\nBob B-PER\n"


def test_broken_bio_is_an_error_when_asked(tiny_bert: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "bio.conll", BROKEN_BIO)
    cfg = config(tiny_bert, tmp_path, "task.name=token_cls", "task.invalid_tags=error", f"data.train={path}")
    error = data_error(train, cfg)
    assert (error.file, error.line) == (str(path), 4)
    assert "position 1: tag 'I-LOC' follows 'O'" in str(error)


def test_broken_bio_warns_by_default(tiny_bert: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "bio.conll", BROKEN_BIO)
    with pytest.warns(UserWarning, match="1 of 3 sentences break the IOB2 scheme") as caught:
        train(config(tiny_bert, tmp_path, "task.name=token_cls", f"data.train={path}", "training.max_steps=1"))
    message = next(str(w.message) for w in caught if "scheme" in str(w.message))
    assert f"{path}:4: position 1: tag 'I-LOC'" in message and "task.invalid_tags=error" in message


def test_bmes_sentence_ending_in_b(tiny_bert: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "t.bmes", "中 B-LOC\n国 E-LOC\n\n北 B-LOC\n京 M-LOC\n市 E-LOC\n人 B-PER\n")
    cfg = config(tiny_bert, tmp_path, "task.name=token_cls", "task.invalid_tags=error", f"data.train={path}")
    error = data_error(train, cfg)
    assert (error.file, error.line) == (str(path), 4)
    assert "the sequence ends inside an entity at 'B-PER'" in str(error)


def test_cli_conll_line_with_too_few_columns(tiny_bert: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "train.conll", "Alice B-PER\nlives\n")
    output = cli_error(["train", str(yaml_config(tmp_path, tiny_bert, path, task="token_cls"))])
    assert f"{path}:2: field 'tag column -1': expected 2 columns" in output


# --- configs and models ------------------------------------------------------------------------------------


def test_misspelt_section_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "trainig: {epochs: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: config key 'trainig' is not allowed; did you mean 'training'?")


def test_cli_value_out_of_range(tiny_bert: Path, tmp_path: Path) -> None:
    path = yaml_config(tmp_path, tiny_bert, intents_file(tmp_path))
    output = cli_error(["train", str(path), "--set", "data.batch_size=0"])
    assert "config key 'data.batch_size' = 0" in output and "greater than or equal to 1" in output


def test_unknown_metric(tiny_bert: Path, tmp_path: Path) -> None:
    data = intents_file(tmp_path)
    cfg = config(tiny_bert, tmp_path, f"data.train={data}", f"data.dev={data}", "training.metric=acc")
    with pytest.raises(ConfigError, match=r"'training.metric' = 'acc': the task reports accuracy, macro_f1"):
        train(cfg)


def test_missing_model_path(tmp_path: Path) -> None:
    cfg = config(tmp_path / "no_model", tmp_path, f"data.train={intents_file(tmp_path)}")
    with pytest.raises(ConfigError, match=f"'model.name_or_path' = '{tmp_path / 'no_model'}': no such folder"):
        train(cfg)


def test_model_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    cfg = config(tmp_path / "model", tmp_path, f"data.train={intents_file(tmp_path)}")
    with pytest.raises(ConfigError, match="'model.name_or_path' = .*: cannot load it"):
        train(cfg)


def test_cli_missing_model_path(tmp_path: Path) -> None:
    path = yaml_config(tmp_path, tmp_path / "gone", intents_file(tmp_path))
    assert f"'{tmp_path / 'gone'}': no such folder" in cli_error(["train", str(path)])


# --- adapters and prediction inputs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    folder = tmp_path_factory.mktemp("adapter_run")
    return train(config(tiny_bert, folder, f"data.train={intents_file(folder)}"))


@pytest.fixture
def adapter(trained: TrainResult, tmp_path: Path) -> Path:
    """A copy of a trained adapter that a test may damage."""
    return Path(shutil.copytree(trained.adapter_dir, tmp_path / "adapter"))


def edit_config(adapter: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    desc = json.loads((adapter / CONFIG_FILE).read_text(encoding="utf-8"))
    change(desc)
    (adapter / CONFIG_FILE).write_text(json.dumps(desc), encoding="utf-8")
    return adapter / CONFIG_FILE


def test_predict_empty_text(adapter: Path) -> None:
    error = data_error(Predictor.load(adapter).predict, ["fine", {"text": "   "}])
    assert (error.line, error.field) == (2, "text") and "non-empty" in str(error)


def test_cli_predict_input_not_utf8(adapter: Path, tmp_path: Path) -> None:
    source = write(tmp_path, "in.txt", "hello\ncafé au lait\n".encode("latin-1"))
    assert f"{source}:2: not UTF-8 (byte 0xe9)" in cli_error(["predict", str(adapter), str(source)])


def test_cli_predict_missing_input_file(adapter: Path, tmp_path: Path) -> None:
    source = tmp_path / "nope.txt"
    assert f"{source}: cannot read the file: No such file or directory" in cli_error(
        ["predict", str(adapter), str(source)]
    )


def test_cli_adapter_for_another_base_model(adapter: Path, other_tiny_bert: Path, tiny_bert: Path) -> None:
    edit_config(adapter, lambda desc: desc["base_model"].update(name_or_path=str(other_tiny_bert)))
    output = cli_error(["predict", str(adapter)], input="hello\n")
    assert (
        f"'{other_tiny_bert}' has different weights" in output and "load it onto the base it was trained on" in output
    )


def test_adapter_base_model_missing(adapter: Path, tmp_path: Path) -> None:
    edit_config(adapter, lambda desc: desc["base_model"].update(name_or_path=str(tmp_path / "moved")))
    with pytest.raises(AdapterFileError, match=f"needs its base model '{tmp_path / 'moved'}', which cannot be loaded"):
        Predictor.load(adapter)


def test_cli_info_newer_format(adapter: Path) -> None:
    path = edit_config(adapter, lambda desc: desc.update(format_version=2))
    assert f"{path} has format version 2; this adaptune reads versions up to 1" in cli_error(["info", str(adapter)])


def test_adapter_with_an_unknown_method(adapter: Path) -> None:
    path = edit_config(adapter, lambda desc: desc["method"].update(name="future_method"))
    reseal(adapter)  # as a newer adaptune would have saved it: signed, with a method this one does not know
    with pytest.raises(AdapterFileError) as err:
        Predictor.load(adapter)
    assert str(path) in str(err.value) and "'method.name' = 'future_method' is not a known method" in str(err.value)


@pytest.mark.parametrize("field", ["labels", "weights", "base_model.fingerprint"])
def test_adapter_config_missing_a_field(adapter: Path, field: str) -> None:
    parent, _, name = field.rpartition(".")
    path = edit_config(adapter, lambda desc: (desc[parent] if parent else desc).pop(name))
    with pytest.raises(AdapterFileError, match=f"{path}: field '{field}' is missing"):
        Predictor.load(adapter)


# --- an edited description never loads silently wrong (issue 26) ------------------------------------------------


def test_swapped_labels_are_refused_until_resealed(adapter: Path, trained: TrainResult) -> None:
    labels = list(trained.model.labels)
    path = edit_config(adapter, lambda desc: desc.update(labels=labels[::-1]))
    with pytest.raises(AdapterFileError) as err:
        Predictor.load(adapter)
    message = str(err.value)
    assert str(path) in message and f"field 'labels': saved {json.dumps(labels, separators=(',', ':'))}" in message
    assert f"adaptune info {adapter} --reseal" in message
    assert "edited_since_saved" in runner.invoke(app, ["info", str(adapter)]).output
    done = runner.invoke(app, ["info", str(adapter), "--reseal"])
    assert done.exit_code == 0 and "re-signed field 'labels'" in done.output
    assert Predictor.load(adapter).labels == labels[::-1]  # an explicit, re-signed edit is the user's


@pytest.mark.parametrize(("field", "value"), [("pooling", "max"), ("max_length", 8), ("task", {"name": "seq_cls"})])
def test_any_edit_that_changes_predictions_is_refused(adapter: Path, field: str, value: Any) -> None:
    edit_config(adapter, lambda desc: desc.update({field: value}))
    with pytest.raises(AdapterFileError, match=f"was edited after the adapter was saved: field '{field}'"):
        Predictor.load(adapter)


def test_label_count_that_the_head_does_not_have(adapter: Path, trained: TrainResult) -> None:
    labels = [*trained.model.labels, "extra"]
    path = edit_config(adapter, lambda desc: desc.update(labels=labels))
    with pytest.raises(AdapterFileError, match="field 'labels'"):
        Predictor.load(adapter)  # the seal first
    reseal(adapter)  # signed, yet the tensors cannot hold it: a clear refusal, not torch's size mismatch
    n = len(labels)
    with pytest.raises(AdapterFileError) as err:
        Predictor.load(adapter)
    message = str(err.value)
    assert (
        str(path) in message
        and f"field 'labels' lists {n} labels, but adapter.safetensors holds a head for {n - 1}" in message
    )
    assert "size mismatch" not in message


def test_unknown_tag_names_file_line_and_field(tmp_path: Path) -> None:
    data = write(tmp_path, "train.conll", b"EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn GARBAGE\n")
    task = build_task(validate_config({"task": {"name": "token_cls"}}).task)
    error = data_error(task.read, str(data), DataConfig(), split="train")
    assert (error.file, error.line, error.field) == (str(data), 5, "tag") and "'GARBAGE'" in str(error)


def test_hub_id_without_a_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine with no hub
    with pytest.raises(ConfigError) as err:
        load_backbone(ModelConfig(name_or_path="no-such-org/no-such-model"))
    message = str(err.value)
    assert "no model hub can be reached" in message and "sentence-transformers/all-MiniLM-L6-v2" in message
    assert "intfloat/multilingual-e5-small" in message and "model.name_or_path=FOLDER" in message


def test_an_adapter_saved_before_sealing_still_loads(adapter: Path, trained: TrainResult) -> None:
    import hashlib

    from safetensors.torch import load_file, save

    weights = adapter / "adapter.safetensors"
    blob = save(load_file(weights), metadata={"format": "pt"})  # what adaptune wrote before the seal existed
    weights.write_bytes(blob)
    edit_config(adapter, lambda desc: desc["weights"].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest()))
    assert Predictor.load(adapter).predict(["hello"])[0]["label"] in trained.model.labels
    assert reseal(adapter) == ["no seal yet: sealed now"] and reseal(adapter) == []
