"""Write the fixed TNEWS split the quality runs use, from the shared dev file (CLUE's train file is not in
../shared/data): lines 1-7,000 train, 7,001-8,000 dev, 8,001-10,000 test, byte for byte, under
``runs/data/tnews/`` (the data's licence forbids shipping it, so it is never written into the repository).

    .venv/bin/python benchmarks/split_tnews.py        # then: .venv/bin/python benchmarks/quality.py tnews_e5_bottleneck
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "tnews" / "dev.json"
TARGET = ROOT / "runs" / "data" / "tnews"
SPLITS = {"train": (0, 7000), "dev": (7000, 8000), "test": (8000, 10000)}


def main() -> None:
    lines = SOURCE.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) != 10000:
        raise SystemExit(f"{SOURCE}: expected CLUE's 10,000 dev lines, found {len(lines)}")
    TARGET.mkdir(parents=True, exist_ok=True)
    for name, (start, end) in SPLITS.items():
        (TARGET / f"{name}.json").write_text("".join(lines[start:end]), encoding="utf-8")
        print(f"{TARGET / name}.json: lines {start + 1}-{end}")


if __name__ == "__main__":
    main()
