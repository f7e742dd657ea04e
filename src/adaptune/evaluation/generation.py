"""Scores of generated text against references: exact match, ROUGE-1/2/L, chrF and BLEU, and the LM report table.

ROUGE-1, ROUGE-2 and ROUGE-L are rouge-score's (mean F-measure over examples, no stemming; Lin 2004); chrF
(Popović 2015) and BLEU (Papineni et al. 2002) are sacrebleu's corpus scores, 0-100. Text with CJK characters is
scored per character: ROUGE tokenises it into characters (rouge-score's own tokeniser drops them), and BLEU uses
sacrebleu's ``zh`` tokeniser. Which metrics a run reports is its recipe's choice (:mod:`adaptune.data.recipes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adaptune.data.records import is_cjk


def _has_cjk(texts: Sequence[str]) -> bool:
    return any(is_cjk(ch) for text in texts for ch in text)


class _CharTokenizer:
    """rouge-score tokeniser for CJK text: every CJK character is a token, other runs split on whitespace."""

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for word in text.lower().split():
            run = ""
            for ch in word:
                if is_cjk(ch):
                    tokens += [run] if run else []
                    tokens.append(ch)
                    run = ""
                else:
                    run += ch
            tokens += [run] if run else []
        return tokens


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower()


#: rouge-score's name of each ROUGE metric.
_ROUGE = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}
#: The metrics of :func:`generation_scores` when none are named.
DEFAULT_METRICS = ("exact_match", "rouge_l", "chrf", "bleu")


def generation_scores(
    references: Sequence[str], generations: Sequence[str], metrics: Sequence[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """The named ``metrics`` of ``generations`` against ``references``, in that order: ``exact_match`` (after
    lower-casing and collapsing whitespace) and ``rouge_1``/``rouge_2``/``rouge_l`` (mean F1), all 0-1, and
    corpus ``chrf`` and ``bleu``, 0-100."""
    if len(references) != len(generations):
        raise ValueError(f"{len(references)} references but {len(generations)} generations")
    unknown = [m for m in metrics if m not in (*_ROUGE, "exact_match", "bleu", "chrf")]
    if unknown:
        raise ValueError(f"unknown generation metric(s) {unknown}")
    if not references:
        return {}
    cjk = _has_cjk(references)
    scores = _rouge(references, generations, [m for m in metrics if m in _ROUGE], cjk)
    if "exact_match" in metrics:
        same = [_normalise(r) == _normalise(g) for r, g in zip(references, generations, strict=True)]
        scores["exact_match"] = sum(same) / len(same)
    if "chrf" in metrics or "bleu" in metrics:
        import sacrebleu

        hyps, refs = list(generations), [list(references)]
        scores["chrf"] = float(sacrebleu.corpus_chrf(hyps, refs).score)
        scores["bleu"] = float(sacrebleu.corpus_bleu(hyps, refs, tokenize="zh" if cjk else "13a").score)
    return {m: scores[m] for m in metrics}


def _rouge(references: Sequence[str], generations: Sequence[str], names: list[str], cjk: bool) -> dict[str, float]:
    """Mean ROUGE F1 of each of ``names`` (``rouge_1`` ...), CJK text tokenised per character."""
    if not names:
        return {}
    from rouge_score import rouge_scorer  # imported when needed: it pulls in nltk (~150 MB resident)

    scorer = rouge_scorer.RougeScorer([_ROUGE[m] for m in names], tokenizer=_CharTokenizer() if cjk else None)
    rows = [scorer.score(ref, gen) for ref, gen in zip(references, generations, strict=True)]
    return {m: sum(row[_ROUGE[m]].fmeasure for row in rows) / len(rows) for m in names}


def format_lm_report(report: dict[str, Any], split: str, markdown: bool = False) -> str:
    """The causal LM report (loss, perplexity, token counts, generation scores) as a two-column table."""
    rows = [(key, report[key]) for key in ("loss", "perplexity", "tokens", "examples") if key in report]
    rows += sorted(report.get("generation", {}).items())
    shown = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in rows]
    title = f"{split}: language modelling (loss on response tokens)"
    if markdown:
        return (
            "\n".join([f"### {title}", "", "| metric | value |", "|:--|--:|", *(f"| {k} | {v} |" for k, v in shown)])
            + "\n"
        )
    width = max((len(k) for k, _ in shown), default=6)
    return "\n".join([title, "=" * len(title), *(f"{k:<{width}}  {v}" for k, v in shown)]) + "\n"
