"""The worker of node rank K ≥ 1 in a multi-node setup (`tunery worker --nnodes N --node-rank K
--rdzv-endpoint HOST:PORT`): it claims nothing and needs no database. Node 0's worker claims a job and holds
its lease; the job's rank 0 (node 0's training child) hosts the run's rendezvous store, a torch TCPStore, at
HOST:PORT and posts the run there (tunery.train.distributed.RUN_KEY: the trainer config, world size, ranks per
node). This worker looks for such a run every poll_seconds, starts this node's ranks K*procs ..
K*procs+procs-1 (`python -m tunery.train.rank`, with the variables torchrun sets), which join the same
process group, waits for them to end, and looks again.

Rank 0 alone reports and writes (to the shared TUNERY_HOME); stop requests reach these ranks through the
group (rank 0 broadcasts them before every step). When a rank here dies, or this worker is killed (its ranks
die with it, PR_SET_PDEATHSIG), rank 0's next collective fails, the attempt fails, and the retry, a new run
with a new store, resumes from the last checkpoint once every node has joined it again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from tunery.settings import Settings, WorkerSettings, get_settings, parse_endpoint, rank_env

log = logging.getLogger("tunery.worker")

CONNECT_SECONDS = 1.0
"""How long one look at the rendezvous endpoint may take (a host that does not answer)."""


def _listening(host: str, port: int) -> bool:
    """Something accepts connections at host:port (checked with a plain socket first: a TCPStore client that
    finds nothing there logs a page of retries)."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_SECONDS):
            return True
    except OSError:
        return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class NodeWorker:
    """Joins node 0's multi-node runs with this node's ranks until stop()."""

    def __init__(self, settings: Settings | None = None, config: WorkerSettings | None = None):
        self.settings = settings or get_settings()
        self.config = config or self.settings.worker
        if self.config.nnodes < 2 or self.config.node_rank < 1:
            raise ValueError("a node worker has node rank 1 to nnodes − 1 (node 0 is an ordinary worker)")
        self.host, self.port = parse_endpoint(self.config.rdzv_endpoint)
        self.node_rank = self.config.node_rank
        self.stopping = threading.Event()
        self.last_run: str | None = None
        self.runs = 0
        """Runs this worker's ranks took part in (finished, however they ended)."""

    def stop(self) -> None:
        """Stop looking for runs; a run in progress loses this node's ranks (its attempt fails, and is
        retried)."""
        self.stopping.set()

    def run(self) -> None:
        """Look for a run, train this node's part of it, look again; returns after stop(). Call it from the
        main thread: the ranks it starts die with the thread that started them."""
        while not self.stopping.is_set():
            found = self._next_run()
            if found is None:
                self.stopping.wait(self.config.poll_seconds)
                continue
            store, run = found
            try:
                self._train(store, run)
            except Exception:  # a failure here must not end the worker: the next run may go well
                log.exception("node %d: run %s failed to start here", self.node_rank, run.get("id"))
                self._report(store, f"the worker of node {self.node_rank} could not start its ranks "
                                    "(see its log)")
            finally:
                self.runs += 1
                found = store = None  # closes this client's connection to rank 0's store

    # --- finding a run ------------------------------------------------------------------------------
    def _next_run(self):
        """(store client, run) when node 0 has posted a run this worker has not joined yet, else None."""
        if not _listening(self.host, self.port):
            return None
        import torch.distributed as dist

        from tunery.train.distributed import NODE_KEY, RUN_KEY

        try:
            store = dist.TCPStore(self.host, self.port, is_master=False, timeout=timedelta(seconds=10))
            if not store.check([RUN_KEY]):
                return None
            run = json.loads(store.get(RUN_KEY))
        except (RuntimeError, ValueError) as exc:  # the run formed or ended meanwhile: look again later
            log.debug("node %d: no run at %s:%d (%s)", self.node_rank, self.host, self.port, exc)
            return None
        if run.get("id") == self.last_run:
            return None  # the run this worker's ranks just left, not yet closed by rank 0
        self.last_run = run.get("id")
        problem = self._check(run)
        if problem:
            log.error("node %d: cannot join run %s: %s", self.node_rank, run.get("id"), problem)
            self._report(store, f"node {self.node_rank}: {problem}")
            return None
        try:
            first = store.add(NODE_KEY.format(node=self.node_rank), 1) == 1
        except RuntimeError:
            return None
        if not first:
            log.error("node %d: another worker has joined run %s as node %d: check each machine's "
                      "--node-rank", self.node_rank, run["id"][:8], self.node_rank)
            return None
        return store, run

    def _check(self, run: dict) -> str | None:
        """Why this node cannot take part in the run (its settings, or files missing here), else None."""
        if run.get("nnodes") != self.config.nnodes:
            return (f"this worker was started with --nnodes {self.config.nnodes}, node 0's run spans "
                    f"{run.get('nnodes')} nodes")
        cfg = run["config"]
        for key in ("training_file", "validation_file", "resume_from", "output_dir"):
            if cfg.get(key) and not Path(cfg[key]).exists():
                return (f"{key} {cfg[key]} does not exist on this machine: every node must see TUNERY_HOME "
                        "at the same path (a shared file system)")
        return None

    @staticmethod
    def _report(store, message: str) -> None:
        """Tell rank 0, which is waiting for this node's ranks, that they are not coming (best effort)."""
        from tunery.train.distributed import FAILED_KEY

        try:
            store.set(FAILED_KEY, message)
        except RuntimeError:  # rank 0 is gone already
            pass

    # --- one run ------------------------------------------------------------------------------------
    def _train(self, store, run: dict) -> None:
        """Start this node's ranks of the run and wait for them to end (or stop them when this worker
        stops)."""
        procs, world = int(run["procs"]), int(run["world"])
        first = self.node_rank * procs
        out_dir = Path(run["config"]["output_dir"])
        log.info("node %d: joining run %s in %s: ranks %d-%d of %d", self.node_rank, run["id"][:8], out_dir,
                 first, first + procs - 1, world)
        fd, path = tempfile.mkstemp(prefix="tunery-node-rank-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(run["config"], f)
        ranks: list[subprocess.Popen] = []
        log_file = open(out_dir / f"node-{self.node_rank}.log", "ab")
        try:
            log_file.write(f"--- run {run['id']}: ranks {first}-{first + procs - 1} of {world}, "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log_file.flush()
            for local in range(procs):
                ranks.append(subprocess.Popen(
                    [sys.executable, "-m", "tunery.train.rank", path], stdin=subprocess.DEVNULL,
                    stdout=log_file, stderr=subprocess.STDOUT,
                    env=rank_env(first + local, world, self.port, os.getpid(), addr=self.host,
                                 local_rank=local, local_world=procs)))
            self._wait(store, ranks, first)
        finally:
            for p in ranks:
                if p.poll() is None:
                    p.kill()
                p.wait()
            log_file.close()
            Path(path).unlink(missing_ok=True)

    def _wait(self, store, ranks: list, first: int) -> None:
        """Until every rank here has exited. One that fails takes the others with it (their run is lost: rank
        0's next collective fails) and is reported to rank 0 in case the group has not formed yet."""
        ending = False
        while True:
            codes = [p.poll() for p in ranks]
            failed = [(first + i, c) for i, c in enumerate(codes) if c]
            if all(c is not None for c in codes):
                if failed:
                    log.warning("node %d: run ended with %s", self.node_rank,
                                "; ".join(f"rank {r} {_describe_exit(c)}" for r, c in failed))
                else:
                    log.info("node %d: run ended; waiting for the next one", self.node_rank)
                return
            if not ending and (failed or self.stopping.is_set()):
                ending = True
                if failed:
                    rank, code = failed[0]
                    self._report(store, f"rank {rank} (node {self.node_rank}) {_describe_exit(code)}")
                else:
                    log.info("node %d: stopping; this node's ranks leave the run", self.node_rank)
                for p in ranks:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
