"""Fine-tuned models (rows written by the worker on success) and what inference may serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from tunery.errors import InvalidRequest, ModelNotFound, ModelUnavailable, PermissionDenied
from tunery.ids import parse_fine_tuned_name
from tunery.store.common import org_id_of
from tunery.store.db import Store, now
from tunery.store.tables import FineTuningJob, FineTuningJobCheckpoint, Model


@dataclass(frozen=True)
class ServableModel:
    """What the inference engine loads for a requested name."""

    id: str
    base_model: str
    """A registry name (tunery.models.materialize accepts it)."""
    adapter_dir: Path | None
    """The fine-tuned model or checkpoint dir (PEFT adapter or full weights); None for base models."""


def _missing(name: str) -> ModelNotFound:
    return ModelNotFound(f"The model '{str(name)[:300]}' does not exist or you do not have access to it.",
                         param="model", code="model_not_found")


def register_model(store: Store, org, *, model_id: str, base_model: str, job_id: str | None, path: str | Path,
                   session=None, created_at: int | None = None) -> Model:
    """Insert a fine-tuned model row (store.queue.finish_succeeded calls this inside its success transaction)."""
    row = Model(id=model_id, org_id=org_id_of(org), created_at=created_at or now(), base_model=base_model,
                job_id=job_id,
                path=str(path), deleted=False)
    if session is not None:
        session.add(row)
        return row
    with store.session() as s:
        s.add(row)
    return row


def list_fine_tuned_models(store: Store, org) -> list[Model]:
    with store.read() as s:
        return list(s.execute(select(Model).where(Model.org_id == org_id_of(org), Model.deleted.is_(False))
                              .order_by(Model.pk.desc())).scalars())


def available_models(store: Store, org) -> list[dict]:
    """What GET /v1/models lists: the organization's fine-tuned models (newest first), then every base model
    and alias not shadowed by one of them, as {id, created, owned_by}."""
    from tunery.models import list_models

    out = [{"id": row.id, "created": row.created_at, "owned_by": org.name}
           for row in list_fine_tuned_models(store, org)]
    seen = {m["id"] for m in out}
    for row in list_models(store.settings):
        if row["name"] not in seen:
            seen.add(row["name"])
            out.append({"id": row["name"], "created": BASE_MODEL_CREATED, "owned_by": "tunery"})
    return out


def get_fine_tuned_model(store: Store, org, name: str) -> Model:
    with store.read() as s:
        row = s.execute(select(Model).where(Model.id == name, Model.org_id == org_id_of(org),
                                            Model.deleted.is_(False))).scalar_one_or_none()
    if row is None:
        raise _missing(name)
    return row


def _checkpoint(store: Store, org, name: str) -> tuple[FineTuningJobCheckpoint, FineTuningJob]:
    parsed = parse_fine_tuned_name(name)
    with store.read() as s:
        found = s.execute(
            select(FineTuningJobCheckpoint, FineTuningJob)
            .join(FineTuningJob, FineTuningJob.id == FineTuningJobCheckpoint.job_id)
            .where(FineTuningJobCheckpoint.fine_tuned_model_checkpoint == name,
                   FineTuningJob.org_id == org_id_of(org))).first()
        if found is None or parsed is None:
            raise _missing(name)
        deleted = s.execute(select(Model.deleted).where(Model.id == parsed.model)).scalar_one_or_none()
    if deleted:
        raise _missing(name)
    return found[0], found[1]


def _resolve_base(store: Store, name: str, allow_paths: bool):
    """A base model name/alias/directory → its ResolvedModel; every failure is the one 404 body, so an
    unknown name, a forbidden path and a missing directory cannot be told apart."""
    from tunery.models import resolve

    try:
        return resolve(name, store.settings, restricted=not allow_paths)
    except (ModelNotFound, InvalidRequest, OSError, ValueError) as exc:
        raise _missing(name) from exc


def find_servable_model(store: Store, org, name: str, *, allow_paths: bool = True) -> ServableModel:
    """Base names/aliases → adapter_dir None; ft:… and ft:…:ckpt-step-N → their dir; else ModelNotFound.
    `allow_paths=False` (the API with keys, or not on loopback): see tunery.models.resolve(restricted)."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest("model must be a non-empty string", param="model")
    if name.startswith("ft:"):
        parsed = parse_fine_tuned_name(name)
        if parsed is None:
            raise _missing(name)
        if parsed.step is not None:
            ckpt, job = _checkpoint(store, org, name)
            return ServableModel(name, job.base_model, Path(ckpt.path))
        row = get_fine_tuned_model(store, org, name)
        return ServableModel(name, row.base_model, Path(row.path))
    resolved = _resolve_base(store, name, allow_paths)
    if resolved.spec.kind == "local":
        from tunery.models.registry import check_model_dir

        check_model_dir(Path(resolved.spec.source), name)  # 400 naming model, before the engine loads it
    return ServableModel(name, resolved.name, None)


def describe_model(store: Store, org, name: str, *, allow_paths: bool = True) -> dict:
    """{id, created, owned_by} for a base model, alias, fine-tuned model or checkpoint name."""
    if name.startswith("ft:"):
        parsed = parse_fine_tuned_name(name)
        if parsed is not None and parsed.step is not None:
            ckpt, _job = _checkpoint(store, org, name)
            return {"id": name, "created": ckpt.created_at, "owned_by": parsed.org}
        row = get_fine_tuned_model(store, org, name)
        return {"id": row.id, "created": row.created_at, "owned_by": parsed.org if parsed else "user"}
    resolved = _resolve_base(store, name, allow_paths)
    if resolved.spec.kind == "local":
        from tunery.models.registry import check_model_dir

        try:  # only a model directory is a model: any other path is the same 404 as an unknown name
            check_model_dir(Path(resolved.spec.source), name)
        except ModelUnavailable as exc:
            raise _missing(name) from exc
    return {"id": name, "created": BASE_MODEL_CREATED, "owned_by": "tunery"}


# A fixed date for base models (they have no creation in this store): tunery 0.1.0.
BASE_MODEL_CREATED = 1763683200


def delete_model(store: Store, org, name: str, *, allow_paths: bool = True) -> list[str]:
    """Mark a fine-tuned model deleted (its files stay with the job). Base models and checkpoints cannot
    be deleted (403 / 400 model_not_deletable). Returns the names that stop answering: the model and
    its checkpoints, for the engine to unload."""
    if not name.startswith("ft:"):
        describe_model(store, org, name, allow_paths=allow_paths)  # 404 for unknown names, before 403
        raise PermissionDenied(f"'{name[:300]}' is a base model; only fine-tuned models can be deleted.",
                               param="model", code="model_not_deletable")
    parsed = parse_fine_tuned_name(name)
    if parsed is not None and parsed.step is not None:
        _checkpoint(store, org, name)
        raise InvalidRequest("A checkpoint cannot be deleted on its own; delete its fine-tuned model.",
                             param="model", code="model_not_deletable")
    with store.session() as s:
        res = s.execute(update(Model).where(Model.id == name, Model.org_id == org_id_of(org),
                                            Model.deleted.is_(False)).values(deleted=True))
    if not res.rowcount:
        raise _missing(name)
    with store.read() as s:
        job_id = s.execute(select(Model.job_id).where(Model.id == name)).scalar_one_or_none()
        ckpts = [] if job_id is None else list(s.execute(
            select(FineTuningJobCheckpoint.fine_tuned_model_checkpoint)
            .where(FineTuningJobCheckpoint.job_id == job_id)).scalars())
    return [name, *ckpts]
