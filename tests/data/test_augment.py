"""Data augmentation (``data.augment``): NER rows keep consistent tags and spans, EDA keeps to its rate and the
training vocabulary, per character for Chinese, one seed gives the same rows, and only the training split grows."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptune.api import prepare
from adaptune.config import AugmentConfig, load_config
from adaptune.data.augment import augment, augment_examples
from adaptune.data.augment_text import character_units, is_mostly_cjk, split_units
from adaptune.data.formats.relations import RelationExample
from adaptune.data.records import TextExample, TokenExample, token_example_from_words
from adaptune.errors import ConfigError
from adaptune.evaluation.tagging import convert_tags, extract_entities, validate_tags

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- NER rows --------------------------------------------------------------------------------------------------

NAMES = {"PER": ["Ann", "Bo", "Cy", "Di"], "LOC": ["Oslo", "Rome", "Lima"], "ORG": ["Acme", "Globex", "Initech"]}
WORDS = ["the", "a", "met", "in", "at", "and", ".", ","]
#: Two rows that give every type at least two distinct mentions, so that every row has a replacement.
SEED_ROWS: list[list[tuple[str | None, tuple[str, ...]]]] = [
    [("PER", ("Ann",)), (None, ("met",)), ("LOC", ("Oslo",)), ("ORG", ("Acme",))],
    [("PER", ("Bo", "Cy")), (None, ("in",)), ("LOC", ("Rome",)), ("ORG", ("Globex", "Initech"))],
]

mention = st.sampled_from(sorted(NAMES)).flatmap(
    lambda kind: st.lists(st.sampled_from(NAMES[kind]), min_size=1, max_size=3).map(lambda m: (kind, tuple(m)))
)
o_run = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(lambda words: (None, tuple(words)))
#: A row: chunks of mentions and O runs, with at least one of each (so both operations apply to it).
row_chunks = st.tuples(mention, o_run, st.lists(st.one_of(mention, o_run), max_size=4)).flatmap(
    lambda parts: st.permutations([parts[0], parts[1], *parts[2]])
)


def ner_row(chunks: Sequence[tuple[str | None, tuple[str, ...]]], scheme: str, joiner: str = " ") -> TokenExample:
    """A row with IOB2 tags per chunk, written in ``scheme``."""
    tokens: list[str] = []
    tags: list[str] = []
    for kind, words in chunks:
        tokens += words
        tags += ["O"] * len(words) if kind is None else [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
    return token_example_from_words(tokens, convert_tags(tags, "IOB2", scheme), joiner, "train.conll:1")


def mentions_of(example: TokenExample, scheme: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(kind, example.tokens[start:end]) for kind, start, end in extract_entities(example.tags, scheme)]


def outside_tokens(example: TokenExample, scheme: str) -> list[str]:
    inside = {i for _, start, end in extract_entities(example.tags, scheme) for i in range(start, end)}
    return [token for i, token in enumerate(example.tokens) if i not in inside]


def check_consistent(example: TokenExample, scheme: str) -> None:
    """Tags valid for the scheme, one per token, offsets pointing at the tokens."""
    assert len(example.tokens) == len(example.tags) == len(example.offsets)
    validate_tags(example.tags, scheme)
    assert convert_tags(example.tags, scheme, scheme) == list(example.tags)
    assert all(
        example.text[start:end] == token for token, (start, end) in zip(example.tokens, example.offsets, strict=True)
    )


@PROPERTY_SETTINGS
@given(
    rows=st.lists(row_chunks, min_size=1, max_size=6),
    scheme=st.sampled_from(["IOB2", "IOB1", "IOBES", "BMES"]),
    op=st.sampled_from(["replace_mention", "shuffle_segments"]),
    copies=st.integers(1, 3),
    p=st.floats(0.05, 0.9),
    seed=st.integers(0, 2**32),
)
def test_ner_augmentation_keeps_tags_and_spans_consistent(
    rows: list[list[tuple[str | None, tuple[str, ...]]]], scheme: str, op: str, copies: int, p: float, seed: int
) -> None:
    examples = [ner_row(chunks, scheme) for chunks in [*SEED_ROWS, *rows]]
    training_mentions = {found for example in examples for found in mentions_of(example, scheme)}
    training_tags = {tag for example in examples for tag in example.tags}
    out = augment_examples(examples, "token_cls", AugmentConfig(copies=copies, ops=[op], p=p), seed)
    assert out[: len(examples)] == examples
    new = out[len(examples) :]
    assert len(new) == copies * len(examples)  # every row has a mention with a replacement and two segments
    for index, row in enumerate(new):
        source = examples[index % len(examples)]
        check_consistent(row, scheme)
        assert set(mentions_of(row, scheme)) <= training_mentions  # mentions of the training set, of their type
        if scheme != "IOB1":  # IOB1 spells B-X where two X entities meet, which a shuffle may bring about
            assert set(row.tags) <= training_tags
        if op == "replace_mention":
            assert len(mentions_of(row, scheme)) == len(mentions_of(source, scheme))
            assert outside_tokens(row, scheme) == outside_tokens(source, scheme)  # only mentions change
            assert mentions_of(row, scheme) != mentions_of(source, scheme)
        else:
            assert Counter(mentions_of(row, scheme)) == Counter(mentions_of(source, scheme))
            assert Counter(row.tokens) == Counter(source.tokens)
        assert row.source == source.source


CHINESE_ROWS = [
    [(None, ("请", "送", "给")), ("PER", ("何", "佳")), (None, ("，",)), ("LOC", ("思", "明", "区")), (None, ("。",))],
    [("PER", ("林", "晓", "雨")), (None, ("在",)), ("LOC", ("南", "京")), (None, ("工", "作"))],
    [(None, ("寄", "到")), ("LOC", ("北", "京")), (None, ("给",)), ("PER", ("张", "三"))],
]


@pytest.mark.parametrize("op", ["replace_mention", "shuffle_segments"])
def test_character_level_bmes_rows_stay_character_level(op: str) -> None:
    """Chinese BMES data: tokens are characters and the text joins them without spaces, before and after."""
    examples = [ner_row(chunks, "BMES", joiner="") for chunks in CHINESE_ROWS]
    mentions = {found for example in examples for found in mentions_of(example, "BMES")}
    out = augment_examples(examples, "token_cls", AugmentConfig(copies=4, ops=[op]), seed=3)
    assert len(out) == 5 * len(examples)
    for row in out[len(examples) :]:
        check_consistent(row, "BMES")
        assert row.text == "".join(row.tokens) and all(len(token) == 1 for token in row.tokens)
        assert set(mentions_of(row, "BMES")) <= mentions


def test_replacements_keep_the_script_and_rows_without_a_change_get_no_copy() -> None:
    chinese = ner_row([("PER", ("何", "佳")), (None, ("到", "了"))], "IOB2")
    english = [ner_row([("PER", (name,)), (None, ("called",))], "IOB2") for name in ("Ann", "Bo")]
    only_o = ner_row([(None, ("hello", "there"))], "IOB2")
    broken = TokenExample(("x", "Cy"), ("O", "I-PER"), "x Cy", ((0, 1), (2, 4)))  # breaks IOB2: left as it is
    examples = [chinese, *english, only_o, broken]
    result = augment(examples, "token_cls", AugmentConfig(copies=3, ops=["replace_mention"]), seed=0)
    assert result.added == {"replace_mention": 6}  # the two English rows, 3 times; the one Chinese name has no peer
    for row in result.examples[len(examples) :]:
        assert mentions_of(row, "IOB2")[0][1] in {("Ann",), ("Bo",)}
    shuffled = augment(examples, "token_cls", AugmentConfig(ops=["shuffle_segments"]), seed=0)
    assert shuffled.added == {"shuffle_segments": 3}  # not the all-O row (one segment), nor the broken one


# --- text rows (EDA) -------------------------------------------------------------------------------------------

english_text = st.lists(
    st.sampled_from(["cancel", "my", "order", "now", "please", "refund", "#123", "late"]), min_size=1, max_size=12
).map(" ".join)
chinese_text = (
    st.lists(st.sampled_from([*"请问订单还能取消吗刚付的款？", "U3965-64", "iPhone"]), min_size=2, max_size=20)
    .map("".join)
    .filter(is_mostly_cjk)
)


def eda_rows(texts: Sequence[str]) -> list[TextExample]:
    return [
        TextExample(text=text, labels=(f"label{i % 2}",), source=f"train.jsonl:{i + 1}") for i, text in enumerate(texts)
    ]


def is_subsequence(short: Sequence[str], long: Sequence[str]) -> bool:
    remaining = iter(long)
    return all(unit in remaining for unit in short)


@PROPERTY_SETTINGS
@given(
    texts=st.lists(st.one_of(english_text, chinese_text), min_size=1, max_size=6),
    op=st.sampled_from(["swap", "delete", "insert"]),
    p=st.floats(0.05, 0.9),
    seed=st.integers(0, 2**32),
)
def test_eda_keeps_text_labels_and_vocabulary(texts: list[str], op: str, p: float, seed: int) -> None:
    examples = eda_rows(texts)
    vocabulary = {unit for text in texts for unit in split_units(text)[0]}
    out = augment_examples(examples, "seq_cls", AugmentConfig(copies=2, ops=[op], p=p), seed)
    assert out[: len(examples)] == examples
    sources = [ex for _ in range(2) for ex in examples if op == "insert" or len(split_units(ex.text)[0]) >= 2]
    assert len(out) - len(examples) == len(sources)
    for row, source in zip(out[len(examples) :], sources, strict=True):
        assert row.text.strip() and row.labels == source.labels and row.source == source.source
        before, per_character = split_units(source.text)
        after = character_units(row.text) if per_character else row.text.split()
        assert set(after) <= vocabulary  # only words (characters) of the training rows
        n = max(1, int(p * len(before)))
        if op == "swap":
            assert Counter(after) == Counter(before)
            assert sum(a != b for a, b in zip(after, before, strict=True)) <= 2 * n
        elif op == "delete":
            assert 1 <= len(after) <= len(before) and is_subsequence(after, before)
        else:
            assert len(after) == len(before) + n and is_subsequence(before, after)


def test_deletion_follows_the_rate_and_insertion_the_word_frequencies() -> None:
    words = [f"w{i}" for i in range(200)]
    deleted = augment(eda_rows([" ".join(words)]), "seq_cls", AugmentConfig(copies=50, ops=["delete"], p=0.2), 1)
    fractions = [1 - len(row.text.split()) / 200 for row in deleted.examples[1:]]
    assert abs(sum(fractions) / len(fractions) - 0.2) < 0.02
    texts = ["common " * 9 + "rare", "one two"]
    inserted = augment(eda_rows(texts * 4), "seq_cls", AugmentConfig(copies=50, ops=["insert"], p=0.1), 2)
    added: Counter[str] = Counter()
    for row in inserted.examples[8:]:
        source = texts[0] if row.text.count("common") >= 9 else texts[1]
        added.update(Counter(row.text.split()) - Counter(source.split()))
    assert set(added) <= {"common", "rare", "one", "two"}
    assert added["common"] > 3 * added["rare"]  # 9 of the 12 training words are "common": frequency-weighted


def test_chinese_text_is_augmented_per_character_and_pairs_keep_their_second_text() -> None:
    rows = [
        TextExample(text="订单U3965-64付款成功了吗？", labels=("pay",), text_pair="银行卡有扣款记录"),
        TextExample(text="Is it too late to cancel?", labels=("cancel",), text_pair="Order #66343"),
    ]
    assert character_units(rows[0].text) == ["订", "单", "U3965-64", "付", "款", "成", "功", "了", "吗", "？"]
    out = augment_examples(rows, "seq_cls", AugmentConfig(copies=20), seed=5)
    assert len(out) == 2 * 21
    by_label = {row.labels: row for row in rows}
    for row in out[2:]:
        source = by_label[row.labels]
        assert row.text_pair == source.text_pair  # the second text is kept as read
        if source is rows[0]:  # per character, from the characters of the (only) Chinese row
            assert set(character_units(row.text)) <= set(character_units(source.text))
        else:
            assert set(row.text.split()) <= set(source.text.split())
    assert {row.text for row in out[2:]} - {row.text for row in rows}  # and the texts did change


# --- seeds, refusals, the run ----------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_rows() -> None:
    rng = random.Random(0)
    texts = [" ".join(rng.choices(["a", "b", "c", "d", "e", "f"], k=rng.randint(2, 9))) for _ in range(50)]
    cfg = AugmentConfig(copies=3)
    first = augment(eda_rows(texts), "seq_cls", cfg, seed=11)
    assert augment(eda_rows(texts), "seq_cls", cfg, seed=11).examples == first.examples
    assert augment(eda_rows(texts), "seq_cls", cfg, seed=12).examples != first.examples
    random.seed(0)  # the global generator plays no part
    again = augment(eda_rows(texts), "seq_cls", cfg, seed=11)
    random.seed(1)
    assert augment(eda_rows(texts), "seq_cls", cfg, seed=11).examples == again.examples == first.examples
    assert first.note().startswith("augmentation: 50 training rows + 150 augmented (swap ")
    assert first.note().endswith("; seed 11)")


def test_tasks_without_an_operation_and_foreign_ops_are_refused() -> None:
    relation = [RelationExample(text="wind causes waves", e1=(0, 4), e2=(12, 17), label="Cause-Effect(e1,e2)")]
    with pytest.raises(ConfigError, match=r"data\.augment.*'relation_cls'"):
        augment_examples(relation, "relation_cls", AugmentConfig(), seed=0)
    with pytest.raises(ConfigError, match=r"data\.augment\.ops.*replace_mention does not apply.*seq_cls"):
        augment_examples(eda_rows(["a b"]), "seq_cls", AugmentConfig(ops=["swap", "replace_mention"]), seed=0)
    with pytest.raises(ConfigError, match=r"data\.augment\.ops.*once"):
        load_config(None, ["data.augment.ops=[swap, swap]"])
    with pytest.raises(ConfigError, match=r"data\.augment\.copies"):
        load_config(None, ["data.augment.copies=0"])


def test_prepare_augments_the_training_split_only(tiny_bert: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    vocabulary = ["refund", "order", "late", "cancel", "please", "my", "where", "is", "the", "parcel"]

    def write(name: str, n: int) -> Path:
        rows = [
            {"text": " ".join(rng.choices(vocabulary, k=rng.randint(3, 8))), "label": ["a", "b"][i % 2]}
            for i in range(n)
        ]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    train, dev = write("train", 12), write("dev", 5)
    base = [f"model.name_or_path={tiny_bert}", f"data.train={train}", f"data.dev={dev}", "data.max_length=32"]
    plain = prepare(load_config(None, base))
    augmented = prepare(load_config(None, [*base, "data.augment.copies=2", "data.augment.seed=7"]))
    split = augmented.splits["train"]
    assert len(split.examples) == len(split.encoded) == 12 * 3
    assert split.examples[:12] == plain.splits["train"].examples
    assert augmented.splits["dev"].examples == plain.splits["dev"].examples
    assert [e.input_ids for e in augmented.splits["dev"].encoded] == [e.input_ids for e in plain.splits["dev"].encoded]
    assert augmented.labels == plain.labels
    note = "augmentation: 12 training rows + 24 augmented ("
    assert any(n.startswith(note) and n.endswith("; seed 7)") for n in augmented.notes)
    assert not any(n.startswith("augmentation") for n in plain.notes)
    again = prepare(load_config(None, [*base, "data.augment.copies=2", "data.augment.seed=7"]))
    assert again.splits["train"].examples == split.examples
