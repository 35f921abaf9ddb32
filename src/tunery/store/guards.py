"""Guards: a chat model bound to a topic classifier, per organization, and the decisions taken (issue #15)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select

from tunery.errors import InvalidRequest, NotFound
from tunery.store.common import org_id_of
from tunery.store.db import Store, now
from tunery.store.tables import Guard, GuardDecision

DEFAULT_REFUSAL = "I'm sorry, but I can only answer questions about this topic."
DEFAULT_SEPARATOR = "\n\n###\n\n"
DEFAULT_TEMPLATE = "{question}"
DEFAULT_ANSWER_TEMPLATE = "{question} {answer}"
DEFAULT_THRESHOLD = 0.5
DEFAULT_POSITIVE = " yes"


@dataclass
class GuardSpec:
    """What `tunery guard set` / POST /v1/tunery/guards/{model} sets."""

    classifier: str
    threshold: float = DEFAULT_THRESHOLD
    refusal: str = DEFAULT_REFUSAL
    separator: str = DEFAULT_SEPARATOR
    prompt_template: str = DEFAULT_TEMPLATE
    positive_label: str = DEFAULT_POSITIVE
    check_answer: bool = False
    answer_template: str = DEFAULT_ANSWER_TEMPLATE

    def validate(self) -> "GuardSpec":
        def bad(param: str, msg: str):
            raise InvalidRequest(msg, param=param, code="invalid_value")

        if not isinstance(self.classifier, str) or not self.classifier:
            bad("classifier", "classifier must name a model (a discriminator fine-tune)")
        if not 0 <= self.threshold <= 1:
            bad("threshold", f"threshold must be between 0 and 1, got {self.threshold}")
        if not self.refusal.strip() or len(self.refusal) > 4000:
            bad("refusal", "refusal must be a non-empty text of at most 4000 characters")
        if not self.separator:
            bad("separator", "separator must not be empty (it must match the classifier's training prompts)")
        if "{question}" not in self.prompt_template:
            bad("prompt_template", "prompt_template must contain {question}")
        if "{answer}" not in self.answer_template:
            bad("answer_template", "answer_template must contain {answer}")
        if not self.positive_label.strip():
            bad("positive_label", "positive_label must not be blank")
        return self


def _row_dict(row: Guard) -> dict:
    return {"model": row.model, "classifier": row.classifier, "threshold": row.threshold, "refusal": row.refusal,
            "separator": row.separator, "prompt_template": row.prompt_template,
            "positive_label": row.positive_label, "check_answer": row.check_answer,
            "answer_template": row.answer_template, "created_at": row.created_at, "updated_at": row.updated_at}


def set_guard(store: Store, org, model: str, spec: GuardSpec, *, allow_paths: bool = True) -> Guard:
    """Create or replace the guard of `model`; both models must be servable for this organization
    (`allow_paths`: as in find_servable_model — False over an API with keys)."""
    from tunery.errors import TuneryError
    from tunery.store.models import find_servable_model

    spec.validate()
    find_servable_model(store, org, model, allow_paths=allow_paths)
    try:
        find_servable_model(store, org, spec.classifier, allow_paths=allow_paths)
    except TuneryError as exc:  # unknown (404) or a junk directory (400): either way the error names classifier
        raise type(exc)(exc.message, param="classifier", code=exc.code) from None
    oid, t = org_id_of(org), now()
    with store.session() as s:
        row = s.execute(select(Guard).where(Guard.org_id == oid, Guard.model == model)).scalar_one_or_none()
        if row is None:
            row = Guard(org_id=oid, model=model, created_at=t)
            s.add(row)
        for k, v in vars(spec).items():
            setattr(row, k, v)
        row.updated_at = t
    return row


def find_guard(store: Store, org, model: str) -> Guard | None:
    with store.read() as s:
        return s.execute(select(Guard).where(Guard.org_id == org_id_of(org), Guard.model == model)
                         ).scalar_one_or_none()


def get_guard(store: Store, org, model: str) -> Guard:
    row = find_guard(store, org, model)
    if row is None:
        raise NotFound(f"No guard is set for model '{model[:300]}'.", param="model", code="guard_not_found")
    return row


def list_guards(store: Store, org) -> list[Guard]:
    with store.read() as s:
        return list(s.execute(select(Guard).where(Guard.org_id == org_id_of(org)).order_by(Guard.pk)).scalars())


def delete_guard(store: Store, org, model: str) -> None:
    with store.session() as s:
        res = s.execute(delete(Guard).where(Guard.org_id == org_id_of(org), Guard.model == model))
    if not res.rowcount:
        raise NotFound(f"No guard is set for model '{model[:300]}'.", param="model", code="guard_not_found")


def record_decision(store: Store, org, model: str, *, stage: str, score: float, allowed: bool, text: str) -> None:
    with store.session() as s:
        s.add(GuardDecision(org_id=org_id_of(org), model=model, created_at=now(), stage=stage, score=float(score),
                            allowed=bool(allowed), text=(text or "")[:500]))


def decision_counts(store: Store, org, model: str) -> dict:
    """{checked, allowed, declined, declined_question, declined_answer} over every recorded decision."""
    with store.read() as s:
        rows = s.execute(select(GuardDecision.stage, GuardDecision.allowed, func.count())
                         .where(GuardDecision.org_id == org_id_of(org), GuardDecision.model == model)
                         .group_by(GuardDecision.stage, GuardDecision.allowed)).all()
    c = {(stage, allowed): n for stage, allowed, n in rows}
    dq, da = c.get(("question", False), 0), c.get(("answer", False), 0)
    checked = sum(n for (stage, _), n in c.items() if stage == "question")
    return {"checked": checked, "allowed": checked - dq - da, "declined": dq + da, "declined_question": dq,
            "declined_answer": da}


def guard_object(store: Store, org, row: Guard) -> dict:
    """The wire object of GET/POST /v1/tunery/guards/{model}."""
    return {"object": "tunery.guard", **_row_dict(row), "decisions": decision_counts(store, org, row.model)}
