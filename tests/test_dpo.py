"""DPO trainer tests on the tiny model: output-only masks, per-step losses equal to TRL's DPOTrainer, exact
resume with the saved reference, full fine-tuning, and DPO continuing a fine-tuned (SFT) model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from test_train import Recorder, tok  # noqa: F401  (the SFT tests' callback recorder and tokenizer fixture)
from tunery.train import TrainConfig, train


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pref_rows(n: int, start: int = 0) -> list[dict]:
    """The preferred answer ends with a sign-off, the other does not; uneven lengths."""
    out = []
    for i in range(start, start + n):
        answer = f"Item {i} costs {i * 37 % 101} coins" + " and ships fast" * (i % 3)
        out.append({"input": {"messages": [{"role": "system", "content": "You are a shop assistant."},
                                           {"role": "user", "content": f"How much is item {i}?"}]},
                    "preferred_output": [{"role": "assistant", "content": answer + ". Cheers, Tuna!"}],
                    "non_preferred_output": [{"role": "assistant", "content": answer + "."}]})
    return out


@pytest.fixture
def pref_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pref.jsonl", pref_rows(12))


def dpo_config(tiny_model_dir, tmp_path, name, **kw) -> TrainConfig:
    base = dict(model=str(tiny_model_dir), training_file=tmp_path / "pref.jsonl", output_dir=tmp_path / name,
                objective="dpo", n_epochs=2, batch_size=4, learning_rate_multiplier=5.0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_preference_pair_trains_only_the_outputs(tok):
    from tunery.data import read_examples
    from tunery.train.dpo import encode_pair
    from tunery.train.tokenize import encode_chat

    row = pref_rows(1)[0]
    row["input"]["messages"] += [{"role": "assistant", "content": "Earlier answer."},
                                 {"role": "user", "content": "And again?"}]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ex = next(iter(read_examples(write_jsonl(Path(d) / "one.jsonl", [row]))))
    pair = encode_pair(tok, ex)
    for enc, out in ((pair.chosen, row["preferred_output"]), (pair.rejected, row["non_preferred_output"])):
        trained = tok.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if m])
        assert trained == out[0]["content"] + "<|im_end|>"  # not the earlier assistant turn, not the prompt
        # Same tokens and mask as SFT would train on that output as the last turn.
        sft = encode_chat(tok, [dict(m, weight=0) if m["role"] == "assistant" else m
                                for m in row["input"]["messages"]] + out)
        assert (enc.input_ids, enc.loss_mask) == (sft.input_ids, sft.loss_mask)
    assert pair.chosen.input_ids[:20] == pair.rejected.input_ids[:20]


def test_dpo_run_metrics_checkpoints_and_reference(tiny_model_dir, tmp_path, pref_file):
    write_jsonl(tmp_path / "valid.jsonl", pref_rows(4, start=100))
    cb = Recorder()
    res = train(dpo_config(tiny_model_dir, tmp_path, "run", validation_file=tmp_path / "valid.jsonl"), cb)
    assert res.status == "succeeded" and res.hyperparameters["beta"] == 0.1  # "auto"
    assert res.hyperparameters["nll_weight"] == 1.0  # "auto": the preferred outputs' likelihood is trained too
    said = [m for _, m in cb.events if m.startswith("Auto settings for preference pairs")]
    assert len(said) == 1 and "beta 0.1" in said[0] and "weight 1" in said[0] and "epochs" not in said[0]
    assert res.hyperparameters["objective"] == "dpo" and res.hyperparameters["total_steps"] == 6
    first = cb.metrics[0]
    # The policy starts equal to the reference: every implicit reward is 0 and the loss is log 2.
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["train_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    last = cb.metrics[-1]
    assert last["train_loss"] < first["train_loss"] - 0.02
    assert last["train_reward_accuracy"] == 1.0 and last["train_reward_margin"] > 0
    assert last["train_chosen_logps"] < 0 and last["train_rejected_logps"] < 0
    assert last["train_chosen_nll"] < first["train_chosen_nll"] - 0.05  # the likelihood term trains
    assert {"valid_loss", "valid_reward_accuracy", "full_valid_loss", "full_valid_reward_margin"} <= set(last)
    assert last["full_valid_reward_accuracy"] >= 0.75  # held-out prompts: the sign-off is what is preferred
    assert len(res.checkpoints) == 2
    for c in res.checkpoints:
        ref = json.loads((c.path / "reference_logps.json").read_text())
        assert len(ref["train"]) == 12 and len(ref["valid"]) == 4
        assert set(c.metrics) >= {"step", "train_loss", "train_reward_accuracy", "full_valid_loss"}
    assert (res.model_dir / "adapter_model.safetensors").exists()


def test_dpo_pause_and_resume_is_exact(tiny_model_dir, tmp_path, pref_file):
    straight = Recorder()
    train(dpo_config(tiny_model_dir, tmp_path, "straight"), straight)
    first = Recorder(stop_at={4: "pause"})  # mid-epoch 2
    res = train(dpo_config(tiny_model_dir, tmp_path, "paused"), first)
    assert res.status == "paused" and (res.resume_dir / "reference_logps.json").exists()
    second = Recorder()
    train(dpo_config(tiny_model_dir, tmp_path, "paused", resume_from=res.resume_dir, objective="supervised"),
          second)  # the checkpoint decides the objective
    assert first.losses() + second.losses() == pytest.approx(straight.losses(), abs=1e-6)
    # After a kill -9 the worker resumes from the newest epoch checkpoint: same losses from there on.
    from_ckpt = Recorder()
    train(dpo_config(tiny_model_dir, tmp_path, "recovered", resume_from=tmp_path / "straight/checkpoints/step-3"),
          from_ckpt)
    assert from_ckpt.losses() == pytest.approx(straight.losses()[3:], abs=1e-6)


def test_dpo_full_fine_tuning(tiny_model_dir, tmp_path, pref_file):
    cb = Recorder()
    res = train(dpo_config(tiny_model_dir, tmp_path, "full", method="full", learning_rate_multiplier=10.0), cb)
    assert res.status == "succeeded" and (res.model_dir / "model.safetensors").exists()
    assert cb.metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert cb.metrics[-1]["train_loss"] < cb.metrics[0]["train_loss"] - 0.01


def test_dpo_continues_a_fine_tuned_model(tiny_model_dir, tmp_path, pref_file):
    """SFT, then DPO from its adapter: the reference is the SFT model, so DPO starts at loss log 2 exactly,
    and the result is one adapter (the SFT adapter trained further) on the same base."""
    from safetensors.torch import load_file

    sft_rows = [{"messages": r["input"]["messages"] + r["non_preferred_output"]} for r in pref_rows(12, 50)]
    sft = train(TrainConfig(model=str(tiny_model_dir), training_file=write_jsonl(tmp_path / "sft.jsonl", sft_rows),
                            output_dir=tmp_path / "sft", n_epochs=2, batch_size=4, seed=1, lora_rank=8,
                            learning_rate_multiplier=5.0))
    cb = Recorder()
    res = train(dpo_config(tiny_model_dir, tmp_path, "dpo", init_from=sft.model_dir), cb)
    assert cb.metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    # Against the SFT model, not the base: the starting log-probs are the SFT model's, not the base's.
    base_run = Recorder()
    train(dpo_config(tiny_model_dir, tmp_path, "dpo-base", n_epochs=1), base_run)
    assert cb.metrics[0]["train_chosen_logps"] != pytest.approx(base_run.metrics[0]["train_chosen_logps"], abs=0.5)
    assert cb.metrics[-1]["train_loss"] < math.log(2) - 0.02
    meta = json.loads((res.model_dir / "tunery.json").read_text())
    assert meta["method"] == "lora" and meta["hyperparameters"]["lora_rank"] == 8
    assert meta["hyperparameters"]["init_from"] == str(sft.model_dir)
    before, after = load_file(sft.model_dir / "adapter_model.safetensors"), \
        load_file(res.model_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any((before[k] != after[k]).any() for k in before)
