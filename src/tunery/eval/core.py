"""One evaluation end to end: ask, score, aggregate, build the report."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from tunery.eval.report import build_report
from tunery.eval.runner import Answer, RunConfig, run
from tunery.eval.score import aggregate, kinds_present, score
from tunery.eval.spec import Case


def evaluate(cases: list[Case], models: list[str], cfg: RunConfig | None = None, *, semantic: bool = True,
             jobs=None, model_labels: dict | None = None,
             on_answer: Callable[[Answer], None] | None = None,
             on_stage: Callable[[str], None] | None = None) -> dict:
    """Run every case against every model and return the report dict (see report.build_report)."""
    cfg = cfg or RunConfig()
    answers = run(cases, models, cfg, on_answer)
    embedder = None
    if semantic:
        if on_stage:
            on_stage("loading the sentence-embedding model")
        from tunery.eval.embed import get_embedder

        embedder = get_embedder()
    if on_stage:
        on_stage("scoring")
    results = score(cases, answers, embedder)
    kinds = kinds_present(cases)
    config = {k: v for k, v in asdict(cfg).items() if k not in ("api_key", "variants")}
    return build_report(cases=cases, results=results, summary=aggregate(results, models, kinds), models=models,
                        kinds=kinds, config=config, jobs=jobs, model_labels=model_labels,
                        embedding_model=embedder.name if embedder else None)
