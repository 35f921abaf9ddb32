"""Question augmentation and the small-set auto rules (tiny model): pure, answer-preserving, visible in the
events, obeyed explicit values, and exact resume of an augmented run."""

from __future__ import annotations

import pytest

from tunery.data.formats import Example
from tunery.train import TrainConfig, train
from tunery.data.augment import augment, augmentable, rewrite
from tunery.train.config import (AUTO_AUG_BATCH, AUTO_AUG_MULTIPLIER, AUTO_NEFTUNE_ALPHA, auto_variants,
                                 resolve_augment, resolve_hyperparameters, resolve_neftune)

from test_train import Recorder, chat_rows, write_jsonl


def chat(q: str, a: str, system: str | None = "Be brief.") -> Example:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return Example(line=1, kind="chat", messages=msgs)


def test_rewrites_are_pure_keep_answers_and_system_and_differ_from_the_question():
    exs = [chat("What time does the old lighthouse open on Sundays?", "At 9 am."),
           chat("Who painted the harbour mural?", "Edda Voss painted it.")]
    a, b = augment(exs, 4, seed=3), augment(exs, 4, seed=3)
    assert [e.messages for e in a] == [e.messages for e in b]  # a pure function of (data, seed)
    assert len(a) == 2 + 2 * 4 and a[:2] == exs
    for e in a[2:]:
        assert e.messages[0] == {"role": "system", "content": "Be brief."}
        assert e.messages[2]["content"] in ("At 9 am.", "Edda Voss painted it.")
    for i, ex in enumerate(exs):
        q = ex.messages[1]["content"]
        variants = [e.messages[1]["content"] for e in a[2:] if e.messages[2] == ex.messages[2]]
        assert q not in variants and len(set(variants)) == 4
    assert augment(exs, 4, seed=4)[2].messages != a[2].messages or \
        [e.messages for e in augment(exs, 4, seed=4)] != [e.messages for e in a]
    assert rewrite("Who painted the harbour mural?", 0, 0, 0) == "painted harbour mural"  # keywords


def test_rewrites_keep_the_words_of_scripts_with_combining_marks():
    # Thai writes vowels and tones as combining marks; a rewrite may reframe or drop words, never cut one.
    q = "ค่าโดยสารเรือเฟอร์รี่ไปเกาะเท่าไร ต้องจองล่วงหน้าไหม"
    words = set(q.split())
    for v in range(8):
        for seed in range(5):
            out = rewrite(q, v, seed, 0)
            assert out != q
            thai = [w.strip("?.,!") for w in out.split() if any("\u0e00" <= ch <= "\u0e7f" for ch in w)]
            assert thai and all(w in words for w in thai), (v, seed, out)


def test_what_is_never_augmented():
    tools = Example(line=1, kind="chat", messages=[{"role": "user", "content": "x?"},
                                                    {"role": "assistant", "content": "y"}], tools=[{"type": "function"}])
    completion = Example(line=1, kind="completion", prompt="Q: x?\nA:", completion=" y")
    no_user = Example(line=1, kind="chat", messages=[{"role": "assistant", "content": "hi"}])
    assert not any(augmentable(e) for e in (tools, completion, no_user))
    assert len(augment([tools, completion, no_user], 3, 0)) == 3


def test_auto_rules_small_sets_only_and_explicit_values_obeyed(tmp_path):
    cfg = TrainConfig(model="m", training_file="f", output_dir=tmp_path)
    assert auto_variants(28, 1736) >= 1 and auto_variants(5000, 10**6) == 0
    k = resolve_augment(cfg, 28, 1736)
    hp = resolve_hyperparameters(cfg, 28 * (k + 1), k, 28, 1736)
    assert hp["n_epochs"] * (k + 1) >= 4 and hp["batch_size"] == AUTO_AUG_BATCH
    assert hp["learning_rate_multiplier"] == AUTO_AUG_MULTIPLIER  # LoRA small-set rate
    full = TrainConfig(model="m", training_file="f", output_dir=tmp_path, method="full")
    assert resolve_hyperparameters(full, 28 * (k + 1), k, 28, 1736)["learning_rate_multiplier"] <= 5
    # A half budget (an experiment knob) halves the passes: the Chiang Mai demo's 3,200 tokens get 1 rewrite
    # and 2 epochs (4 passes) instead of 3 and 2 (8).
    half = TrainConfig(model="m", training_file="f", output_dir=tmp_path, extra={"token_budget": 12_000})
    assert (resolve_augment(cfg, 32, 3200), resolve_augment(half, 32, 3200)) == (3, 1)
    assert resolve_hyperparameters(half, 64, 1, 32, 3200)["n_epochs"] == 2
    # An explicit n_epochs means passes over the file as given: no rewrites unless asked for.
    explicit = TrainConfig(model="m", training_file="f", output_dir=tmp_path, n_epochs=2, batch_size=3,
                           learning_rate_multiplier=0.5)
    assert resolve_augment(explicit, 28, 1736) == 0
    assert resolve_hyperparameters(explicit, 28, 0, 28, 1736) == {
        "n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 0.5, "learning_rate": pytest.approx(1e-4)}
    asked = TrainConfig(model="m", training_file="f", output_dir=tmp_path, n_epochs=2, augment=2)
    assert resolve_augment(asked, 28, 1736) == 2
    with pytest.raises(Exception):
        TrainConfig(model="m", training_file="f", output_dir=tmp_path, augment=-1).validate()


def run_auto(tiny_model_dir, tmp_path, name, cb=None, **kw):
    cb = cb or Recorder()
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_jsonl(data, chat_rows(6))
    cfg = dict(model=str(tiny_model_dir), training_file=data, output_dir=tmp_path / name, seed=11, augment=2,
               n_epochs="auto", extra={"passes": 6})
    cfg.update(kw)
    return train(TrainConfig(**cfg), cb), cb


def test_augmented_auto_run_reports_decisions_and_resumes_exactly(tiny_model_dir, tmp_path):
    straight, cb_a = run_auto(tiny_model_dir, tmp_path, "a", early_stop=False)
    assert straight.status == "succeeded"
    assert cb_a.resolved["n_train_examples"] == 18 and cb_a.resolved["augment"] == 2
    assert any(m.startswith("Augmenting 6 example(s) with 2 question rewrite(s)") for _, m in cb_a.events)
    assert straight.hyperparameters["augment"] == 2
    n = len(cb_a.metrics)
    paused, cb_p = run_auto(tiny_model_dir, tmp_path, "p", cb=Recorder(stop_at={n // 2: "pause"}), early_stop=False)
    assert paused.status == "paused"
    resumed, cb_r = run_auto(tiny_model_dir, tmp_path, "p", resume_from=paused.resume_dir, seed=None)
    assert cb_p.losses() + cb_r.losses() == pytest.approx(cb_a.losses(), rel=1e-5, abs=1e-6)


def test_early_stop_event_and_reported_epochs(tiny_model_dir, tmp_path):
    # The stop rule on the random tiny model (which cannot reach 100% soon), with the accuracy bar lowered:
    # two checks in a row at or above it end the run early, and the event and hyperparameters say so.
    res, cb = run_auto(tiny_model_dir, tmp_path, "e", augment=1, extra={"passes": 20, "stop_accuracy": 0.0})
    stops = [m for _, m in cb.events if m.startswith("Stopping at step")]
    assert res.status == "succeeded" and stops, cb.events
    assert res.hyperparameters["stopped_at_step"] == cb.metrics[-1]["step"] < cb.resolved["total_steps"]
    assert res.hyperparameters["n_epochs"] < res.hyperparameters["max_epochs"]
    assert "original_accuracy" in cb.metrics[-1]


def test_neftune_is_auto_for_augmented_runs_and_obeys_an_explicit_value(tmp_path):
    auto = TrainConfig(model="m", training_file="f", output_dir=tmp_path)
    assert resolve_neftune(auto, 3) == AUTO_NEFTUNE_ALPHA > 0
    assert resolve_neftune(auto, 0) == 0  # no small-set rules, no noise
    off = TrainConfig(model="m", training_file="f", output_dir=tmp_path, neftune_alpha=0)
    assert resolve_neftune(off, 3) == 0
    with pytest.raises(Exception, match="neftune_alpha"):
        TrainConfig(model="m", training_file="f", output_dir=tmp_path, neftune_alpha=-1).validate()


def test_neftune_noise_is_added_only_while_training(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from tunery.train.loop import add_embedding_noise

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    emb = model.get_input_embeddings()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    clean = emb(ids).detach()
    add_embedding_noise(model, 5.0)
    model.train()
    noisy = emb(ids).detach()
    bound = 5.0 / (5 * clean.shape[-1]) ** 0.5
    assert not torch.equal(noisy, clean) and float((noisy - clean).abs().max()) <= bound + 1e-6
    model.eval()
    assert torch.equal(emb(ids).detach(), clean)


def test_reproduced_means_greedy_decoding_gives_the_answer_back(tiny_model_dir):
    import contextlib

    import torch

    from tunery.models import load_model
    from tunery.train.loop import RunContext, reproduced
    from tunery.train.tokenize import Encoded

    model, tok = load_model(str(tiny_model_dir))
    model.eval()
    prompt = tok("The code for item 7 is")["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0].tolist()
    greedy = out[len(prompt):]
    other = greedy[:3] + [(greedy[3] + 1) % len(tok)] + greedy[4:]  # one answer token off the greedy path

    def enc(answer):
        return Encoded(input_ids=prompt + answer, loss_mask=[0] * len(prompt) + [1] * len(answer), line=1)

    assert reproduced(model, [enc(greedy), enc(other), enc(greedy)],
                      RunContext("cpu", contextlib.nullcontext, 512, "lora", None)) == [
        True, False, True]


def test_training_pass_flags_exact_answers_like_an_evaluation_pass(tiny_model_dir):
    # The free per-example flags of a training step equal reproduced() on the same weights, so the loop may
    # skip an evaluation pass whenever a training pass already saw an answer that is not exact.
    import contextlib

    import torch

    from tunery.models import load_model
    from tunery.train.loop import RunContext, Supervised, reproduced
    from tunery.train.tokenize import Encoded

    model, tok = load_model(str(tiny_model_dir))
    model.eval()
    prompt = tok("The code for item 7 is")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0].tolist()[len(prompt):]
    other = greedy[:2] + [(greedy[2] + 1) % len(tok)] + greedy[3:]
    batch = [Encoded(input_ids=prompt + a, loss_mask=[0] * len(prompt) + [1] * len(a), line=1)
             for a in (other, greedy, other)]
    run = RunContext("cpu", contextlib.nullcontext, 512, "lora", None)
    expected = reproduced(model, batch, run)
    assert expected == [False, True, False]
    sft = Supervised()
    sft.step(model, batch, run)
    assert [sft.exact[id(e)] for e in batch] == expected


def test_evaluation_passes_are_skipped_while_training_shows_inexact_answers(tiny_model_dir, tmp_path):
    # The random tiny model reproduces nothing: the mid-run checks cost nothing and the last one still runs
    # (its per-example answer feeds the repair rounds).
    res, cb = run_auto(tiny_model_dir, tmp_path, "s", augment=1, extra={"passes": 8, "repair": 0})
    checks = [m["step"] for m in cb.metrics if "original_accuracy" in m]
    assert res.status == "succeeded" and checks == [cb.resolved["total_steps"]], checks


def test_answers_not_reproduced_after_the_schedule_are_trained_again(tiny_model_dir, tmp_path):
    # The random tiny model reproduces none of its answers, so every repair round runs and the event says
    # what was done; repair=0 turns it off.
    res, cb = run_auto(tiny_model_dir, tmp_path, "r", augment=1, extra={"passes": 4})
    repairs = [m for _, m in cb.events if "not yet reproduced" in m]
    assert res.status == "succeeded" and len(repairs) == 1, cb.events
    assert repairs[0].startswith("6 of 6 training answers") and "6 still differ" in repairs[0]
    scheduled = sum(m["trained_tokens"] for m in cb.metrics[-1:])
    assert res.trained_tokens > scheduled  # the repair steps' tokens are counted
    off, cb_off = run_auto(tiny_model_dir, tmp_path, "o", augment=1, extra={"passes": 4, "repair": 0})
    assert off.trained_tokens == cb_off.metrics[-1]["trained_tokens"]
    assert not [m for _, m in cb_off.events if "not yet reproduced" in m]


def test_lora_layers_rule_and_validation(tmp_path):
    from tunery.errors import InvalidRequest
    from tunery.train.config import resolve_lora_layers

    cfg = TrainConfig(model="m", training_file="f", output_dir=tmp_path)
    assert resolve_lora_layers(cfg, n_variants=3, n_layers=30) == 15  # auto: the upper half (see the constant)
    every = TrainConfig(model="m", training_file="f", output_dir=tmp_path, extra={"lora_fraction": 1.0})
    assert resolve_lora_layers(every, n_variants=3, n_layers=30) == 30
    assert resolve_lora_layers(cfg, n_variants=0, n_layers=30) == 30  # not augmented: every layer
    assert resolve_lora_layers(TrainConfig(model="m", training_file="f", output_dir=tmp_path, lora_layers="all"),
                               n_variants=3, n_layers=30) == 30
    assert resolve_lora_layers(TrainConfig(model="m", training_file="f", output_dir=tmp_path, lora_layers=40),
                               n_variants=3, n_layers=30) == 30
    assert resolve_lora_layers(TrainConfig(model="m", training_file="f", output_dir=tmp_path, method="full"),
                               n_variants=3, n_layers=30) == 30
    for bad in (0, -1, "half", True, 1.5):
        with pytest.raises(InvalidRequest, match="lora_layers"):
            TrainConfig(model="m", training_file="f", output_dir=tmp_path, lora_layers=bad).validate()


def test_lora_on_the_top_layers_only_trains_and_saves_those(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    res, cb = run_auto(tiny_model_dir, tmp_path, "l", lora_layers=1, extra={"passes": 4, "repair": 0})
    assert res.status == "succeeded" and res.hyperparameters["lora_layers"] == 1
    keys = load_file(str(res.model_dir / "adapter_model.safetensors")).keys()
    assert keys and all(".layers.1." in k for k in keys)  # the 2-layer model's top layer only
    auto, cb_auto = run_auto(tiny_model_dir, tmp_path, "a2", augment="auto", extra={"passes": 4, "repair": 0})
    assert auto.hyperparameters["lora_layers"] == 1  # auto: the upper half of 2 layers
    assert any("LoRA on the top 1 of 2 layers" in m for _, m in cb_auto.events)
