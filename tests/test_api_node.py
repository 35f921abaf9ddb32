"""The same flow through the official openai npm package: upload → create job → list events → list
models (tests/node/sdk.test.mjs run with `node --test` against a real server)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest_plugins = ["test_api_support"]  # the server, store and PostgreSQL fixtures


NODE_DIR = Path(__file__).parent / "node"


def test_node_sdk_flow(server):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: apt-get install nodejs npm (make test does it as root)")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.skip("NODE SDK TEST SKIPPED: run `npm ci` in tests/node (make install-dev does it)")
    env = {**os.environ, "TUNERY_BASE_URL": server.base_url}
    proc = subprocess.run([node, "--test", "sdk.test.mjs"], cwd=NODE_DIR, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# pass 1" in proc.stdout and "# skipped 0" in proc.stdout, proc.stdout[-2000:]
