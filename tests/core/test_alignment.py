"""Word labels to sub-words and back: property tests of the first-sub-token aligner on a real tokenizer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from adaptune.data.records import token_example_from_words
from adaptune.tasks.token_cls import IGNORE, TokenClassification, TokenClsConfig, align_first_subtoken
from tiny import minilm_dir

TOKENIZER = AutoTokenizer.from_pretrained(minilm_dir())
WORDS = st.lists(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=8
    ),
    min_size=1,
    max_size=30,
)


@st.composite
def word_id_sequences(draw: st.DrawFn) -> tuple[list[int | None], int]:
    n_words = draw(st.integers(1, 20))
    counts = draw(st.lists(st.integers(0, 4), min_size=n_words, max_size=n_words))
    ids: list[int | None] = [None]
    for word, count in enumerate(counts):
        ids += [word] * count
    return [*ids, None], n_words


@given(word_id_sequences())
def test_each_word_is_marked_once_at_its_first_subtoken(case: tuple[list[int | None], int]) -> None:
    word_ids, n_words = case
    index, covered = align_first_subtoken(word_ids, n_words)
    assert len(index) == len(word_ids)
    marked = [w for w in index if w >= 0]
    assert marked == sorted(set(marked)), "each word once, in order"
    assert covered == len(set(w for w in word_ids if w is not None))
    for pos, word in enumerate(index):
        if word >= 0:
            assert word_ids[pos] == word and (pos == 0 or word_ids[pos - 1] != word)


@settings(max_examples=60, deadline=None)
@given(WORDS, st.integers(8, 64))
def test_labels_round_trip_through_a_real_tokenizer(words: list[str], max_length: int) -> None:
    tags = ["B-X" if i % 3 == 0 else "O" for i in range(len(words))]
    example = token_example_from_words(words, tags)
    task = TokenClassification(TokenClsConfig())
    encoded = task.encode(example, TOKENIZER, ["O", "B-X"], max_length)
    assert len(encoded.input_ids) <= max_length
    assert encoded.word_index is not None and len(encoded.target) == len(encoded.input_ids)
    for pos, word in enumerate(encoded.word_index):
        expected = IGNORE if word < 0 else ["O", "B-X"].index(tags[word])
        assert encoded.target[pos] == expected
    covered = {w for w in encoded.word_index if w >= 0}
    if not encoded.truncated:
        visible = {i for i, word in enumerate(words) if TOKENIZER.tokenize(word)}
        assert covered == visible, "every word with at least one sub-token carries its label"


def test_a_bare_word_boundary_token_passes_the_word_to_its_next_subtoken() -> None:
    """XLM-R (multilingual-e5) tokenises per-character Chinese as ``▁ 张`` for many characters: the character's
    tag goes on ``张``; a word that is only ``▁`` keeps it there, and ``▁三`` stays as it is."""
    tokens = ["<s>", "\u2581", "张", "\u2581三", "\u2581", "</s>"]
    word_ids = [None, 0, 0, 1, 2, None]
    index, covered = align_first_subtoken(word_ids, 3, tokens)
    assert index == [-1, -1, 0, 1, 2, -1] and covered == 3
    assert align_first_subtoken(word_ids, 3)[0] == [-1, 0, -1, 1, 2, -1]


def test_chinese_characters_written_together_lose_the_boundary_between_them() -> None:
    """``▁ 北 ▁ 京`` (one word per character) becomes ``▁ 北 京``, as the unsplit text is tokenised; a bare ``▁``
    before a Latin word, or at the first word, stays."""
    from adaptune.tasks.token_cls import joining_boundaries

    words = ["Alice", "去", "北", "京", "Berlin"]
    tokens = ["<s>", "\u2581Alice", "\u2581", "去", "\u2581", "北", "\u2581", "京", "\u2581", "Berlin", "</s>"]
    word_ids = [None, 0, 1, 1, 2, 2, 3, 3, 4, 4, None]
    keep = joining_boundaries(words, tokens, word_ids)
    assert [t for t, k in zip(tokens, keep, strict=True) if k] == [
        "<s>",
        "\u2581Alice",
        "\u2581",
        "去",
        "北",
        "京",
        "\u2581",
        "Berlin",
        "</s>",
    ]
    assert all(joining_boundaries(["hello", "world"], ["[CLS]", "hello", "world", "[SEP]"], [None, 0, 1, None]))
