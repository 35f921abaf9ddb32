"""The job queue: claim queued jobs under a lease, renew it, recover expired leases, and write a
running job's events, checkpoints and outcome.

Every write a worker makes is conditional on it still holding the job
(`WHERE id=? AND lease_owner=? AND status='running'`), so a job the API cancelled or paused, or one
another worker recovered after this worker's lease expired, is never overwritten by a stale worker.
These are the lease-holding variants of the store's writes: events, files and model rows themselves are
built only by store/jobs.py, store/files.py and store/models.py, inside this module's transactions.

Claiming is atomic: PostgreSQL locks the chosen row with FOR UPDATE SKIP LOCKED (concurrent workers
skip each other's rows instead of waiting); SQLite, which has one writer at a time, flips the next
queued row with a single UPDATE ... WHERE id=(SELECT ...) AND status='queued' RETURNING. Which row is
next is fair between organizations (fair_share_order).
"""

from __future__ import annotations

import csv
import io
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, delete, or_, select, update

from tunery import ids
from tunery.store.db import Store, now
from tunery.store.files import add_file_row, write_blob
from tunery.store.jobs import append_event
from tunery.store.models import register_model
from tunery.store.tables import (
    FAILED, PAUSED, QUEUED, RUNNING, SUCCEEDED, FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent,
    Organization,
)
from tunery.train.metric_names import RESULT_COLUMNS, RESULT_SOURCES

DEFAULT_MAX_ATTEMPTS = 3



@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run one job (a snapshot taken when it was claimed)."""

    id: str
    org_id: str
    org_name: str
    model: str
    base_model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: dict
    method: dict
    attempts: int
    output_dir: str | None
    created_at: int


def new_owner_id() -> str:
    """host:pid:random — unique per worker, and lets a restarted worker on the same host spot dead owners."""
    return f"{socket.gethostname()}:{os.getpid()}:{ids.random_token(6)}"


def _owner_is_dead_here(owner: str | None) -> bool:
    """True when owner names a process on this host that no longer exists (its lease can go at once)."""
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


# --- claiming ---------------------------------------------------------------------------------

def fair_share_order() -> tuple:
    """The order queued jobs are claimed in: fair share between organizations, creation order within one.

    First the organization with the fewest running jobs, then the one whose latest job started longest ago
    (never: first), then the oldest job (pk breaks ties within one second). So one organization's backlog
    cannot hold back another's job for longer than the jobs already running: with one worker the
    organizations take turns. With a single organization this is plain creation order."""
    from sqlalchemy import func

    j = FineTuningJob.__table__.alias("org_jobs")
    running = (select(func.count()).select_from(j)
               .where(j.c.org_id == FineTuningJob.org_id, j.c.status == RUNNING).scalar_subquery())
    last_start = (select(func.coalesce(func.max(j.c.started_at), 0)).select_from(j)
                  .where(j.c.org_id == FineTuningJob.org_id).scalar_subquery())
    return running, last_start, FineTuningJob.created_at, FineTuningJob.pk


def claim_next(store: Store, owner: str, lease_seconds: int) -> ClaimedJob | None:
    """Atomically move the next queued job (fair_share_order) to running under owner's lease; None when
    none is queued."""
    t = now()
    values = dict(status=RUNNING, lease_owner=owner, lease_expires_at=t + lease_seconds,
                  attempts=FineTuningJob.attempts + 1, updated_at=t)
    # A queued job may still carry the lease of a worker that is saving its paused state (pause then
    # resume in quick succession): it becomes claimable when that worker lets go or its lease expires.
    free = or_(FineTuningJob.lease_owner.is_(None), FineTuningJob.lease_expires_at < t)
    next_job = (select(FineTuningJob.id).where(FineTuningJob.status == QUEUED, free)
              .order_by(*fair_share_order()).limit(1))
    with store.session() as s:
        if store.dialect == "postgresql":
            job_id = s.execute(next_job.with_for_update(of=FineTuningJob, skip_locked=True)).scalar()
            if job_id is None:
                return None
            s.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(**values))
        else:
            job_id = s.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == next_job.scalar_subquery(), FineTuningJob.status == QUEUED)
                .values(**values).returning(FineTuningJob.id)).scalar()
            if job_id is None:
                return None
        job = s.execute(select(FineTuningJob).where(FineTuningJob.id == job_id)).scalar_one()
        if job.started_at is None:
            job.started_at = t
        org = s.execute(select(Organization.name).where(Organization.id == job.org_id)).scalar()
        return ClaimedJob(id=job.id, org_id=job.org_id, org_name=org or job.org_id, model=job.model,
                          base_model=job.base_model, training_file=job.training_file,
                          validation_file=job.validation_file, suffix=job.suffix, seed=job.seed,
                          hyperparameters=dict(job.hyperparameters or {}), method=dict(job.method or {}),
                          attempts=job.attempts, output_dir=job.output_dir, created_at=job.created_at)


def _held(job_id: str, owner: str, status: str = RUNNING):
    return and_(FineTuningJob.id == job_id, FineTuningJob.lease_owner == owner,
                FineTuningJob.status == status)


def renew_lease(store: Store, job_id: str, owner: str, lease_seconds: int) -> bool:
    """Heartbeat: extend the lease; False when this owner no longer holds the job (or it ended).
    A paused (or paused-then-resumed) job keeps its lease while the worker saves its resume state."""
    t = now()
    with store.session() as s:
        r = s.execute(update(FineTuningJob)
                      .where(FineTuningJob.id == job_id, FineTuningJob.lease_owner == owner,
                             FineTuningJob.status.in_((RUNNING, PAUSED, QUEUED)))
                      .values(lease_expires_at=t + lease_seconds))
        return r.rowcount == 1


def job_state(store: Store, job_id: str) -> tuple[str, str | None] | None:
    """(status, lease_owner) of a job, or None when it no longer exists."""
    with store.read() as s:
        row = s.execute(select(FineTuningJob.status, FineTuningJob.lease_owner)
                        .where(FineTuningJob.id == job_id)).first()
        return (row[0], row[1]) if row else None


def update_running(store: Store, job_id: str, owner: str, **values) -> bool:
    """Set columns (output_dir, resolved_hyperparameters, estimated_finish, trained_tokens) of a held job."""
    values["updated_at"] = now()
    with store.session() as s:
        return s.execute(update(FineTuningJob).where(_held(job_id, owner)).values(**values)).rowcount == 1


# --- events and checkpoints ------------------------------------------------------------------

def _lock_held(s, job_id: str, owner: str, statuses: tuple[str, ...]) -> bool:
    # A no-op UPDATE takes the row's write lock, so the insert that follows cannot race the API
    # changing the status (PostgreSQL); SQLite's BEGIN IMMEDIATE already serializes writers.
    r = s.execute(update(FineTuningJob)
                  .where(FineTuningJob.id == job_id, FineTuningJob.lease_owner == owner,
                         FineTuningJob.status.in_(statuses))
                  .values(updated_at=now()))
    return r.rowcount == 1


def append_event_if_held(store: Store, job_id: str, owner: str, message: str, *, level: str = "info",
                         type: str = "message", data: dict | None = None,
                         statuses: tuple[str, ...] = (RUNNING,)) -> bool:
    """store.jobs.append_event for a job this owner holds (in one of statuses); False (nothing written)
    otherwise. For a job no worker holds, use store.jobs.add_event."""
    with store.session() as s:
        if not _lock_held(s, job_id, owner, statuses):
            return False
        append_event(s, job_id, message, level=level, type=type, data=data)
        return True


def add_checkpoint(store: Store, job_id: str, owner: str, *, step: int, model_name: str, metrics: dict,
                   path: str, statuses: tuple[str, ...] = (RUNNING,)) -> str | None:
    """Record an epoch checkpoint of a held job; returns its ftckpt- id (None when not held)."""
    with store.session() as s:
        if not _lock_held(s, job_id, owner, statuses):
            return None
        # A resumed attempt may re-reach a step an earlier attempt already recorded: keep one row per step.
        s.execute(delete(FineTuningJobCheckpoint).where(FineTuningJobCheckpoint.job_id == job_id,
                                                        FineTuningJobCheckpoint.step_number == step))
        cid = ids.checkpoint_id()
        s.add(FineTuningJobCheckpoint(id=cid, job_id=job_id, created_at=now(), step_number=step,
                                      fine_tuned_model_checkpoint=model_name, metrics=metrics, path=path))
        return cid


def forget_missing_checkpoints(store: Store, job_id: str, owner: str) -> int:
    """Delete checkpoint rows whose folder the trainer pruned (it keeps the last few, as OpenAI does), so
    every listed checkpoint stays servable."""
    gone = [c.id for c in list_checkpoints(store, job_id) if not Path(c.path).exists()]
    if not gone:
        return 0
    with store.session() as s:
        if not _lock_held(s, job_id, owner, (RUNNING, PAUSED)):
            return 0
        s.execute(delete(FineTuningJobCheckpoint).where(FineTuningJobCheckpoint.id.in_(gone)))
    return len(gone)


def list_checkpoints(store: Store, job_id: str) -> list[FineTuningJobCheckpoint]:
    """The job's checkpoint rows, oldest step first."""
    with store.read() as s:
        return list(s.execute(select(FineTuningJobCheckpoint).where(FineTuningJobCheckpoint.job_id == job_id)
                              .order_by(FineTuningJobCheckpoint.step_number)).scalars())


def metrics_events(store: Store, job_id: str) -> list[dict]:
    """The data of the job's metrics events in order."""
    with store.read() as s:
        rows = s.execute(select(FineTuningJobEvent.data)
                         .where(FineTuningJobEvent.job_id == job_id, FineTuningJobEvent.type == "metrics")
                         .order_by(FineTuningJobEvent.seq)).scalars()
        return [dict(d) for d in rows if d]


def drop_metrics_after(store: Store, job_id: str, owner: str, step: int) -> int:
    """Delete metrics events past step (written by an attempt that died before its next checkpoint), so
    the job's loss curve stays one point per step when training resumes from that checkpoint."""
    with store.session() as s:
        if not _lock_held(s, job_id, owner, (RUNNING,)):
            return 0
        rows = s.execute(select(FineTuningJobEvent.seq, FineTuningJobEvent.data)
                         .where(FineTuningJobEvent.job_id == job_id,
                                FineTuningJobEvent.type == "metrics")).all()
        doomed = [seq for seq, data in rows if isinstance(data, dict) and int(data.get("step", 0)) > step]
        if doomed:
            s.execute(delete(FineTuningJobEvent).where(FineTuningJobEvent.seq.in_(doomed)))
        return len(doomed)


# --- outcomes ----------------------------------------------------------------------------------

def result_csv(metrics: list[dict]) -> str:
    """OpenAI's result file: step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy."""
    by_step: dict[int, dict] = {}
    for m in metrics:
        if "step" in m:
            by_step[int(m["step"])] = m  # the last attempt's value wins
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)

    def fmt(v):
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)

    for step in sorted(by_step):
        m = by_step[step]
        w.writerow([step] + [fmt(m.get(RESULT_SOURCES[c])) for c in RESULT_COLUMNS[1:]])
    return buf.getvalue()


def finish_succeeded(store: Store, job: ClaimedJob, owner: str, *, fine_tuned_model: str, model_path: str,
                     trained_tokens: int, resolved_hyperparameters: dict | None,
                     result_csv_text: str) -> bool:
    """One transaction: job → succeeded, model row registered, result CSV stored as a file.
    False (and nothing written) when the job is no longer running under this owner."""
    t = now()
    data = result_csv_text.encode()
    fid, blob = write_blob(store, data)
    ok = False
    try:
        with store.session() as s:
            values = dict(status=SUCCEEDED, fine_tuned_model=fine_tuned_model, trained_tokens=trained_tokens,
                          finished_at=t, result_files=[fid], lease_owner=None, lease_expires_at=None,
                          estimated_finish=None, error=None, updated_at=t)
            if resolved_hyperparameters:
                values["resolved_hyperparameters"] = resolved_hyperparameters
            if s.execute(update(FineTuningJob).where(_held(job.id, owner)).values(**values)).rowcount != 1:
                return False
            add_file_row(s, fid=fid, org=job.org_id, filename="step_metrics.csv", purpose="fine-tune-results",
                         nbytes=len(data), path=blob, created_at=t)
            register_model(store, job.org_id, model_id=fine_tuned_model, base_model=job.base_model,
                           job_id=job.id, path=model_path, session=s, created_at=t)
            append_event(s, job.id, f"New fine-tuned model created: {fine_tuned_model}", created_at=t)
            append_event(s, job.id, "The job has successfully completed", created_at=t)
            ok = True
            return True
    finally:
        if not ok:
            blob.unlink(missing_ok=True)


def finish_failed(store: Store, job_id: str, owner: str, *, code: str, message: str,
                  param: str | None = None) -> bool:
    """Held job → failed with error {code, message, param} and an error event."""
    t = now()
    with store.session() as s:
        r = s.execute(update(FineTuningJob).where(_held(job_id, owner)).values(
            status=FAILED, error={"code": code, "message": message, "param": param}, finished_at=t,
            lease_owner=None, lease_expires_at=None, estimated_finish=None, updated_at=t))
        if r.rowcount != 1:
            return False
        append_event(s, job_id, f"The job failed: {message}", level="error", created_at=t)
        return True


def requeue(store: Store, job_id: str, owner: str, *, reason: str, count_attempt: bool = True) -> bool:
    """Held job → queued again (lease cleared), e.g. after a trainer crash or a worker shutdown.
    count_attempt=False gives back the attempt the claim counted (a clean shutdown is no failure)."""
    t = now()
    values = dict(status=QUEUED, lease_owner=None, lease_expires_at=None, estimated_finish=None, updated_at=t)
    if not count_attempt:
        values["attempts"] = FineTuningJob.attempts - 1
    with store.session() as s:
        if s.execute(update(FineTuningJob).where(_held(job_id, owner)).values(**values)).rowcount != 1:
            return False
        append_event(s, job_id, reason, level="warn", created_at=t)
        return True


def release_paused(store: Store, job_id: str, owner: str, message: str) -> bool:
    """A job the API paused while this worker ran it: drop the lease once resume state is saved."""
    t = now()
    with store.session() as s:
        r = s.execute(update(FineTuningJob).where(_held(job_id, owner, PAUSED)).values(
            lease_owner=None, lease_expires_at=None, estimated_finish=None, updated_at=t))
        if r.rowcount != 1:
            return False
        append_event(s, job_id, message, created_at=t)
        return True


def release_stopped(store: Store, job_id: str, owner: str) -> None:
    """Clear a lease left on a job the API moved out of running (cancelled/paused) — bookkeeping only."""
    with store.session() as s:
        s.execute(update(FineTuningJob)
                  .where(FineTuningJob.id == job_id, FineTuningJob.lease_owner == owner,
                         FineTuningJob.status != RUNNING)
                  .values(lease_owner=None, lease_expires_at=None, estimated_finish=None))


def recover_expired(store: Store, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                    exclude: set[str] | frozenset = frozenset()) -> list[tuple[str, str]]:
    """Running jobs whose worker is gone (lease expired, or its process on this host is dead) go back to
    queued — or fail once they used max_attempts. Returns [(job_id, "requeued"|"failed")]."""
    t = now()
    with store.read() as s:
        rows = s.execute(select(FineTuningJob.id, FineTuningJob.lease_owner, FineTuningJob.lease_expires_at,
                                FineTuningJob.attempts).where(FineTuningJob.status == RUNNING)).all()
    out = []
    for job_id, owner, expires, attempts in rows:
        if job_id in exclude:
            continue
        if not ((expires is not None and expires < t) or owner is None or _owner_is_dead_here(owner)):
            continue
        with store.session() as s:
            cond = and_(FineTuningJob.id == job_id, FineTuningJob.status == RUNNING,
                        FineTuningJob.lease_owner == owner if owner is not None
                        else FineTuningJob.lease_owner.is_(None))
            if attempts >= max_attempts:
                msg = (f"The worker running this job stopped responding {attempts} times (attempt limit "
                       f"{max_attempts}); the last attempt was lost with its worker ({owner}).")
                last = _last_error(s, job_id)
                if last:
                    msg += f" Last error: {last}"
                r = s.execute(update(FineTuningJob).where(cond).values(
                    status=FAILED, error={"code": "worker_lost", "message": msg, "param": None},
                    finished_at=t, lease_owner=None, lease_expires_at=None, estimated_finish=None,
                    updated_at=t))
                if r.rowcount == 1:
                    append_event(s, job_id, f"The job failed: {msg}", level="error", created_at=t)
                    out.append((job_id, "failed"))
            else:
                r = s.execute(update(FineTuningJob).where(cond).values(
                    status=QUEUED, lease_owner=None, lease_expires_at=None, estimated_finish=None,
                    updated_at=t))
                if r.rowcount == 1:
                    append_event(s, job_id, f"The worker running this job ({owner}) was lost during attempt "
                                 f"{attempts}; the job is queued again and will resume from its last checkpoint",
                                 level="warn", created_at=t)
                    out.append((job_id, "requeued"))
    return out


def _last_error(s, job_id: str) -> str | None:
    msg = s.execute(select(FineTuningJobEvent.message)
                    .where(FineTuningJobEvent.job_id == job_id, FineTuningJobEvent.level == "error")
                    .order_by(FineTuningJobEvent.seq.desc()).limit(1)).scalar()
    return msg
