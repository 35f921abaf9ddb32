"""Jobs split over several processes through the real worker: `tunery worker --procs-per-job N` (and its
setting), pause/resume and a SIGKILLed worker with 2 ranks, a rank that dies. Real processes, real
torch.distributed (gloo) on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_api_support import make_server  # noqa: F401  (fixture)
from test_worker import FAST, WorkerProcs, children_of, create_job, messages, metrics_steps, upload, wait_for
from tunery.settings import Settings
from tunery.store import queue


@pytest.fixture(autouse=True)
def _fast_worker(monkeypatch):
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def workers(tmp_path):
    w = WorkerProcs(tmp_path)
    yield w
    w.stop_all()


def ranks_of(pid: int) -> list[int]:
    """The self-launched ranks (python -m tunery.train.distributed) among pid's descendants."""
    out = []
    for p in descendants(pid):
        try:
            if b"tunery.train.distributed" in Path(f"/proc/{p}/cmdline").read_bytes():
                out.append(p)
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


def finished(client, job_id: str, timeout: float):
    return wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed")
                    and j, timeout, f"{job_id} to finish", every=0.25)


def losses(store, job_id: str) -> list[float]:
    return [m["train_loss"] for m in queue.metrics_events(store, job_id)]


# --- the setting ------------------------------------------------------------------------------------

def test_procs_per_job_is_auto_by_default_and_takes_a_count(tmp_path):
    assert Settings.from_env({"TUNERY_HOME": str(tmp_path)}).worker.procs_per_job == "auto"
    s = Settings.from_env({"TUNERY_HOME": str(tmp_path), "TUNERY_WORKER_PROCS_PER_JOB": " 2 "})
    assert s.worker.procs_per_job == 2 and Settings.from_env(s.to_env()) == s
    for bad in ("0", "-1", "two", "1.5", "65"):
        with pytest.raises(ValueError, match="TUNERY_WORKER_PROCS_PER_JOB"):
            Settings.from_env({"TUNERY_HOME": str(tmp_path), "TUNERY_WORKER_PROCS_PER_JOB": bad})


def test_the_worker_cli_rejects_a_bad_procs_per_job(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tunery.cli", "worker", "--procs-per-job", "none"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--procs-per-job" in out.stderr and "Traceback" not in out.stderr


def test_a_worker_with_procs_per_job_2_trains_each_job_in_two_ranks(make_server, workers, tiny_model_dir,
                                                                   tmp_path):
    srv = make_server()
    client = srv.client()
    fid = upload(client, tmp_path)
    one = create_job(client, tiny_model_dir, fid, seed=5)  # 16 steps
    # the setting forces one process (auto would split this run: its estimate at the
    # default throughput is over 40 s)
    assert workers.start("--until-idle", TUNERY_WORKER_PROCS_PER_JOB="1").wait(timeout=120) == 0, workers.log(0)
    one = client.fine_tuning.jobs.retrieve(one.id)
    assert one.status == "succeeded", one.error
    assert any("runs in 1 process (procs-per-job 1)" in m for m in messages(client, one.id))
    assert not any("Training in 2 processes" in m for m in messages(client, one.id))

    two = create_job(client, tiny_model_dir, fid, seed=5)
    assert workers.start("--procs-per-job", "2", "--until-idle").wait(timeout=120) == 0, workers.log(1)
    assert "procs-per-job 2" in workers.log(1)
    two = client.fine_tuning.jobs.retrieve(two.id)
    assert two.status == "succeeded", two.error
    texts = messages(client, two.id)
    assert any("runs in 2 processes (procs-per-job 2)" in m for m in texts)
    assert any("Training in 2 processes (torch.distributed, gloo)" in m for m in texts)
    # rank 0 alone reports: one metrics event per step, one checkpoint row; the curve of one process
    assert metrics_steps(client, two.id) == list(range(1, 17))
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(two.id)] == [16]
    assert losses(srv.store, two.id) == pytest.approx(losses(srv.store, one.id), abs=1e-4)
