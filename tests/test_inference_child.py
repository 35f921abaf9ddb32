"""Child servers never outlive tunery: a process that owns one is SIGKILLed, and the server with everything
it started is gone within seconds (tunery.inference.child); the vLLM backend's real server too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tunery.settings import Settings

SRC = Path(__file__).resolve().parents[1] / "src"

OWNER = """
import sys, time
from pathlib import Path
from tunery.inference import child
proc = child.spawn(sys.argv[3:], env={"PATH": "/usr/bin:/bin"}, log_path=Path(sys.argv[1]), grace=float(sys.argv[2]))
print(proc.pid, flush=True)
time.sleep(600)
"""

FORKING_OWNER = """
import os, sys, time
from pathlib import Path
from tunery.inference import child
proc = child.spawn(["sleep", "300"], env={"PATH": "/usr/bin:/bin"}, log_path=Path(sys.argv[1]), grace=2)
pid = os.fork()
if pid == 0:  # a forked, not exec'd, child: it outlives its parent
    time.sleep(120)
    os._exit(0)
print(proc.pid, pid, flush=True)
time.sleep(600)
"""

VLLM_OWNER = """
import sys, time
from tunery.inference.vllm import VllmEngine
from tunery.settings import Settings
handle = VllmEngine(Settings.from_env()).prepare(sys.argv[1])
print(handle.backend.proc.pid, handle.backend.url, flush=True)
time.sleep(900)
"""


def group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if d.name.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def gone_within(pgid: int, seconds: float) -> float:
    start = time.monotonic()
    while group(pgid) and time.monotonic() - start < seconds:
        time.sleep(0.1)
    assert not group(pgid), f"still running {seconds:.0f} s after their owner was killed: {group(pgid)}"
    return time.monotonic() - start


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def owner_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def test_a_forked_child_does_not_keep_the_server_alive(tmp_path):
    """The owner forks (no exec) a child that outlives it: the server still ends with the owner, since the
    forked child closed its copy of the pipe's write end."""
    owner = subprocess.Popen([sys.executable, "-c", FORKING_OWNER, str(tmp_path / "server.log")],
                             stdout=subprocess.PIPE, text=True, env=owner_env())
    pgid, forked = map(int, owner.stdout.readline().split())
    try:
        deadline = time.monotonic() + 20
        while len(group(pgid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(group(pgid)) == 2  # the watchdog and sleep
    finally:
        owner.kill()
        owner.wait()
    try:
        gone_within(pgid, 10)
        os.kill(forked, 0)  # the forked child is still there: it did not take the server with it
    finally:
        try:
            os.kill(forked, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("term", ["obeyed", "ignored"])
def test_server_and_its_children_die_with_a_sigkilled_owner(tmp_path, term):
    """An HTTP server (python -m http.server under sh, with a grandchild beside it) owned by a process that
    is SIGKILLed ends at once; one that ignores SIGTERM is SIGKILLed after the grace period (5 s here)."""
    port = free_port()
    trap = "trap '' TERM; " if term == "ignored" else ""
    server = f"{trap}sleep 300 & exec {sys.executable} -I -m http.server --bind 127.0.0.1 {port}"
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "server.log"), "5", "sh", "-c", server],
                             stdout=subprocess.PIPE, text=True, env=owner_env())
    try:
        pgid = int(owner.stdout.readline())
        deadline = time.monotonic() + 30
        while not answers(f"http://127.0.0.1:{port}/") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answers(f"http://127.0.0.1:{port}/")
        assert len(group(pgid)) == 3  # the watchdog, the server, the grandchild
    finally:
        owner.kill()
        owner.wait()
    took = gone_within(pgid, 15)
    assert took < 4 if term == "obeyed" else 4.5 <= took < 9  # the grace period is 5 s
    assert not answers(f"http://127.0.0.1:{port}/")


def test_watchdog_passes_the_exit_status_and_stop_ends_the_group(tmp_path):
    from tunery.inference import child

    done = child.spawn(["sh", "-c", "exit 3"], env={"PATH": "/usr/bin:/bin"}, log_path=tmp_path / "a.log")
    assert done.wait(timeout=30) == 3  # tunery sees a server that died as dead (and starts it again)
    child.stop(done)
    stubborn = child.spawn(["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"], env={"PATH": "/usr/bin:/bin"},
                           log_path=tmp_path / "b.log")
    deadline = time.monotonic() + 10
    while len(group(stubborn.pid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(group(stubborn.pid)) == 4  # the watchdog, sh (it ignores SIGTERM too) and its two sleeps
    t = time.monotonic()
    child.stop(stubborn, grace=0.5)
    assert not group(stubborn.pid) and time.monotonic() - t < 3
    assert stubborn.lifeline is None


def test_vllm_server_dies_with_a_sigkilled_tunery(tiny_vllm_model, tmp_path):
    """The real thing: a process that started a vLLM server (API server, engine core) is SIGKILLed; the
    whole server is gone within seconds and its port no longer answers."""
    from tunery.inference.vllm import available

    if not available(Settings.from_env()):
        pytest.skip("vLLM is not installed for the vLLM backend: run `make vllm` (make test does it)")
    env = {**owner_env(), "TUNERY_INFERENCE_DTYPE": "float32"}
    owner = subprocess.Popen([sys.executable, "-c", VLLM_OWNER, str(tiny_vllm_model)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        line = owner.stdout.readline().split()
        assert line, "the owner could not start a vLLM server"
        pgid, url = int(line[0]), line[1]
        assert answers(url + "/health") and len(group(pgid)) >= 2  # the watchdog, vLLM's server and engine core
    finally:
        owner.kill()
        owner.wait()
    gone_within(pgid, 20)  # SIGTERM; SIGKILL after child.GRACE (10 s) for what ignores it
    assert not answers(url + "/health")


@pytest.fixture
def tiny_vllm_model(bundled_model_dir, tmp_path_factory) -> Path:
    """A tiny model vLLM's CPU kernels take (head_dim 64, as in tests/test_inference_api.py)."""
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-hd64"), bundled_model_dir, hidden=256)
