"""The web dashboard in a real browser: headless Chromium from Debian's packages driven by Playwright,
against a real server on a loopback port with a real worker training the tiny model. One walk through
the whole workflow, then keys: another organization sees none of it.

Set TUNERY_SCREENSHOT_DIR=docs to refresh the README's screenshots (default: the test's tmp dir)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from test_api_support import chat_jsonl, make_server  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FAST = {"TUNERY_WORKER_POLL_SECONDS": "0.25", "TUNERY_WORKER_LEASE_SECONDS": "6", "TUNERY_NUM_THREADS": "1"}

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install chromium)"),
]


@pytest.fixture
def dashboard(make_server, monkeypatch):
    """A server with its worker, as `tunery serve` runs them, and a browser page on it."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    from tunery.worker import start_background_worker

    srv = make_server()
    srv.store  # noqa: B018  (opened and migrated before the worker polls it)
    worker = start_background_worker(srv.settings)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(30_000)
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            yield srv, page, problems
            context.close()
            browser.close()
    finally:
        worker.stop()


def points(page, title: str) -> int:
    fig = page.locator("figure.chart", has=page.locator("figcaption", has_text=re.compile(f"^{title}$")))
    return int(fig.get_attribute("data-points") or 0)


def job_training_file(client, job_id: str) -> str:
    return client.fine_tuning.jobs.retrieve(job_id).training_file


def test_dashboard_workflow_and_organizations(dashboard, tiny_model_dir, tmp_path):
    from playwright.sync_api import expect

    srv, page, problems = dashboard
    shots = Path(os.environ.get("TUNERY_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    # Served at / with a strict policy and real content types; the API stays under /v1.
    resp = page.goto(srv.url + "/")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["content-type"].startswith("text/html")
    js = page.request.get(srv.url + "/dashboard/app.js")
    assert js.headers["content-type"].startswith("text/javascript") and js.headers["x-content-type-options"] == "nosniff"
    assert page.request.get(srv.url + "/dashboard/..%2Fapi.js").status == 404
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"

    # Files: a broken upload shows its report with line numbers; a good one is processed.
    bad = tmp_path / "broken.jsonl"
    lines = chat_jsonl(12).decode().splitlines()
    lines[2] = '{"messages": [oops'
    bad.write_text("\n".join(lines) + "\n")
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_bytes(chat_jsonl(12, "t"))
    valid.write_bytes(chat_jsonl(10, "v"))
    page.get_by_role("link", name="Files").click()
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#up-file-error")).to_have_text("Choose a file to upload.")
    page.set_input_files("#up-file", str(bad))
    page.get_by_role("button", name="Upload").click()
    report = page.locator("#report-slot .report")
    expect(report).to_contain_text("Not usable for fine-tuning")
    row = report.locator("tr", has_text="line is not valid JSON")
    expect(row.locator("td.lines")).to_have_text("3")
    for path in (train, valid):
        page.set_input_files("#up-file", str(path))
        page.get_by_role("button", name="Upload").click()
        expect(report).to_contain_text(f"Valid: {12 if path is train else 10} valid chat examples")
    expect(page.locator("tr[data-file] .fs-processed")).to_have_count(2)
    expect(page.locator("tr[data-file] .fs-error")).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    page.locator("tr[data-file]", has_text="broken.jsonl").get_by_role("button", name=re.compile("^Delete")).click()
    expect(page.locator("tr[data-file]")).to_have_count(2)

    # New job: a bad value gets the API's message beside its field, then the job is created.
    page.get_by_role("link", name="New job").click()
    page.get_by_label("Base model").fill(str(tiny_model_dir))
    for sel, name in (("#f-training_file", "train.jsonl"), ("#f-validation_file", "valid.jsonl")):
        page.select_option(sel, page.locator(f"{sel} option", has_text=name).get_attribute("value"))
    page.get_by_label("Epochs").fill("lots")
    page.get_by_label("Suffix").fill("dash")
    page.get_by_role("button", name="Create job").click()
    expect(page.locator("#f-n_epochs-error")).to_contain_text("n_epochs must be 'auto' or a number")
    assert page.get_by_label("Epochs").get_attribute("aria-invalid") == "true"
    page.get_by_label("Epochs").fill("3")
    page.get_by_label("Batch size").fill("1")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]

    # The job page: the curve gains points while it runs (no reload), then checkpoints and the CSV.
    seen: set[int] = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen.add(points(page, "Loss"))
        if page.locator(".title-row .badge").text_content() in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    expect(page.locator(".title-row .badge")).to_have_text("succeeded")
    final = points(page, "Loss")
    assert len({n for n in seen if 0 < n < final}) >= 1, f"the curve never showed a partial state: {sorted(seen)}"
    assert final > 36  # 36 train points (3 epochs x 12 steps) plus validation points
    assert page.locator("figure.chart polyline[data-series='validation']").count() == 2
    expect(page.locator(".kv", has_text="n_epochs")).to_contain_text("3")
    expect(page.get_by_role("link", name="Try in playground")).to_have_count(4)  # 3 checkpoints + the model
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download result CSV").click()
    csv = Path(dl.value.path()).read_text()
    assert csv.startswith("step,train_loss") and len(csv.splitlines()) == 37
    expect(page.locator(".events")).to_contain_text("Training finished")
    page.screenshot(path=str(shots / "dashboard-job.png"), full_page=True)

    # Playground from a checkpoint: the base and the checkpoint answer, streamed side by side.
    page.locator("#ckpt-h ~ div a", has_text="Try in playground").first.click()
    page.wait_for_url(re.compile(r"#/playground\?models="))
    expect(page.locator(".pg-models input")).to_have_count(2)
    page.get_by_label("System message").fill("Answer briefly.")
    page.get_by_label("User message").fill("question t 3")
    page.get_by_label("Temperature").fill("5")
    page.get_by_label("Max tokens").fill("24")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#pg-temperature-error")).to_contain_text("temperature")
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("User message").press("Control+Enter")  # the keyboard way to send
    answers = page.locator(".pg-answer")
    expect(answers).to_have_count(2)
    for i in range(2):
        expect(answers.nth(i)).to_have_attribute("data-state", "done", timeout=60_000)
        assert int(answers.nth(i).get_attribute("data-chunks")) >= 2  # arrived in pieces, not at once
        assert answers.nth(i).locator(".pg-text").text_content()  # the random tiny base may answer blanks
    ckpt_answer = answers.nth(1).locator(".pg-text").text_content()
    page.screenshot(path=str(shots / "dashboard-playground.png"), full_page=True)

    # Compare and models pages read the same job.
    page.goto(f"{srv.url}/#/compare?a={job_id}&b={job_id}")
    expect(page.locator("table.compare")).to_contain_text("n_epochs")
    assert points(page, "Token accuracy") > 0
    page.get_by_role("link", name="Models").click()
    expect(page.locator("#ft-models tr[data-model]")).to_have_count(1)
    expect(page.locator("#base-models")).to_contain_text("gpt-4o-mini")

    # A narrow window: nothing overflows the page sideways (wide tables scroll inside their box).
    page.set_viewport_size({"width": 380, "height": 800})
    for route in ("#/jobs", f"#/jobs/{job_id}", "#/files", "#/playground", "#/new"):
        page.goto(f"{srv.url}/{route}")
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), route
        unlabelled = page.evaluate("[...document.querySelectorAll('input, select, textarea')]"
                                   ".filter((e) => !e.labels || !e.labels.length).map((e) => e.outerHTML)")
        assert unlabelled == [], (route, unlabelled)
    page.set_viewport_size({"width": 1280, "height": 900})

    # Pause, resume and cancel from the job page (the worker follows within a poll).
    client = srv.client()
    second = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=job_training_file(client, job_id),
                                            hyperparameters={"n_epochs": 50, "batch_size": 1})
    page.goto(f"{srv.url}/#/jobs/{second.id}")
    badge = page.locator(".title-row .badge")
    expect(badge).to_have_text(re.compile("queued|running|validating_files"))
    page.get_by_role("button", name="Pause").click()
    expect(badge).to_have_text("paused")
    page.get_by_role("button", name="Resume").click()
    expect(badge).to_have_text(re.compile("queued|running"))
    page.get_by_role("button", name="Cancel").click()
    expect(badge).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator("tr[data-job]")).to_have_count(2)
    page.get_by_label("Status").select_option("cancelled")
    expect(page.locator("tr[data-job]")).to_have_count(1)
    expect(page.locator(f"tr[data-job='{second.id}']")).to_be_visible()
    expect(page.get_by_text("1 of 2 jobs (cancelled)")).to_be_visible()

    # Keys: the page asks for one; another organization's key shows nothing of ours.
    from tunery.store import create_api_key

    _, own_key = create_api_key(srv.store, srv.settings.default_org)
    _, rival_key = create_api_key(srv.store, "rival")
    page.goto(srv.url + "/#/jobs")
    expect(page.get_by_role("heading", name="API key needed")).to_be_visible()
    page.get_by_label("API key").fill("sk-wrong")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#api-key-error")).to_contain_text("Incorrect API key")
    page.get_by_label("API key").fill(rival_key)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    page.get_by_role("link", name="Files").click()
    expect(page.get_by_text("No files yet.")).to_be_visible()
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_text("No fine-tuned models yet.")).to_be_visible()
    page.goto(f"{srv.url}/#/jobs/{job_id}")
    expect(page.get_by_text(re.compile("No such fine-tuning job"))).to_be_visible()
    # The key lives in this tab's session storage only: not in the URL, not in a cookie.
    assert page.evaluate("sessionStorage.getItem('tunery.apiKey')") == rival_key
    assert page.context.cookies() == [] and rival_key not in page.url
    page.get_by_role("button", name="Forget key").click()
    page.get_by_label("API key").fill(own_key)
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator(f"tr[data-job='{job_id}']")).to_contain_text("succeeded")
    assert ckpt_answer
    assert not problems, problems
