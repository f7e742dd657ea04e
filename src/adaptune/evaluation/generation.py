"""Scores of generated text against references: exact match, ROUGE-L, chrF and BLEU, and the LM report table.

ROUGE-L is rouge-score's (F-measure, Lin 2004); chrF (Popović 2015) and BLEU (Papineni et al. 2002) are
sacrebleu's corpus scores, 0-100. Text with CJK characters is scored per character: ROUGE-L tokenises it into
characters (rouge-score's own tokeniser drops them), and BLEU uses sacrebleu's ``zh`` tokeniser.
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


def generation_scores(references: Sequence[str], generations: Sequence[str]) -> dict[str, float]:
    """``exact_match`` (after lower-casing and collapsing whitespace), ``rouge_l`` (mean F1), both 0-1, and
    corpus ``chrf`` and ``bleu``, 0-100."""
    if len(references) != len(generations):
        raise ValueError(f"{len(references)} references but {len(generations)} generations")
    if not references:
        return {}
    cjk = _has_cjk(references)
    import sacrebleu  # imported when needed (rouge-score pulls in nltk and sklearn: ~150 MB resident)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharTokenizer() if cjk else None)
    rouge = [scorer.score(ref, gen)["rougeL"].fmeasure for ref, gen in zip(references, generations, strict=True)]
    exact = [_normalise(r) == _normalise(g) for r, g in zip(references, generations, strict=True)]
    bleu = sacrebleu.corpus_bleu(list(generations), [list(references)], tokenize="zh" if cjk else "13a")
    chrf = sacrebleu.corpus_chrf(list(generations), [list(references)])
    return {
        "exact_match": sum(exact) / len(exact),
        "rouge_l": sum(rouge) / len(rouge),
        "chrf": float(chrf.score),
        "bleu": float(bleu.score),
    }


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
