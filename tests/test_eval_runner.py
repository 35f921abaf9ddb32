"""The runner over real HTTP with the official SDK (retries, backoff, concurrency, errors), scoring and
aggregation with hand-computed expectations, and the reports (JSON, terminal, HTML, a real browser)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from test_eval_support import endpoint  # noqa: F401  (fixture)
from tunery.eval.core import evaluate
from tunery.eval.jobs import JobInfo
from tunery.eval.runner import RunConfig, run
from tunery.eval.spec import Case


def q(i: int) -> Case:
    return Case(id=f"c{i}", messages=[{"role": "user", "content": f"question {i}"}], expected=f"answer {i}")


def cfg(ep, **kw) -> RunConfig:
    return RunConfig(base_url=ep.base_url, api_key="k", backoff=0.01, max_backoff=0.05, **kw)


def test_retries_429_and_5xx_then_succeeds(endpoint):
    endpoint.script.answers = {"flaky": {"question 1": "answer 1"}}
    endpoint.script.failures = {"flaky": [429, 503, 500]}
    [a] = run([q(1)], ["flaky"], cfg(endpoint))
    assert a.error is None and a.text == "answer 1" and a.attempts == 4
    assert [c["attempt"] for c in endpoint.script.calls] == [1, 2, 3, 4]
    assert a.completion_tokens == 2 and a.prompt_tokens == 7 and a.latency_s > 0


def test_a_429_that_can_never_succeed_is_not_retried(endpoint):
    endpoint.script.answers = {"broke": {"question 1": "answer 1"}}
    endpoint.script.failures = {"broke": [(429, "insufficient_quota")] * 10}
    [a] = run([q(1)], ["broke"], cfg(endpoint, retries=4))
    assert a.attempts == 1 and len(endpoint.script.calls) == 1 and "HTTP 429" in a.error


def test_gives_up_after_the_retry_budget(endpoint):
    endpoint.script.answers = {"down": {}}
    endpoint.script.failures = {"down": [502] * 10}
    [a] = run([q(1)], ["down"], cfg(endpoint, retries=2))
    assert a.attempts == 3 and a.text is None and a.error.startswith("HTTP 502")
    assert len(endpoint.script.calls) == 3


def test_timeouts_are_retried(endpoint):
    endpoint.script.answers = {"slow": {"question 1": "answer 1"}}
    endpoint.script.slow_first = {"slow": 1.5}
    [a] = run([q(1)], ["slow"], cfg(endpoint, timeout=0.4))
    assert a.error is None and a.attempts == 2 and a.text == "answer 1"


def test_client_errors_are_recorded_not_retried_and_others_still_run(endpoint):
    endpoint.script.answers = {"good": {"question 1": "answer 1"}}
    answers = run([q(1)], ["good", "nope"], cfg(endpoint))
    by_model = {a.model: a for a in answers}
    assert by_model["good"].text == "answer 1"
    assert by_model["nope"].attempts == 1
    assert by_model["nope"].error == "HTTP 404: The model 'nope' does not exist"


def test_switches_to_max_completion_tokens_when_the_model_asks(endpoint):
    endpoint.script.answers = {"reasoner": {}}
    endpoint.script.new_style = {"reasoner"}
    answers = run([q(1), q(2)], ["reasoner"], cfg(endpoint, concurrency=1, max_tokens=33))
    assert all(a.error is None for a in answers)
    # One rejected call, then every request (including the second case's) uses the new parameter.
    assert len(endpoint.script.calls) == 3 and {c["max_tokens"] for c in endpoint.script.calls} == {33}


def test_concurrency_is_bounded_and_used(endpoint):
    endpoint.script.answers = {"m": {}}
    endpoint.script.delay = 0.15
    t0 = time.perf_counter()
    answers = run([q(i) for i in range(9)], ["m"], cfg(endpoint, concurrency=3))
    elapsed = time.perf_counter() - t0
    assert all(a.error is None for a in answers)
    assert endpoint.script.max_in_flight == 3
    assert elapsed < 9 * 0.15  # really concurrent, not one at a time
    # Answers come back in case order whatever order they finished in; requests carry the settings.
    assert [a.case_id for a in answers] == [f"c{i}" for i in range(9)]
    assert {(c["max_tokens"], c["temperature"]) for c in endpoint.script.calls} == {(256, 0.0)}


CASES = [
    Case(id="v1", kind="verbatim", messages=[{"role": "user", "content": "What is the capital of France?"}],
         expected="Paris is the capital of France.", key_facts=[["Paris"]]),
    Case(id="v2", kind="variation", messages=[{"role": "user", "content": "Which city is France's capital?"}],
         expected="Paris is the capital of France.", key_facts=[["Paris"], ["France"]]),
    Case(id="o1", kind="off-topic", messages=[{"role": "user", "content": "Write a poem <please>."}],
         should_decline=True),
]
TUNED = {"What is the capital of France?": "Paris is the capital of France.",
         "Which city is France's capital?": "The capital is Paris.",
         "Write a poem <please>.": "Roses are <b>red</b>."}


@pytest.fixture
def report(endpoint):
    endpoint.script.answers = {"base": {}, "tuned": TUNED}
    return evaluate(CASES, ["base", "tuned"], cfg(endpoint), semantic=True,
                    model_labels={"base": "base model", "tuned": "ft:tuned"})


def test_scores_and_aggregates_match_hand_computed_values(report):
    s = report["summary"]
    # tuned, verbatim: identical answer → every overlap metric is 1.
    v = s["tuned"]["verbatim"]
    assert (v["exact_match"], v["token_f1"], v["key_fact_recall"], v["chrf"]) == (1.0, 1.0, 1.0, 1.0)
    assert v["semantic_similarity"] == pytest.approx(1.0, abs=1e-4)
    # tuned, variation: tokens [capital, is, paris] vs [paris, is, capital, of, france]:
    # P = 3/3, R = 3/5 → F1 = 0.75; facts: Paris yes, France no → 0.5.
    v = s["tuned"]["variation"]
    assert v["exact_match"] == 0.0 and v["token_f1"] == pytest.approx(0.75) and v["key_fact_recall"] == 0.5
    assert 0.6 < v["semantic_similarity"] < 1.0
    # base says "I don't know." everywhere: a decline, no facts, no overlap.
    b = s["base"]["all"]
    assert b["key_fact_recall"] == 0.0 and b["token_f1"] == 0.0 and b["decline_rate"] == 1.0
    # Off-topic with should_decline: tuned answered it (1.0), base declined (0.0).
    assert s["tuned"]["off-topic"]["answered_when_should_decline"] == 1.0
    assert s["base"]["off-topic"]["answered_when_should_decline"] == 0.0
    assert s["tuned"]["off-topic"]["key_fact_recall"] is None  # no facts in that case: not applicable
    # Costs: completion tokens are the scripted whitespace word counts (6, 4, 3), latency measured.
    assert s["tuned"]["all"]["completion_tokens"] == pytest.approx(13 / 3)
    assert s["tuned"]["all"]["latency_s"] > 0 and s["tuned"]["all"]["errors"] == 0
    assert report["kinds"] == ["verbatim", "variation", "off-topic"]
    assert report["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "api_key" not in report["config"]


def test_json_and_terminal_reports(report, tmp_path):
    from rich.console import Console

    from tunery.eval.html import write_reports
    from tunery.eval.report import terminal_tables

    paths = write_reports(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["tuned"]["variation"]["token_f1"] == pytest.approx(0.75)
    assert {r["model"] for r in data["results"]} == {"base", "tuned"} and len(data["results"]) == 6
    con = Console(record=True, width=200)
    for t in terminal_tables(report):
        con.print(t)
    text = con.export_text()
    assert "verbatim (1 case)" in text and "ft:tuned" in text and "ans¹" in text
    assert re.search(r"ft:tuned\s.*1\.00", text)


def job(jid: str, suffix: str, shift: float) -> JobInfo:
    steps = range(1, 31)
    return JobInfo(
        id=jid, model="smollm2-135m-instruct", status="succeeded", suffix=suffix,
        fine_tuned_model=f"ft:smollm2-135m-instruct:personal:{suffix}:abc", method="supervised",
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 2.0},
        trained_tokens=12000, training_seconds=95.0,
        curves={"train_loss": [[s, 2.5 * 0.93 ** s + shift + 0.05 * (s % 3)] for s in steps],
                "valid_loss": [[s, 2.6 * 0.95 ** s + shift] for s in steps if s % 10 == 0],
                "train_mean_token_accuracy": [[s, 0.5 + 0.4 * (1 - 0.93 ** s)] for s in steps],
                "valid_mean_token_accuracy": [[s, 0.45 + 0.35 * (1 - 0.95 ** s)] for s in steps if s % 10 == 0]},
        dataset={"training": {"examples": 40, "mean_answer_words": 22.0}, "validation": {"examples": 8}})


def test_html_report_is_self_contained_and_shows_everything(report):
    from tunery.eval.html import render_html

    report = {**report, "jobs": [job("ftjob-aaa", "lr2", 0.0).to_dict(), job("ftjob-bbb", "lr1", 0.3).to_dict()]}
    page = render_html(report)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # Self-contained: no scripts, no external stylesheets, fonts or images.
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page) and "@import" not in page and "url(" not in page
    assert page.count("<div") == page.count("</div>") and page.count("<table") == page.count("</table>")
    # Curves overlaid (2 jobs × train/valid × loss/accuracy = 8 paths) and two bar charts.
    assert page.count("<svg") == 4 and page.count('<path d="M') == 8
    assert "lr2 train" in page and "lr1 valid" in page
    # Jobs table, metrics per kind, every answer, escaped.
    assert "ftjob-bbb" in page and "12000" in page and "1m35s" in page
    for kind in ("verbatim", "variation", "off-topic", "all cases"):
        assert kind in page
    assert "Roses are &lt;b&gt;red&lt;/b&gt;." in page.replace("<mark>", "").replace("</mark>", "")
    assert "Write a poem &lt;please&gt;." in page and "<b>red</b>" not in page
    # The tuned answer's words that differ from the base answer are marked; facts shown as hit/miss.
    assert "<mark>Paris</mark>" in page
    assert '<span class="fact hit">Paris</span>' in page and '<span class="fact miss">France</span>' in page
    assert "should decline" in page and "declined" in page


def test_html_without_evaluation_shows_jobs_only():
    from tunery.eval.html import render_html
    from tunery.eval.report import build_report

    page = render_html(build_report(cases=[], results=[], summary={}, models=[], kinds=[], config={},
                                    jobs=[job("ftjob-aaa", "a", 0.0)]))
    assert "ftjob-aaa" in page and page.count("<svg") == 2 and "Answers side by side" not in page


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed: apt-get install chromium "
                    "(make test does it as root)")
def test_html_report_renders_in_a_real_browser(report, tmp_path):
    from tunery.eval.html import render_html

    report = {**report, "jobs": [job("ftjob-aaa", "lr2", 0.0).to_dict()]}
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,2400"]
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, stdin=subprocess.DEVNULL)
    assert shot.is_file()
    png = shot.read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1300, 2400)
    # A blank page compresses to a few KB; charts, tables and text do not.
    assert len(png) > 60_000
    # And the DOM the browser built holds the answers (nothing hidden behind a script).
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL).stdout
    assert "Paris is the capital of France." in dom and "ft:tuned" in dom
