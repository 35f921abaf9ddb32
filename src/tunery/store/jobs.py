"""Fine-tuning jobs: creation with every up-front check, the API-side state transitions
(cancel, pause, resume), events and checkpoints.

State machine (docs/architecture.md): create → validating_files → queued (or failed); cancel: any
non-terminal → cancelled at once; pause: running|queued → paused; resume: paused → queued.
The worker (store/queue.py) claims queued → running and writes only conditionally on
status='running' AND its lease, so these transitions are never overwritten.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from tunery.data.validation import MIN_EXAMPLES
from tunery.errors import InvalidRequest, ModelNotFound, ModelUnavailable, NotFound, TuneryError
from tunery.ids import SUFFIX_RE, event_id, job_id
from tunery.settings import Settings
from tunery.store.common import Page, org_id_of, paginate
from tunery.store.db import Store, now
from tunery.store.tables import (
    ACTIVE_STATUSES, CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, TERMINAL_STATUSES, VALIDATING_FILES, File,
    FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent, Organization,
)
from tunery.train.config import HYPERPARAMETER_RANGES, keys_for

MAX_SEED = 2**31 - 1
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512

# What tunery.train can run: a job of another method would only fail in the worker, so it is refused here.
TRAINABLE_METHODS = ("supervised", "dpo")


@dataclass
class JobRequest:
    """The create parameters exactly as the SDK sends them (already JSON-decoded)."""

    model: Any
    training_file: Any
    validation_file: Any = None
    suffix: Any = None
    seed: Any = None
    hyperparameters: Any = None
    method: Any = None
    metadata: Any = None
    integrations: Any = None


# --- events ------------------------------------------------------------------------------------

def append_event(session, job_id_: str, message: str, *, level: str = "info", type: str = "message",
                 data: dict | None = None, created_at: int | None = None) -> FineTuningJobEvent:
    """Add one event inside the caller's transaction (the worker may use this too)."""
    ev = FineTuningJobEvent(id=event_id(), job_id=job_id_, created_at=created_at or now(), level=level,
                            message=message, type=type, data=data)
    session.add(ev)
    return ev


def add_event(store: Store, job_id_: str, message: str, **kw) -> FineTuningJobEvent:
    with store.session() as s:
        return append_event(s, job_id_, message, **kw)


def list_events(store: Store, org, jid: str, *, after: str | None = None, limit: int = 20
                ) -> Page[FineTuningJobEvent]:
    get_job(store, org, jid)
    with store.read() as s:
        stmt = select(FineTuningJobEvent).where(FineTuningJobEvent.job_id == jid)
        return paginate(s, stmt, FineTuningJobEvent, order_col=FineTuningJobEvent.seq, after=after,
                        limit=limit, desc=True)


def list_checkpoints(store: Store, org, jid: str, *, after: str | None = None, limit: int = 10
                     ) -> Page[FineTuningJobCheckpoint]:
    get_job(store, org, jid)
    with store.read() as s:
        stmt = select(FineTuningJobCheckpoint).where(FineTuningJobCheckpoint.job_id == jid)
        return paginate(s, stmt, FineTuningJobCheckpoint, order_col=FineTuningJobCheckpoint.pk, after=after,
                        limit=limit, desc=True)


# --- reads -------------------------------------------------------------------------------------

def _job_not_found(jid: str) -> NotFound:
    return NotFound(f"No such fine-tuning job: {str(jid)[:100]}", param="fine_tuning_job_id",
                    code="fine_tuning_job_not_found")


def get_job(store: Store, org, jid: str) -> FineTuningJob:
    with store.read() as s:
        row = s.execute(select(FineTuningJob).where(FineTuningJob.id == jid,
                                                    FineTuningJob.org_id == org_id_of(org))).scalar_one_or_none()
    if row is None:
        raise _job_not_found(jid)
    return row


def list_jobs(store: Store, org, *, after: str | None = None, limit: int = 20,
              metadata: dict[str, str] | None = None, no_metadata: bool = False) -> Page[FineTuningJob]:
    """Newest first. `metadata` keeps jobs whose metadata has every given pair."""
    with store.read() as s:
        stmt = select(FineTuningJob).where(FineTuningJob.org_id == org_id_of(org))
        if not metadata and not no_metadata:
            return paginate(s, stmt, FineTuningJob, order_col=FineTuningJob.pk, after=after, limit=limit)
        # JSON operators differ between SQLite and PostgreSQL; filter in Python over the org's jobs.
        rows = list(s.execute(stmt.order_by(FineTuningJob.pk.desc())).scalars())
    if no_metadata:
        rows = [r for r in rows if not r.metadata_]
    else:
        rows = [r for r in rows if all((r.metadata_ or {}).get(k) == v for k, v in metadata.items())]
    if after is not None:
        ids = [r.id for r in rows]
        if after not in ids:
            raise InvalidRequest(f"'after' names no job in this list: {after[:100]!r}", param="after",
                                 code="invalid_cursor")
        rows = rows[ids.index(after) + 1:]
    return Page(rows[:limit], len(rows) > limit)


# --- creation ----------------------------------------------------------------------------------

def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _check_model(name: Any, settings: Settings, *, restricted: bool = False) -> str:
    """The registry name the trainer will load, or a 400 naming `model`. Messages echo the name as
    given, never what it resolved to (for a path: the real directory). `restricted`: see resolve()."""
    from tunery.models import is_available, resolve
    from tunery.models.registry import check_model_dir

    if not isinstance(name, str) or not name.strip():
        raise _bad("model must be a non-empty string", "model")
    if len(name) > 1024 or "\x00" in name:
        raise _bad("model name is too long or contains a NUL character", "model")
    shown = name[:200]
    unknown = _bad(f"Model {shown} is not available for fine-tuning or does not exist. Use a name from "
                   "GET /v1/models.", "model", "model_not_available")
    try:
        resolved = resolve(name, settings, restricted=restricted)
    except ModelNotFound:
        raise unknown from None
    except TuneryError as exc:  # e.g. an alias loop: the operator's configuration, named as such
        raise _bad(exc.message, "model", exc.code or "invalid_value") from None
    except (OSError, ValueError):
        raise unknown from None
    if resolved.spec.kind == "local":
        check_model_dir(Path(resolved.spec.source), name)  # a junk directory is refused now, not in the trainer
        return resolved.name
    try:
        available = is_available(resolved.spec, settings)
    except (OSError, ValueError):
        available = False
    if not available:
        raise ModelUnavailable(
            f"Model {shown} ({resolved.name}) has no weights on this machine; run `tunery models pull "
            f"{resolved.name}` first.", param="model", code="model_not_available")
    return resolved.name


def _check_chat_model(base_model: str, settings: Settings, training_file: Path) -> None:
    """Chat data needs a chat template that builds assistant-only masks; refuse here, not in the worker.

    Built-in models get tested templates (models/templates.py) and are not loaded here (converting Gemma
    takes minutes); a local or Hugging Face model's tokenizer is loaded once per process and rendered.
    """
    from tunery.models import resolve
    from tunery.train.tokenize import chat_training_problem

    if resolve(base_model, settings).spec.kind == "gguf_package":
        return
    from tunery.data.tokens import get_counter

    try:
        tokenizer = get_counter(base_model, settings).tokenizer
    except TuneryError as exc:
        raise _bad(exc.message, "model", "model_not_available") from exc
    except (OSError, ValueError) as exc:  # what transformers raises for a tokenizer it cannot read
        raise _bad(f"The tokenizer of model {base_model[:200]} cannot be loaded: {str(exc)[:300]}", "model",
                   "model_not_available") from exc
    problem = chat_training_problem(tokenizer, base_model, training_file)
    if problem:
        raise _bad(problem[:4000], "model", "unsupported_model")


def _check_fine_tuned_model(store: Store, org: Organization, name: str, allow_paths: bool = True) -> str:
    """An ft: model (or one of its checkpoints) of this org to continue from: the base model it was trained on.
    The worker starts from its weights (the usual path: SFT first, then DPO on top)."""
    from tunery.store.models import find_servable_model

    if len(name) > 1024 or "\x00" in name:
        raise _bad("model name is too long or contains a NUL character", "model")
    try:
        servable = find_servable_model(store, org, name)
    except TuneryError as exc:
        raise _bad(f"Model {name[:200]} is not available for fine-tuning or does not exist: no such fine-tuned "
                   "model or checkpoint in this organization.", "model", "model_not_available") from exc
    from tunery.train.checkpoint import is_model_dir

    if not is_model_dir(servable.adapter_dir):
        raise _bad(f"The files of {name[:200]} are missing from this machine, so it cannot be trained further.",
                   "model", "model_not_available")
    return _check_model(servable.base_model, store.settings, restricted=not allow_paths)


def _check_file(s, org_id: str, fid: Any, param: str) -> File:
    if not isinstance(fid, str) or not fid:
        raise _bad(f"{param} must be a file id (file-…)", param)
    row = s.execute(select(File).where(File.id == fid, File.org_id == org_id)).scalar_one_or_none()
    if row is None:
        raise _bad(f"Invalid file ID: {fid[:100]}. No such file; upload it with purpose fine-tune first.",
                   param, "invalid_file_id" if param == "training_file" else "invalid_validation_file")
    if row.purpose != "fine-tune":
        raise _bad(f"File {fid} has purpose '{row.purpose}'; fine-tuning needs a file uploaded with purpose "
                   "'fine-tune'.", param, "invalid_file_purpose")
    if row.status == "error":
        raise _bad(f"File {fid} failed validation and cannot be used: {row.status_details or ''}"[:4000], param,
                   "invalid_training_file" if param == "training_file" else "invalid_validation_file")
    if row.status != "processed":
        raise _bad(f"File {fid} is still being processed; retry when its status is 'processed'.", param,
                   "file_not_ready")
    if not Path(row.path).is_file():
        raise _bad(f"The content of file {fid} is missing from the file store.", param, "invalid_file_id")
    n = (row.validation or {}).get("n_examples")
    if param == "training_file" and isinstance(n, int) and n < MIN_EXAMPLES:
        raise _bad(f"Training file {fid} has {n} example{'s' if n != 1 else ''}; fine-tuning needs at least "
                   f"{MIN_EXAMPLES} (a validation file may have fewer).", param, "invalid_training_file")
    return row


def _check_number(name: str, value: Any, param: str):
    if value == "auto":
        return value
    kind, low, high, low_inclusive = HYPERPARAMETER_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{name} must be 'auto' or a number, got {str(value)[:50]!r}", param)
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise _bad(f"{name} must be a whole number, got {value}", param)
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise _bad(f"{name} must be a finite number", param)
    too_low = value < low or (value == low and not low_inclusive)
    if too_low or value > high:
        lo = f"{'>=' if low_inclusive else '>'} {low:g}"
        raise _bad(f"{name} must be {lo} and <= {high:g}, got {value}", param)
    return value


def _check_hyperparameters(hp: Any, allowed: tuple[str, ...], param: str) -> dict:
    if hp is None:
        return {}
    if not isinstance(hp, dict):
        raise _bad(f"{param} must be an object", param)
    out = {}
    for key, value in hp.items():
        if key not in allowed:
            raise _bad(f"Unknown hyperparameter {str(key)[:64]!r}; allowed: {', '.join(allowed)}",
                       f"{param}.{str(key)[:64]}")
        out[key] = _check_number(key, value, f"{param}.{key}")
    return out


def _check_method(method: Any, deprecated_hp: Any) -> tuple[str, dict]:
    if method is None:
        mtype = "supervised"
        method = {}
    else:
        if not isinstance(method, dict):
            raise _bad("method must be an object with a 'type'", "method")
        mtype = method.get("type")
        if mtype == "reinforcement":
            raise _bad("Reinforcement fine-tuning is not supported by tunery; use 'supervised' or 'dpo'.",
                       "method.type")
        if mtype not in ("supervised", "dpo"):
            raise _bad(f"method.type must be 'supervised' or 'dpo', got {str(mtype)[:50]!r}", "method.type")
        for key in method:
            if key not in ("type", "supervised", "dpo", "reinforcement") or (key != "type" and key != mtype
                                                                               and method[key] is not None):
                raise _bad(f"method.{str(key)[:50]} does not go with method.type '{mtype}'",
                           f"method.{str(key)[:50]}")
    allowed = keys_for(mtype)
    inner = method.get(mtype) or {}
    if not isinstance(inner, dict):
        raise _bad(f"method.{mtype} must be an object", f"method.{mtype}")
    for key in inner:
        if key != "hyperparameters":
            raise _bad(f"Unknown field method.{mtype}.{str(key)[:50]}", f"method.{mtype}.{str(key)[:50]}")
    from_method = _check_hyperparameters(inner.get("hyperparameters"), allowed, f"method.{mtype}.hyperparameters")
    from_old = _check_hyperparameters(deprecated_hp, allowed, "hyperparameters")
    for key in set(from_method) & set(from_old):
        if from_method[key] != from_old[key]:
            raise _bad(f"hyperparameters.{key} ({from_old[key]}) conflicts with method.{mtype}.hyperparameters."
                       f"{key} ({from_method[key]}); set it in one place (method is the current one).",
                       "hyperparameters")
    hp = {key: "auto" for key in allowed}
    hp.update(from_old)
    hp.update(from_method)
    return mtype, hp


def _check_metadata(md: Any) -> dict | None:
    if md is None:
        return None
    if not isinstance(md, dict):
        raise _bad("metadata must be an object of string keys and string values", "metadata")
    if len(md) > METADATA_MAX_PAIRS:
        raise _bad(f"metadata has {len(md)} pairs; at most {METADATA_MAX_PAIRS} are allowed", "metadata")
    for k, v in md.items():
        if not isinstance(k, str) or len(k) > METADATA_MAX_KEY:
            raise _bad(f"metadata keys must be strings of at most {METADATA_MAX_KEY} characters", "metadata")
        if not isinstance(v, str) or len(v) > METADATA_MAX_VALUE:
            raise _bad(f"metadata[{k[:64]}] must be a string of at most {METADATA_MAX_VALUE} characters",
                       f"metadata.{k[:64]}")
    return dict(md)


def _check_integrations(integrations: Any) -> list | None:
    if integrations is None:
        return None
    if not isinstance(integrations, list) or len(integrations) > 8:
        raise _bad("integrations must be a list of at most 8 objects", "integrations")
    for i, it in enumerate(integrations):
        if not isinstance(it, dict) or it.get("type") != "wandb" or not isinstance(it.get("wandb"), dict) \
                or not isinstance(it["wandb"].get("project"), str):
            raise _bad("each integration must be {type: 'wandb', wandb: {project, ...}}", f"integrations[{i}]")
    return integrations


def _check_format(row: File, mtype: str, param: str) -> None:
    fmt = (row.validation or {}).get("format")
    if fmt is None:
        return
    if mtype == "dpo" and fmt != "preference":
        raise _bad(f"method dpo needs preference data ({{input, preferred_output, non_preferred_output}}); "
                   f"{row.id} is in {fmt} format.", param, "invalid_training_file")
    if mtype == "supervised" and fmt == "preference":
        raise _bad(f"{row.id} holds preference data; use method {{type: 'dpo'}} to train on it.", param,
                   "invalid_training_file")


def create_job(store: Store, org: Organization, req: JobRequest, *, allow_paths: bool = True) -> FineTuningJob:
    """Check everything that can be checked now (400 naming the field), then insert the job and queue it.
    `allow_paths=False` (the API with keys, or not on loopback) lets only registry names, aliases and
    directories under TUNERY_MODEL_DIRS be the base model."""
    settings = store.settings
    base_model = (_check_fine_tuned_model(store, org, req.model, allow_paths) if isinstance(req.model, str)
                  and req.model.startswith("ft:") else _check_model(req.model, settings, restricted=not allow_paths))
    suffix = req.suffix
    if suffix is not None:
        if not isinstance(suffix, str):
            raise _bad("suffix must be a string", "suffix")
        if len(suffix) > 64:
            raise _bad(f"suffix is {len(suffix)} characters; at most 64 are allowed", "suffix")
        if suffix == "":
            suffix = None
        elif not SUFFIX_RE.fullmatch(suffix):  # match's $ would allow a trailing "\n"
            raise _bad("suffix may contain only letters, digits, '.', '_' and '-'", "suffix")
    seed = req.seed
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise _bad(f"seed must be an integer between 0 and {MAX_SEED}", "seed")
    mtype, hp = _check_method(req.method, req.hyperparameters)
    metadata = _check_metadata(req.metadata)
    integrations = _check_integrations(req.integrations)
    t = now()
    jid = job_id()
    with store.read() as s:
        train = _check_file(s, org.id, req.training_file, "training_file")
        _check_format(train, mtype, "training_file")
        valid = None
        if req.validation_file is not None:
            valid = _check_file(s, org.id, req.validation_file, "validation_file")
            _check_format(valid, mtype, "validation_file")
    if valid is not None:
        from tunery.store.files import validate_pair

        problem = validate_pair(Path(train.path), Path(valid.path))
        if problem:
            raise _bad(problem[:4000], "validation_file", "invalid_validation_file")
    if mtype == "supervised" and (train.validation or {}).get("format") == "chat":
        _check_chat_model(base_model, settings, Path(train.path))
    if mtype not in TRAINABLE_METHODS:
        # Checked last, so a DPO request still learns everything else wrong with it.
        raise _bad(f"method {mtype} is not trained by this version of tunery yet (only "
                   f"{', '.join(TRAINABLE_METHODS)}); no job was created.", "method.type", "unsupported_method")
    job = FineTuningJob(
        id=jid, org_id=org.id, model=req.model, base_model=base_model, training_file=train.id,
        validation_file=valid.id if valid else None, suffix=suffix, seed=seed, hyperparameters=hp,
        method={"type": mtype}, metadata_=metadata, integrations=integrations, status=VALIDATING_FILES,
        result_files=[], created_at=t, attempts=0, updated_at=t,
        output_dir=str(settings.jobs_dir / jid))
    with store.session() as s:
        s.add(job)
        s.flush()
        append_event(s, jid, f"Created fine-tuning job: {jid}", created_at=t)
        files = f"training file: {train.id}" + (f" and validation file: {valid.id}" if valid else "")
        append_event(s, jid, f"Validating {files}", created_at=t)
        n_valid = (valid.validation or {}).get("n_examples") if valid is not None else None
        if isinstance(n_valid, int) and n_valid < MIN_EXAMPLES:
            append_event(s, jid, f"The validation file has only {n_valid} example(s): validation metrics "
                         "will be noisy.", level="warn", created_at=t)
        if integrations:
            append_event(s, jid, "Integrations (wandb) are recorded but not run by tunery", level="warn",
                         created_at=t)
    return _finish_validation(store, job)


def _finish_validation(store: Store, job: FineTuningJob) -> FineTuningJob:
    """validating_files → queued, or failed when a file vanished meanwhile (also used for recovery)."""
    problem = None
    with store.read() as s:
        for param, fid in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if fid is None:
                continue
            row = s.execute(select(File).where(File.id == fid)).scalar_one_or_none()
            if row is None or not Path(row.path).is_file():
                problem = {"code": "invalid_" + param, "param": param,
                           "message": f"The {param.replace('_', ' ')} {fid} was deleted before the job started."}
    t = now()
    with store.session() as s:
        if problem is None:
            values = {"status": QUEUED, "updated_at": t}
            message, level = "Files validated, moving job to queued state", "info"
        else:
            values = {"status": FAILED, "error": problem, "finished_at": t, "updated_at": t}
            message, level = f"Fine-tuning job failed: {problem['message']}", "error"
        res = s.execute(update(FineTuningJob).where(FineTuningJob.id == job.id,
                                                    FineTuningJob.status == VALIDATING_FILES).values(**values))
        if res.rowcount:
            append_event(s, job.id, message, level=level, created_at=t)
        row = s.execute(select(FineTuningJob).where(FineTuningJob.id == job.id)).scalar_one()
    return row


def recover_validating_jobs(store: Store) -> int:
    """Finish jobs left in validating_files by a crash between create's two writes."""
    with store.read() as s:
        rows = list(s.execute(select(FineTuningJob).where(FineTuningJob.status == VALIDATING_FILES)).scalars())
    for row in rows:
        _finish_validation(store, row)
    return len(rows)


# --- API-side transitions ----------------------------------------------------------------------

def _transition(store: Store, org, jid: str, *, allowed: tuple[str, ...], to: str, message: str,
                verb: str, extra: dict | None = None) -> FineTuningJob:
    """Conditional update (status must still be in `allowed`), so a racing worker write never wins both."""
    job = get_job(store, org, jid)
    t = now()
    with store.session() as s:
        values = {"status": to, "updated_at": t, **(extra or {})}
        res = s.execute(update(FineTuningJob)
                        .where(FineTuningJob.id == jid, FineTuningJob.status.in_(allowed)).values(**values))
        if res.rowcount:
            append_event(s, jid, message, created_at=t)
        row = s.execute(select(FineTuningJob).where(FineTuningJob.id == jid)).scalar_one()
    if not res.rowcount:
        status = row.status if row is not None else job.status
        if status in TERMINAL_STATUSES:
            raise InvalidRequest(f"Cannot {verb} job {jid}: it has already finished ({status}).", param="fine_tuning_job_id",
                                 code="invalid_job_status")
        raise InvalidRequest(f"Cannot {verb} job {jid}: it is {status}; only {' or '.join(allowed)} jobs can be "
                             f"{'cancelled' if verb == 'cancel' else verb + 'd'}.", param="fine_tuning_job_id",
                             code="invalid_job_status")
    return row


def cancel_job(store: Store, org, jid: str) -> FineTuningJob:
    return _transition(store, org, jid, allowed=ACTIVE_STATUSES, to=CANCELLED, verb="cancel",
                       message="Fine-tuning job cancelled", extra={"finished_at": now()})


def pause_job(store: Store, org, jid: str) -> FineTuningJob:
    return _transition(store, org, jid, allowed=(RUNNING, QUEUED), to=PAUSED, verb="pause",
                       message="Fine-tuning job paused; resume it to continue from where it stopped")


def resume_job(store: Store, org, jid: str) -> FineTuningJob:
    return _transition(store, org, jid, allowed=(PAUSED,), to=QUEUED, verb="resume",
                       message="Fine-tuning job resumed, moving job to queued state")
