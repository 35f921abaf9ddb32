"""Jobs split over several processes through the real worker: `tunery worker --procs-per-job N` (and its
setting), pause/resume and a SIGKILLed worker with 2 ranks, a rank that dies. Real processes, real
torch.distributed (gloo) on the tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_api_support import make_server  # noqa: F401  (fixture)
from test_worker import _fast_worker, workers  # noqa: F401  (fixtures: worker processes, fast timings)
from test_worker import WorkerProcs, alive, children_of, create_job, messages, metrics_steps, upload, wait_for
from tunery.settings import Settings
from tunery.store import queue

pytestmark = pytest.mark.usefixtures("_fast_worker")  # autouse only in test_worker itself


def ranks_of(pid: int) -> list[int]:
    """The self-launched ranks (python -m tunery.train.rank) among pid's descendants."""
    out = []
    for p in descendants(pid):
        try:
            if b"tunery.train.rank" in Path(f"/proc/{p}/cmdline").read_bytes():
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


# --- stopping and dying with 2 ranks ----------------------------------------------------------------

@pytest.fixture
def two_rank_worker(make_server):
    """A server with an embedded worker whose jobs train in 2 processes."""
    from tunery.worker import start_background_worker

    srv = make_server()
    bg = start_background_worker(srv.settings, procs_per_job=2)
    yield srv, srv.client()
    bg.stop()


def test_a_two_rank_job_paused_and_resumed_trains_the_uninterrupted_curve(two_rank_worker, tiny_model_dir,
                                                                          tmp_path):
    srv, client = two_rank_worker
    fid = upload(client, tmp_path, repeat=2)  # 32 steps per epoch
    straight = create_job(client, tiny_model_dir, fid, n_epochs=2, seed=3)
    paused = create_job(client, tiny_model_dir, fid, n_epochs=2, seed=3)  # trains after the first
    assert finished(client, straight.id, 150).status == "succeeded"
    wait_for(lambda: len(metrics_steps(client, paused.id)) >= 8, 60, "some steps of the second job")
    client.fine_tuning.jobs.pause(paused.id)
    wait_for(lambda: queue.job_state(srv.store, paused.id) == ("paused", None), 30, "the pause to be saved")
    at = max(metrics_steps(client, paused.id))
    assert 8 <= at < 64
    wait_for(lambda: not ranks_of(os.getpid()), 10, "both ranks to leave")  # nothing trains while paused

    client.fine_tuning.jobs.resume(paused.id)
    done = finished(client, paused.id, 150)
    assert done.status == "succeeded", done.error
    texts = messages(client, paused.id)
    assert any(f"Training paused at step {at}/64" in m for m in texts)
    assert any("Resuming training from its paused state" in m for m in texts)
    assert sum("runs in 2 processes" in m for m in texts) == 2  # both attempts
    assert metrics_steps(client, paused.id) == list(range(1, 65))
    # every rank restored the paused state exactly: the per-step losses of the run that never stopped
    assert losses(srv.store, paused.id) == pytest.approx(losses(srv.store, straight.id), abs=1e-4)
    assert ranks_of(os.getpid()) == []


def test_a_rank_that_dies_fails_the_attempt_and_the_retry_resumes(two_rank_worker, tiny_model_dir, tmp_path):
    srv, client = two_rank_worker
    job = create_job(client, tiny_model_dir, upload(client, tmp_path, repeat=2), n_epochs=2)  # 32 steps/epoch
    wait_for(lambda: any(s > 33 for s in metrics_steps(client, job.id)), 120, "training past the checkpoint")
    (rank1,) = ranks_of(os.getpid())
    (trainer,) = [p for p in children_of(os.getpid()) if rank1 in children_of(p)]
    t0 = time.monotonic()
    os.kill(rank1, signal.SIGKILL)  # as the OOM killer would
    wait_for(lambda: any("Training attempt 1 failed" in m for m in messages(client, job.id)), 30,
             "the attempt to fail")
    assert time.monotonic() - t0 < 30  # noticed at the next collective, not after its timeout
    assert not alive(trainer) and not alive(rank1)
    done = finished(client, job.id, 150)
    assert done.status == "succeeded", done.error
    texts = messages(client, job.id)
    assert any("Resuming training from the checkpoint at step 32 (attempt 2)" in m for m in texts)
    assert metrics_steps(client, job.id) == list(range(1, 65))
    assert ranks_of(os.getpid()) == []


def test_a_worker_killed_mid_run_leaves_no_rank_and_the_next_one_resumes(make_server, workers, tiny_model_dir,
                                                                        tmp_path):
    srv = make_server()
    client = srv.client()
    job = create_job(client, tiny_model_dir, upload(client, tmp_path, repeat=2), n_epochs=2)  # 32 steps/epoch
    worker = workers.start("--procs-per-job", "2")
    wait_for(lambda: any(s > 33 for s in metrics_steps(client, job.id)), 120, "training past the checkpoint")
    family = descendants(worker.pid)  # the trainer (rank 0), its rank 1, the pre-started spare child
    assert len(ranks_of(worker.pid)) == 1
    worker.kill()  # SIGKILL: no clean-up of any kind
    worker.wait()
    wait_for(lambda: not any(alive(p) for p in family), 10, "the trainer and its rank to die")
    assert queue.job_state(srv.store, job.id)[0] == "running"  # nobody has noticed yet

    worker = workers.start("--procs-per-job", "2")  # recovers the job (its owner is gone) and resumes it
    done = finished(client, job.id, 150)
    assert done.status == "succeeded", done.error
    texts = messages(client, job.id)
    assert any("was lost during attempt 1" in m for m in texts)
    assert any("Resuming training from the checkpoint at step 32 (attempt 2)" in m for m in texts)
    assert any("Training attempt 2 runs in 2 processes" in m for m in texts)
    assert metrics_steps(client, job.id) == list(range(1, 65))
    family = descendants(worker.pid)
    workers.stop_all()
    wait_for(lambda: not any(alive(p) for p in family), 10, "the worker's children to stop")
