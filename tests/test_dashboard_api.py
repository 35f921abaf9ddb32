"""The dashboard's server side over real HTTP: static files with their content types and policy, and the two
read-only /tunery/v1 routes, which answer under the same keys and organization isolation as /v1."""

from __future__ import annotations

import os

import httpx

from test_api_support import chat_jsonl, make_server, server  # noqa: F401  (fixtures)


def test_pages_are_served_with_types_and_a_strict_policy(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp and r.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/dashboard/app.js">' in r.text and "<script>" not in r.text
    for name, ctype in (("app.js", "text/javascript"), ("chart.js", "text/javascript"), ("app.css", "text/css")):
        r = httpx.get(f"{server.url}/dashboard/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), name
    for bad in ("nope.js", "..%2F__init__.py", "__init__.py", "%2E%2E%2Fstatic%2Fapp.js"):
        r = httpx.get(f"{server.url}/dashboard/{bad}")
        assert r.status_code == 404 and r.json()["error"]["message"], bad
    # The API is where it was.
    assert httpx.get(server.url + "/v1/models").status_code == 200
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_validation_report_route_has_line_numbers(server):
    client = server.client()
    lines = chat_jsonl(12).decode().splitlines()
    lines[4] = "not json"
    bad = client.files.create(file=("bad.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    good = client.files.create(file=("good.jsonl", chat_jsonl(12)), purpose="fine-tune")
    r = httpx.get(f"{server.url}/tunery/v1/files/{bad.id}/validation").json()
    assert r["status"] == "error" and r["report"]["ok"] is False
    assert [(p["kind"], p["lines"]) for p in r["report"]["errors"]] == [("invalid_json", [5])]
    r = httpx.get(f"{server.url}/tunery/v1/files/{good.id}/validation").json()
    assert r["status"] == "processed" and r["report"]["ok"] and r["report"]["n_examples"] == 12
    r = httpx.get(f"{server.url}/tunery/v1/files/file-nope/validation")
    assert r.status_code == 404 and r.json()["error"]["param"]
    models = httpx.get(f"{server.url}/tunery/v1/models").json()["data"]
    alias = next(m for m in models if m["name"] == "gpt-4o-mini")
    assert alias["kind"] == "alias" and alias["resolves_to"] == "smollm2-135m-instruct"


def test_tunery_routes_follow_the_keys(server):
    from tunery.store import create_api_key

    _, key_a = create_api_key(server.store, "acme")
    _, key_b = create_api_key(server.store, "rival")
    f = server.client(api_key=key_a).files.create(file=("a.jsonl", chat_jsonl(12)), purpose="fine-tune")
    url = f"{server.url}/tunery/v1/files/{f.id}/validation"
    for path in (url, f"{server.url}/tunery/v1/models"):
        r = httpx.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        assert httpx.get(path, headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {key_a}"}).json()["report"]["ok"]
    # Another organization's file is as absent as a file that never existed.
    r = httpx.get(url, headers={"Authorization": f"Bearer {key_b}"})
    assert r.status_code == 404 and f.id in r.json()["error"]["message"]
    # The page itself needs no key (it asks for one when /v1/models answers 401).
    assert httpx.get(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/v1/models").status_code == 401


def test_tunery_serve_prints_the_dashboard_url_and_serves_it(tmp_path):
    """`tunery serve` as a user runs it: its first lines name the dashboard, which answers there."""
    import subprocess
    import sys
    import time

    from test_api_support import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(tmp_path),
                             "--no-worker", "--log-level", "warning"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.1)
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert "<title>tunery</title>" in page.text
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"Dashboard: http://127.0.0.1:{port}/" in out


def test_tunery_quickstart_prints_the_dashboard_url_and_serves_it(tmp_path, bundled_model_dir):
    """`tunery quickstart` names the dashboard as soon as its server is up, and the page answers there.
    Stopped at that point: the rest of the tour (7 minutes of training) is test_quickstart's slow test."""
    import queue
    import re
    import signal
    import subprocess
    import sys
    import threading
    import time

    proc = subprocess.Popen([sys.executable, "-m", "tunery.cli", "quickstart", "--home", str(tmp_path / "qs")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"}, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)[-3000:]
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            m = re.search(r"dashboard at (http://127\.0\.0\.1:\d+/)", seen[-1])
            url = m and m.group(1)
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "<title>tunery</title>" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert httpx.get(url + "v1/models", timeout=10).status_code == 200  # and the API it reads is beside it
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the quickstart's own session: its server, worker and trainer
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
