"""Classifier data (babbage-002 style " yes"/" no" completions): auto label smoothing among the labels, so
every label stays among the top logprobs."""

from __future__ import annotations

import math

import pytest

from tests.test_train import Recorder, write_jsonl
from tunery.train import TrainConfig, train
from tunery.train.config import (AUTO_CLASSIFIER_MULTIPLIER, AUTO_CLASSIFIER_NEFTUNE_ALPHA, auto_multiplier,
                                 label_tokens, resolve_hyperparameters, resolve_neftune)


def test_label_tokens_only_for_single_token_labels_out_of_a_few():
    assert label_tokens([5, 7, 5, 7], [2, 2, 2, 2]) == [5, 7]
    assert label_tokens([5, 5, 5], [2, 2, 2]) == []  # one label: nothing to keep in second place
    assert label_tokens([5, 7, 5], [2, 3, 2]) == []  # a longer completion: not classifier data
    assert label_tokens(list(range(9)), [2] * 9) == []  # too many distinct first tokens: free text
    assert label_tokens([], []) == []


def test_smoothing_is_cross_entropy_against_the_soft_label_target():
    import torch

    from tunery.train.loop import _label_spread

    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    targets = torch.tensor([3, 9, 17, 9])  # 17 is not a label: plain loss there
    labels, eps = [3, 9, 11], 0.1
    got = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") + eps * _label_spread(logits, targets, labels)
    lp = logits.log_softmax(-1)
    want = 0.0
    for i, t in enumerate(targets.tolist()):
        if t in labels:
            q = {c: eps / (len(labels) - 1) for c in labels if c != t}
            q[t] = 1 - eps
            want += -sum(w * lp[i, c] for c, w in q.items())
        else:
            want += -lp[i, t]
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def _classifier_rows(n: int) -> list[dict]:
    return [{"prompt": f"Is question {i} about pottery?\n\n###\n\n", "completion": " yes" if i % 2 else " no"}
            for i in range(n)]


def test_auto_smooths_classifier_data_only_and_says_so(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "disc.jsonl", _classifier_rows(12))
    base = dict(model=str(tiny_model_dir), n_epochs=2, batch_size=4, seed=1)
    res, cb = train(TrainConfig(training_file=data, output_dir=tmp_path / "d", **base), Recorder()), None
    assert res.hyperparameters["label_smoothing"] == pytest.approx(0.1)
    cb = Recorder()
    train(TrainConfig(training_file=data, output_dir=tmp_path / "d2", label_smoothing=0, **base), cb)
    assert cb.resolved["label_smoothing"] == 0 and not any("label smoothing" in m for _, m in cb.events)
    cb = Recorder()
    train(TrainConfig(training_file=data, output_dir=tmp_path / "d3", **base), cb)
    assert any("Classifier data: every example completes with one of 2 labels (' no', ' yes')" in m
               for _, m in cb.events), cb.events
    # Its own auto rate and noise (generalise from few questions), named in the same event; chats keep theirs.
    assert cb.resolved["learning_rate_multiplier"] == AUTO_CLASSIFIER_MULTIPLIER
    assert cb.resolved["neftune_alpha"] == AUTO_CLASSIFIER_NEFTUNE_ALPHA > 0
    assert any("Classifier data" in m and f"learning rate multiplier {AUTO_CLASSIFIER_MULTIPLIER:g}" in m
               for _, m in cb.events), cb.events
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"},
                                                                {"role": "assistant", "content": f"The code is {i}."}]}
                                                  for i in range(8)])
    cb = Recorder()
    train(TrainConfig(training_file=chat, output_dir=tmp_path / "c", **base), cb)
    assert cb.resolved["label_smoothing"] == 0  # free-text answers: never smoothed
    assert cb.resolved["learning_rate_multiplier"] == auto_multiplier(math.ceil(8 / 4) * 2, "lora")
    assert cb.resolved["learning_rate_multiplier"] != AUTO_CLASSIFIER_MULTIPLIER
    assert cb.resolved["neftune_alpha"] == 0


def test_classifier_auto_rate_and_noise_only_where_auto():
    cfg = TrainConfig(model="m", training_file="t", output_dir="o")
    chat, disc = resolve_hyperparameters(cfg, 100), resolve_hyperparameters(cfg, 100, classifier=True)
    assert chat["learning_rate_multiplier"] == auto_multiplier(300, "lora") > AUTO_CLASSIFIER_MULTIPLIER
    assert disc["learning_rate_multiplier"] == AUTO_CLASSIFIER_MULTIPLIER
    assert disc["n_epochs"] == chat["n_epochs"] and disc["batch_size"] == chat["batch_size"]
    explicit = TrainConfig(model="m", training_file="t", output_dir="o", learning_rate_multiplier=3.0)
    assert resolve_hyperparameters(explicit, 100, classifier=True)["learning_rate_multiplier"] == 3.0
    full = TrainConfig(model="m", training_file="t", output_dir="o", method="full")
    assert resolve_hyperparameters(full, 100, classifier=True) == resolve_hyperparameters(full, 100)
    assert resolve_neftune(cfg, 0, classifier=True) == AUTO_CLASSIFIER_NEFTUNE_ALPHA
    assert resolve_neftune(cfg, 0) == 0
    no_noise = TrainConfig(model="m", training_file="t", output_dir="o", neftune_alpha=0)
    assert resolve_neftune(no_noise, 0, classifier=True) == 0


def test_label_smoothing_is_checked():
    from tunery.errors import InvalidRequest

    for bad in (-0.1, 0.5, "x", True):
        with pytest.raises(InvalidRequest) as e:
            TrainConfig(model="m", training_file="t", output_dir="o", label_smoothing=bad).validate()
        assert e.value.param == "label_smoothing"
