"""Rows → the SDK's object shapes (FileObject, FineTuningJob, events, checkpoints, Model)."""

from __future__ import annotations

import math

from tunery.store.tables import File, FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent, Organization
from tunery.train.config import SUPERVISED_KEYS
from tunery.train.metric_names import CHECKPOINT_KEYS



def file_object(row: File) -> dict:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": row.status,
            "status_details": row.status_details, "expires_at": None}


def job_hyperparameters(row: FineTuningJob) -> dict:
    """Requested values with "auto" replaced by the resolved numbers once the trainer knows them."""
    hp = dict(row.hyperparameters or {})
    for key, value in (row.resolved_hyperparameters or {}).items():
        if key in hp and value is not None:
            hp[key] = value
    return hp


def job_object(row: FineTuningJob, org: Organization | str | None = None) -> dict:
    hp = job_hyperparameters(row)
    mtype = (row.method or {}).get("type", "supervised")
    top = {k: hp.get(k, "auto") for k in SUPERVISED_KEYS}
    return {
        "id": row.id, "object": "fine_tuning.job", "created_at": row.created_at,
        "error": row.error or None, "fine_tuned_model": row.fine_tuned_model, "finished_at": row.finished_at,
        "hyperparameters": top, "model": row.model,
        "organization_id": getattr(org, "id", org) or row.org_id,
        "result_files": list(row.result_files or []), "seed": row.seed, "status": row.status,
        "trained_tokens": row.trained_tokens, "training_file": row.training_file,
        "validation_file": row.validation_file, "estimated_finish": row.estimated_finish,
        "integrations": row.integrations or None, "metadata": row.metadata_ or None,
        "method": {"type": mtype, mtype: {"hyperparameters": hp}},
        "user_provided_suffix": row.suffix,  # not in the SDK's type, but OpenAI sends it
    }


_LEVELS = {"info": "info", "warn": "warn", "warning": "warn", "error": "error", "debug": "info"}


def event_object(row: FineTuningJobEvent) -> dict:
    # Events come from several writers (API, worker, trainer); keep the wire values the SDK knows.
    level = _LEVELS.get(str(row.level).lower(), "info")
    etype = row.type if row.type in ("message", "metrics") else "message"
    return {"id": row.id, "object": "fine_tuning.job.event", "created_at": int(row.created_at), "level": level,
            "message": str(row.message), "type": etype, "data": json_safe(row.data) if row.data is not None else {}}


def checkpoint_object(row: FineTuningJobCheckpoint) -> dict:
    metrics = {k: _num((row.metrics or {}).get(k)) for k in CHECKPOINT_KEYS}
    if metrics["step"] is None:
        metrics["step"] = float(row.step_number)
    return {"id": row.id, "object": "fine_tuning.job.checkpoint", "created_at": row.created_at,
            "fine_tuned_model_checkpoint": row.fine_tuned_model_checkpoint, "fine_tuning_job_id": row.job_id,
            "metrics": metrics, "step_number": row.step_number}


def _num(value):
    try:
        value = None if value is None else float(value)
    except (TypeError, ValueError):
        return None
    return value if value is None or math.isfinite(value) else None


def json_safe(value):
    """NaN/inf (a diverged loss) become null: strict JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def model_object(info: dict) -> dict:
    return {"id": info["id"], "object": "model", "created": int(info["created"]), "owned_by": info["owned_by"]}


def list_object(data: list, has_more: bool | None = None) -> dict:
    out = {"object": "list", "data": data}
    if has_more is not None:
        out["has_more"] = has_more
    return out
