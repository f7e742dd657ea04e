"""Folders written by ``datasets.Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``, read into rows.

Integer ``ClassLabel`` values (and sequences of them) become their names, so downstream code sees the same
label strings as from a CSV file; ``-1`` (the datasets convention for "no label") becomes ``None``.
``datasets`` is imported only when such a folder is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptune.data.formats.source import Location, Row
from adaptune.errors import DataError


def _load(path: Path, split: str | None) -> tuple[Any, str | None]:
    """Load the folder and pick the split; returns the ``Dataset`` and the split's name."""
    import datasets

    file = str(path)
    try:
        loaded = datasets.load_from_disk(file)
    except (FileNotFoundError, ValueError, OSError) as err:
        message = f"not a folder written by datasets' save_to_disk ({err})"
        raise DataError(message, file=file) from None
    if isinstance(loaded, datasets.DatasetDict):
        available = ", ".join(loaded) or "none"
        if split is None:
            if len(loaded) != 1:
                message = f"the folder holds several splits; choose one with hf_split: {available}"
                raise DataError(message, file=file)
            split = next(iter(loaded))
        if split not in loaded:
            raise DataError(f"no split '{split}'; available splits: {available}", file=file)
        return loaded[split], split
    own = str(loaded.split) if loaded.split is not None else None
    if split is not None and own is not None and own != split:
        raise DataError(f"the folder holds only split '{own}', not '{split}'", file=file)
    return loaded, own


def _label_namer(feature: Any, location_of: Callable[[int], Location], column: str) -> Callable[[Any, int], Any]:
    """Make a function mapping a ``ClassLabel`` value (or list of values) in row ``index`` to its name(s)."""
    names: list[str] = feature.names

    def name(value: Any, index: int) -> Any:
        if value is None or value == -1:
            return None
        if isinstance(value, list):
            return [name(item, index) for item in value]
        if not isinstance(value, int) or not 0 <= value < len(names):
            raise location_of(index).error(f"label {value!r} is outside the {len(names)} class names", column)
        return names[value]

    return name


def _class_label_of(feature: Any) -> Any:
    """The ``ClassLabel`` of a feature, or of the items of a sequence feature; ``None`` when neither."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return feature
    inner = getattr(feature, "feature", None)
    return inner if isinstance(inner, datasets.ClassLabel) else None


def read_hf_rows(path: str | Path, split: str | None) -> list[Row]:
    """Read every row of one split of a saved dataset, with class labels turned into their names.

    Rows are located as ``folder:N`` with N the 1-based row number, and the message says ``row N``.

    Raises:
        DataError: when the folder is not a saved dataset, or ``split`` is missing (listing those present).
    """
    dataset, split_name = _load(Path(path), split)
    file = str(path)
    where = f" of split '{split_name}'" if split_name else ""

    def location_of(index: int) -> Location:
        return Location(file, index + 1, note=f"row {index + 1}{where}")

    namers = {
        column: _label_namer(label, location_of, column)
        for column, feature in dataset.features.items()
        if (label := _class_label_of(feature)) is not None
    }
    rows: list[Row] = []
    for index, record in enumerate(dataset.to_list()):
        for column, namer in namers.items():
            record[column] = namer(record[column], index)
        rows.append(Row(location_of(index), record))
    return rows
