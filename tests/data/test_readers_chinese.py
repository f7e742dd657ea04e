"""Chinese data as the community publishes it: CLUE JSON Lines (TNEWS), ERNIE/LUGE TSV (ChnSentiCorp), and
splitting raw Chinese text for prediction the way character-level training data is split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptune.config import validate_config
from adaptune.data.readers import read_text_examples
from adaptune.data.records import (
    TokenExample,
    is_cjk,
    is_cjk_script,
    letters_in_cjk_of,
    token_example_from_text,
    token_example_from_words,
)
from adaptune.errors import DataError
from adaptune.registry import build_task

TNEWS_ROWS = [
    {
        "label": "102",
        "label_desc": "news_entertainment",
        "sentence": "江疏影甜甜圈自拍，迷之角度竟这么好看，美吸引一切事物",
        "keywords": "江疏影,美少女,经纪人,甜甜圈",
    },
    {
        "label": "110",
        "label_desc": "news_military",
        "sentence": "以色列大规模空袭开始！伊朗多个军事目标遭遇打击，誓言对等反击",
        "keywords": "",
    },
    {"label": "102", "label_desc": "news_entertainment", "sentence": "“双11”晚会 明星阵容曝光 ", "keywords": ""},
]
MIXED = "张三2019年在Google北京分公司工作，电话13800138000。"


def jsonl(directory: Path, name: str, rows: list[dict[str, object]]) -> Path:
    """Write ``rows`` as JSON Lines with Chinese unescaped, as the CLUE files are."""
    path = directory / name
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write(directory: Path, name: str, content: str) -> Path:
    """Write ``content`` as UTF-8 to ``directory/name`` and return the path."""
    path = directory / name
    path.write_text(content, encoding="utf-8", newline="")
    return path


def data_error(path: Path, **kwargs: object) -> DataError:
    """Read text examples from ``path``, which must raise :class:`DataError`, and return the error."""
    with pytest.raises(DataError) as info:
        read_text_examples(path, **kwargs)  # type: ignore[arg-type]
    return info.value


# --- CLUE JSON Lines (TNEWS) ------------------------------------------------------------------------------


def test_tnews_layout_reads_sentence_and_label_names(tmp_path: Path) -> None:
    path = jsonl(tmp_path, "train.json", TNEWS_ROWS)
    examples = read_text_examples(path)
    assert [e.labels for e in examples] == [("news_entertainment",), ("news_military",), ("news_entertainment",)]
    assert examples[0].text == TNEWS_ROWS[0]["sentence"]
    assert examples[2].text == "“双11”晚会 明星阵容曝光" and examples[2].source == f"{path}:3"


def test_tnews_through_the_default_config(tmp_path: Path) -> None:
    """``data.train=.../train.json`` and nothing else: the keys' defaults find the text and the names."""
    path = jsonl(tmp_path, "train.json", TNEWS_ROWS)
    cfg = validate_config({"task": {"name": "seq_cls"}, "data": {"train": str(path)}})
    task = build_task(cfg.task)
    examples = task.read(str(path), cfg.data, split="train")
    assert task.label_names(examples) == ["news_entertainment", "news_military"]


def test_clue_label_des_spelling_and_integer_ids(tmp_path: Path) -> None:
    rows = [
        {"label": 11, "label_des": "薅羊毛", "sentence": "一款赚钱的应用"},
        {"label": 0, "label_des": "打车", "sentence": "叫车"},
    ]
    examples = read_text_examples(jsonl(tmp_path, "iflytek.json", rows))
    assert [e.labels for e in examples] == [("薅羊毛",), ("打车",)]


def test_ids_are_kept_without_a_name_field_or_with_another_label_column(tmp_path: Path) -> None:
    rows = [{key: value for key, value in row.items() if key != "label_desc"} for row in TNEWS_ROWS]
    assert [e.labels for e in read_text_examples(jsonl(tmp_path, "ids.json", rows))][:2] == [("102",), ("110",)]
    path = jsonl(tmp_path, "train.json", TNEWS_ROWS[:1])
    (example,) = read_text_examples(path, text_column="keywords", label_column="label_desc")
    assert (example.text, example.labels) == ("江疏影,美少女,经纪人,甜甜圈", ("news_entertainment",))


def test_unlabelled_clue_test_file(tmp_path: Path) -> None:
    rows = [
        {"id": 0, "sentence": "北京楼市新政", "keywords": "楼市"},
        {"id": 1, "sentence": "国足出线", "keywords": ""},
    ]
    examples = read_text_examples(jsonl(tmp_path, "test.json", rows), label_column=None)
    assert [(e.text, e.labels) for e in examples] == [("北京楼市新政", ()), ("国足出线", ())]


def test_clue_id_with_two_names_names_file_line_and_field(tmp_path: Path) -> None:
    rows = [*TNEWS_ROWS, {"label": "102", "label_desc": "news_story", "sentence": "一个故事"}]
    path = jsonl(tmp_path, "train.json", rows)
    error = data_error(path)
    assert (error.file, error.line, error.field) == (str(path), 4, "label_desc")
    assert "'102' goes with 'news_story' here but with 'news_entertainment' at line 1" in str(error)


def test_clue_name_with_two_ids(tmp_path: Path) -> None:
    rows = [*TNEWS_ROWS, {"label": "103", "label_desc": "news_military", "sentence": "军事"}]
    error = data_error(jsonl(tmp_path, "train.json", rows))
    assert (error.line, error.field) == (4, "label")
    assert "'news_military' goes with '103' here but with '110' at line 2" in str(error)


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"label": "100", "sentence": "故事"}, "label_desc", "no field 'label_desc'; fields present: label, sentence"),
        ({"label": "100", "label_desc": " ", "sentence": "故事"}, "label_desc", "empty label"),
        ({"label": "100", "label_desc": "news_story", "sentence": ""}, "sentence", "empty text"),
        ({"label": "100", "label_desc": "news_story", "title": "故事"}, "sentence", "no field 'sentence'"),
    ],
)
def test_bad_clue_rows_name_line_and_field(tmp_path: Path, row: dict[str, object], field: str, words: str) -> None:
    path = jsonl(tmp_path, "train.json", [TNEWS_ROWS[0], row])
    error = data_error(path)
    assert (error.file, error.line, error.field) == (str(path), 2, field)
    assert words in str(error) and f"train.json:2: field '{field}'" in str(error)


def test_two_text_aliases_are_ambiguous(tmp_path: Path) -> None:
    error = data_error(jsonl(tmp_path, "x.jsonl", [{"sentence": "a", "text_a": "b", "label": "1"}]))
    assert (error.line, error.field) == (1, "text") and "both 'sentence' and 'text_a'" in str(error)
    examples = read_text_examples(tmp_path / "x.jsonl", text_column="text_a")
    assert examples[0].text == "b"


# --- ERNIE/LUGE TSV (ChnSentiCorp) ------------------------------------------------------------------------


def test_chnsenticorp_tsv_layouts(tmp_path: Path) -> None:
    train = write(tmp_path, "train.tsv", "label\ttext_a\n1\t房间干净，服务好\n0\t太吵了。。。\n")
    assert [(e.text, e.labels) for e in read_text_examples(train)] == [
        ("房间干净，服务好", ("1",)),
        ("太吵了。。。", ("0",)),
    ]
    dev = write(tmp_path, "dev.tsv", "qid\tlabel\ttext_a\n0\t1\t這間酒店環境不錯\n")
    (example,) = read_text_examples(dev)
    assert (example.text, example.labels, example.source) == ("這間酒店環境不錯", ("1",), f"{dev}:2")


def test_tsv_quotes_in_chinese_text_are_kept(tmp_path: Path) -> None:
    """Quote characters are text in a TSV file: at the start of a cell, inside it, unbalanced, ``""`` doubled."""
    texts = [
        '"此期间预订，入住首日酒店赠送洗衣券',
        '一个词----"大失所望"!!!那本"CHINA----lonely planet"上',
        '键盘"看起来"手感也很好',
        '""双引号""开头，"未闭合',
        "“中文引号”和「书名号」",
    ]
    path = write(tmp_path, "train.tsv", "label\ttext_a\n" + "".join(f"1\t{text}\n" for text in texts))
    assert [e.text for e in read_text_examples(path)] == texts


def test_tsv_text_a_with_text_b_needs_the_pair_column(tmp_path: Path) -> None:
    path = write(tmp_path, "lcqmc.tsv", "text_a\ttext_b\tlabel\n喜欢打篮球的男生\t爱打篮球的男生\t1\n")
    error = data_error(path)
    assert (error.file, error.line, error.field) == (str(path), 1, "text_b")
    assert "text_pair_column=text_b" in str(error)
    (example,) = read_text_examples(path, text_pair_column="text_b")
    assert (example.text, example.text_pair, example.labels) == ("喜欢打篮球的男生", "爱打篮球的男生", ("1",))
    assert read_text_examples(path, text_column="text_a")[0].text_pair is None


def test_tsv_alias_errors_keep_their_lines(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, "bad.tsv", "label\ttext_a\n1\t好\n0\t差\t多一列\n"))
    assert error.line == 3 and "expected 2 tab-separated fields" in str(error)
    error = data_error(write(tmp_path, "nolabel.tsv", "qid\ttext_a\n0\t好\n"))
    assert (error.line, error.field) == (1, "label") and "columns present: qid, text_a" in str(error)


def test_csv_with_sentence_header(tmp_path: Path) -> None:
    path = write(tmp_path, "sst.csv", 'sentence,label\n"a ""quoted"" film",1\n')
    assert read_text_examples(path)[0].text == 'a "quoted" film'


# --- splitting raw text for predict -----------------------------------------------------------------------


def assert_offsets_match(example: TokenExample) -> None:
    """Every token sits in the example's text at its offsets, and only whitespace is left out."""
    assert len(example.offsets) == len(example.tokens)
    for token, (start, end) in zip(example.tokens, example.offsets, strict=True):
        assert example.text[start:end] == token
    assert "".join(example.tokens) == "".join(example.text.split())


def test_mixed_text_by_characters() -> None:
    example = token_example_from_text(MIXED, letters_in_cjk="characters")
    assert example.tokens == tuple(MIXED) and example.offsets == tuple((i, i + 1) for i in range(len(MIXED)))
    assert example.tags == () and example.text == MIXED


def test_mixed_text_by_words() -> None:
    example = token_example_from_text(MIXED)
    assert example.tokens == (
        *"张三",
        "2019",
        *"年在",
        "Google",
        *"北京分公司工作，电话",
        "13800138000",
        "。",
    )
    assert example.offsets[2] == (2, 6) and example.offsets[5] == (8, 14) and example.offsets[-2] == (24, 35)
    assert_offsets_match(example)


@pytest.mark.parametrize(
    ("text", "characters", "words"),
    [
        ("  我爱 New York！ok ", ("我", "爱", "New", "York", "！", "ok"), ("我", "爱", "New", "York", "！", "ok")),
        ("Meet 张三 at 5pm.", ("Meet", "张", "三", "at", "5pm", "."), ("Meet", "张", "三", "at", "5pm", ".")),
        ("Hello，world!", ("Hello", "，", "world", "!"), ("Hello", "，", "world", "!")),
        ("iPhone12手机，(好)", (*"iPhone12手机，(好)",), ("iPhone12", "手", "机", "，", "(", "好", ")")),
        ("电话：１３８-0011", (*"电话：１３８-0011",), (*"电话：１３８", "-", "0011")),
        ("自此CPL2012赛季\t开始", (*"自此CPL2012赛季开始",), (*"自此", "CPL2012", *"赛季开始")),
        ("東京タワー　3F", (*"東京タワー", "3F"), (*"東京タワー", "3F")),
        ("", (), ()),
    ],
)
def test_splitting_rules(text: str, characters: tuple[str, ...], words: tuple[str, ...]) -> None:
    by_characters = token_example_from_text(text, letters_in_cjk="characters")
    by_words = token_example_from_text(text, letters_in_cjk="words")
    assert by_characters.tokens == characters and by_words.tokens == words
    assert_offsets_match(by_characters)
    assert_offsets_match(by_words)


@settings(max_examples=80, deadline=None)
@given(text=st.text(alphabet="张三北京。，：１Ａab9-. \t\u3000", max_size=40))
def test_splitting_offsets_hold_for_mixed_text(text: str) -> None:
    by_characters = token_example_from_text(text, letters_in_cjk="characters")
    by_words = token_example_from_text(text, letters_in_cjk="words")
    assert_offsets_match(by_characters)
    assert_offsets_match(by_words)
    for token in by_characters.tokens:
        assert len(token) == 1 or not any(is_cjk_script(char) for char in token)
    assert all(len(token) == 1 for token in by_words.tokens if any(is_cjk(char) for char in token))


def test_predict_splitting_matches_character_level_training_data() -> None:
    """A sentence read from BMES (characters joined with "") splits back into the same tokens by characters."""
    chars = tuple("2007年10月至今任公司董事、MBA学历，电话13800138000。")
    trained = token_example_from_words(chars, ["O"] * len(chars), "")
    predicted = token_example_from_text(trained.text, letters_in_cjk="characters")
    assert (predicted.tokens, predicted.offsets) == (trained.tokens, trained.offsets)


def test_letters_in_cjk_of_training_data() -> None:
    per_character = token_example_from_words(tuple("任MBA学历2007年"), [], "")
    bundled = token_example_from_words(["订", "单", "202405286718", "的", "极", "光", "X5"], [], " ")
    chinese_only = token_example_from_words(tuple("张三在北京"), [], "")
    english = token_example_from_words(["Peter", "Blackburn", "2019"], [], " ")
    assert letters_in_cjk_of([per_character, english]) == "characters"
    assert letters_in_cjk_of([bundled, english]) == "words"
    assert letters_in_cjk_of([chinese_only]) == "characters"
    assert letters_in_cjk_of([english]) is None
    assert letters_in_cjk_of([bundled, per_character, per_character]) == "characters"


def test_token_cls_predict_input_is_split_by_records() -> None:
    """``adaptune predict`` hands raw strings to the token task, which splits them with the default rule."""
    task = build_task(validate_config({"task": {"name": "token_cls"}}).task)
    assert task.parse_input(MIXED) == token_example_from_text(MIXED)
    assert task.parse_input({"tokens": ["张", "三"]}).tokens == ("张", "三")
