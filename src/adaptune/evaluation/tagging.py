"""Tag schemes for sequence labelling: name, detect, validate, convert and extract entities.

Schemes (canonical name first, accepted aliases in brackets, case-insensitive):

- ``IOB2`` (``BIO``): an entity is ``B-X I-X*``; every entity starts with ``B-``.
- ``IOB1``: an entity is ``I-X+``; ``B-X`` starts an entity only right after another ``X`` entity.
- ``IOBES`` (``BIOES``): ``B-X I-X* E-X`` for several tokens, ``S-X`` for one token.
- ``BMES``: IOBES with ``M`` for inside (``B-X M-X* E-X``, ``S-X``), as in Chinese NER corpora.
- ``auto``: detect the scheme from the tags (:func:`detect_scheme`).

Tags are ``"O"`` or a one-letter prefix, ``-`` and a type (``"B-PER"``). As in seqeval, the type is
everything after the prefix with ``-`` stripped, and an untyped tag (``"B"``) has type ``"_"``. A prefix and
``-`` with no type (``"B-"``, ``"S-"``) is refused where data is read (:func:`check_tag_spelling`).

Entity extraction is *strict*: it reproduces seqeval's ``mode="strict"``
(``seqeval.scheme.Tokens.entities``) exactly, so an entity counts only when it is well formed under
the scheme. For example, in IOB2 an ``I-X`` that does not continue a ``B-X``/``I-X`` starts nothing,
and in IOBES a ``B-X I-X`` never closed by ``E-X`` is dropped. Entities are ``(type, start, end)``
with ``end`` exclusive.

Predictions are read with repair instead (:func:`repaired_entities`), by the rules of conlleval and
seqeval's default mode (``seqeval.metrics.sequence_labeling.get_entities``), so a malformed stretch still
gives an entity: an ``I-X`` (``M-X``, ``E-X``) that does not continue an ``X`` entity starts one
(``B-ORG I-MISC`` gives ORG and MISC; ``O I-PER`` gives PER), an entity ends where the type changes or an
``O``, ``B-`` or ``S-`` follows (an unclosed ``B-X I-X`` in IOBES is kept), and ``E-X``/``S-X`` end it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adaptune.errors import ConfigError, DataError

__all__ = [
    "SCHEMES",
    "Entity",
    "check_tag_spelling",
    "convert_tags",
    "detect_scheme",
    "extract_entities",
    "normalise_scheme",
    "repaired_entities",
    "validate_tags",
]

SCHEMES: tuple[str, ...] = ("IOB2", "IOB1", "IOBES", "BMES")
"""Canonical scheme names, as returned by :func:`normalise_scheme` and :func:`detect_scheme`."""

Entity = tuple[str, int, int]
"""``(type, start, end)``: token positions, ``end`` exclusive."""

_Tag = tuple[str, str]  # (prefix, type) with BMES "M" already mapped to "I"
_OUTSIDE: _Tag = ("O", "")

_ALIASES = {
    "BIO": "IOB2",
    "IOB2": "IOB2",
    "IOB1": "IOB1",
    "BIOES": "IOBES",
    "IOBES": "IOBES",
    "BMES": "BMES",
    "AUTO": "auto",
}
_ALLOWED = {"IOB2": "BIO", "IOB1": "BIO", "IOBES": "BIOES", "BMES": "BMESO"}
_INNER = {"IOB2": "I", "IOB1": "I", "IOBES": "I", "BMES": "M"}


def normalise_scheme(name: str) -> str:
    """Return the canonical scheme name: ``IOB2``, ``IOB1``, ``IOBES``, ``BMES`` or ``auto``.

    Raises:
        ConfigError: the name is not a known scheme or alias.
    """
    key = str(name).strip().upper()
    if key not in _ALIASES:
        allowed = ", ".join(sorted({*_ALIASES, "auto"} - {"AUTO"}))
        raise ConfigError(f"unknown tag scheme {name!r}; expected one of: {allowed}")
    return _ALIASES[key]


# --- parsing --------------------------------------------------------------------------------------


def _parse(tags: Sequence[str], scheme: str, *, file: str | Path | None = None, line: int | None = None) -> list[_Tag]:
    """Split each tag into ``(prefix, type)``, rejecting prefixes the scheme does not allow."""
    allowed = _ALLOWED[scheme]
    parsed: list[_Tag] = []
    for pos, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag:
            raise DataError(f"position {pos}: empty or non-string tag {tag!r}", file=file, line=line)
        prefix = tag[0]
        if prefix not in allowed:
            raise DataError(
                f"position {pos}: tag {tag!r} has prefix {prefix!r}, which {scheme} does not allow "
                f"(allowed prefixes: {', '.join(allowed)})",
                file=file,
                line=line,
            )
        if prefix == "O":
            parsed.append(_OUTSIDE)
            continue
        parsed.append(("I" if prefix == "M" else prefix, tag[1:].strip("-") or "_"))
    return parsed


def _show(tag: _Tag, scheme: str) -> str:
    """Render a parsed tag back in the scheme's spelling, for error messages."""
    if tag == _OUTSIDE:
        return "O"
    prefix = _INNER[scheme] if tag[0] == "I" else tag[0]
    return f"{prefix}-{tag[1]}"


# --- detection ------------------------------------------------------------------------------------


#: ``(sequence index, token position) -> (file, line)`` of a tag, for error messages.
Locate = Callable[[int, int], tuple[str | None, int | None]]


def _misspelt(tag: object) -> str | None:
    """Why ``tag`` is not a tag of any scheme, or None when it is one."""
    if not isinstance(tag, str) or not tag or tag[0] not in "BIOESM":
        return "is not 'O' or a B-/I-/M-/E-/S- tag"
    if tag[0] != "O" and len(tag) > 1 and not tag[1:].strip("-"):
        return f"has no entity type after {tag[0]}- (write e.g. {tag[0]}-PER)"
    return None


def check_tag_spelling(tag_sequences: Iterable[Sequence[str]], locate: Locate | None = None) -> None:
    """Refuse a tag that no scheme spells: not ``O`` or a ``B-``/``I-``/``M-``/``E-``/``S-`` tag, or a prefix and
    ``-`` with no type (``"B-"``). ``locate`` (from the reader) names the file and line of the tag.

    Raises:
        DataError: at the first such tag, with field ``'tag'``.
    """
    for index, seq in enumerate(tag_sequences):
        for pos, tag in enumerate(seq):
            problem = _misspelt(tag)
            if problem is not None:
                file, line = locate(index, pos) if locate else (None, None)
                where = f"token {pos + 1} of the sentence" if file else f"sequence {index}, position {pos}"
                raise DataError(f"{where}: tag {tag!r} {problem}", file=file, line=line, field="tag")


def detect_scheme(tag_sequences: Iterable[Sequence[str]], locate: Locate | None = None) -> str:
    """Guess the scheme of some tag sequences from the prefixes they use.

    ``M-`` means BMES; ``E-``/``S-`` mean IOBES; with only ``B-``/``I-``/``O`` the result is IOB1
    when some ``I-`` starts an entity and no ``B-`` does, else IOB2 (also for all-``O`` input).
    ``locate`` (from the reader) names the file and line of a bad tag.

    Raises:
        DataError: a tag has a prefix no supported scheme uses or no type after its prefix
            (:func:`check_tag_spelling`), or ``I-`` and ``M-`` are mixed.
    """
    sequences = [list(seq) for seq in tag_sequences]
    check_tag_spelling(sequences, locate)
    prefixes = {tag[0] for seq in sequences for tag in seq}
    if "M" in prefixes:
        if "I" in prefixes:
            raise DataError("tags mix I- (BIO/IOBES) and M- (BMES) prefixes")
        return "BMES"
    if prefixes & {"E", "S"}:
        return "IOBES"
    return "IOB1" if _looks_iob1(sequences) else "IOB2"


def _looks_iob1(sequences: list[list[str]]) -> bool:
    """True when some ``I-X`` opens an entity and every ``B-X`` follows an ``X`` entity."""
    i_opens = b_opens = False
    for seq in sequences:
        parsed = _parse(seq, "IOB2")
        for prev, cur in zip([_OUTSIDE, *parsed], parsed, strict=False):
            continues = prev[0] in "BI" and prev[1] == cur[1]
            i_opens = i_opens or (cur[0] == "I" and not continues)
            b_opens = b_opens or (cur[0] == "B" and not continues)
    return i_opens and not b_opens


def _resolve(scheme: str, sequences: Iterable[Sequence[str]]) -> str:
    """Normalise a scheme name, detecting it from ``sequences`` when it is ``auto``."""
    name = normalise_scheme(scheme)
    return detect_scheme(sequences) if name == "auto" else name


# --- strict extraction ----------------------------------------------------------------------------


def _same(a: _Tag, b: _Tag) -> bool:
    return a[1] == b[1]


def _iob2_starts(prev: _Tag, cur: _Tag) -> bool:
    return cur[0] == "B"


def _iob_inside(prev: _Tag, cur: _Tag) -> bool:
    return prev[0] in "BI" and cur[0] == "I" and _same(prev, cur)


def _always_closes(last: _Tag, nxt: _Tag) -> bool:
    return True


def _iob1_starts(prev: _Tag, cur: _Tag) -> bool:
    if cur[0] == "I":  # seqeval: (O, I, any), (B, I, any), (I, I, different type)
        return prev[0] in "OB" or (prev[0] == "I" and not _same(prev, cur))
    return cur[0] == "B" and prev[0] in "IB" and _same(prev, cur)


def _iob1_closes(last: _Tag, nxt: _Tag) -> bool:
    if nxt[0] == "O":
        return True
    if last[0] == "I":  # seqeval: (I, B, any), (I, I, different type)
        return nxt[0] == "B" or not _same(last, nxt)
    if nxt[0] == "I":  # a lone B-X: (B, I, different type), (B, B, same type)
        return not _same(last, nxt)
    return _same(last, nxt)


def _iobes_starts(prev: _Tag, cur: _Tag) -> bool:
    return cur[0] in "BS"


def _iobes_inside(prev: _Tag, cur: _Tag) -> bool:
    return prev[0] in "BI" and cur[0] in "IE" and _same(prev, cur)


def _iobes_closes(last: _Tag, nxt: _Tag) -> bool:
    return last[0] in "ES"


@dataclass(frozen=True)
class _Rules:
    """When a token opens an entity, when the next token continues it, and whether it ended well."""

    starts: Callable[[_Tag, _Tag], bool]  # (previous token, this token)
    inside: Callable[[_Tag, _Tag], bool]  # (previous token, this token)
    closes: Callable[[_Tag, _Tag], bool]  # (last token of the entity, token after it)


_RULES = {
    "IOB2": _Rules(_iob2_starts, _iob_inside, _always_closes),
    "IOB1": _Rules(_iob1_starts, _iob_inside, _iob1_closes),
    "IOBES": _Rules(_iobes_starts, _iobes_inside, _iobes_closes),
    "BMES": _Rules(_iobes_starts, _iobes_inside, _iobes_closes),
}


def _strict_spans(parsed: list[_Tag], rules: _Rules) -> list[Entity]:
    """seqeval's ``Tokens.entities`` loop: open, extend while inside, keep only if closed well."""
    # ext[-1] is "O": it never continues an entity, and it is the "previous" token of token 0.
    ext = [*parsed, _OUTSIDE]
    spans: list[Entity] = []
    i = 0
    while i < len(parsed):
        if not rules.starts(ext[i - 1], ext[i]):
            i += 1
            continue
        j = i + 1
        while rules.inside(ext[j - 1], ext[j]):
            j += 1
        if rules.closes(ext[j - 1], ext[j]):
            spans.append((ext[i][1], i, j))
        i = j
    return spans


def extract_entities(tags: Sequence[str], scheme: str = "auto") -> list[Entity]:
    """Return the well-formed entities of one tag sequence as ``(type, start, end_exclusive)``.

    Strict semantics, identical to seqeval's ``mode="strict"`` with the matching scheme class (BMES
    is scored as IOBES with ``M`` read as ``I``). Malformed fragments are ignored, not repaired
    (:func:`repaired_entities` repairs them).

    Example:
        >>> extract_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"], "BIO")
        [('PER', 0, 2), ('LOC', 4, 5)]

    Raises:
        DataError: a tag has a prefix the scheme does not allow (e.g. ``E-`` in IOB2).
        ConfigError: unknown scheme name.
    """
    name = _resolve(scheme, [tags])
    return _strict_spans(_parse(tags, name), _RULES[name])


# --- repairing extraction -------------------------------------------------------------------------


def _chunk_ends(prev: _Tag, cur: _Tag) -> bool:
    """conlleval's ``endOfChunk``: the entity holding ``prev`` ends before ``cur``."""
    if prev == _OUTSIDE:
        return False
    return prev[0] in "ES" or (prev[0] in "BI" and cur[0] in "BSO") or not _same(prev, cur)


def _chunk_starts(prev: _Tag, cur: _Tag) -> bool:
    """conlleval's ``startOfChunk``: ``cur`` opens an entity."""
    if cur == _OUTSIDE:
        return False
    return cur[0] in "BS" or (prev[0] in "ESO" and cur[0] in "IE") or not _same(prev, cur)


def repaired_entities(tags: Sequence[str], scheme: str = "auto") -> list[Entity]:
    """Return the entities of one tag sequence as conlleval reads it, repairing tags that break the scheme.

    The rules are conlleval's ``startOfChunk``/``endOfChunk``, as in seqeval's default (non-strict) mode,
    with BMES's ``M`` read as ``I``: a token starts an entity when it is ``B-``/``S-``, when it is ``I-``/``E-``
    after ``O``, ``E-`` or ``S-``, or when its type differs from the previous token's; an entity ends after
    ``E-``/``S-``, before ``B-``/``S-``/``O``, and where the type changes. On tags that keep the scheme
    (:func:`validate_tags` passes) the result equals :func:`extract_entities`; on others it keeps every
    typed stretch that strict extraction drops.

    Example:
        >>> repaired_entities(["B-ORG", "I-MISC", "O", "I-PER", "I-PER"], "BIO")
        [('ORG', 0, 1), ('MISC', 1, 2), ('PER', 3, 5)]

    Raises:
        DataError: a tag has a prefix the scheme does not allow (e.g. ``E-`` in IOB2).
        ConfigError: unknown scheme name.
    """
    parsed = _parse(tags, _resolve(scheme, [tags]))
    spans: list[Entity] = []
    begin: int | None = None
    for pos, (prev, cur) in enumerate(zip([_OUTSIDE, *parsed], [*parsed, _OUTSIDE], strict=True)):
        if begin is not None and _chunk_ends(prev, cur):
            spans.append((prev[1], begin, pos))
            begin = None
        if _chunk_starts(prev, cur):
            begin = pos
    return spans


# --- validation -----------------------------------------------------------------------------------


def validate_tags(tags: Sequence[str], scheme: str, *, file: str | Path | None = None, line: int | None = None) -> None:
    """Raise :class:`DataError` at the first tag that breaks the scheme; return ``None`` if none.

    Positions in messages are 0-based token indices; ``file`` and ``line`` locate the sentence.
    Checks: IOB2 - ``I-X`` must follow ``B-X``/``I-X``; IOB1 - ``B-X`` must follow ``B-X``/``I-X``;
    IOBES/BMES - ``I-X``/``M-X`` and ``E-X`` must follow ``B-X`` or an inside ``X`` tag, and every
    ``B-X`` must be closed by ``E-X`` (a sequence may not end inside an entity). With ``"auto"`` the
    scheme is detected from this one sequence (a stray ``I-X`` can then read as IOB1): prefer naming
    the scheme, or detect it once over the whole file with :func:`detect_scheme`.
    """
    name = _resolve(scheme, [tags])
    parsed = _parse(tags, name, file=file, line=line)
    check = _check_iobes if name in ("IOBES", "BMES") else _check_iob
    problem = check(parsed, name)
    if problem is not None:
        raise DataError(problem, file=file, line=line)


def _check_iob(parsed: list[_Tag], scheme: str) -> str | None:
    """First violation in IOB2 (``I-X`` opens an entity) or IOB1 (``B-X`` not after an ``X``)."""
    must_continue = "I" if scheme == "IOB2" else "B"
    for pos, (prev, cur) in enumerate(zip([_OUTSIDE, *parsed], parsed, strict=False)):
        if cur[0] != must_continue or (prev[0] in "BI" and _same(prev, cur)):
            continue
        after = "the start of the sequence" if pos == 0 else repr(_show(prev, scheme))
        kind = cur[1]
        if scheme == "IOB2":
            rule = f"an I- tag must continue B-{kind} or I-{kind}"
        else:
            rule = f"a B- tag may only start an entity right after B-{kind} or I-{kind}"
        return f"position {pos}: tag {_show(cur, scheme)!r} follows {after}; in {scheme} {rule}"
    return None


def _check_iobes(parsed: list[_Tag], scheme: str) -> str | None:
    """First violation in IOBES/BMES: inside/end tags with no opening, entities never closed."""
    inner = _INNER[scheme]
    for pos, (prev, cur) in enumerate(zip([_OUTSIDE, *parsed], [*parsed, _OUTSIDE], strict=True)):
        is_open = prev[0] in "BI"
        continues = cur[0] in "IE" and _same(prev, cur)
        if is_open and not continues:
            opener, kind = _show(prev, scheme), prev[1]
            rule = f"in {scheme} {opener} must be followed by {inner}-{kind} or E-{kind}"
            if pos == len(parsed):
                return f"position {pos - 1}: the sequence ends inside an entity at {opener!r}; {rule}"
            return f"position {pos}: tag {_show(cur, scheme)!r} follows {opener!r}; {rule}"
        if not is_open and cur[0] in "IE":
            tag, kind = _show(cur, scheme), cur[1]
            after = "the start of the sequence" if pos == 0 else repr(_show(prev, scheme))
            return (
                f"position {pos}: tag {tag!r} follows {after}, with no B-{kind} before it; "
                f"in {scheme} {tag} must follow B-{kind} or {inner}-{kind}"
            )
    return None


# --- conversion -----------------------------------------------------------------------------------


def convert_tags(tags: Sequence[str], src: str, dst: str) -> list[str]:
    """Rewrite a well-formed tag sequence from scheme ``src`` into ``dst`` (IOB2/IOB1/IOBES/BMES).

    Entities are kept: ``extract_entities(convert_tags(t, s, d), d) == extract_entities(t, s)``.
    Untyped tags come back typed as ``"_"`` (``"B"`` becomes ``"B-_"``).

    Example:
        >>> convert_tags(["B-PER", "I-PER", "I-PER", "O", "B-LOC"], "BIO", "BMES")
        ['B-PER', 'M-PER', 'E-PER', 'O', 'S-LOC']

    Raises:
        DataError: ``tags`` break scheme ``src`` (see :func:`validate_tags`).
        ConfigError: unknown scheme, or ``dst`` is ``auto``.
    """
    src_name = _resolve(src, [tags])
    dst_name = normalise_scheme(dst)
    if dst_name == "auto":
        raise ConfigError("convert_tags needs an explicit target scheme, not 'auto'")
    validate_tags(tags, src_name)
    out = ["O"] * len(tags)
    prev_end, prev_type = -1, ""
    for kind, start, end in extract_entities(tags, src_name):
        out[start:end] = _render(kind, end - start, dst_name, start == prev_end and kind == prev_type)
        prev_end, prev_type = end, kind
    return out


def _render(kind: str, length: int, scheme: str, touches_same_type: bool) -> list[str]:
    """The tags of one entity ``length`` tokens long; ``touches_same_type`` matters only in IOB1."""
    if scheme == "IOB1":
        return [f"{'B' if touches_same_type else 'I'}-{kind}"] + [f"I-{kind}"] * (length - 1)
    if scheme == "IOB2":
        return [f"B-{kind}"] + [f"I-{kind}"] * (length - 1)
    if length == 1:
        return [f"S-{kind}"]
    return [f"B-{kind}"] + [f"{_INNER[scheme]}-{kind}"] * (length - 2) + [f"E-{kind}"]
