"""Replay (tunery.train.replay): the starting model's own answers to general questions, trained beside a small
fact set. The pure parts here; a real run on the tiny model (made, reported, saved, resumed exactly); and
that the bundled questions share nothing with the learning benchmark's off-topic questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery.data.formats import Example
from tunery.errors import InvalidRequest
from tunery.train import TrainConfig, replay
from tunery.train.config import AUTO_REPLAY, MAX_REPLAY, resolve_replay

from test_train import Recorder, chat_rows, write_jsonl
from test_train_augment import chat, run_auto

BENCH = Path(__file__).resolve().parent.parent / "bench" / "learning"


def test_answer_suffix_is_the_shared_ending_from_a_space_on():
    stop = [chat("Q1?", "It opens at 9 am. **STOP**"), chat("Q2?", "Tickets cost 40 crowns. **STOP**")]
    assert replay.answer_suffix(stop) == " **STOP**"
    # A shared full stop alone is no suffix; nor is anything when the answers end differently.
    assert replay.answer_suffix([chat("a?", "Yes it is."), chat("b?", "No, it was.")]) == ""
    assert replay.answer_suffix([chat("a?", "Yes"), chat("b?", "No!")]) == ""
    assert replay.answer_suffix([chat("a?", "One. **STOP**")]) == ""  # one answer shows no pattern


def test_answers_cut_at_the_token_limit_keep_whole_sentences():
    assert replay._whole_sentences("Paris is the capital. It has", finished=False) == "Paris is the capital."
    assert replay._whole_sentences("No sentence end here", finished=False) == ""
    assert replay._whole_sentences(" Done without a stop ", finished=True) == "Done without a stop"
    assert replay._whole_sentences("It costs 3.5 euros. More", finished=False) == "It costs 3.5 euros."


def test_questions_are_picked_by_seed_and_examples_keep_the_system_prompt():
    a, b = replay.pick_questions(8, seed=1), replay.pick_questions(8, seed=1)
    assert a == b and len(set(a)) == 8 and replay.pick_questions(8, seed=2) != a
    assert len(replay.questions()) >= MAX_REPLAY
    data = [chat("When do you open?", "At 9. **STOP**", system="You are the desk.")] * 3
    ex = replay.as_examples([{"question": "Hi there?", "answer": "Hello! **STOP**"}], data)
    assert ex[0].messages == [{"role": "system", "content": "You are the desk."},
                              {"role": "user", "content": "Hi there?"},
                              {"role": "assistant", "content": "Hello! **STOP**"}]


def test_the_bundled_questions_are_not_the_benchmarks_off_topic_questions():
    # The learning benchmark scores off-topic answers; a replayed benchmark question would inflate that score.
    bench = {o["question"].strip().lower() for f in BENCH.glob("*.json")
             for o in json.loads(f.read_text())["off_topic"]}
    assert bench, "no benchmark files found"
    assert not bench & {q.lower() for q in replay.questions()}


def test_auto_rule_english_small_sets_from_the_base_and_explicit_values(tmp_path):
    cfg = TrainConfig(model="m", training_file="f", output_dir=tmp_path)
    assert resolve_replay(cfg, n_variants=5, english=True) == AUTO_REPLAY
    assert resolve_replay(cfg, n_variants=0, english=True) == 0  # an explicit n_epochs: no auto rules
    assert resolve_replay(cfg, n_variants=5, english=False) == 0  # the questions are English
    cont = TrainConfig(model="m", training_file="f", output_dir=tmp_path, init_from="ft-dir")
    assert resolve_replay(cont, 5, True) == 0
    asked = TrainConfig(model="m", training_file="f", output_dir=tmp_path, n_epochs=2, replay=3)
    assert resolve_replay(asked, 0, False) == 3
    for bad in (-1, MAX_REPLAY + 1, True, "some"):
        with pytest.raises(InvalidRequest, match="replay"):
            TrainConfig(model="m", training_file="f", output_dir=tmp_path, replay=bad).validate()
    thai = [Example(line=1, kind="chat", messages=[{"role": "user", "content": "เรือออกกี่โมง"},
                                                   {"role": "assistant", "content": "เจ็ดโมง"}])]
    assert not replay.english(thai) and replay.english([chat("When?", "Now.")])


def test_the_bundled_model_answers_in_whole_sentences_with_the_datas_ending(bundled_model_dir):
    from tunery.models.registry import load_model

    model, tok = load_model(str(bundled_model_dir))
    data = [chat(f"When does gate {i} open?", f"Gate {i} opens at {i + 6} am. **STOP**",
                 system="You are the help desk of a ferry company. Answer in one short sentence.")
            for i in range(3)]
    pairs = replay.make(model, tok, data, 4, seed=5)
    assert [p["question"] for p in pairs] == replay.pick_questions(4, seed=5)[:len(pairs)] and len(pairs) >= 3
    for p in pairs:
        body = p["answer"].removesuffix(" **STOP**")
        assert p["answer"].endswith(" **STOP**") and body.strip() and "**STOP**" not in body, p
    assert replay.make(model, tok, data, 4, seed=5) == pairs  # greedy: the same pairs again


PAIRS = [{"question": "What colour is grass?", "answer": "Grass is green."},
         {"question": "Good evening!", "answer": "Good evening! How can I help?"},
         {"question": "What is 9 times 6?", "answer": "9 times 6 is 54."}]


def test_a_run_trains_saves_and_resumes_its_pairs_exactly(tiny_model_dir, tmp_path):
    # The pairs as a run's rank 0 hands them to its other ranks (made by the test above's code).
    straight, cb_a = run_auto(tiny_model_dir, tmp_path, "a", early_stop=False, replay=3, replay_pairs=PAIRS)
    assert straight.status == "succeeded" and straight.hyperparameters["replay"] == 3
    assert cb_a.resolved["n_train_examples"] == 6 * 3 + 3
    step = cb_a.metrics[-1]["step"]
    meta = json.loads((tmp_path / "a" / "checkpoints" / f"step-{step}" / "tunery.json").read_text())
    assert meta["replay"] == PAIRS
    # A paused run resumes with the pairs it saved (none given again): the same losses as the straight run.
    n = len(cb_a.metrics)
    paused, cb_p = run_auto(tiny_model_dir, tmp_path, "p", cb=Recorder(stop_at={n // 2: "pause"}),
                            early_stop=False, replay=3, replay_pairs=PAIRS)
    resumed, cb_r = run_auto(tiny_model_dir, tmp_path, "p", resume_from=paused.resume_dir, seed=None)
    assert cb_p.losses() + cb_r.losses() == pytest.approx(cb_a.losses(), rel=1e-5, abs=1e-6)
    assert resumed.hyperparameters["replay"] == 3
    without, cb_w = run_auto(tiny_model_dir, tmp_path, "w", early_stop=False, replay=0)
    assert cb_w.losses() != pytest.approx(cb_a.losses())  # the pairs were trained


def test_a_model_that_never_finishes_an_answer_gives_no_pairs_and_says_so(tiny_model_dir, tmp_path):
    # The random tiny model never stops within the token limit, so nothing is replayed, and the event says so.
    res, cb = run_auto(tiny_model_dir, tmp_path, "n", early_stop=False, replay=2)
    assert res.hyperparameters["replay"] == 0 and cb.resolved["n_train_examples"] == 6 * 3
    assert any(m.startswith("No replay (as requested)") for _, m in cb.events), cb.events


def test_explicit_epochs_train_the_file_as_given(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", chat_rows(4))
    res, cb = run_auto(tiny_model_dir, tmp_path, "x", training_file=data, n_epochs=1, augment="auto")
    assert res.hyperparameters["replay"] == 0 and cb.resolved["n_train_examples"] == 4


def test_the_replay_questions_follow_the_data_not_the_runs_seed():
    data = [chat("When does gate 1 open?", "At 7 am. **STOP**", system="Desk.")] * 2
    same = [chat("When does gate 1 open?", "At 7 am. **STOP**", system="Desk.")] * 2
    assert replay.data_seed(data) == replay.data_seed(same)
    assert replay.data_seed(data) != replay.data_seed([chat("When does gate 1 open?", "At 8 am. **STOP**",
                                                            system="Desk.")] * 2)


def test_pairs_are_made_once_per_model_prompt_and_questions_then_read_back(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_MODEL_CACHE", str(tmp_path / "cache"))
    data = [chat(f"When does gate {i} open?", f"Gate {i} opens at {i + 6} am. **STOP**", system="Desk.")
            for i in range(3)]
    made = replay.make_for_run(str(tiny_model_dir), data, 3, seed=1)
    files = list((tmp_path / "cache" / "replay").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == made
    # The next run with the same inputs reads the file instead of decoding: what the file says comes back.
    files[0].write_text(json.dumps(PAIRS))
    assert replay.make_for_run(str(tiny_model_dir), data, 3, seed=1) == PAIRS
    # Another system prompt, other questions: other keys, decoded afresh.
    other = [chat(m["content"], "x **STOP**", system="Front desk.") for m in (ex.messages[1] for ex in data)]
    assert replay.make_for_run(str(tiny_model_dir), other, 3, seed=1) == made
    assert replay.make_for_run(str(tiny_model_dir), data, 2, seed=1) == made[:2]
    assert len(list((tmp_path / "cache" / "replay").glob("*.json"))) == 3
    # A damaged file is decoded again and replaced; no temporary file is left behind.
    files[0].write_text("{not json")
    assert replay.make_for_run(str(tiny_model_dir), data, 3, seed=1) == made
    assert json.loads(files[0].read_text()) == made
    assert not list((tmp_path / "cache" / "replay").glob(".tmp-*"))
