"""Child server processes that never outlive tunery (the vLLM backend's servers).

A child is started in a process group of its own under a small watchdog (tunery/inference/watchdog.py, run
by path with tunery's interpreter, standard library only) that holds the read end of a pipe whose write end
only tunery holds. When tunery's process ends in any way, SIGKILL included, the kernel closes that end and
the watchdog ends the whole group: SIGTERM, then SIGKILL after a grace period. (PR_SET_PDEATHSIG alone would
not do: it fires when the *thread* that forked the child exits, and tunery starts servers from pool threads
that come and go; nor would it reach the server's own children.) `stop()` ends the group from tunery's side.
A child that tunery forks without exec (multiprocessing's fork start method, a DataLoader worker) would inherit
the write ends and keep the servers alive after tunery is gone, so a forked child closes them at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WATCHDOG = Path(__file__).with_name("watchdog.py")
GRACE = 10.0  # seconds between SIGTERM and SIGKILL for the group (vLLM's children ignore SIGTERM longer)
_LIFELINES: set[int] = set()  # write ends this process holds, one per live watchdog


def _close_lifelines_in_forked_child() -> None:
    for fd in _LIFELINES:
        try:
            os.close(fd)
        except OSError:
            pass
    _LIFELINES.clear()


os.register_at_fork(after_in_child=_close_lifelines_in_forked_child)


def spawn(cmd: list[str], *, env: dict[str, str], log_path: Path, grace: float = GRACE) -> subprocess.Popen:
    """Start `cmd` under the watchdog, stdout and stderr appended to `log_path`. The returned process is the
    watchdog: it exits with the server's status, and its pid is the process group of the server's tree."""
    read, write = os.pipe()  # both ends are not inherited by exec'd children: only the watchdog gets `read`
    try:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-I", str(WATCHDOG), str(grace), *cmd], stdin=read,
                                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    proc.lifeline = write  # closed by stop(), or by the kernel when tunery dies
    _LIFELINES.add(write)
    return proc


def stop(proc: subprocess.Popen | None, grace: float = GRACE) -> None:
    """End a spawned server and everything in its process group: SIGTERM, then SIGKILL for whatever is left
    after `grace` seconds."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reaps the watchdog itself once it exits
            os.killpg(proc.pid, 0)  # ProcessLookupError once the whole group is gone
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    lifeline = getattr(proc, "lifeline", None)
    if lifeline is not None:
        proc.lifeline = None
        _LIFELINES.discard(lifeline)
        os.close(lifeline)
