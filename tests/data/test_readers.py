"""Text-classification readers: csv, tsv, jsonl and json files, format detection, and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptune.data.readers import detect_format, read_text_examples, read_token_examples
from adaptune.data.records import TextExample
from adaptune.errors import ConfigError, DataError


def write(directory: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``directory/name`` and return the path."""
    path = directory / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def data_error(call: object, *args: object, **kwargs: object) -> DataError:
    """Call a reader that must raise :class:`DataError`, and return the error."""
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


# --- csv -------------------------------------------------------------------------------------------------


def test_csv_round_trip_with_quoting(tmp_path: Path) -> None:
    path = write(tmp_path, "train.csv", 'text,label\n"hello, world",pos\n"two\nlines",neg\nplain ,  pos \n')
    examples = read_text_examples(path)
    assert examples == [
        TextExample("hello, world", ("pos",), None, f"{path}:2"),
        TextExample("two\nlines", ("neg",), None, f"{path}:3"),
        TextExample("plain", ("pos",), None, f"{path}:5"),
    ]


def test_csv_integer_labels_stay_digit_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\na,0\nb,1\nc,10\n")
    assert [example.labels for example in read_text_examples(path)] == [("0",), ("1",), ("10",)]


def test_csv_text_pair_and_custom_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "pairs.csv", "premise,hypothesis,gold\nA man sleeps.,A person rests.,entailment\n")
    (example,) = read_text_examples(path, text_column="premise", text_pair_column="hypothesis", label_column="gold")
    assert (example.text, example.text_pair, example.labels) == ("A man sleeps.", "A person rests.", ("entailment",))


def test_csv_multi_label_separator(tmp_path: Path) -> None:
    path = write(tmp_path, "multi.csv", "text,label\nx,sports|politics\ny, news | \n")
    examples = read_text_examples(path, label_separator="|")
    assert [example.labels for example in examples] == [("sports", "politics"), ("news",)]


def test_csv_headerless_with_column_names(tmp_path: Path) -> None:
    path = write(tmp_path, "ag.csv", '"3","Title one","Body one"\n"4","Title two","Body two"\n')
    examples = read_text_examples(
        path, column_names=["label", "title", "body"], text_column="title", text_pair_column="body"
    )
    assert [(e.text, e.text_pair, e.labels, e.source) for e in examples] == [
        ("Title one", "Body one", ("3",), f"{path}:1"),
        ("Title two", "Body two", ("4",), f"{path}:2"),
    ]


def test_csv_strips_bom_and_handles_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,label\r\nhi,a\r\n")
    assert read_text_examples(path) == [TextExample("hi", ("a",), None, f"{path}:2")]


def test_csv_unnamed_index_column_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "pandas.csv", ",text,label\n0,hi,a\n")
    assert read_text_examples(path)[0].text == "hi"


def test_csv_unlabelled(tmp_path: Path) -> None:
    path = write(tmp_path, "test.csv", "id,text\n1,hello\n")
    assert read_text_examples(path, require_labels=False)[0].labels == ()
    assert read_text_examples(path, label_column=None)[0].labels == ()
    labelled = write(tmp_path, "partial.csv", "text,label\nhello,\nbye,b\n")
    assert [e.labels for e in read_text_examples(labelled, require_labels=False)] == [(), ("b",)]


# --- tsv -------------------------------------------------------------------------------------------------


def test_tsv_sst2_style(tmp_path: Path) -> None:
    content = 'sentence\tlabel\nit \'s a " charming journey . \t1\n"unbalanced quote \t0\n'
    path = write(tmp_path, "dev.tsv", content)
    examples = read_text_examples(path, text_column="sentence")
    assert [(e.text, e.labels) for e in examples] == [
        ("it 's a \" charming journey .", ("1",)),
        ('"unbalanced quote', ("0",)),
    ]


def test_tsv_extra_tab_names_file_line_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.tsv", "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    error = data_error(read_text_examples, path, text_column="sentence")
    assert (error.file, error.line) == (str(path), 3)
    assert "bad.tsv:3" in str(error)
    assert "expected 2 tab-separated fields" in str(error) and "found 3" in str(error)


def test_tsv_missing_tab(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.tsv", "sentence\tlabel\nno tab here\n")
    error = data_error(read_text_examples, path, text_column="sentence")
    assert error.line == 2 and "found 1" in str(error)


def test_tab_extension_is_tsv(tmp_path: Path) -> None:
    path = write(tmp_path, "x.tab", "text\tlabel\na\tb\n")
    assert read_text_examples(path)[0].labels == ("b",)


# --- errors shared by csv and tsv ------------------------------------------------------------------------


def test_missing_column_lists_columns_present(tmp_path: Path) -> None:
    path = write(tmp_path, "cols.csv", "title,category\nhi,a\n")
    error = data_error(read_text_examples, path)
    assert error.field == "text" and error.line == 1
    assert "columns present: title, category" in str(error)
    assert "column_names" in str(error)
    error = data_error(read_text_examples, path, text_column="title")
    assert error.field == "label"


def test_empty_text_names_field_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "e.tsv", "text\tlabel\nfine\t1\n   \t0\n")
    error = data_error(read_text_examples, path)
    assert (error.line, error.field) == (3, "text")
    assert "field 'text'" in str(error) and "empty" in str(error)


def test_empty_label_when_required(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "text,label\nfine,1\nno label,\n")
    error = data_error(read_text_examples, path)
    assert (error.file, error.line, error.field) == (str(path), 3, "label")


def test_mixed_numeric_and_named_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "mix.csv", "text,label\na,0\nb,1\nc,positive\nd,1\n")
    error = data_error(read_text_examples, path)
    assert (error.file, error.line, error.field) == (str(path), 4, "label")
    assert "mix numbers and names" in str(error) and "'positive'" in str(error)


def test_latin1_file_is_reported_as_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.csv", "text,label\nok,a\ncafé,b\n".encode("latin-1"))
    error = data_error(read_text_examples, path)
    assert error.line == 3 and "latin.csv:3" in str(error)
    assert "not UTF-8" in str(error) and "re-encode" in str(error)


@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    error = data_error(read_text_examples, write(tmp_path, "empty.csv", content))
    assert "file is empty" in str(error) and "empty.csv" in str(error)


def test_header_only_has_no_examples(tmp_path: Path) -> None:
    error = data_error(read_text_examples, write(tmp_path, "h.csv", "text,label\n"))
    assert "no examples" in str(error)


def test_duplicate_header_column(tmp_path: Path) -> None:
    error = data_error(read_text_examples, write(tmp_path, "dup.csv", "text,text,label\na,b,c\n"))
    assert error.line == 1 and "'text' appears twice" in str(error)


def test_malformed_csv(tmp_path: Path) -> None:
    error = data_error(read_text_examples, write(tmp_path, "m.csv", 'text,label\n"open quote,1\n'))
    assert error.line == 2 and "malformed CSV" in str(error)


def test_utf16_file_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "u16.csv", "text,label\nhi,a\n".encode("utf-16-le"))
    error = data_error(read_text_examples, path)
    assert error.line == 1 and "NUL bytes" in str(error) and "UTF-16" in str(error)


# --- jsonl -----------------------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path: Path) -> None:
    lines = [
        {"text": " hello ", "label": "pos"},
        {"text": "n", "label": "neg"},
        {"text": "multi", "label": ["a", "b"]},
        {"text": "pair", "label": "x", "other": {"ignored": True}},
    ]
    content = json.dumps(lines[0]) + "\n\n" + "\n".join(json.dumps(line) for line in lines[1:]) + "\n"
    examples = read_text_examples(write(tmp_path, "d.jsonl", content), require_labels=True)
    assert [(e.text, e.labels, e.source.rsplit(":", 1)[1]) for e in examples] == [
        ("hello", ("pos",), "1"),
        ("n", ("neg",), "3"),
        ("multi", ("a", "b"), "4"),
        ("pair", ("x",), "5"),
    ]


def test_jsonl_integer_labels_become_digit_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "i.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1.0}\n')
    assert [e.labels for e in read_text_examples(path)] == [("0",), ("1",)]


def test_jsonl_text_pair_and_separator(tmp_path: Path) -> None:
    path = write(tmp_path, "p.ndjson", '{"q": "a?", "p": "b.", "y": "u;v"}\n')
    (example,) = read_text_examples(path, text_column="q", text_pair_column="p", label_column="y", label_separator=";")
    assert (example.text, example.text_pair, example.labels) == ("a?", "b.", ("u", "v"))


def test_jsonl_bad_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.jsonl", '{"text": "a", "label": "b"}\n{"text": oops}\n')
    error = data_error(read_text_examples, path)
    assert error.line == 2 and "bad.jsonl:2" in str(error) and "not valid JSON" in str(error)


def test_jsonl_line_not_an_object(tmp_path: Path) -> None:
    error = data_error(read_text_examples, write(tmp_path, "a.jsonl", '["text", "label"]\n'))
    assert error.line == 1 and "expected a JSON object, found a list" in str(error)


def test_jsonl_missing_field_lists_fields(tmp_path: Path) -> None:
    error = data_error(read_text_examples, write(tmp_path, "f.jsonl", '{"title": "a", "label": 1}\n'))
    assert error.field == "text" and "fields present: title, label" in str(error)


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"text": 5, "label": "a"}, "text", "expected text, found a number"),
        ({"text": "a", "label": {"x": 1}}, "label", "found an object"),
        ({"text": "a", "label": True}, "label", "found a boolean"),
        ({"text": "a", "label": 0.5}, "label", "found a number"),
        ({"text": "a", "label": None}, "label", "empty label"),
        ({"text": "a", "label": []}, "label", "empty label"),
    ],
)
def test_jsonl_bad_values(tmp_path: Path, row: dict[str, object], field: str, words: str) -> None:
    error = data_error(read_text_examples, write(tmp_path, "v.jsonl", json.dumps(row) + "\n"))
    assert (error.line, error.field) == (1, field) and words in str(error)


def test_jsonl_mixed_int_and_named_labels(tmp_path: Path) -> None:
    content = '{"text": "a", "label": "pos"}\n{"text": "b", "label": 1}\n'
    error = data_error(read_text_examples, write(tmp_path, "m.jsonl", content))
    assert (error.line, error.field) == (2, "label")


# --- json ------------------------------------------------------------------------------------------------


def test_json_array_locates_items_by_line(tmp_path: Path) -> None:
    items = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    path = write(tmp_path, "arr.json", json.dumps(items, indent=2))
    examples = read_text_examples(path)
    assert [(e.text, e.labels, e.source) for e in examples] == [
        ("a", ("x",), f"{path}:2"),
        ("b", ("y",), f"{path}:6"),
    ]


def test_json_array_item_error_names_item(tmp_path: Path) -> None:
    path = write(tmp_path, "arr.json", '[\n  {"text": "a", "label": "x"},\n  {"text": "", "label": "y"}\n]\n')
    error = data_error(read_text_examples, path)
    assert (error.line, error.field) == (3, "text") and "array item 1" in str(error)
    path = write(tmp_path, "arr2.json", '[{"text": "a", "label": "x"},\n 7]')
    error = data_error(read_text_examples, path)
    assert error.line == 2 and "array item 1" in str(error) and "found a number" in str(error)


@pytest.mark.parametrize(
    ("content", "line"),
    [('[\n{"text": "a"},\n{"text": }\n]', 3), ('[{"text": "a"}\n{"text": "b"}]', 2), ("[1]\n[2]", 2)],
)
def test_json_malformed_array(tmp_path: Path, content: str, line: int) -> None:
    error = data_error(read_text_examples, write(tmp_path, "bad.json", content))
    assert error.line == line and "not valid JSON" in str(error)


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "tnews.json", '{"sentence": "s1", "label": "102"}\n{"sentence": "s2", "label": "110"}\n')
    assert detect_format(path) == "jsonl"
    examples = read_text_examples(path, text_column="sentence")
    assert [(e.text, e.labels) for e in examples] == [("s1", ("102",)), ("s2", ("110",))]


def test_json_single_object_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "clinc.json", json.dumps({"train": [["hi", "greet"]], "val": []}, indent=2))
    assert detect_format(path) == "json"
    error = data_error(read_text_examples, path)
    assert "array of objects" in str(error) and "keys: train, val" in str(error)


# --- format selection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", "csv"),
        ("a.TSV", "tsv"),
        ("a.tab", "tsv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.conll", "conll"),
        ("a.txt", "conll"),
        ("a.iob", "conll"),
        ("a.bio", "conll"),
        ("a.char.bmes", "bmes"),
        ("a.bioes", "bmes"),
    ],
)
def test_detect_format_by_extension(tmp_path: Path, name: str, expected: str) -> None:
    assert detect_format(tmp_path / name) == expected


def test_detect_format_json_and_folder(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "a.json", '[{"text": "x"}]')) == "json"
    assert detect_format(write(tmp_path, "b.json", '{"text": "x"}\n')) == "jsonl"
    assert detect_format(tmp_path) == "hf"


def test_unknown_extension(tmp_path: Path) -> None:
    error = data_error(detect_format, tmp_path / "data.xml")
    assert "'.xml'" in str(error) and "format=" in str(error)


def test_missing_file(tmp_path: Path) -> None:
    error = data_error(read_text_examples, tmp_path / "nope.csv")
    assert "nope.csv" in str(error) and "no such file" in str(error)


def test_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "data.txt", "text\tlabel\na\tb\n")
    assert read_text_examples(path, format="tsv")[0].labels == ("b",)


def test_format_for_the_other_task_is_rejected(tmp_path: Path) -> None:
    error = data_error(read_text_examples, write(tmp_path, "a.conll", "w O\n"))
    assert "conll files do not hold text classification examples" in str(error)
    error = data_error(read_token_examples, write(tmp_path, "a.csv", "text,label\na,b\n"))
    assert "csv files do not hold token classification examples" in str(error)


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", '{"text": "a", "label": "b"}\n')
    with pytest.raises(ConfigError, match="format"):
        read_text_examples(path, format="xml")
    with pytest.raises(ConfigError, match="column_names"):
        read_text_examples(path, column_names=["text", "label"])
