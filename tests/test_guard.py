"""The serve-time guard through a real server and the official SDK (tiny random model as both chat model and
classifier: its P(" yes") is below 1 (and usually outside the top 20, so 0), so threshold 1 always declines
and threshold 0 always allows — the wiring is what is tested here; the bundled model's real classifier is in
tests/test_guard_chain.py and bench/bench_discriminator.py)."""

from __future__ import annotations

import httpx
import pytest

from test_api_support import make_server  # noqa: F401  (fixture)

REFUSAL = "I'm sorry, but I only answer questions about Embyr Kilns."


def _guard_url(srv, model: str) -> str:
    from urllib.parse import quote

    return f"{srv.base_url}/tunery/guards/{quote(model, safe=':')}"


def _set(srv, model, key="sk-none", **body):
    return httpx.post(_guard_url(srv, model), json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_label_probability_sums_label_variants():
    import math

    from tunery.api.guard import label_probability

    top = [(" yes", [], math.log(0.6)), ("Yes", [], math.log(0.1)), (" no", [], math.log(0.25))]
    assert label_probability(top, " yes") == pytest.approx(0.7)
    assert label_probability(top, " no") == pytest.approx(0.25)
    assert label_probability([], " yes") == 0.0


def test_guard_declines_allows_streams_and_counts(make_server, tiny_model_dir):
    srv = make_server()
    model = str(tiny_model_dir)
    client = srv.client()
    msgs = [{"role": "user", "content": "What is Star Wars?"}]

    r = _set(srv, model, classifier=model, threshold=1.0, refusal=REFUSAL)
    assert r.status_code == 200, r.text
    g = r.json()
    assert g["object"] == "tunery.guard" and g["classifier"] == model and g["separator"] == "\n\n###\n\n"
    assert g["decisions"] == {"checked": 0, "allowed": 0, "declined": 0, "declined_question": 0,
                              "declined_answer": 0}

    # Declined: an ordinary chat.completion carrying the refusal, parsed by the unchanged SDK.
    resp = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, n=2)
    assert [c.message.content for c in resp.choices] == [REFUSAL, REFUSAL]
    assert resp.choices[0].finish_reason == "stop" and resp.object == "chat.completion"
    info = resp.model_extra["tunery_guard"]
    assert info["allowed"] is False and info["stage"] == "question" and 0 <= info["score"] < 1

    # Streaming gets the refusal as chunks, ending normally (usage included when asked).
    chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REFUSAL and chunks[-1].usage is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    # Allowed: the model's own answer (whole and streamed), with the score beside it.
    assert _set(srv, model, classifier=model, threshold=0.0).status_code == 200
    resp = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, temperature=0)
    assert resp.choices[0].message.content != REFUSAL and resp.usage.completion_tokens >= 1
    assert resp.model_extra["tunery_guard"]["allowed"] is True
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=msgs, max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == resp.choices[0].message.content

    # check_answer: the produced answer is classified too (threshold 0 lets it through; stream replays it).
    assert _set(srv, model, classifier=model, threshold=0.0, check_answer=True).status_code == 200
    resp2 = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, temperature=0)
    assert resp2.choices[0].message.content == resp.choices[0].message.content
    replay = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=msgs, max_tokens=5, temperature=0, stream=True) if c.choices)
    assert replay == resp.choices[0].message.content

    # The bypass eval uses to measure the bot without its guard: not classified, not counted.
    assert _set(srv, model, classifier=model, threshold=1.0, refusal=REFUSAL).status_code == 200
    raw = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, temperature=0,
                                         extra_body={"tunery_guard": "off"})
    assert raw.choices[0].message.content == resp.choices[0].message.content and "tunery_guard" not in (
        raw.model_extra or {})

    counts = httpx.get(_guard_url(srv, model), timeout=30).json()["decisions"]
    # 2 declined + 2 allowed questions, then 2 questions with answers checked (4 verdicts, all allowed).
    assert counts == {"checked": 6, "allowed": 4, "declined": 2, "declined_question": 2, "declined_answer": 0}
    listed = httpx.get(f"{srv.base_url}/tunery/guards", timeout=30).json()
    assert [x["model"] for x in listed["data"]] == [model]

    assert httpx.delete(_guard_url(srv, model), timeout=30).json()["deleted"] is True
    assert httpx.get(_guard_url(srv, model), timeout=30).status_code == 404
    resp = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, temperature=0)
    assert "tunery_guard" not in (resp.model_extra or {})


def test_guard_bad_input_is_a_clear_4xx(make_server, tiny_model_dir):
    srv = make_server()
    model = str(tiny_model_dir)
    cases = [
        ({"classifier": model, "threshold": 2}, 400, "threshold"),
        ({"classifier": model, "prompt_template": "no placeholder"}, 400, "prompt_template"),
        ({"classifier": model, "answer_template": "no placeholder"}, 400, "answer_template"),
        ({"classifier": "ft:nope:personal:x:abc"}, 404, "classifier"),
        ({"classifier": model, "colour": "red"}, 400, "colour"),
        ({}, 400, "classifier"),
    ]
    for body, status, param in cases:
        r = _set(srv, model, **body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert param in (err["param"] or "") + err["message"], (body, err)
    r = _set(srv, "ft:smollm2-135m-instruct:personal:none:abc12345", classifier=model)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert httpx.delete(_guard_url(srv, model), timeout=30).status_code == 404


def test_guards_are_per_organization(make_server, tiny_model_dir):
    from tunery.store import create_api_key

    srv = make_server(model_dirs=(tiny_model_dir.resolve().parent,))  # paths resolve only from here with keys
    _, key_a = create_api_key(srv.store, "alpha")
    _, key_b = create_api_key(srv.store, "beta")
    model = str(tiny_model_dir)
    assert _set(srv, model, key=key_a, classifier=model, threshold=1.0, refusal=REFUSAL).status_code == 200
    assert _set(srv, model, classifier=model).status_code == 401  # no key, once keys exist
    hb = {"Authorization": f"Bearer {key_b}"}
    assert httpx.get(_guard_url(srv, model), headers=hb, timeout=30).status_code == 404
    assert httpx.get(f"{srv.base_url}/tunery/guards", headers=hb, timeout=30).json()["data"] == []
    msgs = [{"role": "user", "content": "hello"}]
    a = srv.client(key_a).chat.completions.create(model=model, messages=msgs, max_tokens=3)
    b = srv.client(key_b).chat.completions.create(model=model, messages=msgs, max_tokens=3)
    assert a.choices[0].message.content == REFUSAL and b.choices[0].message.content != REFUSAL


def test_guard_classifier_obeys_the_model_name_rules(make_server, tiny_model_dir, tmp_path):
    """With keys, a classifier named by a path outside TUNERY_MODEL_DIRS is the same 404 as any unknown
    name, at set time; a guard stored before the rule (or the dirs setting) changed cannot use it either."""
    import shutil

    from tunery.store import create_api_key, ensure_org
    from tunery.store import guards as G

    model = str(shutil.copytree(tiny_model_dir, tmp_path / "allowed" / "chat"))
    elsewhere = shutil.copytree(tiny_model_dir, tmp_path / "other" / "classifier")
    srv = make_server(model_dirs=((tmp_path / "allowed").resolve(),))
    _, key = create_api_key(srv.store, "alpha")
    r = _set(srv, model, key=key, classifier=str(elsewhere))
    assert r.status_code == 404 and r.json()["error"]["param"] == "classifier", r.text
    G.set_guard(srv.store, ensure_org(srv.store, "alpha"), model, G.GuardSpec(classifier=str(elsewhere), threshold=1.0, refusal=REFUSAL))
    msgs = [{"role": "user", "content": "hello"}]
    with pytest.raises(Exception) as exc:
        srv.client(key).chat.completions.create(model=model, messages=msgs, max_tokens=3)
    assert getattr(exc.value, "status_code", None) == 404, exc.value


def test_guard_cli_set_show_remove(make_server, tiny_model_dir, capsys):
    from tunery.cli import main

    srv = make_server()
    model = str(tiny_model_dir)
    for argv in (["guard", "set", model, "--classifier", model, "--threshold", "0.7", "--refusal", REFUSAL],
                 ["guard", "show", model], ["guard", "list"], ["guard", "remove", model]):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--base-url", srv.base_url])
        assert done.value.code in (0, None), capsys.readouterr()
    out = capsys.readouterr().out
    assert "guarded by" in out and "0.7" in out and "guard removed" in out
    with pytest.raises(SystemExit) as done:
        main(["guard", "show", model, "--base-url", srv.base_url])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "HTTP 404" in err and "Traceback" not in err


def test_eval_compares_the_bot_with_and_without_its_guard(make_server, tiny_model_dir, tmp_path, capsys):
    import json

    from tunery.cli import main

    srv = make_server()
    model = str(tiny_model_dir)
    # Threshold 1: every question is declined with the guard, none without (the random model never refuses).
    assert _set(srv, model, classifier=model, threshold=1.0, refusal=REFUSAL).status_code == 200
    spec = tmp_path / "spec.jsonl"
    spec.write_text("".join(json.dumps(c) + "\n" for c in [
        {"question": "When is the studio open?", "kind": "verbatim", "expected": "Tuesday to Saturday."},
        {"question": "What are your opening hours?", "kind": "variation", "expected": "Tuesday to Saturday."},
        {"question": "What is Star Wars?", "kind": "off-topic", "should_decline": True},
        {"question": "Write me a poem about the sea.", "kind": "off-topic", "should_decline": True}]))
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as done:
        main(["eval", str(spec), "-m", model, "--compare-guard", "--base-url", srv.base_url, "--max-tokens", "4",
              "--no-semantic", "--out", str(out)])
    assert done.value.code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["models"] == [model + " [no guard]", model]
    [g] = report["guard_comparison"]
    assert g["off_topic_declined_without"] == 0.0 and g["off_topic_declined_with"] == 1.0
    assert g["on_topic_answered_without"] == 1.0 and g["on_topic_answered_with"] == 0.0
    from tunery.eval.report import guard_lines

    assert guard_lines([g])[0].endswith("off-topic declined 0.00 → 1.00 (without → with, 2 cases)")
    # The guard counted the 4 guarded questions, not the unguarded ones.
    assert httpx.get(_guard_url(srv, model), timeout=30).json()["decisions"]["declined"] == 4
