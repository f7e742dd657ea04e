"""Tag schemes: names, detection, strict extraction (against seqeval), validation, conversion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.scheme import IOB1, IOB2, IOBES, Tokens

from adaptune.errors import ConfigError, DataError
from adaptune.evaluation.tagging import (
    convert_tags,
    detect_scheme,
    extract_entities,
    normalise_scheme,
    validate_tags,
)

TYPES = ("PER", "LOC")
SEQEVAL_CLASSES = {"IOB2": IOB2, "IOB1": IOB1, "IOBES": IOBES}
PREFIXES = {"IOB2": "BI", "IOB1": "BI", "IOBES": "BIES", "BMES": "BMES"}


def tags_of(scheme: str) -> st.SearchStrategy[list[str]]:
    """Random, often malformed, tag sequences using only the scheme's prefixes."""
    alphabet = ["O"] + [f"{p}-{t}" for p in PREFIXES[scheme] for t in TYPES]
    return st.lists(st.sampled_from(alphabet), max_size=14)


@st.composite
def iob2_sequences(draw: st.DrawFn) -> list[str]:
    """Well-formed IOB2 sequences built from random runs of O and entities of length 1-4."""
    tags: list[str] = []
    segments = st.one_of(st.just(("O", 1)), st.tuples(st.sampled_from(TYPES), st.integers(1, 4)))
    for kind, length in draw(st.lists(segments, max_size=8)):
        tags += ["O"] if kind == "O" else [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)
    return tags


# --- names and detection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("BIO", "IOB2"),
        ("iob2", "IOB2"),
        ("IOB1", "IOB1"),
        ("BIOES", "IOBES"),
        ("iobes", "IOBES"),
        (" BMES ", "BMES"),
        ("auto", "auto"),
        ("AUTO", "auto"),
    ],
)
def test_normalise_scheme_accepts_aliases(name: str, canonical: str) -> None:
    assert normalise_scheme(name) == canonical


def test_normalise_scheme_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown tag scheme 'BILOU'.*BIO"):
        normalise_scheme("BILOU")


@pytest.mark.parametrize(
    ("sequences", "expected"),
    [
        ([["B-PER", "I-PER", "O"], ["B-LOC"]], "IOB2"),
        ([["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]], "IOB1"),
        ([["B-PER", "I-PER", "E-PER", "O", "S-LOC"]], "IOBES"),
        ([["S-LOC", "O"]], "IOBES"),
        ([["B-NAME", "M-NAME", "E-NAME", "S-ORG"]], "BMES"),
        ([["O", "O"], []], "IOB2"),
        ([["I-PER", "O", "B-LOC"]], "IOB2"),  # a B- that opens an entity is IOB2 (with an error)
    ],
)
def test_detect_scheme(sequences: list[list[str]], expected: str) -> None:
    assert detect_scheme(sequences) == expected


def test_detect_scheme_rejects_unknown_and_mixed_prefixes() -> None:
    with pytest.raises(DataError, match=r"sequence 1, position 0: tag 'U-PER'"):
        detect_scheme([["O"], ["U-PER"]])
    with pytest.raises(DataError, match=r"mix I- .* M-"):
        detect_scheme([["B-A", "I-A"], ["B-A", "M-A", "E-A"]])


# --- strict extraction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "scheme", "expected"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], "BIO", [("PER", 0, 2), ("LOC", 3, 4)]),
        # strict IOB2: an I- that does not continue a B-/I- of its type opens nothing
        (["I-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-PER"], "BIO", [("LOC", 3, 5)]),
        (["B-PER", "B-PER", "I-LOC"], "IOB2", [("PER", 0, 1), ("PER", 1, 2)]),
        (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "IOB1",
         [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]),
        (["B-PER", "I-PER", "E-PER", "S-LOC", "B-ORG", "E-ORG"], "IOBES",
         [("PER", 0, 3), ("LOC", 3, 4), ("ORG", 4, 6)]),
        # strict IOBES: unclosed B-, type changes inside, and stray I-/E- are all dropped
        (["B-PER", "I-PER", "O", "B-LOC", "E-PER", "E-LOC", "S-LOC"], "BIOES", [("LOC", 6, 7)]),
        (["B-NAME", "M-NAME", "E-NAME", "O", "S-ORG", "B-EDU", "E-EDU"], "BMES",
         [("NAME", 0, 3), ("ORG", 4, 5), ("EDU", 5, 7)]),
        (["B-NAME", "M-NAME"], "BMES", []),
        (["B-PER", "I-PER"], "auto", [("PER", 0, 2)]),
        ([], "BIO", []),
    ],
)  # fmt: skip
def test_extract_entities_hand_examples(tags: list[str], scheme: str, expected: list[tuple[str, int, int]]) -> None:
    assert extract_entities(tags, scheme) == expected


@pytest.mark.parametrize(("tags", "scheme"), [(["E-PER"], "BIO"), (["M-PER"], "IOBES"), (["I-A"], "BMES")])
def test_extract_entities_rejects_prefixes_outside_the_scheme(tags: list[str], scheme: str) -> None:
    with pytest.raises(DataError, match=f"position 0: tag '{tags[0]}' has prefix '{tags[0][0]}'"):
        extract_entities(tags, scheme)


def _seqeval_entities(tags: list[str], scheme_class: type) -> list[tuple[str, int, int]]:
    return [(e.tag, e.start, e.end) for e in Tokens(tags, scheme_class).entities]


@pytest.mark.parametrize("scheme", ["IOB2", "IOB1", "IOBES"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_extract_entities_matches_seqeval_strict(scheme: str, data: st.DataObject) -> None:
    tags = data.draw(tags_of(scheme))
    assert extract_entities(tags, scheme) == _seqeval_entities(tags, SEQEVAL_CLASSES[scheme])


@settings(max_examples=150, deadline=None)
@given(tags=tags_of("BMES"))
def test_bmes_is_iobes_with_m_read_as_i(tags: list[str]) -> None:
    as_iobes = [f"I{tag[1:]}" if tag.startswith("M") else tag for tag in tags]
    assert extract_entities(tags, "BMES") == _seqeval_entities(as_iobes, IOBES)


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "scheme"),
    [
        (["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], "BIO"),
        (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "IOB1"),
        (["B-PER", "I-PER", "E-PER", "S-LOC", "O"], "IOBES"),
        (["B-NAME", "M-NAME", "E-NAME", "S-ORG"], "BMES"),
        ([], "BMES"),
    ],
)
def test_validate_tags_accepts_well_formed_sequences(tags: list[str], scheme: str) -> None:
    assert validate_tags(tags, scheme) is None


@pytest.mark.parametrize(
    ("tags", "scheme", "message"),
    [
        (["B-PER", "O", "I-PER"], "BIO",
         "position 2: tag 'I-PER' follows 'O'; in IOB2 an I- tag must continue B-PER or I-PER"),
        (["I-PER"], "BIO", "position 0: tag 'I-PER' follows the start of the sequence"),
        (["B-PER", "I-LOC"], "IOB2", "position 1: tag 'I-LOC' follows 'B-PER'"),
        (["O", "B-PER"], "IOB1", "position 1: tag 'B-PER' follows 'O'; in IOB1 a B- tag may only"),
        (["O", "B-NAME"], "BMES",
         "position 1: the sequence ends inside an entity at 'B-NAME'; "
         "in BMES B-NAME must be followed by M-NAME or E-NAME"),
        (["O", "M-NAME", "E-NAME"], "BMES",
         "position 1: tag 'M-NAME' follows 'O', with no B-NAME before it"),
        (["B-ORG", "M-NAME", "E-NAME"], "BMES",
         "position 1: tag 'M-NAME' follows 'B-ORG'; "
         "in BMES B-ORG must be followed by M-ORG or E-ORG"),
        (["O", "E-NAME"], "BMES",
         "position 1: tag 'E-NAME' follows 'O', with no B-NAME before it; "
         "in BMES E-NAME must follow B-NAME or M-NAME"),
        (["E-PER"], "IOBES", "position 0: tag 'E-PER' follows the start of the sequence"),
        (["B-PER", "I-PER", "O"], "IOBES", "position 2: tag 'O' follows 'I-PER'"),
        (["B-PER", "X-PER"], "BIO",
         "position 1: tag 'X-PER' has prefix 'X', which IOB2 does not allow"),
    ],
)  # fmt: skip
def test_validate_tags_names_position_and_tag(tags: list[str], scheme: str, message: str) -> None:
    with pytest.raises(DataError) as caught:
        validate_tags(tags, scheme)
    assert message in str(caught.value)


def test_validate_tags_locates_file_and_line() -> None:
    with pytest.raises(DataError) as caught:
        validate_tags(["B-NAME", "E-ORG"], "BMES", file="dev.char.bmes", line=12)
    assert str(caught.value).startswith("dev.char.bmes:12: position 1: tag 'E-ORG'")
    assert caught.value.file == "dev.char.bmes"
    assert caught.value.line == 12


@settings(max_examples=150, deadline=None)
@given(tags=tags_of("IOB2"))
def test_valid_iob2_sequences_lose_no_fragments(tags: list[str]) -> None:
    """A sequence passes validation exactly when strict extraction accounts for every tag."""
    covered = sum(end - start for _, start, end in extract_entities(tags, "IOB2"))
    try:
        validate_tags(tags, "IOB2")
    except DataError:
        valid = False
    else:
        valid = True
    assert valid == (covered == sum(tag != "O" for tag in tags))


# --- conversion -----------------------------------------------------------------------------------


def test_convert_tags_examples() -> None:
    bio = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert convert_tags(bio, "BIO", "BMES") == [
        "B-PER",
        "M-PER",
        "E-PER",
        "O",
        "S-LOC",
        "B-LOC",
        "E-LOC",
    ]
    assert convert_tags(bio, "BIO", "BIOES") == [
        "B-PER",
        "I-PER",
        "E-PER",
        "O",
        "S-LOC",
        "B-LOC",
        "E-LOC",
    ]
    assert convert_tags(bio, "BIO", "IOB1") == [
        "I-PER",
        "I-PER",
        "I-PER",
        "O",
        "I-LOC",
        "B-LOC",
        "I-LOC",
    ]
    assert convert_tags(["B-A", "M-A", "E-A", "S-B"], "BMES", "BIO") == ["B-A", "I-A", "I-A", "B-B"]


@settings(max_examples=150, deadline=None)
@given(bio=iob2_sequences())
def test_convert_tags_round_trips_and_keeps_entities(bio: list[str]) -> None:
    entities = extract_entities(bio, "IOB2")
    for scheme in ("IOB1", "IOBES", "BMES"):
        converted = convert_tags(bio, "BIO", scheme)
        validate_tags(converted, scheme)
        assert extract_entities(converted, scheme) == entities
        assert convert_tags(converted, scheme, "BIO") == bio
    assert convert_tags(convert_tags(bio, "BIO", "BMES"), "BMES", "IOBES") == convert_tags(bio, "BIO", "IOBES")


def test_convert_tags_refuses_broken_input_and_auto_target() -> None:
    with pytest.raises(DataError, match="position 1: tag 'I-LOC'"):
        convert_tags(["B-PER", "I-LOC"], "BIO", "BMES")
    with pytest.raises(ConfigError, match="explicit target scheme"):
        convert_tags(["B-PER"], "BIO", "auto")
