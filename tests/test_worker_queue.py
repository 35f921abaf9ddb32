"""The job queue on a real database (SQLite and PostgreSQL): atomic claims across processes, creation
order, leases, recovery of lost workers with an attempt limit, and conditional writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from sqlalchemy import select, update

from test_api_support import pg_server_url, pg_url, store, store_settings  # noqa: F401  (fixtures)
from tunery.store import queue
from tunery.store.db import now
from tunery.store.tables import FineTuningJob, FineTuningJobEvent, Organization


def _org(store, name="personal") -> str:
    with store.session() as s:
        oid = s.execute(select(Organization.id).where(Organization.name == name)).scalar()
        if oid is None:
            oid = f"org-{name}"
            s.add(Organization(id=oid, name=name, created_at=now()))
    return oid


def _queued_jobs(store, n: int, org: str = "personal", created_at: int | None = None) -> list[str]:
    oid = _org(store, org)
    t = created_at or now()
    ids = []
    with store.session() as s:
        for i in range(n):
            jid = f"ftjob-{org}{i:04d}x{time.monotonic_ns() % 10**9}"
            s.add(FineTuningJob(id=jid, org_id=oid, model="m", base_model="m", training_file="file-x", seed=1,
                                hyperparameters={}, method={"type": "supervised"}, status="queued",
                                result_files=[], created_at=t, attempts=0))
            ids.append(jid)
    return ids


CLAIM_SCRIPT = r"""
import os, sys, time
from tunery.settings import get_settings
from tunery.store.db import Store
from tunery.store.queue import claim_next
store = Store(get_settings())
owner = sys.argv[1]
open(sys.argv[2] + "." + owner, "w").close()  # ready
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
while True:
    job = claim_next(store, owner, 60)
    if job is None:
        break
    print(job.id, flush=True)
"""


def test_concurrent_workers_claim_each_job_exactly_once(store, store_settings, tmp_path):
    jobs = _queued_jobs(store, 60)
    go = tmp_path / "go"
    env = {**os.environ, "TUNERY_DATABASE_URL": store_settings.database_url}
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_SCRIPT, f"w{i}", str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    # Release them at once, when all four have imported and connected.
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"go.w{i}").exists() for i in range(4)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    claimed: list[str] = []
    per_worker = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids = out.split()
        per_worker.append(len(ids))
        claimed += ids
    assert sorted(claimed) == sorted(jobs)  # every job once: none lost, none twice
    assert sum(1 for n in per_worker if n) >= 2, per_worker  # they really did compete
    with store.read() as s:
        rows = s.execute(select(FineTuningJob.status, FineTuningJob.attempts,
                                FineTuningJob.lease_owner)).all()
    assert {r[0] for r in rows} == {"running"} and {r[1] for r in rows} == {1}
    assert all(r[2] in {f"w{i}" for i in range(4)} for r in rows)


def test_claims_follow_creation_order_within_an_organization(store):
    t = now()
    older = _queued_jobs(store, 2, "acme", created_at=t - 10)
    newer = _queued_jobs(store, 2, "acme", created_at=t)
    order = [queue.claim_next(store, "w", 60).id for _ in range(4)]
    assert order == older + newer
    assert queue.claim_next(store, "w", 60) is None


def test_claims_share_between_organizations_by_running_jobs(store):
    """Claims that stay running: the organization with fewer running jobs goes first, whatever its backlog."""
    t = now()
    acme = _queued_jobs(store, 4, "acme", created_at=t - 10)
    zeta = _queued_jobs(store, 2, "zeta", created_at=t - 5)
    order = [queue.claim_next(store, "w", 60).id for _ in range(6)]
    assert order == [acme[0], zeta[0], acme[1], zeta[1], acme[2], acme[3]]


def _finish(store, job_id: str, started_at: int) -> None:
    with store.session() as s:
        s.execute(update(FineTuningJob).where(FineTuningJob.id == job_id)
                  .values(status="succeeded", lease_owner=None, started_at=started_at, finished_at=started_at + 1))


def test_one_worker_takes_organizations_in_turn_so_a_backlog_cannot_starve_anyone(store):
    """One worker, one job at a time (each finishes before the next claim): a busy organization's ten
    queued jobs do not hold back a later organization's two; the organizations alternate."""
    t = now() - 1000
    busy = _queued_jobs(store, 10, "busy", created_at=t)
    late = _queued_jobs(store, 2, "late", created_at=t + 100)
    order = []
    for i in range(12):
        job = queue.claim_next(store, "w", 60)
        order.append(job.id)
        _finish(store, job.id, started_at=t + 200 + 10 * i)  # each job runs 10 s after the one before
    assert queue.claim_next(store, "w", 60) is None
    assert order == [busy[0], late[0], busy[1], late[1]] + busy[2:]


def test_writes_need_the_lease_and_running_status(store):
    (jid,) = _queued_jobs(store, 1)
    job = queue.claim_next(store, "w1", 60)
    assert job.id == jid and job.org_name == "personal" and job.attempts == 1
    assert queue.append_event_if_held(store, jid, "w1", "hello", level="info")
    assert not queue.append_event_if_held(store, jid, "w2", "stale worker", level="info")  # not the owner
    assert queue.renew_lease(store, jid, "w1", 60) and not queue.renew_lease(store, jid, "w2", 60)
    assert queue.add_checkpoint(store, jid, "w1", step=5, model_name="ft:m:personal::x:ckpt-step-5",
                                metrics={"step": 5}, path="/nowhere")
    # The API cancels: every later worker write is refused, so a cancel is never overwritten.
    with store.session() as s:
        s.execute(update(FineTuningJob).where(FineTuningJob.id == jid).values(status="cancelled"))
    assert not queue.append_event_if_held(store, jid, "w1", "after cancel", level="info")
    assert not queue.update_running(store, jid, "w1", trained_tokens=5)
    assert not queue.finish_failed(store, jid, "w1", code="x", message="late failure")
    assert not queue.renew_lease(store, jid, "w1", 60)
    with store.read() as s:
        row = s.execute(select(FineTuningJob).where(FineTuningJob.id == jid)).scalar_one()
        msgs = list(s.execute(select(FineTuningJobEvent.message)
                              .where(FineTuningJobEvent.job_id == jid)).scalars())
    assert row.status == "cancelled" and row.error is None and row.trained_tokens is None
    assert msgs == ["hello"]


def test_expired_leases_are_requeued_then_failed_after_the_attempt_limit(store):
    (jid,) = _queued_jobs(store, 1)
    for attempt in (1, 2, 3):
        job = queue.claim_next(store, "otherhost:1:abc", 60)
        assert job.id == jid and job.attempts == attempt
        assert queue.recover_expired(store, max_attempts=3) == []  # lease still valid: left alone
        queue.append_event_if_held(store, jid, "otherhost:1:abc", f"Training attempt {attempt} failed: boom", level="error")
        with store.session() as s:  # the worker vanishes: its lease runs out
            s.execute(update(FineTuningJob).where(FineTuningJob.id == jid).values(lease_expires_at=now() - 1))
        expected = "requeued" if attempt < 3 else "failed"
        assert queue.recover_expired(store, max_attempts=3) == [(jid, expected)]
    with store.read() as s:
        row = s.execute(select(FineTuningJob).where(FineTuningJob.id == jid)).scalar_one()
    assert row.status == "failed" and row.lease_owner is None and row.finished_at
    assert row.error["code"] == "worker_lost" and "3 times" in row.error["message"]
    assert "Training attempt 3 failed: boom" in row.error["message"]
    assert queue.claim_next(store, "w", 60) is None


def test_a_dead_worker_on_this_host_is_recovered_without_waiting_for_its_lease(store):
    (jid,) = _queued_jobs(store, 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{socket.gethostname()}:{dead.pid}:abc"
    queue.claim_next(store, owner, 3600)
    live_owner = f"{socket.gethostname()}:{os.getpid()}:abc"
    (jid2,) = _queued_jobs(store, 1)
    queue.claim_next(store, live_owner, 3600)
    assert queue.recover_expired(store) == [(jid, "requeued")]  # the live one keeps its job
    state = queue.job_state(store, jid2)
    assert state == ("running", live_owner)


def test_result_csv_has_openai_columns_and_one_row_per_step():
    text = queue.result_csv([
        {"step": 1, "train_loss": 2.5, "train_mean_token_accuracy": 0.25},
        {"step": 2, "train_loss": 2.0, "train_mean_token_accuracy": 0.5, "valid_loss": 2.2,
         "valid_mean_token_accuracy": 0.4},
        {"step": 2, "train_loss": 1.9, "train_mean_token_accuracy": 0.5},  # a resumed attempt's redo wins
    ])
    assert text.splitlines() == ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
                                 "1,2.5,0.25,,", "2,1.9,0.5,,"]


@pytest.mark.parametrize("bad", ["host:notapid:x", "", None])
def test_owner_ids_that_name_no_local_process_are_not_treated_as_dead(bad):
    assert queue._owner_is_dead_here(bad) is False
