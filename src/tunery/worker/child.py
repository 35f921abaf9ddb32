"""The training child process: runs tunery.train.train and reports over a pipe.

It runs in a fresh interpreter (`python -m tunery.worker.child FD WORKER_PID [--warm]`, FD one end of a
socketpair wrapped as a multiprocessing Connection), so a crash, an out-of-memory kill or a stuck native
library takes down only this process; the worker sees the exit and fails or retries the job. Messages to the worker are tuples: ("event", level, message), ("metrics", data),
("resolved", hyperparameters), ("checkpoint", {step, epoch, path, metrics}), ("result", {...}),
("domain_error", {message, code, param}), ("crash", text). The worker sends ("stop", "cancel"|"pause");
the trainer polls for it before every step. The child dies with its worker (PR_SET_PDEATHSIG) so a
killed worker never leaves an orphan trainer writing into a job someone else resumes.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback


def _die_with_parent(parent_pid: int) -> None:
    # PR_SET_PDEATHSIG fires when the thread that started us ends, so the worker starts children only
    # from threads that outlive them (its main loop, or the job's supervisor thread).
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(3)


def main(argv: list[str] | None = None) -> None:
    """Entry point. The first message on the connection is the job's payload; with --warm the heavy
    libraries are imported while waiting for it, so a job handed over starts training at once."""
    from multiprocessing.connection import Connection

    argv = sys.argv[1:] if argv is None else argv
    conn = Connection(int(argv[0]))
    _die_with_parent(int(argv[1]))
    if "--warm" in argv[2:]:
        _preload()
    try:
        payload = conn.recv()
    except (EOFError, OSError):  # the worker shut down or no longer needs this child
        os._exit(0)
    run(conn, payload)


def _preload() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        import tunery.train.loop  # noqa: F401
    except Exception:  # the real import inside train() reports any problem with the job's log
        pass


def _redirect_output(log_path: str | None) -> None:
    """From here on, stdout/stderr (warnings, native crash messages) go to the job's attempt log."""
    if not log_path:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run(conn, payload: dict) -> None:
    """Train as payload says ({log_path, env, config}), reporting over conn; exits the process."""
    from tunery.settings import apply_env

    _redirect_output(payload.get("log_path"))
    apply_env(payload.get("env", {}))  # the worker's Settings.to_env(): the trainer reads the same settings
    code = 0
    try:
        from tunery.errors import TuneryError

        try:
            result = _train(conn, payload)
            conn.send(("result", result))
        except TuneryError as exc:
            conn.send(("domain_error", {"message": exc.message, "code": exc.code, "param": exc.param}))
            code = 2
        except _ParentGone:
            code = 3
    except BaseException as exc:  # anything else is a crash of this attempt: report it, whatever it is
        traceback.print_exc()
        try:
            conn.send(("crash", _describe(exc)))
        except (OSError, EOFError):
            pass
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # closing down: nothing useful to do with a flush error
            pass
    os._exit(code)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "the trainer ran out of memory (MemoryError)"
    name = type(exc).__name__
    msg = str(exc).strip().splitlines()
    return f"{name}: {msg[0][:500]}" if msg else name


class _ParentGone(Exception):
    pass


def _train(conn, payload: dict) -> dict:
    from tunery.train import TrainCallbacks, TrainConfig, train

    class PipeCallbacks(TrainCallbacks):
        def __init__(self):
            self.stop: str | None = None

        def _send(self, msg) -> None:
            try:
                conn.send(msg)
            except (OSError, EOFError) as exc:
                raise _ParentGone() from exc

        def on_event(self, level, message):
            self._send(("event", level, message))

        def on_metrics(self, data):
            self._send(("metrics", dict(data)))

        def on_resolved(self, hyperparameters):
            self._send(("resolved", dict(hyperparameters)))

        def on_checkpoint(self, info):
            self._send(("checkpoint", {"step": info.step, "epoch": info.epoch, "path": str(info.path),
                                       "metrics": dict(info.metrics or {})}))

        def should_stop(self):
            try:
                while conn.poll(0):
                    msg = conn.recv()
                    if msg[0] == "stop" and self.stop != "cancel":
                        self.stop = msg[1]
            except (OSError, EOFError) as exc:
                raise _ParentGone() from exc
            return self.stop

    config = TrainConfig(**payload["config"])
    result = train(config, PipeCallbacks())
    return {
        "status": result.status,
        "hyperparameters": dict(result.hyperparameters or {}),
        "trained_tokens": int(result.trained_tokens or 0),
        "final_metrics": dict(result.final_metrics or {}),
        "model_dir": str(result.model_dir) if result.model_dir else None,
        "resume_dir": str(result.resume_dir) if result.resume_dir else None,
    }


if __name__ == "__main__":
    main()
