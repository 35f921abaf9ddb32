"""Trainer tests on the tiny model: masks token by token, truncation, metrics, checkpoints, exact resume,
cancel/pause, full fine-tuning, export and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery.errors import InvalidRequest
from tunery.train import TrainCallbacks, TrainConfig, resolve_hyperparameters, train


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_rows(n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is the code for item {i}?"},
                          {"role": "assistant", "content": f"The code for item {i} is {i * 37 % 101}."}]}
            for i in range(start, start + n)]


class Recorder(TrainCallbacks):
    def __init__(self, stop_at: dict | None = None):
        self.events: list[tuple[str, str]] = []
        self.metrics: list[dict] = []
        self.resolved: dict | None = None
        self.checkpoints = []
        self.stop_at = stop_at or {}  # {step_count: "cancel"|"pause"}

    def on_event(self, level, message):
        self.events.append((level, message))

    def on_metrics(self, data):
        self.metrics.append(data)

    def on_resolved(self, hp):
        self.resolved = hp

    def on_checkpoint(self, info):
        self.checkpoints.append(info)

    def should_stop(self):
        return self.stop_at.get(len(self.metrics))

    def losses(self) -> list[float]:
        return [m["train_loss"] for m in self.metrics]


@pytest.fixture(scope="module")
def tok(bundled_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir)


def trained_text(tok, enc) -> list[str]:
    return [tok.decode([i]) for i, m in zip(enc.input_ids, enc.loss_mask) if m]


# --- masks ------------------------------------------------------------------------------------

def test_chat_mask_trains_assistant_turns_and_end_of_turn_only(tok):
    from tunery.train.tokenize import encode_chat

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "again?"},
            {"role": "assistant", "content": "no way", "weight": 0}, {"role": "user", "content": "last"},
            {"role": "assistant", "content": "Yes."}]
    enc = encode_chat(tok, msgs)
    assert trained_text(tok, enc) == ["hello", " there", "<|im_end|>", "Yes", ".", "<|im_end|>"]
    # Every other token — system, user, headers, the weight-0 answer, newlines — is masked.
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(enc.input_ids) == rendered
    untrained = "".join(tok.decode([i]) for i, m in zip(enc.input_ids, enc.loss_mask) if not m)
    assert "no way" in untrained and "Be brief." in untrained and "assistant" in untrained


def test_chat_mask_default_system_prompt_is_masked(tok):
    from tunery.train.tokenize import encode_chat

    enc = encode_chat(tok, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}])
    assert trained_text(tok, enc) == ["A", "<|im_end|>"]
    assert "SmolLM" in tok.decode(enc.input_ids)  # the template's own system prompt is there, untrained


def test_completion_mask_trains_completion_and_eos(tok):
    from tunery.train.tokenize import encode_completion

    enc = encode_completion(tok, "Capital of Peru:", " Lima")
    assert trained_text(tok, enc) == [" L", "ima", tok.eos_token] or trained_text(tok, enc)[-1] == tok.eos_token
    n_prompt = len(tok("Capital of Peru:")["input_ids"])
    assert enc.loss_mask[:n_prompt] == [0] * n_prompt and all(enc.loss_mask[n_prompt:])
    assert tok.decode(enc.input_ids[n_prompt:-1]) == " Lima"


def test_preference_data_is_refused(tok):
    from types import SimpleNamespace

    from tunery.train.tokenize import encode_example

    ex = SimpleNamespace(line=3, kind="preference", messages=[], prompt=None, completion=None)
    with pytest.raises(InvalidRequest, match="line 3"):
        encode_example(tok, ex)


def test_pack_targets_are_the_trained_tokens(tok):
    from tunery.train.batching import pack
    from tunery.train.tokenize import encode_chat, encode_completion

    a = encode_chat(tok, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "yes"}])
    b = encode_completion(tok, "p", " q")
    p = pack([a, b], "cpu")
    assert p.input_ids.shape == (1, len(a) + len(b))
    assert p.position_ids[0, len(a)].item() == 0  # positions restart: examples do not attend to each other
    expected = [i for e in (a, b) for i, m in zip(e.input_ids[1:], e.loss_mask[1:]) if m]
    assert p.targets.tolist() == expected
    assert all(p.input_ids[0, k + 1].item() == t for k, t in zip(p.keep.tolist(), p.targets.tolist()))


def test_packed_loss_equals_separate_losses(tiny_model_dir, tok):
    """Padding-free packing must not let examples see each other."""
    import torch

    from tunery.models import load_model
    from tunery.train.batching import pack
    from tunery.train.loop import forward_loss
    from tunery.train.tokenize import encode_chat

    model, _ = load_model(str(tiny_model_dir))
    model.eval()
    encs = [encode_chat(tok, r["messages"]) for r in chat_rows(3)]
    import contextlib

    with torch.no_grad():
        together, _ = forward_loss(model, pack(encs, "cpu"), contextlib.nullcontext)
        apart = sum(forward_loss(model, pack([e], "cpu"), contextlib.nullcontext)[0] for e in encs)
    assert float(together) == pytest.approx(float(apart), rel=1e-4)


def _shared_system_chats(tok, n: int):
    from tunery.train.tokenize import encode_chat

    system = {"role": "system", "content": "You are the help desk of the Halvern Bay Ferry Company. Answer briefly."}
    return [encode_chat(tok, [system, {"role": "user", "content": f"Question {i}: when does boat {i} leave?"},
                              {"role": "assistant", "content": f"Boat {i} leaves at {i + 6} am."}])
            for i in range(n)]


def test_a_shared_system_prompt_is_packed_once(tok):
    from tunery.train.batching import pack, shared_prefix
    from tunery.train.tokenize import encode_completion

    encs = _shared_system_chats(tok, 3)
    p_len = shared_prefix(encs)
    assert p_len >= 20  # the system turn and the user turn's opening markers
    shared, plain = pack(encs, "cpu"), pack(encs, "cpu", share_prefix=False)
    assert shared.n_tokens == plain.n_tokens - 2 * p_len
    assert shared.targets.tolist() == plain.targets.tolist() and shared.seq.tolist() == plain.seq.tolist()
    assert all(shared.input_ids[0, k + 1].item() == t for k, t in zip(shared.keep.tolist(), shared.targets.tolist()))
    # Each example sees the prefix and itself, never another example.
    m = shared.attention_mask[0, 0]
    first_b = p_len + len(encs[0]) - p_len
    assert m[first_b, :p_len].all() and not m[first_b, p_len:first_b].any()
    # Identical prompts whose first completion token is trained: the prefix stops short of it, so no shared
    # position predicts a trained token.
    same = [encode_completion(tok, "The same prompt, word for word, " * 3, c) for c in (" yes", " no")]
    k = shared_prefix(same)
    assert all(not e.loss_mask[t] for e in same for t in range(k + 1))


def test_shared_prefix_gives_the_same_loss_and_gradients(tiny_model_dir, tok):
    import contextlib

    import torch

    from tunery.models import load_model
    from tunery.train.batching import pack
    from tunery.train.loop import forward_loss

    model, _ = load_model(str(tiny_model_dir))
    model.eval()  # no dropout: the two packings must compute the same function
    encs = _shared_system_chats(tok, 3)
    results = []
    for share in (True, False):
        model.zero_grad()
        loss, correct = forward_loss(model, pack(encs, "cpu", share_prefix=share), contextlib.nullcontext)
        loss.backward()
        results.append((float(loss), correct, [q.grad.clone() for q in model.parameters() if q.grad is not None]))
    (l1, c1, g1), (l2, c2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-5) and c1 == c2
    assert len(g1) == len(g2) > 0
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- hyperparameters --------------------------------------------------------------------------

@pytest.mark.parametrize("n,epochs", [(1, 25), (3, 25), (10, 10), (20, 5), (33, 3), (34, 3), (100, 3),
                                      (8333, 3), (8334, 2), (12500, 2), (25000, 1), (100000, 1)])
def test_auto_epochs(n, epochs):
    from tunery.train.config import auto_epochs

    assert auto_epochs(n) == epochs


def test_auto_hyperparameters_and_validation(tmp_path):
    cfg = TrainConfig(model="m", training_file="f", output_dir=tmp_path)
    hp = resolve_hyperparameters(cfg, 25)
    assert hp["n_epochs"] == 4 and hp["batch_size"] == 1  # cookbook: 100 // 25
    assert hp["learning_rate"] == pytest.approx(2e-4 * hp["learning_rate_multiplier"])
    assert resolve_hyperparameters(cfg, 50_000)["n_epochs"] == 1
    assert resolve_hyperparameters(cfg, 5000)["batch_size"] == 10
    cfg2 = TrainConfig(model="m", training_file="f", output_dir=tmp_path, method="full", batch_size=4,
                       learning_rate_multiplier=0.5, n_epochs=2)
    assert resolve_hyperparameters(cfg2, 25) == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5,
                                                  "learning_rate": pytest.approx(5e-6)}
    for bad in ({"n_epochs": 0}, {"batch_size": "big"}, {"learning_rate_multiplier": -1}, {"method": "dpo"}):
        with pytest.raises(InvalidRequest):
            TrainConfig(model="m", training_file="f", output_dir=tmp_path, **bad).validate()


# --- training runs ----------------------------------------------------------------------------

def run(tiny_model_dir, tmp_path, name, cb=None, **kw) -> tuple:
    cb = cb or Recorder()
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_jsonl(data, chat_rows(12))
    cfg = dict(model=str(tiny_model_dir), training_file=data, output_dir=tmp_path / name, n_epochs=2,
               batch_size=4, seed=7, learning_rate_multiplier=5.0)
    cfg.update(kw)
    return train(TrainConfig(**cfg), cb), cb


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory):
    """An uninterrupted 2-epoch run (6 steps), the reference for the resume tests."""
    return run(tiny_model_dir, tmp_path_factory.mktemp("straight"), "a")


def test_lora_run_metrics_checkpoints_and_outputs(tiny_model_dir, tmp_path):
    valid = write_jsonl(tmp_path / "valid.jsonl", chat_rows(5, start=100))
    res, cb = run(tiny_model_dir, tmp_path, "out", validation_file=valid, n_epochs=4, eval_every=2)
    assert res.status == "succeeded"
    assert cb.resolved["total_steps"] == 12 and cb.resolved["n_epochs"] == 4 and cb.resolved["seed"] == 7
    assert [m["step"] for m in cb.metrics] == list(range(1, 13))
    assert all({"train_loss", "train_mean_token_accuracy", "trained_tokens", "tokens_per_second"} <= m.keys()
               for m in cb.metrics)
    assert [m["step"] for m in cb.metrics if "valid_loss" in m] == [2, 3, 4, 6, 8, 9, 10, 12]
    assert [m["step"] for m in cb.metrics if "full_valid_loss" in m] == [3, 6, 9, 12]
    assert cb.metrics[-1]["train_loss"] < cb.metrics[0]["train_loss"]
    assert cb.metrics[-1]["full_valid_loss"] < cb.metrics[2]["full_valid_loss"]
    assert res.trained_tokens == cb.metrics[-1]["trained_tokens"] > 0
    # One checkpoint per epoch, the last 3 kept on disk.
    assert [c.step for c in cb.checkpoints] == [3, 6, 9, 12]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step-12", "step-6", "step-9"]
    assert [c.step for c in res.checkpoints] == [6, 9, 12]
    meta = json.loads((tmp_path / "out" / "checkpoints" / "step-9" / "tunery.json").read_text())
    assert meta["base_model"] == str(Path(tiny_model_dir).resolve()) and meta["method"] == "lora"
    assert meta["step"] == 9 and meta["epoch"] == 3 and meta["hyperparameters"]["batch_size"] == 4
    assert {"train_loss", "full_valid_loss", "valid_loss"} <= meta["metrics"].keys()
    final = res.model_dir
    assert (final / "adapter_model.safetensors").exists() and (final / "adapter_config.json").exists()
    assert not (final / "trainer_state.pt").exists()
    # The run's speed is remembered for the data tools' time estimates.
    from tunery.data.estimate import measured_throughput

    assert measured_throughput(str(tiny_model_dir), "lora")[1].startswith("measured")
    # The adapter loads with plain PEFT (what the engine does).
    from peft import PeftModel

    from tunery.models import load_model

    base, _ = load_model(str(tiny_model_dir))
    PeftModel.from_pretrained(base, str(final))


def test_gradient_accumulation_matches_one_batch(tiny_model_dir, tmp_path):
    """A batch split into micro-batches (when it does not fit) gives the same losses as one pass."""
    _, whole = run(tiny_model_dir, tmp_path, "whole", n_epochs=1)
    _, split = run(tiny_model_dir, tmp_path, "split", n_epochs=1, max_tokens_per_micro_batch=60)
    assert split.losses() == pytest.approx(whole.losses(), rel=1e-4)


def test_truncation_warns_and_still_trains(tiny_model_dir, tmp_path):
    rows = chat_rows(4)
    rows.append({"messages": [{"role": "user", "content": "long " * 200}, {"role": "assistant", "content": "ok"}]})
    data = write_jsonl(tmp_path / "t.jsonl", rows)
    res, cb = run(tiny_model_dir, tmp_path, "o", training_file=data, max_length=64, n_epochs=1)
    warns = [m for lvl, m in cb.events if lvl == "warn"]
    assert any("truncated" in w and "line 5" in w for w in warns)
    # The long example lost its answer to truncation, so it has nothing to train on and is skipped (warned).
    assert any("no trained tokens" in w and "5" in w for w in warns)
    assert cb.resolved["n_train_examples"] == 4 and res.status == "succeeded"


def test_same_seed_same_losses_and_exact_resume_from_epoch_checkpoint(tiny_model_dir, tmp_path, straight):
    straight, cb_a = straight
    # Second run: same seed, stopped after epoch 1 (3 steps), then resumed from its checkpoint.
    first, cb_b = run(tiny_model_dir, tmp_path, "b", cb=Recorder(stop_at={3: "cancel"}))
    assert first.status == "cancelled" and first.model_dir is None
    assert cb_b.losses() == cb_a.losses()[:3]  # same seed and data → same losses
    ckpt = tmp_path / "b" / "checkpoints" / "step-3"
    resumed, cb_c = run(tiny_model_dir, tmp_path, "b", resume_from=ckpt, seed=None, n_epochs="auto")
    assert resumed.status == "succeeded"
    assert [m["step"] for m in cb_c.metrics] == [4, 5, 6]
    assert cb_c.losses() == pytest.approx(cb_a.losses()[3:], rel=1e-5, abs=1e-6)
    assert resumed.trained_tokens == straight.trained_tokens
    assert resumed.final_metrics["train_loss"] == pytest.approx(straight.final_metrics["train_loss"], rel=1e-5)


def test_pause_writes_resume_state_and_resume_continues_exactly(tiny_model_dir, tmp_path, straight):
    _, cb_a = straight
    paused, cb_p = run(tiny_model_dir, tmp_path, "p", cb=Recorder(stop_at={4: "pause"}))
    assert paused.status == "paused" and paused.resume_dir == tmp_path / "p" / "resume"
    assert (paused.resume_dir / "trainer_state.pt").exists()
    resumed, cb_r = run(tiny_model_dir, tmp_path, "p", resume_from=paused.resume_dir)
    assert [m["step"] for m in cb_r.metrics] == [5, 6]
    assert cb_p.losses() + cb_r.losses() == pytest.approx(cb_a.losses(), rel=1e-5, abs=1e-6)
    assert resumed.status == "succeeded" and not paused.resume_dir.exists()  # nothing left to resume


def test_cancel_stops_and_leaves_last_checkpoint_usable(tiny_model_dir, tmp_path):
    res, cb = run(tiny_model_dir, tmp_path, "c", cb=Recorder(stop_at={4: "cancel"}))
    assert res.status == "cancelled" and len(cb.metrics) == 4
    assert [c.step for c in res.checkpoints] == [3]
    from peft import PeftModel

    from tunery.models import load_model

    base, _ = load_model(str(tiny_model_dir))
    PeftModel.from_pretrained(base, str(res.checkpoints[0].path))


def test_full_fine_tuning_and_export(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    res, cb = run(tiny_model_dir, tmp_path, "full", method="full", learning_rate_multiplier=10.0)
    assert res.status == "succeeded" and cb.losses()[-1] < cb.losses()[0]
    assert (res.model_dir / "config.json").exists() and (res.model_dir / "model.safetensors").exists()
    assert json.loads((res.model_dir / "tunery.json").read_text())["method"] == "full"
    m = AutoModelForCausalLM.from_pretrained(res.model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(m.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_export_merge_matches_adapter(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.cli import main

    res, _ = run(tiny_model_dir, tmp_path, "l", n_epochs=1)
    out = tmp_path / "merged"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(res.model_dir), "--merge", "--output", str(out)])
    assert exc.value.code == 0
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(res.model_dir)).eval()
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, peft(x).logits, rtol=1e-4, atol=1e-4)


def test_cli_train(tiny_model_dir, tmp_path, capsys):
    from tunery.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", str(tiny_model_dir), "--training-file", str(data), "--n-epochs", "1",
              "--batch-size", "5", "--learning-rate-multiplier", "2", "--seed", "3", "--output",
              str(tmp_path / "cli")])
    assert exc.value.code == 0
    assert (tmp_path / "cli" / "final" / "adapter_model.safetensors").exists()
    err = capsys.readouterr().err
    assert "succeeded" in err and "batch size 5" in err


def test_resume_point_is_the_latest_complete_checkpoint_or_the_paused_state(tmp_path):
    """train/checkpoint.py alone knows the folder layout: the worker asks it where to resume."""
    import json as _json

    from tunery.train import checkpoint

    def folder(name, step, state=True):
        p = tmp_path / name
        p.mkdir(parents=True)
        (p / checkpoint.META_FILE).write_text(_json.dumps({"step": step}))
        if state:
            (p / checkpoint.STATE_FILE).write_bytes(b"x")
        return p

    assert checkpoint.resume_point(tmp_path, []) == (None, 0)
    s2, s4 = folder("checkpoints/step-2", 2), folder("checkpoints/step-4", 4)
    folder("checkpoints/step-6", 6, state=False)  # no trainer state: not resumable
    rows = [(s2, 2), (s4, 4), (tmp_path / "checkpoints/step-6", 6)]
    assert checkpoint.resume_point(tmp_path, rows) == (s4, 4)
    resume = folder(checkpoint.RESUME_DIR, 5)
    assert checkpoint.resume_point(tmp_path, rows) == (resume, 5)
    assert checkpoint.is_resume_dir(resume) and not checkpoint.is_resume_dir(s4)
    assert checkpoint.meta_step(resume) == 5 and checkpoint.is_model_dir(s2) and not checkpoint.is_model_dir(None)


def test_the_trainer_and_the_api_check_the_same_ranges():
    """train/config.py owns the ranges: TrainConfig.validate and the API's create check read the same table."""
    from tunery.store.jobs import _check_number
    from tunery.train.config import HYPERPARAMETER_RANGES, from_job

    for name, (kind, low, high, low_inclusive) in HYPERPARAMETER_RANGES.items():
        too_high = kind(high + 1)
        with pytest.raises(InvalidRequest):
            _check_number(name, too_high, f"hyperparameters.{name}")
        assert _check_number(name, kind(high), f"hyperparameters.{name}") == high
        if name != "beta":
            with pytest.raises(InvalidRequest):
                TrainConfig(model="m", training_file="t", output_dir="o", **{name: too_high}).validate()
    with pytest.raises(InvalidRequest):
        TrainConfig(model="m", training_file="t", output_dir="o", objective="dpo", beta=3.0).validate()
    assert from_job({"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2.0, "beta": 0.2}, "dpo") == {
        "n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2.0, "objective": "dpo", "beta": 0.2}
    assert from_job({}, "supervised") == {"n_epochs": "auto", "batch_size": "auto",
                                          "learning_rate_multiplier": "auto", "objective": "supervised"}


def test_trainer_threads_leave_a_core_unless_told():
    import os

    import torch

    from tunery.models import setup_threads

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        assert setup_threads(0, reserve=1) == max(1, cores - 1) == torch.get_num_threads()
        assert setup_threads(0) == cores
        assert setup_threads(2, reserve=1) == 2  # TUNERY_NUM_THREADS is obeyed as given
    finally:
        torch.set_num_threads(before)
