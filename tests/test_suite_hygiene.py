"""The suite cannot pass with less (issue 11): outside CI too, a skipped test is a failure that says what
to install, unless TUNERY_ALLOW_SKIPS=1; and `make test` checks the programs the tests need first."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent


def test_a_skip_outside_ci_fails_with_its_reason(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TUNERY_ALLOW_SKIPS", raising=False)
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_x="import pytest\n\ndef test_needs_a_browser():\n"
                               "    pytest.skip('chromium is not installed: apt-get install chromium')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*apt-get install chromium*"])
    monkeypatch.setenv("TUNERY_ALLOW_SKIPS", "1")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(skipped=1)


def test_a_module_skipped_at_import_fails_the_run_without_stopping_it(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TUNERY_ALLOW_SKIPS", raising=False)
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_needs="import pytest\n\nxyz = pytest.importorskip('no_such_module_xyz')\n\n"
                                   "def test_a():\n    pass\n",
                        test_other="def test_b():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 1
    result.assert_outcomes(passed=1, skipped=1)  # the other module still ran
    result.stdout.fnmatch_lines(["FAILED (module skipped*test_needs.py*no_such_module_xyz*"])
    monkeypatch.setenv("TUNERY_ALLOW_SKIPS", "1")
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0


def test_make_test_checks_the_system_programs_first():
    make = (REPO / "Makefile").read_text()
    assert "test: test-deps" in make and "test-fast: test-deps" in make
    # On this machine everything is present (or installed as root): the check passes quietly.
    proc = subprocess.run([str(REPO / ".ci" / "test-deps")], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    # With nothing on PATH (no apt-get either) it stops with one line naming what to install.
    env = {"PATH": "/nonexistent", "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.run(["/bin/bash", str(REPO / ".ci" / "test-deps")], capture_output=True, text=True,
                          env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "chromium" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
