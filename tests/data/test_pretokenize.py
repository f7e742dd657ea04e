"""Raw text split for predict as the training data was: CoNLL-style punctuation, clitics, URLs, emoji, CJK."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptune.data.readers import read_token_examples
from adaptune.data.records import (
    Clitics,
    LettersInCjk,
    Punctuation,
    TokenExample,
    clitics_of,
    punctuation_of,
    token_example_from_text,
    token_example_from_words,
)


def tokens_of(text: str, **options: str) -> tuple[str, ...]:
    """The tokens of ``text``, after checking that each sits at its offsets and only whitespace is left out."""
    example = token_example_from_text(text, **options)  # type: ignore[arg-type]
    assert example.text == text and example.tags == ()
    for token, (start, end) in zip(example.tokens, example.offsets, strict=True):
        assert text[start:end] == token and token and not any(char.isspace() for char in token)
    assert "".join(example.tokens) == "".join(text.split())
    assert list(example.offsets) == sorted(example.offsets)
    return example.tokens


def test_readme_sentence() -> None:
    example = token_example_from_text("Alice moved to Berlin.")
    assert example.tokens == ("Alice", "moved", "to", "Berlin", ".")
    assert example.offsets[3] == (15, 21) and example.offsets[4] == (21, 22)


# Expected tokens are written with one space between them (no token holds a space).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # quotes and brackets come off words, on both sides
        ('"Hello," she said.', '" Hello , " she said .'),
        ("He said 'no' (twice)!", "He said ' no ' ( twice ) !"),
        ("“Curly” and ‘single’ quotes", "“ Curly ” and ‘ single ’ quotes"),
        ("Jones' car", "Jones ' car"),
        # hyphens, apostrophes, dots, slashes and ampersands inside words stay
        ("A state-of-the-art, well--known U.S.-based firm", "A state-of-the-art , well -- known U.S. - based firm"),
        ("O'Brien's don't", "O'Brien's don't"),
        ("1996/97 S&P and/or -5 +44 .500", "1996/97 S&P and/or - 5 +44 .500"),
        # numbers keep decimal points and digit groups; sentence punctuation after them does not stay
        ("It rose 3.5% to 1,000.50 at 10:30.", "It rose 3.5 % to 1,000.50 at 10:30 ."),
        ("It cost US$5, or $4.", "It cost US$ 5 , or $ 4 ."),
        # abbreviations keep their full stop, even at the end; other words do not
        (
            "The U.S. and Mr. Smith of Acme Inc. met at 9 a.m. on Oct. 5",
            "The U.S. and Mr. Smith of Acme Inc. met at 9 a.m. on Oct. 5",
        ),
        ("J. R. R. Tolkien, e.g. here, moved to the U.S.", "J. R. R. Tolkien , e.g. here , moved to the U.S."),
        ("I said no. He felt ill.", "I said no . He felt ill ."),
        ("Wait... what?!", "Wait ... what ? !"),
        # URLs and e-mail addresses stay whole, less the punctuation after them
        ("See https://example.com/a_(b)?q=1&x=2.", "See https://example.com/a_(b)?q=1&x=2 ."),
        (
            "(www.example.org/path), mail bob.smith+x@mail.example.co.uk!",
            "( www.example.org/path ) , mail bob.smith+x@mail.example.co.uk !",
        ),
        ('"http://a.b/c"', '" http://a.b/c "'),
        # every emoji is a token: skin tones, ZWJ families, flags and variation selectors included
        ("great👍🏻 party🎉🎉 in Berlin🇩🇪!", "great 👍🏻 party 🎉 🎉 in Berlin 🇩🇪 !"),
        ("family 👨\u200d👩\u200d👧 ❤️it", "family 👨\u200d👩\u200d👧 ❤️ it"),
        # letters with combining marks stay one word
        ("cafe\u0301 naïve किताब", "cafe\u0301 naïve किताब"),
        # mixed CJK: each CJK character a token, Latin words between them split as English
        ("我爱北京天安门, Alice在Google工作。", "我 爱 北 京 天 安 门 , Alice 在 Google 工 作 。"),
        ("Meet 张三 at 5pm.", "Meet 张 三 at 5pm ."),
        ("我在(Berlin)😀", "我 在 ( Berlin ) 😀"),
    ],
)
def test_conll_style_splitting(text: str, expected: str) -> None:
    assert tokens_of(text) == tuple(expected.split(" "))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Germany's don't can't I'm we'll", "Germany 's do n't ca n't I 'm we 'll"),
        ("they're you've he'd O'Brien’s IT'S", "they 're you 've he 'd O'Brien ’s IT 'S"),
        ("Germany 's rock'n'roll", "Germany 's rock'n'roll"),
    ],
)
def test_clitics_split_as_in_the_penn_treebank(text: str, expected: str) -> None:
    assert tokens_of(text, clitics="split") == tuple(expected.split(" "))


def test_empty_text_has_no_tokens() -> None:
    assert tokens_of("") == tokens_of(" \t\u3000") == ()


def test_a_clitic_written_apart_is_one_token_either_way() -> None:
    assert tokens_of("Germany 's", clitics="keep") == ("Germany", "'s")


def test_attached_punctuation_splits_on_whitespace_and_cjk_only() -> None:
    assert tokens_of("Alice moved to Berlin.", punctuation="attached") == ("Alice", "moved", "to", "Berlin.")
    assert tokens_of("Hello，world!", punctuation="attached") == ("Hello", "，", "world!")
    assert tokens_of("Germany's", punctuation="attached", clitics="split") == ("Germany's",)


def test_characters_mode_keeps_emoji_whole_and_splits_everything_else() -> None:
    assert tokens_of("我爱👍🏻ok.", letters_in_cjk="characters") == ("我", "爱", "👍🏻", "o", "k", ".")
    assert tokens_of("张三2019年 in Berlin.", letters_in_cjk="characters") == (
        *"张三2019年",
        "in",
        "Berlin",
        ".",
    )


_ALPHABET = "aZé9'’.,;:!?\"()-/&@$%#+_👍🏻🎉\u200d❤\ufe0f🇩🇪张三。，Ａ \t\u3000"


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=_ALPHABET, max_size=40),
    letters=st.sampled_from(["words", "characters"]),
    punctuation=st.sampled_from(["split", "attached"]),
    clitics=st.sampled_from(["split", "keep"]),
)
def test_offsets_always_index_the_original_string(
    text: str, letters: LettersInCjk, punctuation: Punctuation, clitics: Clitics
) -> None:
    tokens_of(text, letters_in_cjk=letters, punctuation=punctuation, clitics=clitics)


@settings(max_examples=100, deadline=None)
@given(
    words=st.lists(st.sampled_from(["Alice", "Berlin", "U.S.", "Inc.", "3.5", "well-known", "'s", "n't"]), max_size=8)
)
def test_conll_tokens_joined_by_spaces_split_back_into_themselves(words: list[str]) -> None:
    """Text written as CoNLL writes it (tokens with spaces between) gives back the same tokens."""
    punct = [",", ".", "(", ")", '"', "--", "..."]
    tokens = [w for pair in zip(words, punct * 2, strict=False) for w in pair]
    assert tokens_of(" ".join(tokens), clitics="split") == tuple(tokens)


# --- telling the convention from the training data --------------------------------------------------------


def words(*sentences: str) -> list[TokenExample]:
    """Training examples whose tokens are the space-separated pieces of each sentence."""
    return [token_example_from_words(s.split(" "), [], " ") for s in sentences]


def test_punctuation_of_training_data() -> None:
    conll = words("EU rejects German call .", 'Peter Blackburn , ( U.S. ) said " no " .', "1. Alice")
    whitespace = words("EU rejects German call.", 'Peter Blackburn, (U.S.) said "no".')
    assert punctuation_of(conll) == "split"
    assert punctuation_of(whitespace) == "attached"
    assert punctuation_of(words("no punctuation here", "U.S. Inc. 3.5 https://a.b/c x@y.org")) is None
    assert punctuation_of(words("我 爱 北 京 。")) is None  # CJK tokens do not count


def test_clitics_of_training_data() -> None:
    assert clitics_of(words("Germany 's Alice do n't", "they 're")) == "split"
    assert clitics_of(words("it's Laura's order", "I hasn't")) == "keep"
    assert clitics_of(words("O'Brien rock'n'roll", "no clitics")) is None
    assert clitics_of(words("Germany 's it's")) == "keep"  # a tie keeps them


def test_bundled_ner_data_splits_punctuation_and_keeps_clitics(bundled_data: Path) -> None:
    examples = read_token_examples(bundled_data / "ner" / "train.conll")
    assert (punctuation_of(examples), clitics_of(examples)) == ("split", "keep")


def test_conll2003_splits_punctuation_and_clitics(shared_data: Path) -> None:
    examples = read_token_examples(shared_data / "conll2003" / "valid.txt")
    assert (punctuation_of(examples), clitics_of(examples)) == ("split", "split")
    sentences = [ex for ex in examples if ex.tokens and ex.tokens[0] != "-DOCSTART-"]
    same = sum(token_example_from_text(ex.text, clitics="split").tokens == ex.tokens for ex in sentences)
    # 99.4%: the rest are CoNLL oddities such as "6- 4", "1=" and "ST." (upper-case "St.")
    assert same / len(sentences) > 0.99, "CoNLL sentences written out as text split back into their tokens"
