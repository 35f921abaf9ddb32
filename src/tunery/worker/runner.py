"""The worker: claims queued jobs, runs each in a training child process, and turns what the trainer
reports into job events, checkpoint rows and, on success, a registered model and a result file.

One supervisor thread per running job (up to `concurrency`) owns that job's lease: it renews it,
polls the job's status (the API writes cancelled/paused), relays stop requests to the child, and
writes every event. The main loop claims jobs for free slots and periodically recovers jobs whose
worker vanished (expired lease, or a dead process on this host).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tunery.settings import Settings, WorkerSettings, child_env, get_settings
from tunery.train import checkpoint as ckpt
from tunery.train.config import RESOLVED_KEYS
from tunery.train.metric_names import EVENT_KEYS

log = logging.getLogger("tunery.worker")


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-800:]


def _model_name_base(job) -> str:
    """The <base> part of ft:<base>:<org>:<suffix>:<id>: the model as requested (a directory's name)."""
    base = job.model
    if base.startswith("ft:"):  # training a fine-tuned model further: named after its base, as OpenAI does
        from tunery.ids import parse_fine_tuned_name

        parsed = parse_fine_tuned_name(base)
        base = parsed.base if parsed is not None else job.base_model
    if "/" in base or os.sep in base:
        base = Path(base.rstrip("/")).name or "model"
    return base.replace(":", "-")


def fine_tuned_name(job) -> str:
    """Stable across attempts (the id part comes from the job id), so checkpoint names never change."""
    from tunery import ids

    return ids.fine_tuned_model_name(_model_name_base(job), job.org_name, job.suffix, rand=job.id[-8:])


def _metrics_message(d: dict) -> str:
    loss = d.get("train_loss", float("nan"))
    msg = f"Step {d.get('step')}/{d.get('total_steps')}: training loss={loss:.4f}"
    if d.get("valid_loss") is not None:
        msg += f", validation loss={d['valid_loss']:.4f}"
    if d.get("full_valid_loss") is not None:
        msg += f", full validation loss={d['full_valid_loss']:.4f}"
    return msg




@dataclass
class Outcome:
    """What happened to one attempt's training child, filled in while it runs (see JobRun._conclude)."""

    result: dict | None = None
    """The trainer returned: {status: succeeded|paused|cancelled, hyperparameters, model_dir, ...}."""
    domain_error: dict | None = None
    """The job itself is wrong (a TuneryError in the trainer: {message, code, param}): it fails, no retry."""
    crash: str | None = None
    """An unexpected exception in the trainer, described."""
    stop: str | None = None
    """"cancel" or "pause": the API moved the job out of running and the child was told to stop."""
    lost: bool = False
    """Another worker took the job over (this worker's lease expired): write nothing more."""
    shutdown: bool = False
    """This worker is stopping: the job goes back to the queue."""
    exitcode: int | None = None
    resolved: dict | None = None
    """The hyperparameters the trainer resolved ("auto" → numbers)."""


@dataclass
class _Timers:
    next_beat: float
    next_poll: float
    kill_at: float | None = None


class JobRun:
    """Supervises one claimed job from spawn to outcome (runs in its own thread)."""

    def __init__(self, worker: "Worker", job):
        self.worker = worker
        self.store = worker.store
        self.settings = worker.settings
        self.cfg = worker.config
        self.owner = worker.owner
        self.job = job
        self.ft_name = fine_tuned_name(job)
        self.lost = False
        self.proc = None

    # --- small helpers -------------------------------------------------------------------------
    def event(self, level: str, message: str, **kw) -> bool:
        from tunery.store import queue

        return queue.append_event_if_held(self.store, self.job.id, self.owner, message, level=level, **kw)

    def fail(self, code: str, message: str, param: str | None = None) -> None:
        from tunery.store import queue

        queue.finish_failed(self.store, self.job.id, self.owner, code=code, message=message, param=param)
        log.info("job %s failed: %s", self.job.id, message)

    # --- preparation ---------------------------------------------------------------------------
    def _file_path(self, file_id: str) -> Path | None:
        from tunery.store.files import stored_path

        return stored_path(self.store, self.job.org_id, file_id)

    def _check_base_model(self) -> str | None:
        """None when the base model can be loaded here, else the reason (the job fails with it)."""
        from tunery.errors import TuneryError
        from tunery.models import is_available, resolve

        try:
            spec = resolve(self.job.base_model, self.settings).spec
        except TuneryError as exc:
            return f"The base model {self.job.model!r} is unavailable: {exc.message}"
        if self.job.model.startswith("ft:"):  # continuing a fine-tuned model: its files must still be here
            from tunery.store.models import find_servable_model

            try:
                adapter = find_servable_model(self.store, self.job.org_id, self.job.model).adapter_dir
            except TuneryError as exc:
                return f"The fine-tuned model {self.job.model!r} is unavailable: {exc.message}"
            if not ckpt.is_model_dir(adapter):
                return f"The files of the fine-tuned model {self.job.model!r} are missing from this machine."
        if not is_available(spec, self.settings):
            hint = (f"run `tunery models pull {spec.name}` on the worker's machine" if spec.kind != "local"
                    else "the directory is missing or has no config.json and *.safetensors")
            return (f"The base model {self.job.model!r} ({spec.name}) is not available on this worker's "
                    f"machine and cannot be downloaded here: {hint}.")
        return None

    def _check_files(self) -> bool:
        """The job's files are still in the file store; else the job fails (False)."""
        job = self.job
        train_path = self._file_path(job.training_file)
        if train_path is None or not train_path.exists():
            self.fail("invalid_training_file",
                      f"training file {job.training_file} is missing from the file store", "training_file")
            return False
        if job.validation_file:
            vp = self._file_path(job.validation_file)
            if vp is None or not vp.exists():
                self.fail("invalid_validation_file",
                          f"validation file {job.validation_file} is missing from the file store",
                          "validation_file")
                return False
        return True

    def _preflight(self) -> bool:
        """What can fail the job before a child is started: the method, the base model, the files."""
        job = self.job
        if (job.method or {}).get("type", "supervised") not in ("supervised", "dpo"):
            self.fail("unsupported_method", f"method type {job.method.get('type')!r} is not supported by "
                      "this worker's trainer (supervised and dpo only)", "method")
            return False
        reason = self._check_base_model()
        if reason:
            self.fail("model_unavailable", reason, "model")
            return False
        return self._check_files()

    def _output_dir(self) -> Path:
        from tunery.store import queue

        job = self.job
        output_dir = Path(job.output_dir) if job.output_dir else self.settings.jobs_dir / job.id
        output_dir.mkdir(parents=True, exist_ok=True)
        if not job.output_dir:
            queue.update_running(self.store, job.id, self.owner, output_dir=str(output_dir))
        return output_dir

    def _resume_point(self, output_dir: Path) -> Path | None:
        """Where an earlier attempt left off (train/checkpoint.py decides), announced in the job's events."""
        from tunery.store import queue

        job = self.job
        rows = [(row.path, row.step_number) for row in queue.list_checkpoints(self.store, job.id)]
        resume_from, resume_step = ckpt.resume_point(output_dir, rows)
        if resume_from is not None:
            dropped = queue.drop_metrics_after(self.store, job.id, self.owner, resume_step)
            where = ("its paused state" if ckpt.is_resume_dir(resume_from)
                     else f"the checkpoint at step {resume_step}")
            self.event("info", f"Resuming training from {where} (attempt {job.attempts})"
                       + (f"; {dropped} metrics events past that step were discarded" if dropped else ""))
        elif job.attempts > 1:
            self.event("info",
                       f"Starting training from the beginning (attempt {job.attempts}; no checkpoint yet)")
        return resume_from

    def _train_config(self, output_dir: Path, resume_from: Path | None) -> dict:
        from tunery.train.config import from_job

        job = self.job
        valid_path = self._file_path(job.validation_file) if job.validation_file else None
        cfg = {
            "model": job.base_model,
            "training_file": str(self._file_path(job.training_file)),
            "validation_file": str(valid_path) if valid_path else None,
            "output_dir": str(output_dir),
            **from_job(job.hyperparameters, (job.method or {}).get("type", "supervised")),
            "seed": job.seed,
            "resume_from": str(resume_from) if resume_from else None,
            "device": self.settings.compute.device, "num_threads": self._threads(),
            "processes": self._processes()[0],
        }
        if self.cfg.nnodes > 1:  # rank 0 of a run the other nodes' workers join (README: Several machines)
            cfg.update(nnodes=self.cfg.nnodes, rdzv_endpoint=self.cfg.rdzv_endpoint)
        if job.model.startswith("ft:"):  # start from the fine-tuned model's weights
            from tunery.store.models import find_servable_model

            cfg["init_from"] = str(find_servable_model(self.store, job.org_id, job.model).adapter_dir)
        return cfg

    def _threads(self) -> int:
        """The trainer's CPU threads: the setting, else the cores shared between this worker's jobs."""
        threads = self.settings.compute.num_threads
        if not threads and self.cfg.concurrency > 1:
            cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else (os.cpu_count() or 1))
            threads = max(1, cores // self.cfg.concurrency)
        return threads

    def _processes(self) -> tuple[int | str, str]:
        """(TrainConfig.processes, where it comes from): procs-per-job when a count, else
        TUNERY_TRAIN_PROCESSES when set, else the trainer's auto (one job at a time) or 1 (jobs share the cores)."""
        procs = self.cfg.procs_per_job
        if procs != "auto":
            return procs, f"procs-per-job {procs}"
        if self.settings.compute.train_processes:
            return self.settings.compute.train_processes, "procs-per-job auto: TUNERY_TRAIN_PROCESSES"
        if self.cfg.concurrency > 1:
            return 1, f"procs-per-job auto: concurrency {self.cfg.concurrency} shares the cores"
        return "auto", "procs-per-job auto"

    def _child_env(self) -> dict:
        """The settings the child runs with (Settings.to_env()), with the trainer's thread count."""
        s = self.settings
        env = replace(s, compute=replace(s.compute, num_threads=self._threads())).to_env()
        env["TOKENIZERS_PARALLELISM"] = "false"
        env.update(self.cfg.extra_env)
        return env

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:  # a bug here must not kill the worker; the lease expiry will recover the job
            log.exception("supervising job %s failed", self.job.id)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()

    def _run(self) -> None:
        """preflight → output dir → resume point → child (supervised) → conclude."""
        if not self._preflight():
            return
        output_dir = self._output_dir()
        resume_from = self._resume_point(output_dir)
        log_path = output_dir / f"attempt-{self.job.attempts}.log"
        payload = {"log_path": str(log_path), "env": self._child_env(),
                   "config": self._train_config(output_dir, resume_from)}
        self._conclude(self._supervise(payload), log_path)

    # --- supervision ---------------------------------------------------------------------------
    def _supervise(self, payload: dict) -> Outcome:
        """Run the child to its end: relay its messages, renew the lease, relay stop requests."""
        proc, conn = self._spawn(payload)
        self.proc = proc
        out = Outcome()
        start = time.monotonic()
        timers = _Timers(next_beat=start + self.cfg.heartbeat_seconds, next_poll=start + self.cfg.poll_seconds)
        self._t0 = None
        self._last_eta_write = 0.0
        try:
            while self._receive(conn, out):
                now = time.monotonic()
                self._tick(conn, out, timers, now)
                if timers.kill_at is not None and now >= timers.kill_at and proc.poll() is None:
                    proc.kill()
                    timers.kill_at = None
                if proc.poll() is not None and not conn.poll(0):
                    break
        finally:
            try:
                proc.wait(timeout=30)
            except Exception:  # still running after its pipe closed: make sure it is gone
                proc.kill()
                proc.wait(timeout=10)
            conn.close()
        out.exitcode = proc.returncode
        return out

    def _receive(self, conn, out: Outcome) -> bool:
        """Handle at most one message; False once the child exited and its end of the pipe closed."""
        try:
            # One message per tick: a fast stream of metrics must not starve the heartbeat.
            if conn.poll(0.2):
                self._handle(conn.recv(), out)
        except (EOFError, OSError):
            return False
        return True

    def _tick(self, conn, out: Outcome, timers: _Timers, now: float) -> None:
        """The worker's shutdown, the heartbeat, and (every poll_seconds) the job's status."""
        from tunery.store import queue

        if self.worker.stopping.is_set() and not out.shutdown:
            out.shutdown = True
            timers.kill_at = now
        if now >= timers.next_beat:
            timers.next_beat = now + self.cfg.heartbeat_seconds
            if not queue.renew_lease(self.store, self.job.id, self.owner, self.cfg.lease_seconds):
                timers.next_poll = now  # find out why at once
        if now >= timers.next_poll and out.stop is None:
            timers.next_poll = now + self.cfg.poll_seconds
            self._check_status(conn, out, timers, now)

    def _check_status(self, conn, out: Outcome, timers: _Timers, now: float) -> None:
        from tunery.store import queue

        state = queue.job_state(self.store, self.job.id)
        status, owner = state if state else ("cancelled", None)
        if owner != self.owner and status in ("running", "queued"):
            # Another worker recovered this job (our lease expired): stop, write nothing.
            out.lost = self.lost = True
            timers.kill_at = now
        elif status in ("cancelled", "paused", "failed", "succeeded"):
            kind = "pause" if status == "paused" else "cancel"
            out.stop = kind
            try:
                conn.send(("stop", kind))
            except (OSError, EOFError):
                pass
            grace = self.cfg.pause_grace_seconds if kind == "pause" else self.cfg.cancel_grace_seconds
            timers.kill_at = now + grace

    def _spawn(self, payload: dict):
        """A training child with the payload sent: the worker's warm child if it has one, else a new one."""
        warm = self.worker.take_warm()
        if warm is not None:
            proc, conn = warm
            try:
                conn.send(payload)
                return proc, conn
            except (OSError, EOFError):  # it died while waiting: start a fresh one
                proc.kill()
                proc.wait()
                conn.close()
        proc, conn = spawn_child(Path(payload["log_path"]))
        conn.send(payload)
        return proc, conn

    def _handle(self, msg: tuple, out: Outcome) -> None:
        from tunery.store import queue

        kind = msg[0]
        if kind == "event":
            self.event(msg[1], msg[2], statuses=("running", "paused"))
        elif kind == "metrics":
            data = {k: msg[1][k] for k in EVENT_KEYS if msg[1].get(k) is not None}
            # Steps trained between the API's pause and the trainer seeing it still count: the resume
            # state includes them, so their metrics belong in the curve.
            self.event("info", _metrics_message(data), type="metrics", data=data,
                       statuses=("running", "paused"))
            self._update_eta(data)
        elif kind == "resolved":
            hp = msg[1]
            resolved = {k: hp[k] for k in RESOLVED_KEYS if k in hp}
            values = {"resolved_hyperparameters": resolved}
            if hp.get("estimated_seconds"):
                values["estimated_finish"] = int(time.time() + float(hp["estimated_seconds"]))
            queue.update_running(self.store, self.job.id, self.owner, **values)
            out.resolved = resolved
            if hp.get("processes"):
                n = int(hp["processes"])
                nodes = f" on {self.cfg.nnodes} nodes" if self.cfg.nnodes > 1 and n > 1 else ""
                self.event("info", f"Training attempt {self.job.attempts} runs in {n} "
                                   f"process{'es' if n > 1 else ''}{nodes} ({self._processes()[1]})",
                           statuses=("running", "paused"))
        elif kind == "checkpoint":
            info = msg[1]
            from tunery import ids

            metrics = {k: v for k, v in (info.get("metrics") or {}).items() if k in EVENT_KEYS}
            metrics.setdefault("step", info["step"])
            queue.add_checkpoint(self.store, self.job.id, self.owner, step=int(info["step"]),
                                 statuses=("running", "paused"),
                                 model_name=ids.checkpoint_model_name(self.ft_name, int(info["step"])),
                                 metrics=metrics, path=info["path"])
            queue.forget_missing_checkpoints(self.store, self.job.id, self.owner)
        elif kind in ("result", "domain_error", "crash"):
            setattr(out, kind, msg[1])

    def _update_eta(self, data: dict) -> None:
        from tunery.store import queue

        step, total = data.get("step"), data.get("total_steps")
        if not step or not total:
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = (now, step)
            return
        t0, s0 = self._t0
        if step <= s0 or now - self._last_eta_write < 5:
            return
        per_step = (now - t0) / (step - s0)
        self._last_eta_write = now
        queue.update_running(self.store, self.job.id, self.owner,
                             estimated_finish=int(time.time() + per_step * max(0, total - step)))

    # --- the outcome ---------------------------------------------------------------------------
    def _conclude(self, out: Outcome, log_path: Path) -> None:
        """One outcome, one store write (each conditional on this worker still holding the job)."""
        if out.lost:
            log.warning("job %s: lease lost to another worker; attempt abandoned", self.job.id)
        elif out.shutdown and out.result is None:
            self._requeue_on_shutdown()
        elif out.result is not None:
            self._finished(out.result)
        elif out.stop:
            self._stopped(out.stop)
        elif out.domain_error is not None:
            err = out.domain_error
            self.fail(err.get("code") or "invalid_request", err["message"], err.get("param"))
        else:
            self._crashed(out, log_path)

    def _requeue_on_shutdown(self) -> None:
        from tunery.store import queue

        if not queue.requeue(self.store, self.job.id, self.owner, count_attempt=False,
                             reason="The worker shut down; the job is queued again and will resume from "
                                    "its last checkpoint"):
            queue.release_stopped(self.store, self.job.id, self.owner)  # cancelled or paused meanwhile

    def _finished(self, result: dict) -> None:
        """The trainer returned: it succeeded, saved its paused state, or stopped on a cancel."""
        from tunery.store import queue

        job = self.job
        status = result["status"]
        if status == "succeeded":
            self._succeed(result)
        elif status == "paused":
            step = ckpt.meta_step(result["resume_dir"]) if result.get("resume_dir") else None
            where = f" at step {step}" if step is not None else ""
            if not queue.release_paused(self.store, job.id, self.owner,
                                        f"Training paused{where}; resume the job to continue from there"):
                queue.release_stopped(self.store, job.id, self.owner)
        else:
            queue.release_stopped(self.store, job.id, self.owner)

    def _stopped(self, stop: str) -> None:
        """Stopped on request (cancel, or a pause that had to be forced): nothing to record but the lease."""
        from tunery.store import queue

        if stop == "pause":
            queue.release_paused(self.store, self.job.id, self.owner,
                                 "Training paused; resume continues from the last checkpoint")
        queue.release_stopped(self.store, self.job.id, self.owner)

    def _crashed(self, out: Outcome, log_path: Path) -> None:
        """The child died: retry from the last checkpoint, or fail once max_attempts are used."""
        from tunery.store import queue

        job = self.job
        code = out.exitcode
        if out.crash:
            reason = out.crash
        elif code is not None and code < 0:
            reason = f"the training process was killed by {_signal_name(code)}"
            if code == -signal.SIGKILL:
                reason += " (most often the machine ran out of memory)"
        else:
            tail = _tail(log_path)
            reason = f"the training process exited with code {code}" + (f": {tail}" if tail else "")
        where = f" (log: {log_path})"
        if job.attempts >= self.cfg.max_attempts:
            self.fail("training_crashed", f"Training crashed on all {job.attempts} attempts; last error: "
                      f"{reason}{where}")
        else:
            self.event("error", f"Training attempt {job.attempts} failed: {reason}{where}")
            queue.requeue(self.store, job.id, self.owner,
                          reason=f"Retrying (attempt {job.attempts + 1} of {self.cfg.max_attempts}) from the "
                                 "last checkpoint")

    def _convert_gguf(self, model_dir: Path) -> None:
        """issue 14: the weights as GGUF beside them, so llama.cpp serves the model at its first request.
        A failure is a warning, not a failed job: the torch engine still serves the model."""
        from tunery.inference.convert import convert_for_llamacpp

        self.event("info", "Converting adapter to GGUF for llama.cpp…")
        try:
            out = convert_for_llamacpp(model_dir, self.job.base_model, self.settings)
        except Exception as exc:  # any conversion problem: say it, keep the job's success
            self.event("warning", f"GGUF conversion failed ({exc}); the model is served by the torch engine")
            return
        if out is None:
            self.event("info", "No GGUF conversion for this model (its base has no GGUF or it is not "
                               "Llama-architecture); llama.cpp converts or the torch engine serves it")
        else:
            self.event("info", f"Wrote {out.name} for llama.cpp")

    def _succeed(self, result: dict) -> None:
        from tunery.store import queue

        model_dir = result.get("model_dir")
        if not model_dir or not Path(model_dir).exists():
            self.fail("training_crashed", "the trainer reported success but wrote no model directory")
            return
        self._convert_gguf(Path(model_dir))
        csv_text = queue.result_csv(queue.metrics_events(self.store, self.job.id))
        hp = {k: result["hyperparameters"][k] for k in RESOLVED_KEYS if k in result.get("hyperparameters", {})}
        ok = queue.finish_succeeded(self.store, self.job, self.owner, fine_tuned_model=self.ft_name,
                                    model_path=str(model_dir), trained_tokens=int(result["trained_tokens"]),
                                    resolved_hyperparameters=hp or None, result_csv_text=csv_text)
        if ok:
            log.info("job %s succeeded: %s", self.job.id, self.ft_name)
        else:
            queue.release_stopped(self.store, self.job.id, self.owner)


def spawn_child(log_path: Path, *, warm: bool = False):
    """Start `python -m tunery.worker.child` connected by a socketpair; returns (Popen, Connection).
    Call it only from a thread that outlives the child (the child dies with that thread's process)."""
    import socket
    import subprocess
    import sys
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunery.worker.child", str(theirs.fileno()), str(os.getpid())]
            + (["--warm"] if warm else []),
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C at the terminal reaches the worker, which stops the child itself.
            start_new_session=True, env=child_env())
    finally:
        log_file.close()
        theirs.close()
    return proc, Connection(ours.detach())


class Worker:
    """Claims and runs jobs until stop() (or until idle, with run(until_idle=True))."""

    def __init__(self, settings: Settings | None = None, config: WorkerSettings | None = None):
        from tunery.store import queue
        from tunery.store.db import open_store

        self.settings = (settings or get_settings()).ensure_dirs()
        self.config = config or self.settings.worker
        if self.config.node_rank > 0:
            raise ValueError(f"node rank {self.config.node_rank} claims no jobs: it joins node 0's runs "
                             "(tunery.worker.node.NodeWorker, `tunery worker --node-rank K`)")
        self.owner = self.config.owner or queue.new_owner_id()
        self.store = open_store(self.settings)
        self.stopping = threading.Event()
        self.runs: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._warm = None  # (Popen, Connection) of the pre-started child
        self._next_warm = 0.0

    def _ensure_warm(self) -> None:
        # Runs on the loop thread, which outlives every child it starts (see spawn_child).
        if not self.config.prestart:
            return
        with self._lock:
            warm = self._warm
        if warm is not None and warm[0].poll() is None:
            return
        if warm is not None:
            warm[1].close()
        if time.monotonic() < self._next_warm:
            return
        self._next_warm = time.monotonic() + 10  # a child that keeps dying is not restarted in a loop
        log_path = self.settings.jobs_dir / ".worker" / f"warm-{os.getpid()}.log"
        child = spawn_child(log_path, warm=True)
        with self._lock:
            self._warm = child

    def take_warm(self):
        """The pre-started child (or None); the caller owns it from then on."""
        with self._lock:
            warm, self._warm = self._warm, None
        if warm is not None and warm[0].poll() is not None:
            warm[1].close()
            return None
        return warm

    def _drop_warm(self) -> None:
        warm = self.take_warm()
        if warm is not None:  # idle by definition: no need to be gentle
            warm[0].kill()
            warm[0].wait()
            warm[1].close()

    def stop(self) -> None:
        """Stop claiming; running jobs are stopped and queued again (they resume from their checkpoint)."""
        self.stopping.set()

    def active(self) -> list[str]:
        with self._lock:
            return [jid for jid, t in self.runs.items() if t.is_alive()]

    def recover(self) -> None:
        from tunery.store import queue

        # Our own running jobs are supervised (and heartbeated) by their threads: never recover those.
        mine = set(self.active())
        for job_id, action in queue.recover_expired(self.store, max_attempts=self.config.max_attempts,
                                                    exclude=mine):
            log.warning("recovered job %s from a lost worker: %s", job_id, action)

    def claim_one(self):
        from tunery.store import queue

        job = queue.claim_next(self.store, self.owner, self.config.lease_seconds)
        if job is None:
            return None
        run = JobRun(self, job)
        run.event("info", f"Worker {self.owner} started attempt {job.attempts} of this job")
        t = threading.Thread(target=run.run, name=f"tunery-job-{job.id}", daemon=True)
        with self._lock:
            self.runs[job.id] = t
        t.start()
        return job

    def run(self, *, until_idle: bool = False) -> None:
        """The loop: recover lost jobs, fill free slots with queued jobs, wait; returns after stop()."""
        recover_every = max(1.0, self.config.lease_seconds / 3)
        next_recover = 0.0
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                if now >= next_recover:
                    next_recover = now + recover_every
                    self._safely(self.recover)
                claimed = None
                if len(self.active()) < self.config.concurrency:
                    claimed = self._safely(self.claim_one)
                if claimed is not None:
                    continue  # maybe more slots to fill
                self._safely(self._ensure_warm)
                if until_idle and not self.active():
                    break
                self.stopping.wait(self.config.poll_seconds)
        finally:
            self.stopping.set()
            for t in list(self.runs.values()):
                t.join(timeout=60)
            self._drop_warm()

    def _safely(self, fn):
        try:
            return fn()
        except Exception:  # a database hiccup must not end the worker loop; try again next tick
            log.exception("worker %s: %s failed", self.owner, getattr(fn, "__name__", fn))
            return None


class BackgroundWorker:
    """A Worker on a daemon thread (the one `tunery serve` embeds)."""

    def __init__(self, settings: Settings | None = None, config: WorkerSettings | None = None):
        self.worker = Worker(settings, config)
        self.thread = threading.Thread(target=self.worker.run, name="tunery-worker", daemon=True)

    def start(self) -> "BackgroundWorker":
        self.thread.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        self.worker.stop()
        self.thread.join(timeout=timeout)


def start_background_worker(settings: Settings | None = None, **config) -> BackgroundWorker:
    """config: WorkerSettings fields that differ from settings.worker (None keeps the setting)."""
    settings = settings or get_settings()
    changed = {k: v for k, v in config.items() if v is not None}
    return BackgroundWorker(settings, replace(settings.worker, **changed)).start()
