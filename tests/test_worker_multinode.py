"""One job over two "machines", simulated on this one: two `tunery worker` processes with --nnodes 2 and
node ranks 0 and 1, a loopback rendezvous endpoint, one database and one TUNERY_HOME. Node 0 claims the job
and its training child is rank 0; node 1's worker starts rank 1, which joins the same torch.distributed group
(gloo). Real processes, the tiny model. What this cannot show: real networking between hosts, NCCL, a
network file system (README, Several machines)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from test_api_support import free_port, make_server, pg_server_url, pg_url  # noqa: F401  (fixtures)
from test_worker import _fast_worker, workers  # noqa: F401  (fixtures: worker processes, fast timings)
from test_worker import WorkerProcs, alive, create_job, messages, metrics_steps, upload, wait_for
from test_worker_distributed import descendants, finished, losses, ranks_of

from tunery.settings import Settings
from tunery.store import queue

pytestmark = pytest.mark.usefixtures("_fast_worker")  # autouse only in test_worker itself


def node(workers: WorkerProcs, rank: int, endpoint: str, *args: str) -> subprocess.Popen:
    return workers.start("--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint,
                         "--procs-per-job", "1", *args)


# --- the settings -----------------------------------------------------------------------------------

def test_node_settings_come_from_the_environment_and_are_checked_together(tmp_path):
    base = {"TUNERY_HOME": str(tmp_path)}
    s = Settings.from_env(base)
    assert (s.worker.nnodes, s.worker.node_rank, s.worker.rdzv_endpoint) == (1, 0, None)
    env = {**base, "TUNERY_WORKER_NNODES": "2", "TUNERY_WORKER_NODE_RANK": "1",
           "TUNERY_WORKER_RDZV_ENDPOINT": " node0.example "}
    s = Settings.from_env(env)
    assert (s.worker.nnodes, s.worker.node_rank, s.worker.rdzv_endpoint) == (2, 1, "node0.example:29400")
    assert Settings.from_env(s.to_env()) == s  # what a training child reads back
    # a command line's value wins before the section is checked as a whole
    s = Settings.from_env({**base, "TUNERY_WORKER_NNODES": "2"}, worker={"rdzv_endpoint": "[::1]:5000"})
    assert s.worker.rdzv_endpoint == "[::1]:5000"
    for bad, match in (({"TUNERY_WORKER_NNODES": "2"}, "RDZV_ENDPOINT.*required"),
                       ({"TUNERY_WORKER_NNODES": "2", "TUNERY_WORKER_NODE_RANK": "2",
                         "TUNERY_WORKER_RDZV_ENDPOINT": "h:1"}, "NODE_RANK"),
                       ({"TUNERY_WORKER_NNODES": "2", "TUNERY_WORKER_RDZV_ENDPOINT": "h:port"}, "HOST:PORT"),
                       ({"TUNERY_WORKER_NNODES": "2", "TUNERY_WORKER_RDZV_ENDPOINT": "h:1",
                         "TUNERY_WORKER_CONCURRENCY": "2"}, "one job at a time"),
                       ({"TUNERY_WORKER_NNODES": "0"}, "NNODES")):
        with pytest.raises(ValueError, match=match):
            Settings.from_env({**base, **bad})


def test_the_worker_cli_checks_the_node_options(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "tunery.cli", "worker", *args], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "TUNERY_HOME": str(tmp_path)})

    out = run("--nnodes", "2", "--node-rank", "1")
    assert out.returncode == 2 and "--rdzv-endpoint" in out.stderr and "Traceback" not in out.stderr
    out = run("--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "127.0.0.1:9", "--until-idle")
    assert out.returncode == 2 and "--until-idle" in out.stderr


def test_a_node_that_cannot_take_part_tells_rank_0_which_fails_the_run_at_once(tmp_path):
    """The rendezvous protocol without training: a run posted as rank 0 posts it (distributed.RUN_KEY), a node
    worker that cannot see its files, or counts another number of nodes, reports it (FAILED_KEY), and rank 0's
    wait for the ranks ends at once with the node's words; a second worker started with the same node rank
    stays out of a run."""
    import json
    import threading
    from datetime import timedelta

    import torch.distributed as dist

    from tunery.train import distributed
    from tunery.worker.node import NodeWorker

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=10))
    config = {"training_file": str(tmp_path / "elsewhere.jsonl"), "output_dir": str(tmp_path)}
    settings = Settings.from_env({"TUNERY_HOME": str(tmp_path), "TUNERY_WORKER_POLL_SECONDS": "0.1"},
                                 worker={"nnodes": 2, "node_rank": 1, "rdzv_endpoint": f"127.0.0.1:{port}"})
    w = NodeWorker(settings)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        for run, said in (({"id": "a", "nnodes": 2, "config": config},
                           "elsewhere.jsonl does not exist on this machine: every node must see TUNERY_HOME"),
                          ({"id": "b", "nnodes": 3, "config": config},
                           "started with --nnodes 2, node 0's run spans 3 nodes")):
            store.set(distributed.RUN_KEY, json.dumps({**run, "world": 2 * run["nnodes"], "procs": 2}))
            t0 = time.monotonic()
            with pytest.raises(RuntimeError, match="another node's worker reported: node 1: ") as err:
                distributed._wait_ready(store, [], run["nnodes"] * 2, f"127.0.0.1:{port}")
            assert said in str(err.value) and time.monotonic() - t0 < 10
            store.delete_key(distributed.FAILED_KEY)
        assert w.runs == 0  # it started no rank
    finally:
        w.stop()
        t.join(timeout=10)
    assert not t.is_alive()

    # two workers started as node 1 by mistake: the first takes the place, the other stays out
    config["training_file"] = str(tmp_path / "train.jsonl")
    (tmp_path / "train.jsonl").write_text("{}\n")
    run = {"id": "c", "nnodes": 2, "world": 2, "procs": 1, "config": config}
    store.set(distributed.RUN_KEY, json.dumps(run))
    first, second = NodeWorker(settings)._next_run(), NodeWorker(settings)._next_run()
    assert first is not None and first[1]["id"] == "c" and second is None
    assert not store.check([distributed.FAILED_KEY])  # node 1's place is taken: the run goes on


def test_rank_0_names_the_nodes_that_never_came(monkeypatch):
    from datetime import timedelta

    import torch.distributed as dist

    from tunery.train import distributed

    monkeypatch.setattr(distributed, "COLLECTIVE_TIMEOUT", timedelta(seconds=1))
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, 3, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=10))
    store.set(distributed.READY_KEY.format(rank=1), "1")  # node 1 came, node 2 did not
    with pytest.raises(RuntimeError, match=r"node\(s\) 2 did not join the run at h:1 within 1 s: start `tunery "
                                           r"worker --nnodes 3 --node-rank K --rdzv-endpoint h:1` there"):
        distributed._wait_ready(store, [], 3, "h:1")


# --- two nodes on loopback --------------------------------------------------------------------------

def test_two_nodes_train_a_job_paused_and_resumed_with_the_one_process_losses(pg_url, make_server, workers,
                                                                             tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    # pg_url first: its database is dropped after the workers have stopped
    monkeypatch.setenv("TUNERY_DATABASE_URL", pg_url)  # workers on several hosts share PostgreSQL
    srv = make_server()
    client = srv.client()
    fid = upload(client, tmp_path, repeat=2)  # 32 steps
    one = create_job(client, tiny_model_dir, fid, seed=5)
    assert workers.start("--until-idle", "--procs-per-job", "1").wait(timeout=120) == 0, workers.log(0)
    assert client.fine_tuning.jobs.retrieve(one.id).status == "succeeded"

    endpoint = f"127.0.0.1:{free_port()}"
    node1 = node(workers, 1, endpoint)  # started first: it waits for node 0's runs
    job = create_job(client, tiny_model_dir, fid, seed=5)
    node0 = node(workers, 0, endpoint)
    wait_for(lambda: len(metrics_steps(client, job.id)) >= 4, 90, "some steps on two nodes")
    client.fine_tuning.jobs.pause(job.id)
    wait_for(lambda: queue.job_state(srv.store, job.id) == ("paused", None), 30, "the pause to be saved")
    at = max(metrics_steps(client, job.id))
    assert 4 <= at < 32
    wait_for(lambda: not ranks_of(node1.pid), 10, "node 1's rank to leave")  # node 1 waits for the next run
    assert node1.poll() is None

    client.fine_tuning.jobs.resume(job.id)
    done = finished(client, job.id, 120)
    assert done.status == "succeeded", done.error
    texts = messages(client, job.id)
    assert sum("runs in 2 processes on 2 nodes (procs-per-job 1)" in m for m in texts) == 2  # both attempts
    started = "Training in 2 processes on 2 nodes (torch.distributed, gloo)"
    assert sum(m.startswith(started) for m in texts) == 2
    assert any(f"Training paused at step {at}/32" in m for m in texts)
    assert any("Resuming training from its paused state" in m for m in texts)
    # rank 0 alone reports: one metrics event per step, one checkpoint row; the curve of one process
    assert metrics_steps(client, job.id) == list(range(1, 33))
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [32]
    assert losses(srv.store, job.id) == pytest.approx(losses(srv.store, one.id), abs=1e-4)
    # node 1 trained rank 1 of both runs, its output in the job's folder on the shared TUNERY_HOME
    node_log = (srv.settings.jobs_dir / job.id / "node-1.log").read_text()
    assert node_log.count("ranks 1-1 of 2") == 2, node_log
    assert "joining run" in workers.log(1)
    wait_for(lambda: not ranks_of(node1.pid), 10, "node 1's rank to leave")
    assert node1.poll() is None and node0.poll() is None
    node1.send_signal(signal.SIGTERM)
    assert node1.wait(timeout=30) == 0


def test_a_node_killed_mid_run_fails_the_attempt_and_the_retry_resumes_on_both(make_server, workers,
                                                                              tiny_model_dir, tmp_path):
    srv = make_server()
    client = srv.client()
    job = create_job(client, tiny_model_dir, upload(client, tmp_path), n_epochs=2)  # 16 steps per epoch
    endpoint = f"127.0.0.1:{free_port()}"
    node0 = node(workers, 0, endpoint)
    node1 = node(workers, 1, endpoint)
    wait_for(lambda: any(s > 17 for s in metrics_steps(client, job.id)), 120, "training past the checkpoint")
    (rank1,) = ranks_of(node1.pid)
    t0 = time.monotonic()
    node1.kill()  # the machine is gone: SIGKILL, its rank dies with it
    node1.wait()
    wait_for(lambda: any("Training attempt 1 failed" in m for m in messages(client, job.id)), 30,
             "the attempt to fail")
    assert time.monotonic() - t0 < 30  # noticed at the next collective, not after its timeout
    assert not alive(rank1)
    waiting = "Waiting for the workers of nodes 1-1"
    wait_for(lambda: sum(waiting in m for m in messages(client, job.id)) == 2, 30,
             "attempt 2 to wait for node 1")

    node1 = node(workers, 1, endpoint)  # the machine is back
    done = finished(client, job.id, 120)
    assert done.status == "succeeded", done.error
    texts = messages(client, job.id)
    assert any("Resuming training from the checkpoint at step 16 (attempt 2)" in m for m in texts)
    assert any("Training attempt 2 runs in 2 processes on 2 nodes" in m for m in texts)
    assert metrics_steps(client, job.id) == list(range(1, 33))
    family = descendants(node0.pid) + descendants(node1.pid)
    workers.stop_all()
    wait_for(lambda: not any(alive(p) for p in family), 10, "every worker's children to stop")
