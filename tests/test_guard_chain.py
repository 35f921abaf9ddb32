"""Issue #15 end to end on the bundled model through a real server (API, worker, trainer, engine), as a user
would run it: a small Markdown/HTML/text site → `data generate` → `data validate` → chat fine-tune →
`data discriminator` → discriminator fine-tune → `guard set` → `eval --compare-guard`."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from tunery.settings import Settings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SITE = Path(__file__).parent / "data" / "embyr_site"
# Reworded questions about the site's facts, each with the fact's key string (the site's own words).
VARIATIONS = [("What days of the week is Embyr Kilns open?", "Tuesday"),
              ("How much does the six-week wheel course cost?", "240"),
              ("On which night are glaze firings done?", "Thursday"),
              ("What does a monthly membership at the studio cost?", "95")]
SYSTEM = "You are the Embyr Kilns help bot."
# Not in the bundled negatives the discriminator trained on.
OFF_TOPIC = ["Who is Darth Vader?", "How do I cook rice in a pot?", "What is the capital of Peru?",
             "Recommend a good book about sharks."]


def _wait(client, job, deadline: float):
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    return job


def _main(argv, capsys):
    from tunery.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code in (0, None), capsys.readouterr()


@pytest.mark.slow
@pytest.mark.chain  # opt-in (TUNERY_TEST_CHAIN=1): runs end to end in ~14 min at load 4-7, but fails its last check:
# the guard declines 2 of 8 on-topic questions (2026-12-07, 4 rewrites per question; 4 of 8 without rewrites):
# "What days of the week is Embyr Kilns open?" P(yes) 0.27, "How much does the six-week wheel course cost?" 0.38,
# from a discriminator trained on 8 of the 10 generated questions, none about hours or prices (issue #15)
@pytest.mark.timeout(2400)  # a few minutes on a quiet 2-core machine; far more when shared
def test_site_to_guarded_bot(bundled_model_dir, tunery_home, tmp_path, capsys):
    import openai

    from tunery.quickstart import EmbeddedServer, _free_port

    server = EmbeddedServer(Settings.from_env().ensure_dirs(), _free_port()).start()
    url = server.base_url
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        qa = tmp_path / "qa.jsonl"
        _main(["data", "generate", str(SITE), "-o", str(qa), "-n", "4", "--min-grounding", "0.3",
               "--system", SYSTEM, "--stop-suffix", " **STOP**", "--base-url", url,
               "--max-tokens", "400"], capsys)
        lines = qa.read_text().splitlines()
        sources = [json.loads(x) for x in Path(str(qa) + ".sources.jsonl").read_text().splitlines()]
        assert len(lines) == len(sources) >= 10, "the bundled model wrote too few grounded pairs to fine-tune"
        _main(["data", "validate", str(qa)], capsys)

        bot_file = client.files.create(file=("qa.jsonl", io.BytesIO(qa.read_bytes())), purpose="fine-tune")
        bot = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=bot_file.id, suffix="embyr",
                                             hyperparameters={"n_epochs": 2})
        _main(["data", "discriminator", str(qa), "-o", str(tmp_path / "disc.jsonl"), "--valid-fraction", "0.25"],
              capsys)
        disc_file = client.files.create(file=("disc_train.jsonl", io.BytesIO(
            (tmp_path / "disc_train.jsonl").read_bytes())), purpose="fine-tune")
        disc = client.fine_tuning.jobs.create(model="babbage-002", training_file=disc_file.id, suffix="disc",
                                              hyperparameters={"n_epochs": 3})
        deadline = time.monotonic() + 1800
        bot, disc = _wait(client, bot, deadline), _wait(client, disc, deadline)

        # The discriminator on its held-out prompts, read the way an application reads it (logprobs=2).
        valid = [json.loads(x) for x in (tmp_path / "disc_valid.jsonl").read_text().splitlines()]
        both = right = 0
        for row in valid:
            r = client.completions.create(model=disc.fine_tuned_model, prompt=row["prompt"], max_tokens=1,
                                          temperature=0, logprobs=2)
            top = r.choices[0].logprobs.top_logprobs[0]
            both += " yes" in top and " no" in top
            right += r.choices[0].text.strip() == row["completion"].strip()

        _main(["guard", "set", bot.fine_tuned_model, "--classifier", disc.fine_tuned_model, "--threshold", "0.5",
               "--base-url", url], capsys)
        spec = tmp_path / "spec.jsonl"
        verbatim = [json.loads(x)["messages"] for x in lines[:4]]
        spec.write_text("".join(json.dumps({"messages": m, "kind": "verbatim"}) + "\n" for m in verbatim)
                        + "".join(json.dumps({"question": q, "system": SYSTEM, "kind": "variation", "key_facts": [k]}) + "\n"
                                  for q, k in VARIATIONS)
                        + "".join(json.dumps({"question": q, "kind": "off-topic", "should_decline": True}) + "\n"
                                  for q in OFF_TOPIC))
        out = tmp_path / "report"
        _main(["eval", str(spec), "-m", bot.fine_tuned_model, "--compare-guard", "--base-url", url,
               "--max-tokens", "24", "--no-semantic", "--out", str(out)], capsys)
        counts = client.get(f"/tunery/guards/{bot.fine_tuned_model}", cast_to=object)["decisions"]
    finally:
        server.stop()

    [g] = json.loads((out / "report.json").read_text())["guard_comparison"]
    with capsys.disabled():
        print(f"\n{len(lines)} pairs from {len({s['section_id'] for s in sources})} sections; discriminator "
              f"held-out ({len(valid)}): top-2 both labels {both / len(valid):.0%}, accuracy {right / len(valid):.0%}"
              f"\noff-topic declined {g['off_topic_declined_without']:.2f} → {g['off_topic_declined_with']:.2f}, "
              f"on-topic answered {g['on_topic_answered_without']:.2f} → {g['on_topic_answered_with']:.2f}; "
              f"guard decisions {counts}")
    assert counts["checked"] == len(verbatim) + len(VARIATIONS) + len(OFF_TOPIC)
    assert both / len(valid) >= 0.9
    assert g["off_topic_declined_with"] > g["off_topic_declined_without"]
    assert g["on_topic_answered_with"] >= g["on_topic_answered_without"] - 0.125  # at most one of 8 lost
