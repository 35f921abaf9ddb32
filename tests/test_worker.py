"""The worker with real processes: the official openai SDK over HTTP against a real server, real
`tunery worker` processes, real training children on the tiny model. Crash recovery kills processes
with SIGKILL for real."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from sqlalchemy import select

from conftest import build_tiny_model
from test_api_support import make_server, pg_server_url, pg_url  # noqa: F401  (fixtures)
from tunery import demo
from tunery.store import queue
from tunery.store.tables import FineTuningJob

FAST = {"TUNERY_WORKER_POLL_SECONDS": "0.25", "TUNERY_WORKER_LEASE_SECONDS": "6", "TUNERY_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _fast_worker(monkeypatch):
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)


def wait_for(pred, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def upload(client, tmp_path: Path, repeat: int = 1, name: str = "train.jsonl") -> str:
    """The demo training set; repeat > 1 adds variants (a numbered question) to make longer epochs."""
    lines = demo.read_text(demo.TRAIN_FILE).splitlines()
    out = []
    for k in range(repeat):
        for line in lines:
            ex = json.loads(line)
            if k:
                ex["messages"][1]["content"] += f" ({k})"
            out.append(json.dumps(ex))
    path = tmp_path / name
    path.write_text("\n".join(out) + "\n")
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def create_job(client, model_dir, training_file: str, *, n_epochs: int = 1, **kw):
    return client.fine_tuning.jobs.create(model=str(model_dir), training_file=training_file,
                                          hyperparameters={"n_epochs": n_epochs, "batch_size": 2}, **kw)


def metrics_steps(client, job_id: str) -> list[int]:
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=1000))
    return sorted(e.data["step"] for e in events if e.type == "metrics")


def messages(client, job_id: str) -> list[str]:
    return [e.message for e in reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=1000)))]


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class WorkerProcs:
    """`tunery worker` processes started by a test (killed at the end if still running)."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, **env) -> subprocess.Popen:
        """`tunery worker ARGS` with env on top of this process's environment."""
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", "tunery.cli", "worker", *args], stdout=log,
                             stderr=subprocess.STDOUT, env={**os.environ, **env})
        log.close()
        self.procs.append(p)
        return p

    def serve(self, port: int | None = None, args: list[str] = ()) -> tuple[subprocess.Popen, int]:
        """`tunery serve` (with its embedded worker unless args say otherwise), once it answers."""
        import httpx

        from test_api_support import free_port

        port = port or free_port()
        log = open(self.tmp_path / f"serve-{len(self.procs)}.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), *args],
                             stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        log.close()
        self.procs.append(p)

        def up():
            assert p.poll() is None, (self.tmp_path / f"serve-{len(self.procs) - 1}.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "tunery serve to answer", every=0.2)
        return p, port

    def log(self, i: int) -> str:
        return (self.tmp_path / f"worker-{i}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def workers(tmp_path):
    w = WorkerProcs(tmp_path)
    yield w
    w.stop_all()


@pytest.fixture
def embedded(make_server):
    """A server with an embedded worker thread, as `tunery serve` runs them."""
    from tunery.worker import start_background_worker

    srv = make_server()
    bg = start_background_worker(srv.settings)
    yield srv, srv.client()
    bg.stop()


def test_a_job_runs_to_a_registered_model_with_events_checkpoints_and_results(embedded, tiny_model_dir,
                                                                             tmp_path):
    from tunery.store import find_servable_model, get_org

    srv, client = embedded
    fid = upload(client, tmp_path)
    org = get_org(srv.store, "personal")
    vpath = tmp_path / "valid.jsonl"
    vpath.write_text(demo.read_text(demo.VALIDATION_FILE))
    vid = client.files.create(file=vpath.open("rb"), purpose="fine-tune").id
    job = create_job(client, tiny_model_dir, fid, n_epochs=4, validation_file=vid, suffix="guide")
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed")
                   and j, 120, "the job to finish")
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{tiny_model_dir.name}:personal:guide:{job.id[-8:]}"
    assert job.trained_tokens > 1000 and job.finished_at >= job.created_at
    hp = job.hyperparameters
    assert (hp.n_epochs, hp.batch_size) == (4, 2) and isinstance(hp.learning_rate_multiplier, float)

    # One metrics event per step, in order, with the SDK's metric names and OpenAI's message shape.
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    metrics = [e for e in reversed(events) if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 65))
    assert metrics[-1].data["total_steps"] == 64 and "valid_loss" in metrics[-1].data
    assert metrics[5].message.startswith("Step 6/64: training loss=")
    texts = messages(client, job.id)
    assert texts[-1] == "The job has successfully completed"
    assert any(t.startswith("Fine-tuning started") for t in texts)

    # Epoch checkpoints become checkpoint rows with servable names; like OpenAI, the last 3 are kept.
    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(c.step_number for c in ckpts) == [32, 48, 64]
    assert {c.fine_tuned_model_checkpoint for c in ckpts} == {f"{job.fine_tuned_model}:ckpt-step-{n}"
                                                              for n in (32, 48, 64)}
    assert all("full_valid_loss" in c.metrics.model_dump(exclude_none=True) for c in ckpts)
    for c in ckpts:
        assert (find_servable_model(srv.store, org, c.fine_tuned_model_checkpoint).adapter_dir
                / "adapter_config.json").exists()

    # The result CSV is a fine-tune-results file with one row per step.
    (rid,) = job.result_files
    assert client.files.retrieve(rid).purpose == "fine-tune-results"
    rows = client.files.content(rid).text.splitlines()
    assert rows[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 65))

    # The model is listed and servable at once, with no restart.
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    served = find_servable_model(srv.store, org, job.fine_tuned_model)
    assert (served.adapter_dir / "adapter_config.json").exists() and served.base_model == str(tiny_model_dir)

    # Cancelling a finished job is a 400 with a clear message.
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.cancel(job.id)
    assert "already finished" in err.value.message


def test_cancel_stops_training_within_seconds_and_registers_nothing(embedded, tiny_model_dir, tmp_path):
    srv, client = embedded
    job = create_job(client, tiny_model_dir, upload(client, tmp_path, repeat=8), n_epochs=5)
    wait_for(lambda: metrics_steps(client, job.id), 60, "training to start")
    t0 = time.monotonic()
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.id == job.id
    # The worker lets go of the job once its trainer stopped: within seconds.
    wait_for(lambda: queue.job_state(srv.store, job.id) == ("cancelled", None), 10, "the trainer to stop")
    stopped_after = time.monotonic() - t0
    steps = metrics_steps(client, job.id)
    time.sleep(1)
    assert metrics_steps(client, job.id) == steps and max(steps) < 5 * 128  # nothing trains after that
    final = client.fine_tuning.jobs.retrieve(job.id)
    assert final.status == "cancelled" and final.fine_tuned_model is None and final.result_files == []
    assert not [m for m in client.models.list() if m.id.startswith("ft:")]
    assert stopped_after < 10
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_pause_stops_at_a_resumable_point_and_resume_continues_there(embedded, tiny_model_dir, tmp_path):
    srv, client = embedded
    job = create_job(client, tiny_model_dir, upload(client, tmp_path, repeat=3), n_epochs=2)  # 96 steps
    wait_for(lambda: len(metrics_steps(client, job.id)) >= 20, 60, "some training steps")
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish > running.created_at
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    wait_for(lambda: queue.job_state(srv.store, job.id) == ("paused", None), 30, "the pause to be saved")
    text = next(m for m in messages(client, job.id) if m.startswith("Training paused at step"))
    paused_at = int(text.split("step ")[1].split("/")[0])
    assert 20 <= paused_at < 96
    time.sleep(1)
    assert max(metrics_steps(client, job.id)) == paused_at  # nothing moves while paused
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed")
                    and j, 120, "the resumed job to finish")
    assert done.status == "succeeded", done.error
    assert metrics_steps(client, job.id) == list(range(1, 97))  # continuous: every step exactly once
    assert any("Resuming training from its paused state" in m for m in messages(client, job.id))


def test_killing_the_server_mid_training_resumes_from_the_last_checkpoint(workers, tiny_model_dir, tmp_path):
    # `tunery serve` with its embedded worker, killed with SIGKILL as a crash or a power cut would.
    server, port = workers.serve()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    first_file = upload(client, tmp_path, name="first.jsonl")
    finished = create_job(client, tiny_model_dir, first_file)
    finished = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(finished.id)).status == "succeeded"
                        and j, 90, "a first job to finish")

    job = create_job(client, tiny_model_dir, upload(client, tmp_path, repeat=4), n_epochs=3)  # 64 steps/epoch
    wait_for(lambda: any(s > 70 for s in metrics_steps(client, job.id)), 120,
             "training past the first checkpoint")
    trainers = children_of(server.pid)
    assert trainers, "the embedded worker trains in a child process"
    server.kill()  # SIGKILL: no clean-up of any kind
    server.wait()
    # The training child dies with its worker instead of writing on as an orphan.
    wait_for(lambda: not any(alive(p) for p in trainers), 10, "the orphaned trainer to die")

    from tunery.store import open_store

    store = open_store()  # the server is down: read its database directly
    lost_at = max(m["step"] for m in queue.metrics_events(store, job.id))
    assert lost_at < 192, "the job finished before the kill; make it longer"
    assert queue.job_state(store, job.id)[0] == "running"  # nobody has noticed yet
    server, port = workers.serve(port)  # restarted: it recovers the job (its owner is gone) and resumes it
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed")
                    and j, 150, "the recovered job to finish")
    assert done.status == "succeeded", done.error
    texts = messages(client, job.id)
    assert any("was lost during attempt 1" in t for t in texts)
    assert any("Resuming training from the checkpoint at step 64 (attempt 2)" in t for t in texts)
    assert metrics_steps(client, job.id) == list(range(1, 193))  # continuous: no gap, no duplicate
    assert sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)) == [64, 128, 192]
    with store.read() as s:
        assert s.execute(select(FineTuningJob.attempts).where(FineTuningJob.id == job.id)).scalar() == 2
    # Files and the job that had finished before the crash are intact.
    again = client.fine_tuning.jobs.retrieve(finished.id)
    assert again.status == "succeeded" and again.fine_tuned_model == finished.fine_tuned_model
    assert client.files.retrieve(first_file).status == "processed"
    assert {finished.fine_tuned_model, done.fine_tuned_model} <= {m.id for m in client.models.list()}


def test_serve_no_worker_runs_the_api_only(workers, tiny_model_dir, tmp_path):
    server, port = workers.serve(args=["--no-worker"])
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    job = create_job(client, tiny_model_dir, upload(client, tmp_path))
    time.sleep(3)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert children_of(server.pid) == []  # no trainer, not even a pre-started one


@pytest.fixture
def shared_database(request) -> str | None:
    """A PostgreSQL database (how several machines share one queue), else None for SQLite."""
    try:
        return request.getfixturevalue("pg_url")
    except pytest.skip.Exception:
        return None


def test_two_worker_processes_run_every_job_exactly_once(make_server, workers, shared_database, tiny_model_dir,
                                                         tmp_path):
    env = {"TUNERY_DATABASE_URL": shared_database} if shared_database else {}
    srv = make_server(database_url=shared_database) if shared_database else make_server()
    client = srv.client()
    fid = upload(client, tmp_path)
    jobs = [create_job(client, tiny_model_dir, fid) for _ in range(4)]
    workers.start(**env)
    workers.start(**env)
    for job in jobs:
        wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status in ("succeeded", "failed"), 150,
                 f"{job.id} to finish", every=0.5)
    owners = set()
    for job in jobs:
        assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
        starts = [m for m in messages(client, job.id) if " started attempt " in m]
        assert len(starts) == 1 and starts[0].endswith("started attempt 1 of this job"), starts
        owners.add(starts[0].split()[1])
        assert metrics_steps(client, job.id) == list(range(1, 17))
    assert len(owners) == 2  # both workers took jobs from the one queue


def test_a_crash_looping_trainer_fails_after_the_attempt_limit_with_its_error(embedded, tiny_model_dir,
                                                                             tmp_path):
    srv, client = embedded
    # A model that loads (so it is no invalid_model) but whose 64-token embedding cannot look up the tokenizer's
    # ids: the first training step crashes with an IndexError on every attempt.
    broken = build_tiny_model(tmp_path / "broken-model", tiny_model_dir, vocab_size=64)
    job = create_job(client, broken, upload(client, tmp_path))
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed")
                    and j, 120, "the job to fail")
    assert done.status == "failed"
    assert done.error.code == "training_crashed"
    assert "all 3 attempts" in done.error.message and "Error" in done.error.message
    texts = messages(client, job.id)
    assert sum(t.startswith("Training attempt") and " failed: " in t for t in texts) == 2
    assert sum(" started attempt " in t for t in texts) == 3


def test_a_job_whose_base_model_became_unavailable_fails_clearly(make_server, tiny_model_dir, tmp_path):
    from tunery.worker import Worker

    srv = make_server()
    client = srv.client()
    model = tmp_path / "soon-gone"
    shutil.copytree(tiny_model_dir, model)
    job = create_job(client, model, upload(client, tmp_path))
    shutil.rmtree(model)
    Worker(srv.settings).run(until_idle=True)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "failed" and done.error.code == "model_unavailable" and done.error.param == "model"
    assert "soon-gone" in done.error.message and "unavailable" in done.error.message


def test_a_trainer_killed_like_an_oom_fails_that_attempt_and_the_worker_carries_on(embedded, tiny_model_dir,
                                                                                  tmp_path):
    srv, client = embedded
    job = create_job(client, tiny_model_dir, upload(client, tmp_path, repeat=2), n_epochs=2)
    wait_for(lambda: metrics_steps(client, job.id), 60, "training to start")
    children = [p for p in children_of(os.getpid()) if b"tunery.worker.child" in Path(f"/proc/{p}/cmdline")
                .read_bytes()]
    # Once a warm child has taken the job, the worker pre-starts the next spare: the trainer is the older one.
    trainer = min(children, key=lambda p: int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[19]))
    os.kill(trainer, signal.SIGKILL)  # what the kernel's OOM killer does
    wait_for(lambda: any("killed by SIGKILL" in m for m in messages(client, job.id)), 20,
             "the crash to be seen")
    texts = messages(client, job.id)
    assert any("Training attempt 1 failed: the training process was killed by SIGKILL (most often the "
               "machine ran out of memory)" in t for t in texts)
    # The worker survived: it retries the job, resuming from where it can, and finishes it.
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed")
                    and j, 150, "the retried job to finish")
    assert done.status == "succeeded", done.error


def test_a_worker_shutting_down_requeues_its_job_without_counting_an_attempt(make_server, tiny_model_dir,
                                                                           tmp_path):
    from tunery.worker import start_background_worker

    srv = make_server()
    client = srv.client()
    job = create_job(client, tiny_model_dir, upload(client, tmp_path, repeat=2), n_epochs=2)  # 32 steps/epoch
    first = start_background_worker(srv.settings)
    wait_for(lambda: any(s > 34 for s in metrics_steps(client, job.id)), 90, "training past a checkpoint")
    first.stop()  # what Ctrl-C / SIGTERM does
    queued = client.fine_tuning.jobs.retrieve(job.id)
    assert queued.status == "queued"
    assert any("The worker shut down" in m for m in messages(client, job.id))
    with srv.store.read() as s:
        assert s.execute(select(FineTuningJob.attempts).where(FineTuningJob.id == job.id)).scalar() == 0
    second = start_background_worker(srv.settings)
    try:
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed")
                        and j, 120, "the job to finish on the next worker")
    finally:
        second.stop()
    assert done.status == "succeeded", done.error
    assert any("Resuming training from the checkpoint at step 32 (attempt 1)" in m
               for m in messages(client, job.id))
    assert metrics_steps(client, job.id) == list(range(1, 65))


def test_concurrency_limits_how_many_jobs_one_worker_trains_at_once(make_server, tiny_model_dir, tmp_path):
    from tunery.worker import start_background_worker

    srv = make_server()
    client = srv.client()
    fid = upload(client, tmp_path, repeat=2)
    jobs = [create_job(client, tiny_model_dir, fid, n_epochs=3) for _ in range(3)]
    worker = start_background_worker(srv.settings, concurrency=2)
    try:
        def statuses():
            return [client.fine_tuning.jobs.retrieve(j.id).status for j in jobs]

        # The two oldest train side by side (both report steps); the third waits its turn.
        wait_for(lambda: all(metrics_steps(client, j.id) for j in jobs[:2]), 90, "two jobs training at once")
        assert statuses() == ["running", "running", "queued"]
    finally:
        worker.stop()
    assert statuses() == ["queued", "queued", "queued"]  # stopped workers hand their jobs back


def test_one_worker_shares_its_time_between_organizations(make_server, tiny_model_dir, tmp_path):
    """Fair share through the real API and worker: an organization that queued three jobs first does not
    make a later organization's job wait behind all three; the worker alternates between them."""
    from tunery.models.registry import set_alias
    from tunery.store import create_api_key
    from tunery.worker import start_background_worker

    srv = make_server()
    set_alias("tiny-test", str(tiny_model_dir), srv.settings)  # callers with keys may not name paths
    _, busy_key = create_api_key(srv.store, "busy")
    _, late_key = create_api_key(srv.store, "late")
    busy, late = srv.client(api_key=busy_key), srv.client(api_key=late_key)
    busy_jobs = [create_job(busy, "tiny-test", upload(busy, tmp_path, name="b.jsonl")) for _ in range(3)]
    late_job = create_job(late, "tiny-test", upload(late, tmp_path, name="l.jsonl"))
    worker = start_background_worker(srv.settings, concurrency=1)
    try:
        wait_for(lambda: late.fine_tuning.jobs.retrieve(late_job.id).status == "succeeded", 180,
                 "the later organization's job to succeed")
    finally:
        worker.stop()
    from sqlalchemy import select

    from tunery.store.tables import FineTuningJob

    with srv.store.session() as s:  # the claim order (pk breaks ties within started_at's one second)
        rows = s.execute(select(FineTuningJob.id, FineTuningJob.started_at, FineTuningJob.pk)
                         .where(FineTuningJob.started_at.is_not(None))).all()
    order = [r.id for r in sorted(rows, key=lambda r: (r.started_at, r.pk))]
    assert order[:2] == [busy_jobs[0].id, late_job.id], order
    assert busy.fine_tuning.jobs.retrieve(busy_jobs[2].id).status == "queued"
