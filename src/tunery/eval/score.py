"""Score answers against their cases, then aggregate per model and kind."""

from __future__ import annotations

import statistics
from typing import Iterable

from tunery.eval import metrics as M
from tunery.eval.decline import detect_declines
from tunery.eval.runner import Answer
from tunery.eval.spec import KINDS, Case

QUALITY = ("exact_match", "key_fact_recall", "token_f1", "chrf", "semantic_similarity")
"""Metrics in [0, 1] where higher is better, in the order reports show them."""
COST = ("answer_words", "latency_s", "completion_tokens")


def score(cases: list[Case], answers: list[Answer], embedder=None) -> list[dict]:
    """One result per answer: the answer's fields plus a `metrics` dict (None = not applicable)."""
    by_id = {c.id: c for c in cases}
    texts = [a.text or "" for a in answers]
    ok = [a.error is None for a in answers]
    # A guard's refusal is a decline whatever its wording.
    declined = [d or a.guard_declined for d, a in zip(detect_declines(texts, embedder), answers)]
    sims: list[float | None] = [None] * len(answers)
    if embedder is not None:
        idx = [i for i, a in enumerate(answers) if ok[i] and by_id[a.case_id].expected is not None]
        vals = embedder.similarity([texts[i] for i in idx], [by_id[answers[i].case_id].expected for i in idx])
        for i, v in zip(idx, vals):
            sims[i] = max(0.0, min(1.0, v))
    out = []
    for i, a in enumerate(answers):
        c = by_id[a.case_id]
        m: dict = {k: None for k in (*QUALITY, *COST, "answer_chars", "declined", "prompt_tokens")}
        m["facts_found"] = []
        if ok[i]:
            t = texts[i]
            if c.expected is not None:
                m["exact_match"] = M.exact_match(t, c.expected)
                m["token_f1"] = M.token_f1(t, c.expected)
                m["chrf"] = M.chrf(t, c.expected)
                m["semantic_similarity"] = sims[i]
            m["key_fact_recall"] = M.key_fact_recall(t, c.key_facts)
            m["facts_found"] = [M.fact_present(t, alts) for alts in c.key_facts]
            m.update(M.answer_length(t))
            m["latency_s"] = a.latency_s
            m["completion_tokens"] = a.completion_tokens
            m["prompt_tokens"] = a.prompt_tokens
            m["declined"] = declined[i]
        out.append({**a.to_dict(), "kind": c.kind, "should_decline": c.should_decline, "metrics": m})
    return out


def _mean(xs: Iterable) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def aggregate_group(results: list[dict]) -> dict:
    """Means of every metric over a group of results, plus counts and token totals."""
    good = [r for r in results if r["error"] is None]
    agg: dict = {"n": len(results), "errors": len(results) - len(good)}
    for k in (*QUALITY, *COST):
        agg[k] = _mean(r["metrics"][k] for r in good)
    agg["decline_rate"] = _mean(r["metrics"]["declined"] for r in good)
    should = [r for r in good if r["should_decline"]]
    # The question for off-topic cases: how often did it answer when it should have declined?
    agg["answered_when_should_decline"] = _mean(not r["metrics"]["declined"] for r in should)
    agg["n_should_decline"] = len(should)
    agg["tokens_total"] = sum((r["metrics"]["prompt_tokens"] or 0) + (r["metrics"]["completion_tokens"] or 0)
                              for r in good)
    lat = sorted(r["metrics"]["latency_s"] for r in good if r["metrics"]["latency_s"] is not None)
    agg["latency_p90_s"] = lat[min(len(lat) - 1, int(0.9 * len(lat)))] if lat else None
    return agg


def kinds_present(cases: list[Case]) -> list[str]:
    """Kinds in the spec, in the canonical order."""
    present = {c.kind for c in cases}
    return [k for k in KINDS if k in present]


def aggregate(results: list[dict], models: list[str], kinds: list[str]) -> dict:
    """{model: {kind: group, ..., "all": group}}."""
    summary: dict = {}
    for m in models:
        mine = [r for r in results if r["model"] == m]
        summary[m] = {k: aggregate_group([r for r in mine if r["kind"] == k]) for k in kinds}
        summary[m]["all"] = aggregate_group(mine)
    return summary
