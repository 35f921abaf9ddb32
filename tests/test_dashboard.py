"""The web dashboard in a real browser: headless Chromium from Debian's packages driven by Playwright,
against a real server on a loopback port with a real worker training the tiny model. One walk through
the whole workflow (issue 17's list, item by item), then keys: another organization sees none of it.

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
UPLOAD_LIMIT = 100_000  # small, so the upload form can be shown the API's 413 next to its field
FAST = {"TUNERY_WORKER_POLL_SECONDS": "0.25", "TUNERY_WORKER_LEASE_SECONDS": "6", "TUNERY_NUM_THREADS": "1",
        "TUNERY_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
ROUTES = ("#/jobs", "#/new", "#/files", "#/playground", "#/compare", "#/models")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install chromium)"),
]

# WCAG 2.x contrast of every visible piece of text on the page against the background it is drawn on
# (ancestors' backgrounds composited, alpha included): 4.5:1, or 3:1 for large text. Disabled controls are
# exempt, as WCAG exempts them. Returns the failures.
CONTRAST_JS = """() => {
  const rgba = (c) => { const m = /rgba?\\(([^)]+)\\)/.exec(c || ""); if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat([1]);
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const background = (el) => { const layers = [];
    for (let e = el; e; e = e.parentElement) { const c = rgba(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    return layers.reverse().reduce((acc, c) => over(c, acc), [255, 255, 255, 1]); };
  const bad = [];
  for (const el of document.querySelectorAll("body *")) {
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const st = getComputedStyle(el);
    if (st.visibility === "hidden" || !el.getClientRects().length || el.closest("[disabled], option, noscript")) continue;
    const r = el.getBoundingClientRect(); if (r.right < 0 || r.bottom < 0) continue;  // the skip link, parked off-screen
    const bg = background(el instanceof SVGElement ? el.closest("figure") : el);
    const fg = over(rgba(el instanceof SVGElement ? st.fill : st.color), bg);
    const size = parseFloat(st.fontSize), weight = parseInt(st.fontWeight, 10) || 400;
    const need = size >= 24 || (size >= 18.66 && weight >= 700) ? 3 : 4.5;
    const got = ratio(fg, bg);
    if (got < need) bad.push(`${got.toFixed(2)} < ${need}: <${el.tagName.toLowerCase()} class="${el.getAttribute("class") || ""}"> ${el.textContent.trim().slice(0, 40)}`);
  }
  return bad;
}"""

# The focus ring (WCAG 1.4.11): at least 3:1 against the background around the focused element.
FOCUS_RING_JS = """() => {
  const el = document.activeElement, st = getComputedStyle(el);
  const rgba = (c) => { const m = /rgba?\\(([^)]+)\\)/.exec(c || ""); const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  let bg = [255, 255, 255, 1];
  for (let e = el.parentElement; e; e = e.parentElement) { const c = rgba(getComputedStyle(e).backgroundColor); if (c[3] >= 1) { bg = c; break; } }
  const [x, y] = [lum(rgba(st.outlineColor)), lum(bg)].sort((p, q) => q - p);
  return { text: (el.textContent || el.id || "").trim().slice(0, 30), style: st.outlineStyle, width: parseFloat(st.outlineWidth),
           ratio: (x + 0.05) / (y + 0.05) };
}"""


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
            # Nothing but the server under test: a request anywhere else (a CDN, a font) fails the test.
            outside: list[str] = []
            context.route(re.compile(r"^(?!" + re.escape(srv.url) + r"/|data:|blob:).*"),
                          lambda route: (outside.append(route.request.url), route.abort()))
            page = context.new_page()
            page.set_default_timeout(30_000)
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            yield srv, page, problems
            assert outside == [], f"the pages asked for something off this server: {outside}"
            context.close()
            browser.close()
    finally:
        worker.stop()


def points(page, title: str) -> int:
    fig = page.locator("figure.chart", has=page.locator("figcaption", has_text=re.compile(f"^{re.escape(title)}")))
    return int(fig.get_attribute("data-points") or 0)


def wait_for(cond, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"waited {seconds:.0f} s for {what}"
        time.sleep(0.2)


def assert_readable(page, where: str) -> None:
    bad = page.evaluate(CONTRAST_JS)
    assert bad == [], (where, bad)
    unlabelled = page.evaluate("[...document.querySelectorAll('input, select, textarea')]"
                               ".filter((e) => !e.labels || !e.labels.length).map((e) => e.outerHTML)")
    assert unlabelled == [], (where, unlabelled)


def test_dashboard_workflow_and_organizations(dashboard, tiny_model_dir, tmp_path):
    from playwright.sync_api import expect

    srv, page, problems = dashboard
    client = srv.client()
    shots = Path(os.environ.get("TUNERY_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    # 1. Served at / with a strict policy and real content types; the API stays under /v1.
    resp = page.goto(srv.url + "/")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["content-type"].startswith("text/html")
    js = page.request.get(srv.url + "/dashboard/app.js")
    assert js.headers["content-type"].startswith("text/javascript") and js.headers["x-content-type-options"] == "nosniff"
    assert page.request.get(srv.url + "/dashboard/..%2Fapi.js").status == 404
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    # 3. The keyboard: Tab reaches the skip link first, then the main menu; Enter follows a link.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(8):
        page.keyboard.press("Tab")
        ring = page.evaluate(FOCUS_RING_JS)
        assert ring["style"] != "none" and ring["width"] >= 2 and ring["ratio"] >= 3, ring  # a visible focus ring
        if ring["text"] == "Files":
            break
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("#/files$"))

    # 2. Files: a broken upload shows its report with line numbers; a good one is processed; delete.
    bad = tmp_path / "broken.jsonl"
    lines = chat_jsonl(12).decode().splitlines()
    lines[2] = '{"messages": [oops'
    bad.write_text("\n".join(lines) + "\n")
    train, valid, huge = tmp_path / "train.jsonl", tmp_path / "valid.jsonl", tmp_path / "huge.jsonl"
    train.write_bytes(chat_jsonl(12, "t"))
    valid.write_bytes(chat_jsonl(10, "v"))
    huge.write_bytes(chat_jsonl(1000, "h"))
    assert huge.stat().st_size > UPLOAD_LIMIT
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#up-file-error")).to_have_text("Choose a file to upload.")
    # 5. What the API refuses (413 here) is its message next to the field, and nothing is stored.
    page.set_input_files("#up-file", str(huge))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#up-file-error")).to_contain_text(f"larger than this server's limit of {UPLOAD_LIMIT} bytes")
    assert page.get_by_label("JSONL file").get_attribute("aria-invalid") == "true"
    expect(page.get_by_text("No files yet.")).to_be_visible()
    page.set_input_files("#up-file", str(bad))
    page.get_by_role("button", name="Upload").click()
    report = page.locator("#report-slot .report")
    expect(report).to_contain_text("Not usable for fine-tuning")
    row = report.locator("tr", has_text="line is not valid JSON")
    expect(row.locator("td.lines")).to_have_text("3")
    assert_readable(page, "files page with a report")
    for path in (train, valid):
        page.set_input_files("#up-file", str(path))
        page.get_by_role("button", name="Upload").click()
        expect(report).to_contain_text(f"Valid: {12 if path is train else 10} valid chat examples")
    expect(page.locator("tr[data-file] .fs-processed")).to_have_count(2)
    expect(page.locator("tr[data-file] .fs-error")).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    page.locator("tr[data-file]", has_text="broken.jsonl").get_by_role("button", name=re.compile("^Delete")).click()
    expect(page.locator("tr[data-file]")).to_have_count(2)
    assert sorted(f.filename for f in client.files.list()) == ["train.jsonl", "valid.jsonl"]

    # New job: model, files, method (DPO shows its beta), hyperparameters "auto" or a number, suffix;
    # a bad value gets the API's message beside its field, then the job is created.
    page.get_by_role("link", name="New job").click()
    page.get_by_label("Base model").fill(str(tiny_model_dir))
    for sel, name in (("#f-training_file", "train.jsonl"), ("#f-validation_file", "valid.jsonl")):
        page.select_option(sel, page.locator(f"{sel} option", has_text=name).get_attribute("value"))
    expect(page.get_by_label("beta (DPO)")).to_be_hidden()
    page.get_by_label("Method").select_option("dpo")
    expect(page.get_by_label("beta (DPO)")).to_have_value("auto")
    page.get_by_label("Method").select_option("supervised")
    expect(page.get_by_label("beta (DPO)")).to_be_hidden()
    expect(page.get_by_label("Learning rate multiplier")).to_have_value("auto")
    page.get_by_label("Epochs").fill("lots")
    page.get_by_label("Suffix").fill("dash")
    page.get_by_role("button", name="Create job").click()
    expect(page.locator("#f-n_epochs-error")).to_contain_text("n_epochs must be 'auto' or a number")
    assert page.get_by_label("Epochs").get_attribute("aria-invalid") == "true"
    assert_readable(page, "new-job form with an error")
    page.get_by_label("Epochs").fill("10")  # 120 steps: several of the page's 1 s polls even on a fast machine
    page.get_by_label("Batch size").fill("1")
    page.get_by_label("Suffix").fill("no spaces allowed")
    page.get_by_role("button", name="Create job").click()
    expect(page.locator("#f-suffix-error")).to_contain_text("suffix")
    expect(page.locator("#f-n_epochs-error")).to_be_hidden()  # the old message went with its fix
    assert client.fine_tuning.jobs.list().data == []  # refused requests left no job behind
    page.get_by_label("Suffix").fill("dash")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[1]

    # A job's page: the curve gains points while it runs (no reload), then checkpoints and the CSV.
    page.evaluate("window.__sameDocument = true")  # gone if anything reloaded the page
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen.add(points(page, "Loss"))
        if page.locator(".title-row .badge").text_content() in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    expect(page.locator(".title-row .badge")).to_have_text("succeeded")
    final = points(page, "Loss")
    assert len({n for n in seen if 0 < n < final}) >= 1, f"the curve never showed a partial state: {sorted(seen)}"
    assert final > 120  # 120 train points (10 epochs x 12 steps) plus validation points
    assert points(page, "Token accuracy") > 120
    for title in ("Loss", "Token accuracy"):  # train and validation series in both charts
        fig = page.locator("figure.chart", has=page.locator("figcaption", has_text=title))
        assert fig.locator("polyline[data-series='train']").count() == 1
        assert fig.locator("polyline[data-series='validation']").count() == 1
    assert page.evaluate("window.__sameDocument === true")
    # The hyperparameters as resolved: what was typed, and the number the trainer chose for "auto".
    hp = page.locator("table.kv", has_text="n_epochs")
    expect(hp.locator("tr", has_text="n_epochs").locator("td")).to_have_text("10")
    expect(hp.locator("tr", has_text="batch_size").locator("td")).to_have_text("1")
    lr_shown = hp.locator("tr", has_text="learning_rate_multiplier").locator("td").text_content()
    resolved = client.fine_tuning.jobs.retrieve(job_id).method.supervised.hyperparameters.learning_rate_multiplier
    assert lr_shown != "auto" and isinstance(resolved, float) and float(lr_shown) == pytest.approx(resolved, rel=1e-3)
    expect(page.get_by_role("link", name="Try in playground")).to_have_count(4)  # 3 checkpoints + the model
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download result CSV").click()
    csv = Path(dl.value.path()).read_text()
    assert csv.startswith("step,train_loss") and len(csv.splitlines()) == 121
    expect(page.locator(".events")).to_contain_text("Training finished")
    expect(page.locator(".events")).to_contain_text("Checkpoint created at step 108")
    fine_tuned = client.fine_tuning.jobs.retrieve(job_id).fine_tuned_model
    assert ":dash:" in fine_tuned
    expect(page.locator("td[data-k='Fine-tuned model']")).to_have_text(fine_tuned)
    assert_readable(page, "job page")
    page.screenshot(path=str(shots / "dashboard-job.png"), full_page=True)

    # Playground from a checkpoint: the base and the checkpoint answer, streamed side by side.
    page.locator("#ckpt-h ~ div a", has_text="Try in playground").first.click()
    page.wait_for_url(re.compile(r"#/playground\?models="))
    models = page.locator(".pg-models input")
    expect(models).to_have_count(2)
    ckpt_name = models.nth(1).input_value()
    assert ckpt_name.startswith(fine_tuned + ":ckpt-step-")
    # Two to four models: "Add a model" stops at four, "Remove" at two.
    expect(page.get_by_role("button", name="Remove")).to_have_count(0)
    page.get_by_role("button", name="Add a model").click()
    page.get_by_role("button", name="Add a model").click()
    expect(models).to_have_count(4)
    expect(page.get_by_role("button", name="Add a model")).to_be_hidden()
    expect(page.get_by_label("Model 4")).to_be_focused()
    page.get_by_role("button", name="Remove").nth(3).click()
    page.get_by_role("button", name="Remove").nth(2).click()
    expect(models).to_have_count(2)
    expect(page.get_by_role("button", name="Remove")).to_have_count(0)
    assert models.nth(1).input_value() == ckpt_name
    page.get_by_label("System message").fill("Answer briefly.")
    page.get_by_label("User message").fill("question t 3")
    page.get_by_label("Temperature").fill("5")
    page.get_by_label("Max tokens").fill("24")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#pg-temperature-error")).to_contain_text("temperature")
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Stop sequences").fill("a|b|c|d|e")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#pg-stop-error")).to_contain_text("at most 4 stop sequences")
    expect(page.locator("#pg-temperature-error")).to_be_hidden()
    page.get_by_label("Stop sequences").fill("")
    page.get_by_label("User message").press("Control+Enter")  # the keyboard way to send
    answers = page.locator(".pg-answer")
    expect(answers).to_have_count(2)
    for i in range(2):
        expect(answers.nth(i)).to_have_attribute("data-state", "done", timeout=60_000)
        assert int(answers.nth(i).get_attribute("data-chunks")) >= 2  # arrived in pieces, not at once
        assert answers.nth(i).locator(".pg-text").text_content()  # the random tiny base may answer blanks
    expect(answers.nth(1).locator("h2")).to_have_text(ckpt_name)
    ckpt_answer = answers.nth(1).locator(".pg-text").text_content()
    assert_readable(page, "playground with answers")
    page.screenshot(path=str(shots / "dashboard-playground.png"), full_page=True)
    # The stop field reaches the server: the same greedy answer, cut where the stop string first appears.
    stop = next(c for c in ckpt_answer[1:] if not c.isspace() and c != "|")
    page.get_by_label("Stop sequences").fill(stop)
    page.get_by_role("button", name="Send").click()
    expect(answers.nth(1)).to_have_attribute("data-state", "done", timeout=60_000)
    assert answers.nth(1).locator(".pg-text").text_content() == ckpt_answer[:ckpt_answer.index(stop)], (ckpt_answer, stop)
    expect(answers.nth(1).locator(".pg-meta")).to_contain_text("finish: stop")

    # The jobs list updates live: a job created elsewhere appears and moves on, with no reload.
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator("tr[data-job]")).to_have_count(1)
    page.evaluate("window.__sameDocument = true")
    second = client.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=client.fine_tuning.jobs.retrieve(job_id).training_file,
                                            hyperparameters={"n_epochs": 50, "batch_size": 1})
    row2 = page.locator(f"tr[data-job='{second.id}']")
    expect(row2).to_be_visible()
    expect(row2.locator(".badge")).to_have_text("running", timeout=60_000)
    assert page.evaluate("window.__sameDocument === true")
    expect(page.get_by_text("2 of 2 jobs")).to_be_visible()
    cells = page.locator(f"tr[data-job='{job_id}'] td")  # job, status, model, fine-tuned model, created, duration
    expect(cells).to_have_text([re.compile(job_id), "succeeded", client.fine_tuning.jobs.retrieve(job_id).model, fine_tuned,
                                re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"), re.compile(r"^(\d+s|\d+m\d\ds)$")])

    # Pause, resume and cancel from the job page (the worker follows within a poll).
    row2.get_by_role("link", name=second.id).click()
    badge = page.locator(".title-row .badge")
    wait_for(lambda: points(page, "Loss") > 0, "the second job's first points")
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
    assert_readable(page, "jobs list")

    # Compare: the two jobs' curves overlaid in one chart, their hyperparameters side by side.
    page.goto(f"{srv.url}/#/compare?a={job_id}&b={second.id}")
    table = page.locator("table.compare")
    expect(table.locator("tr", has_text="n_epochs")).to_have_class("differs")
    expect(table.locator("tr", has_text="n_epochs").locator("td")).to_have_text(["10", "50"])
    expect(table.locator("tr", has_text="status").locator("td")).to_have_text(["succeeded", "cancelled"])
    for title in ("Loss", "Token accuracy"):
        fig = page.locator("figure.chart", has=page.locator("figcaption", has_text=title))
        for series in ("A train", "A validation", "B train"):
            expect(fig.locator(f"polyline[data-series='{series}']")).to_have_count(1)
    expect(page.get_by_label("Job A")).to_have_value(job_id)
    expect(page.get_by_label("Job B")).to_have_value(second.id)
    assert_readable(page, "compare page")

    # Models: base models, the aliases with what they resolve to, and the fine-tuned model.
    page.get_by_role("link", name="Models").click()
    expect(page.locator("#ft-models tr[data-model]")).to_have_count(1)
    expect(page.locator(f"#ft-models tr[data-model='{fine_tuned}']")).to_be_visible()
    alias = page.locator("#base-models tr[data-model='gpt-4o-mini']")
    expect(alias.locator("td").nth(1)).to_have_text("alias")
    expect(alias.locator("td").nth(2)).to_have_text("smollm2-135m-instruct")
    expect(page.locator("#base-models tr[data-model='smollm2-135m-instruct'] td").nth(1)).to_have_text("base")
    assert_readable(page, "models page")

    # 3. A narrow window: nothing overflows the page sideways (wide tables scroll inside their box).
    page.set_viewport_size({"width": 380, "height": 800})
    for route in ROUTES + (f"#/jobs/{job_id}",):
        page.goto(f"{srv.url}/{route}")
        page.wait_for_timeout(400)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), route
        assert_readable(page, route + " (narrow)")
    page.set_viewport_size({"width": 1280, "height": 900})

    # 1. Keys: the page asks for one; another organization's key shows nothing of ours.
    from tunery.store import create_api_key

    _, own_key = create_api_key(srv.store, srv.settings.default_org)
    _, rival_key = create_api_key(srv.store, "rival")
    page.goto(srv.url + "/#/jobs")
    expect(page.get_by_role("heading", name="API key needed")).to_be_visible()
    page.get_by_label("API key").fill("sk-wrong")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#api-key-error")).to_contain_text("Incorrect API key")
    assert_readable(page, "key gate with an error")
    page.get_by_label("API key").fill(rival_key)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    page.get_by_role("link", name="Files").click()
    expect(page.get_by_text("No files yet.")).to_be_visible()
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_text("No fine-tuned models yet.")).to_be_visible()
    page.get_by_role("link", name="Compare").click()
    expect(page.get_by_text("No jobs to compare yet.")).to_be_visible()
    page.get_by_role("link", name="Playground").click()
    expect(page.locator("#pg-models option[value='smollm2-135m-instruct']")).to_have_count(1)  # the list has loaded
    assert page.locator("#pg-models option[value^='ft:']").count() == 0
    page.goto(f"{srv.url}/#/jobs/{job_id}")
    expect(page.get_by_text(re.compile("No such fine-tuning job"))).to_be_visible()
    # The key lives in this tab's session storage only: not in the URL, not in a cookie, not in localStorage.
    assert page.evaluate("sessionStorage.getItem('tunery.apiKey')") == rival_key
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == [] and rival_key not in page.url
    # A second tab (its own session storage) asks again.
    other = page.context.new_page()
    other.goto(srv.url + "/#/jobs")
    expect(other.get_by_role("heading", name="API key needed")).to_be_visible()
    other.close()
    page.get_by_role("button", name="Forget key").click()
    assert page.evaluate("sessionStorage.getItem('tunery.apiKey')") is None
    page.get_by_label("API key").fill(own_key)
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator(f"tr[data-job='{job_id}']")).to_contain_text("succeeded")

    # Models: delete the fine-tuned model from the page (its own organization's key).
    page.get_by_role("link", name="Models").click()
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=f"Delete {fine_tuned}").click()
    expect(page.get_by_text("No fine-tuned models yet.")).to_be_visible()
    assert fine_tuned not in {m.id for m in srv.client(api_key=own_key).models.list()}
    assert not problems, problems
