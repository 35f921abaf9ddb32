"""`tunery data generate` and `tunery data discriminator`: reading documents, sections, checks, resuming, and
the whole command through a real tunery server (tiny random model: the replies are schema-valid JSON with
nonsense strings, so most pairs are rejected — which exercises the rejects; the bundled model's run is in
tests/test_guard_chain.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_api_support import make_server  # noqa: F401  (fixture)

SITE = Path(__file__).parent / "data" / "embyr_site"


def _words(texts):
    return [len(t.split()) for t in texts]


def test_reads_markdown_html_and_text_main_content_only():
    from tunery.data.generate import read_documents

    docs = {d.path: d for d in read_documents([SITE])}
    assert set(docs) == {"embyr_site/index.md", "embyr_site/classes.md", "embyr_site/guides/firing.html",
                         "embyr_site/membership.txt"}
    html = docs["embyr_site/guides/firing.html"]
    assert html.title == "Firing your pieces"
    assert "Big Bertha" in html.text and "## Kiln schedule" in html.text
    # Navigation, footer, script and style are not content.
    for furniture in ("Home", "Copyright", "track()", "color:red"):
        assert furniture not in html.text
    md = docs["embyr_site/index.md"]
    assert md.title == "Embyr Kilns" and "title:" not in md.text and "## Opening hours" in md.text


def test_sections_follow_headings_within_the_budget():
    from tunery.data.generate import Document, split_sections

    doc = Document("a.md", "Guide", "# Guide\n\n## Hours\n\nOpen daily from 9 to 5.\n\n## Prices\n\n"
                   + " ".join(f"Item {i} costs {i} dollars." for i in range(40)))
    secs = split_sections(doc, budget=40, count=_words, min_tokens=1)
    assert secs[0].heading == "Guide > Hours" and secs[0].text == "Open daily from 9 to 5."
    prices = [s for s in secs if s.heading == "Guide > Prices"]
    assert len(prices) > 1 and all(s.tokens <= 40 for s in prices)
    assert " ".join(s.text for s in prices).count("costs") == 40  # nothing lost at the cuts
    assert len({s.id for s in secs}) == len(secs)
    assert [s.id for s in split_sections(doc, 40, _words, 1)] == [s.id for s in secs]  # stable ids


def test_checks_reject_empty_duplicate_and_ungrounded_pairs():
    from tunery.data.generate import Limits, Section, check_pair

    sec = Section("x", "a.md", "Hours", "The studio opens at 10 am on Tuesdays and closes at 6 pm.", 14)
    seen = {"when does it close"}
    lim = Limits()
    assert check_pair("When does the studio open?", "It opens at 10 am on Tuesdays.", sec, seen, lim) is None
    assert check_pair("", "x", sec, seen, lim) == "empty"
    assert check_pair("When does it close?", "At 6 pm.", sec, seen, lim) == "duplicate"
    assert check_pair("Who won the cup?", "Brazil won the World Cup in 2002.", sec, seen, lim) == "not_grounded"
    assert check_pair("When does it open today?", "When does it open today?", sec, seen, lim) == "answer_is_question"


def test_generate_through_a_real_server_then_resume(make_server, tiny_model_dir, tmp_path):
    from tunery.data.generate import GenerateConfig, Limits, generate, sidecar_paths

    srv = make_server()
    out = tmp_path / "qa.jsonl"
    # min_grounding 0 keeps whatever the random model writes, so lines are produced deterministically.
    cfg = GenerateConfig(base_url=srv.base_url, model=str(tiny_model_dir), pairs_per_section=2,
                         system="You are the Embyr bot.", stop_suffix=" **STOP**", max_tokens=120,
                         limits=Limits(min_grounding=0.0, max_question_chars=40, max_answer_chars=40))
    seen_sections = []
    rep = generate([SITE / "index.md", SITE / "guides"], out, cfg,
                   on_section=lambda s, k, f: seen_sections.append((s.id, k, f)))
    sources, state = sidecar_paths(out)
    assert rep.n_documents == 2 and rep.n_sections == len(seen_sections) >= 4
    lines = out.read_text().splitlines()
    src = [json.loads(x) for x in sources.read_text().splitlines()]
    assert len(lines) == len(src) == rep.n_pairs_total == rep.n_pairs_written
    assert rep.n_pairs_asked == rep.n_pairs_written + sum(rep.rejects.values()) + 0
    for i, (line, s) in enumerate(zip(lines, src), 1):
        obj = json.loads(line)
        assert list(obj) == ["messages"]  # exactly OpenAI's chat format; provenance lives in the sidecar
        roles = [m["role"] for m in obj["messages"]]
        assert roles == ["system", "user", "assistant"] and obj["messages"][0]["content"] == "You are the Embyr bot."
        assert obj["messages"][2]["content"].endswith(" **STOP**")
        assert s["line"] == i and s["question"] == obj["messages"][1]["content"]
        assert s["source"] in ("index.md", "guides/firing.html")
    qs = [json.loads(x)["messages"][1]["content"] for x in lines]
    assert len(set(q.lower() for q in qs)) == len(qs)  # deduplicated

    # A re-run skips every finished section and asks nothing.
    again = []
    rep2 = generate([SITE / "index.md", SITE / "guides"], out, cfg, on_section=lambda s, k, f: again.append(s))
    assert again == [] and rep2.n_sections_done_before == rep.n_sections and out.read_text().splitlines() == lines

    # An interrupted run: a section's lines were written but the state never recorded them. The next run cuts
    # them off and redoes only the sections the state does not call done.
    st = json.loads(state.read_text())
    last_done = [k for k, v in st["sections"].items() if v["status"] == "done"][-1]
    st["lines"] -= st["sections"][last_done]["pairs"]
    del st["sections"][last_done]
    state.write_text(json.dumps(st))
    redo = []
    rep3 = generate([SITE / "index.md", SITE / "guides"], out, cfg, on_section=lambda s, k, f: redo.append(s.id))
    assert redo == [last_done] and out.read_text().splitlines() == lines and rep3.n_pairs_total == len(lines)

    # Other settings on the same output are refused rather than mixed in.
    from tunery.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="other settings"):
        generate([SITE / "index.md"], out, GenerateConfig(base_url=srv.base_url, model=str(tiny_model_dir)))


def test_generate_cli_reports_and_refuses_unreachable_endpoint(tmp_path, capsys):
    from tunery.cli import main

    with pytest.raises(SystemExit) as done:
        main(["data", "generate", str(SITE / "index.md"), "-o", str(tmp_path / "qa.jsonl"),
              "--base-url", "http://127.0.0.1:9/v1"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9/v1" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as done:
        main(["data", "generate", str(tmp_path / "nope"), "-o", str(tmp_path / "qa.jsonl")])
    assert done.value.code == 1 and "no such file or folder" in capsys.readouterr().err


def _chat_file(path: Path, questions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": "a"}]}) + "\n"
                            for q in questions))
    return path


def test_discriminator_set_is_balanced_split_and_seeded(tmp_path):
    from tunery.data.discriminator import DEFAULT_SEPARATOR, build_discriminator, bundled_negatives

    negs = bundled_negatives()
    assert len(negs) >= 150 and len(set(negs)) == len(negs)
    qs = [f"When does class {i} start?" for i in range(40)] + ["What is Star Wars?"]  # also a negative
    chat = _chat_file(tmp_path / "qa.jsonl", qs)
    r = build_discriminator(chat, tmp_path / "disc.jsonl", seed=3, rewrites=0)
    train = [json.loads(x) for x in Path(r.train_path).read_text().splitlines()]
    valid = [json.loads(x) for x in Path(r.valid_path).read_text().splitlines()]
    assert r.n_per_label == 41 and r.n_dropped_overlap == 1
    for rows in (train, valid):
        labels = [x["completion"] for x in rows]
        assert labels.count(" yes") == labels.count(" no") and set(labels) == {" yes", " no"}
        assert all(x["prompt"].endswith(DEFAULT_SEPARATOR) for x in rows)
    assert not {x["prompt"] for x in train} & {x["prompt"] for x in valid}
    assert len(valid) == 2 * round(41 * 0.2)
    star = [x for x in train + valid if x["prompt"].startswith("What is Star Wars?")]
    assert [x["completion"] for x in star] == [" yes"]  # on-topic wins over the negative list
    r2 = build_discriminator(chat, tmp_path / "again.jsonl", seed=3, rewrites=0)
    assert Path(r2.train_path).read_text() == Path(r.train_path).read_text()


def test_discriminator_rewrites_both_labels_alike_and_keep_the_split_clean(tmp_path):
    """Few on-topic questions: each also appears rewritten, on its own side of the split only, and the off-topic
    side has as many rewritten rows (distinct off-topic questions, the same kinds of rewrite)."""
    from tunery.data.discriminator import (DEFAULT_REWRITES, DEFAULT_SEPARATOR, build_discriminator,
                                           bundled_negatives)
    from tunery.data.augment import rewrites

    qs = ["When is Embyr Kilns open?", "How much does the six-week wheel course cost?", "Who founded the studio?",
          "What does a monthly membership cost?", "Can children join the hand-building workshop?",
          "How do I cancel a class?", "What is the phone number of the front desk?", "When are glaze firings?"]
    chat = _chat_file(tmp_path / "qa.jsonl", qs)
    r = build_discriminator(chat, tmp_path / "disc.jsonl", valid_fraction=0.25, seed=1)
    assert DEFAULT_REWRITES >= 2 and r.n_rewrites == DEFAULT_REWRITES
    k = DEFAULT_REWRITES
    sides = [[json.loads(x) for x in Path(p).read_text().splitlines()] for p in (r.train_path, r.valid_path)]
    text = [{x["prompt"][:-len(DEFAULT_SEPARATOR)]: x["completion"] for x in rows} for rows in sides]
    for rows in sides:
        labels = [x["completion"] for x in rows]
        assert labels.count(" yes") == labels.count(" no")
    assert len(sides[0]) == 2 * 6 * (k + 1) and len(sides[1]) == 2 * 2 * (k + 1)
    assert r.n_negative_used == 8 * (k + 1)  # enough off-topic questions: a different one for every row
    for q in qs:  # the question and all its rewrites on exactly one side, labelled on topic
        side = 0 if q in text[0] else 1
        assert q in text[side] and q not in text[1 - side] and text[side][q] == " yes"
        forms = [" ".join(f.split()) for f in rewrites(q, k, 1, 0)]
        assert all(text[side].get(f) == " yes" and f not in text[1 - side] for f in forms)  # its rewrites beside it
    bundled = set(bundled_negatives())
    for side in text:
        verbatim_pos = sum(q in qs for q, lab in side.items() if lab == " yes")
        verbatim_neg = sum(q in bundled for q, lab in side.items() if lab == " no")
        rewritten_neg = sum(q not in bundled for q, lab in side.items() if lab == " no")
        assert verbatim_neg == verbatim_pos and rewritten_neg == k * verbatim_pos  # forms alike on both labels
    assert not set(text[0]) & set(text[1])
    r2 = build_discriminator(chat, tmp_path / "again.jsonl", valid_fraction=0.25, seed=1)
    assert Path(r2.train_path).read_text() == Path(r.train_path).read_text()


def test_discriminator_with_few_negatives_stays_balanced_and_clean(tmp_path):
    from tunery.data.discriminator import DEFAULT_SEPARATOR, build_discriminator
    from tunery.data.augment import rewrites

    chat = _chat_file(tmp_path / "qa.jsonl", [f"How much is firing number {i} at the studio?" for i in range(6)])
    negs = tmp_path / "neg.txt"
    neg_qs = [f"Who won the chess match in round {i} of the tournament?" for i in range(6)]
    negs.write_text("\n".join(neg_qs))
    r = build_discriminator(chat, tmp_path / "d.jsonl", negatives=negs, rewrites=3, valid_fraction=0.34)
    sides = [[json.loads(x) for x in Path(p).read_text().splitlines()] for p in (r.train_path, r.valid_path)]
    for rows in sides:
        labels = [x["completion"] for x in rows]
        assert labels.count(" yes") == labels.count(" no") > 0
        assert len({x["prompt"] for x in rows}) == len(rows)  # the pool covers every row without repeating
    origin = {" ".join(f.split()): q for q in neg_qs for f in [q] + rewrites(q, 3, 0, 0)}
    used = [{origin[x["prompt"][:-len(DEFAULT_SEPARATOR)]] for x in rows if x["completion"] == " no"} for rows in sides]
    assert not used[0] & used[1]  # an off-topic question and its rewrites on one side only


def test_discriminator_cli_custom_negatives_and_separator(tmp_path, capsys):
    from tunery.cli import main

    chat = _chat_file(tmp_path / "qa.jsonl", [f"How much is firing {i}?" for i in range(6)])
    negs = tmp_path / "neg.txt"
    negs.write_text("# comment\n" + "\n".join(f"Off topic {i}?" for i in range(10)) + "\n")
    with pytest.raises(SystemExit) as done:
        main(["data", "discriminator", str(chat), "-o", str(tmp_path / "d.jsonl"), "--negatives", str(negs),
              "--separator", " ->", "--valid-fraction", "0.34", "--rewrites", "0"])
    assert done.value.code in (0, None), capsys.readouterr()
    rows = [json.loads(x) for x in (tmp_path / "d_train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(x["prompt"].endswith(" ->") for x in rows)
    assert "d_valid.jsonl" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["data", "discriminator", str(negs), "-o", str(tmp_path / "e.jsonl")])
    assert done.value.code == 1 and "no user questions" in capsys.readouterr().err


def test_discriminator_near_identical_questions_give_no_duplicate_or_leaked_prompt(tmp_path):
    """Generated questions often differ by a word; their rewrites can coincide (a keyword-only form). The trainer
    refuses exact duplicates, and a shared rewrite on both sides would leak a trained prompt into the held-out."""
    from tunery.data.discriminator import build_discriminator

    qs = ["What is the difference between the wheel throwing and the clay throwing?",
          "What is the difference between the wheel throwing and clay throwing?",
          "What is the difference between wheel throwing and clay throwing?",
          "What is the name of the studio?", "What is the name of the potter?", "What is the studio's location?"]
    r = build_discriminator(_chat_file(tmp_path / "qa.jsonl", qs), tmp_path / "d.jsonl", valid_fraction=0.34)
    sides = [[json.loads(x) for x in Path(p).read_text().splitlines()] for p in (r.train_path, r.valid_path)]
    keys = [[" ".join(x["prompt"].lower().split()) for x in rows] for rows in sides]
    assert all(len(k) == len(set(k)) for k in keys) and not set(keys[0]) & set(keys[1])
    for rows in sides:
        labels = [x["completion"] for x in rows]
        assert labels.count(" yes") == labels.count(" no") > 0
