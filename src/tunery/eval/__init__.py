"""Evaluation: ask models (through any OpenAI-compatible endpoint) the training questions, variations
of them and off-topic questions; score the answers; compare fine-tuning jobs in one report."""

from tunery.eval.core import evaluate
from tunery.eval.runner import Answer, RunConfig
from tunery.eval.spec import Case, SpecError, load_spec

__all__ = ["Answer", "Case", "RunConfig", "SpecError", "evaluate", "load_spec"]
