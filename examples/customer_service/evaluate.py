"""Evaluate the customer-service models: intents, out-of-scope detection, and the router's hand-off threshold.

    .venv/bin/python examples/customer_service/evaluate.py banking77 [--record]
    .venv/bin/python examples/customer_service/evaluate.py clinc150 [--record]
    .venv/bin/python examples/customer_service/evaluate.py router

* ``banking77``: accuracy and macro-F1 on the BANKING77 test split, and the ten most confused intent pairs (both
  directions counted) as a markdown table in ``runs/customer_service/banking77_confused.md``.
* ``clinc150``: out-of-scope detection by a threshold on the classifier's confidence (the maximum softmax
  probability, Hendrycks & Gimpel 2017): the threshold is chosen on CLINC150 validation (in-scope ``dev`` plus
  ``oos_dev``) to maximise the mean of in-scope accuracy (a rejected in-scope query counts as wrong) and
  out-of-scope recall, then applied to the test split and ``oos_test``. Reports in-scope accuracy with and without
  the threshold and out-of-scope recall; ``runs/customer_service/clinc150_oos.png`` draws the test trade-off as the
  threshold moves, with the chosen point marked.
* ``router``: the same choice for the BANKING77 classifier that the router serves (BANKING77 dev as in-scope,
  CLINC150 ``oos_dev`` as out-of-scope), written to ``runs/customer_service/router.json`` for ``route.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / "runs" / "customer_service"
DATA = OUT / "data"
sys.path.insert(0, str(HERE.parent))


def read(path: Path) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def probabilities(predictor: object, texts: list[str]) -> np.ndarray:
    """``(n, labels)`` softmax probabilities from the adapter's logits."""
    import torch

    logits = torch.stack(predictor.logits(texts)).float()  # type: ignore[attr-defined]
    return torch.softmax(logits, dim=-1).numpy()


def confused_pairs(gold: list[str], predicted: list[str], top: int = 10) -> list[tuple[str, str, int, int]]:
    """The ``top`` unordered intent pairs with the most confusions: (a, b, a taken for b, b taken for a)."""
    counts = Counter((g, p) for g, p in zip(gold, predicted, strict=True) if g != p)
    pairs = Counter()
    for (g, p), n in counts.items():
        pairs[tuple(sorted((g, p)))] += n
    return [(a, b, counts[(a, b)], counts[(b, a)]) for (a, b), _ in pairs.most_common(top)]


def choose_threshold(in_conf: np.ndarray, in_correct: np.ndarray, oos_conf: np.ndarray) -> tuple[float, float]:
    """The confidence threshold that maximises (in-scope accuracy + out-of-scope recall) / 2; (threshold, value)."""
    candidates = np.unique(np.concatenate([in_conf, oos_conf, [0.0]]))
    best = (0.0, -1.0)
    for t in candidates:
        value = (np.mean(in_correct & (in_conf >= t)) + np.mean(oos_conf < t)) / 2
        if value > best[1]:
            best = (float(t), float(value))
    return best


def scope_figures(predictor: object, in_path: Path, oos_path: Path, labels: list[str]) -> dict[str, np.ndarray]:
    texts, gold = read(in_path)
    oos_texts, _ = read(oos_path)
    probs, oos_probs = probabilities(predictor, texts), probabilities(predictor, oos_texts)
    correct = np.array([labels[i] == g for i, g in zip(probs.argmax(1), gold, strict=True)])
    return {"in_conf": probs.max(1), "in_correct": correct, "oos_conf": oos_probs.max(1)}


def plot_tradeoff(test: dict[str, np.ndarray], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, 1, 201)
    accuracy = [np.mean(test["in_correct"] & (test["in_conf"] >= t)) for t in grid]
    recall = [np.mean(test["oos_conf"] < t) for t in grid]
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    ax.plot(recall, accuracy, label="threshold 0 to 1")
    chosen = (np.mean(test["oos_conf"] < threshold), np.mean(test["in_correct"] & (test["in_conf"] >= threshold)))
    ax.plot(*chosen, "o", color="tab:red", label=f"chosen on validation: {threshold:.3f}")
    ax.set_xlabel("out-of-scope recall (oos_test)")
    ax.set_ylabel("in-scope accuracy (test, rejections wrong)")
    ax.set_title("CLINC150: confidence threshold")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def banking77(adapter: Path, data: Path, out: Path) -> tuple[list, object]:
    from sklearn.metrics import accuracy_score, f1_score

    from adaptune.inference import Predictor

    predictor = Predictor.load(adapter)
    texts, gold = read(data / "banking77" / "test.csv")
    predicted = [p["label"] for p in predictor.predict(texts)]
    accuracy, macro = accuracy_score(gold, predicted), f1_score(gold, predicted, average="macro")
    lines = ["| intent a | intent b | a taken for b | b taken for a |", "|---|---|---:|---:|"]
    lines += [f"| {a} | {b} | {ab} | {ba} |" for a, b, ab, ba in confused_pairs(gold, predicted)]
    (out / "banking77_confused.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"BANKING77 test: accuracy {accuracy:.4f}, macro-F1 {macro:.4f} ({len(gold)} queries)")
    print("\n".join(lines))
    return [("accuracy", accuracy, {}), ("macro_f1", macro, {})], predictor


def clinc150(adapter: Path, data: Path, out: Path) -> tuple[list, object]:
    from adaptune.inference import Predictor

    predictor = Predictor.load(adapter)
    clinc = data / "clinc150"
    val = scope_figures(predictor, clinc / "dev.csv", clinc / "oos_dev.csv", predictor.labels)
    threshold, _ = choose_threshold(val["in_conf"], val["in_correct"], val["oos_conf"])
    test = scope_figures(predictor, clinc / "test.csv", clinc / "oos_test.csv", predictor.labels)
    plain = float(np.mean(test["in_correct"]))
    in_scope = float(np.mean(test["in_correct"] & (test["in_conf"] >= threshold)))
    recall = float(np.mean(test["oos_conf"] < threshold))
    plot_tradeoff(test, threshold, out / "clinc150_oos.png")
    print(
        f"CLINC150 test: in-scope accuracy {in_scope:.4f} with the threshold {threshold:.3f} chosen on validation "
        f"({plain:.4f} without it), out-of-scope recall {recall:.4f}; curve: {out / 'clinc150_oos.png'}"
    )
    extra = {"threshold": round(threshold, 4), "accuracy_without_threshold": round(plain, 4)}
    return [("in_scope_accuracy", in_scope, extra), ("oos_recall", recall, extra)], predictor


def router(adapter: Path, data: Path, out: Path) -> None:
    from adaptune.inference import Predictor

    predictor = Predictor.load(adapter)
    banking, clinc = data / "banking77", data / "clinc150"
    val = scope_figures(predictor, banking / "dev.csv", clinc / "oos_dev.csv", predictor.labels)
    threshold, value = choose_threshold(val["in_conf"], val["in_correct"], val["oos_conf"])
    test = scope_figures(predictor, banking / "test.csv", clinc / "oos_test.csv", predictor.labels)
    in_scope = float(np.mean(test["in_correct"] & (test["in_conf"] >= threshold)))
    recall = float(np.mean(test["oos_conf"] < threshold))
    (out / "router.json").write_text(json.dumps({"threshold": threshold}) + "\n", encoding="utf-8")
    print(
        f"router threshold {threshold:.3f} (validation mean {value:.4f}); on BANKING77 test + CLINC150 oos_test: "
        f"in-scope accuracy {in_scope:.4f}, hand-off recall {recall:.4f}; written to {out / 'router.json'}"
    )


def main() -> None:
    from records import record, run_summary, upsert

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["banking77", "clinc150", "router"])
    parser.add_argument("--adapter", type=Path, default=None, help="Default: runs/customer_service/<part>/adapter.")
    parser.add_argument("--data", type=Path, default=DATA, help="What prepare_data.py wrote.")
    parser.add_argument("--out", type=Path, default=OUT, help="Where the tables, plots and router.json go.")
    parser.add_argument("--record", action="store_true", help="Write the figures to benchmarks/results/quality.json.")
    args = parser.parse_args()
    folder = "banking77" if args.part == "router" else args.part
    adapter = args.adapter or args.out / folder / "adapter"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "router":
        router(adapter, args.data, args.out)
        return
    figures, predictor = (banking77 if args.part == "banking77" else clinc150)(adapter, args.data, args.out)
    if args.record:
        command = (
            f".venv/bin/adaptune train examples/customer_service/{args.part}.yaml && "
            f".venv/bin/python examples/customer_service/evaluate.py {args.part} --record"
        )
        description = predictor.description  # type: ignore[attr-defined]
        upsert(
            [
                record(
                    task="seq_cls",
                    dataset=args.part,
                    split="test",
                    model=description["base_model"]["name_or_path"],
                    method=description["method"]["name"],
                    metric=metric,
                    value=value,
                    scenario="customer_service",
                    **extra,
                    **run_summary(adapter.parent),
                    command=command,
                )
                for metric, value, extra in figures
            ]
        )
        print(f"{len(figures)} records written to benchmarks/results/quality.json")


if __name__ == "__main__":
    main()
