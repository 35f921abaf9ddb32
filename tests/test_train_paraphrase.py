"""Paraphrases (tunery.train.paraphrase): the starting model's own rewordings of the questions, in place of some
rule-based rewrites. The checks on a sample; where they go; the auto rule; the bundled model's paraphrases;
a real run on the tiny model that trains, saves and resumes them exactly; the cache."""

from __future__ import annotations

import json

import pytest

from tunery.data.augment import augment, question_turn
from tunery.errors import InvalidRequest
from tunery.train import TrainConfig, paraphrase
from tunery.train.config import AUTO_PARAPHRASES, resolve_paraphrase

from test_train import Recorder
from test_train_augment import chat, run_auto


def test_a_sample_keeps_every_name_and_number_adds_none_and_is_a_new_question():
    q = "What time does the first ferry leave Halvern Bay on May 3?"
    assert paraphrase.protected(q) == {"Halvern", "Bay", "May", "3"}
    assert paraphrase.protected("Is it 3.5 euros, or 12? Ask Ilse.") == {"3.5", "12", "Ilse"}
    ok = "How early is the first boat out of Halvern Bay on May 3?"
    assert paraphrase.acceptable(q, ok, {q})
    assert not paraphrase.acceptable(q, "How early is the first boat out of Halvern on May 3?", {q})  # dropped
    assert not paraphrase.acceptable(q, "When does the first ferry leave Halvern Bay on May 4?", {q})  # changed
    assert not paraphrase.acceptable(q, "When does the first ferry leave Halvern Bay on May 3 from Pier 2?", {q})
    assert not paraphrase.acceptable(q, "When does the first ferry leave Halvern Bay on May 3", {q})  # no "?"
    assert not paraphrase.acceptable(q, q, {q}) and not paraphrase.acceptable(q, ok, {q, ok})
    assert not paraphrase.acceptable(q, ok + "\nWhat else?", {q})


def test_paraphrases_take_the_places_of_the_weakest_rewrites():
    data = [chat(f"What is the code for item {i}?", f"It is {i}.") for i in range(2)]
    rewrites = augment(data, 5, seed=3)[2:]
    paras = [["Which code does item 0 have?", "Item 0 has which code?"], []]
    out = paraphrase.place(rewrites, 5, paras, question_turn)
    asked = [ex.messages[question_turn(ex.messages)]["content"] for ex in out]
    before = [ex.messages[question_turn(ex.messages)]["content"] for ex in rewrites]
    assert asked[2] == paras[0][0] and asked[4] == paras[0][1]  # SLOTS: the frame, then words dropped
    assert [a for i, a in enumerate(asked) if i not in (2, 4)] == [b for i, b in enumerate(before) if i not in (2, 4)]
    assert all(ex.messages[-1]["content"] == "It is 0." for ex in out[:5])  # answers as in the file
    assert rewrites[2].messages[question_turn(rewrites[2].messages)]["content"] == before[2]  # input unchanged


def test_auto_rule_english_augmented_runs_and_explicit_values(tmp_path):
    cfg = TrainConfig(model="m", training_file="f", output_dir=tmp_path)
    assert resolve_paraphrase(cfg, n_variants=5, english=True) == min(AUTO_PARAPHRASES, 5)
    on = TrainConfig(model="m", training_file="f", output_dir=tmp_path, paraphrase=3)
    assert resolve_paraphrase(on, n_variants=2, english=True) == 2  # never more than the rewrites
    assert resolve_paraphrase(cfg, n_variants=0, english=True) == 0  # an explicit n_epochs: no auto rules
    assert resolve_paraphrase(cfg, n_variants=5, english=False) == 0  # the prompt and checks are English
    given = TrainConfig(model="m", training_file="f", output_dir=tmp_path, augment=4)
    assert resolve_paraphrase(given, 4, True) == 0  # rewrites asked for by number: the rule-based ones
    asked = TrainConfig(model="m", training_file="f", output_dir=tmp_path, augment=4, paraphrase=2)
    assert resolve_paraphrase(asked, 4, False) == 2
    for bad in (-1, 33, True, "some"):
        with pytest.raises(InvalidRequest, match="paraphrase"):
            TrainConfig(model="m", training_file="f", output_dir=tmp_path, paraphrase=bad).validate()


def test_the_bundled_model_rewords_questions_and_keeps_their_names(bundled_model_dir):
    from tunery.models.registry import load_model

    model, tok = load_model(str(bundled_model_dir))
    qs = ["What time does the first ferry leave Halvern Bay?", "How much is an adult ticket to Tressa Island?",
          "Who is the captain of the Gannet?", "How long is the crossing to Tressa Island?"]
    made = paraphrase.make(model, tok, qs, 2, seed=7)
    assert sum(len(ps) for ps in made) >= 4, made  # most samples pass the checks
    for q, ps in zip(qs, made):
        assert len(ps) <= 2 and len(set(ps)) == len(ps)
        assert all(paraphrase.acceptable(q, p, {q}) for p in ps), (q, ps)
    assert paraphrase.make(model, tok, qs, 2, seed=7) == made  # seeded: the same samples again


PARAS = [["Which code does item 0 have?"], ["Item 1: its code?"], [], ["Which is item 3's code?"],
         ["Code of item 4?"], ["What code has item 5?"]]


def test_a_run_trains_saves_and_resumes_its_paraphrases_exactly(tiny_model_dir, tmp_path):
    # The paraphrases as a run's rank 0 hands them to its other ranks.
    straight, cb_a = run_auto(tiny_model_dir, tmp_path, "a", early_stop=False, replay=0, paraphrase=1,
                              paraphrases=PARAS)
    assert straight.status == "succeeded" and straight.hyperparameters["paraphrase"] == 1
    step = cb_a.metrics[-1]["step"]
    meta = json.loads((tmp_path / "a" / "checkpoints" / f"step-{step}" / "tunery.json").read_text())
    assert meta["paraphrases"] == PARAS
    n = len(cb_a.metrics)
    paused, cb_p = run_auto(tiny_model_dir, tmp_path, "p", cb=Recorder(stop_at={n // 2: "pause"}),
                            early_stop=False, replay=0, paraphrase=1, paraphrases=PARAS)
    resumed, cb_r = run_auto(tiny_model_dir, tmp_path, "p", resume_from=paused.resume_dir, seed=None)
    assert cb_p.losses() + cb_r.losses() == pytest.approx(cb_a.losses(), rel=1e-5, abs=1e-6)
    without, cb_w = run_auto(tiny_model_dir, tmp_path, "w", early_stop=False, replay=0, paraphrase=0)
    assert cb_w.losses() != pytest.approx(cb_a.losses())  # the paraphrases were trained
    # Made by the run itself (the tiny model's samples rarely pass the checks): the event says how many.
    made, cb_m = run_auto(tiny_model_dir, tmp_path, "m", early_stop=False, replay=0, paraphrase=1)
    said = [m for _, m in cb_m.events if m.startswith("Paraphrased the questions with the base model (as "
                                                       "requested): ")]
    assert len(said) == 1 and " of 6 samples kept" in said[0], cb_m.events


def test_paraphrases_are_made_once_per_model_and_questions_then_read_back(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERY_MODEL_CACHE", str(tmp_path / "cache"))
    qs = ["When does gate 1 open?", "When does gate 2 open?"]
    made = paraphrase.make_for_run(str(tiny_model_dir), qs, 2)
    files = list((tmp_path / "cache" / "paraphrase").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == made and len(made) == 2
    given = [["At what hour does gate 1 open?"], []]
    files[0].write_text(json.dumps(given))
    assert paraphrase.make_for_run(str(tiny_model_dir), qs, 2) == given  # read back, not sampled again
    paraphrase.make_for_run(str(tiny_model_dir), qs[:1], 2)  # other questions: another file
    assert len(list((tmp_path / "cache" / "paraphrase").glob("*.json"))) == 2
    files[0].write_text(json.dumps([["one list for two questions"]]))  # damaged: sampled again and replaced
    assert paraphrase.make_for_run(str(tiny_model_dir), qs, 2) == made
    assert not list((tmp_path / "cache" / "paraphrase").glob(".tmp-*"))
