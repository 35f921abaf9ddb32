"""What an "auto" supervised run will do with a file, known before it runs (torch-free).

`tunery data stats` shows it. The decisions come from the same rules the trainer applies (train/config.py:
resolve_augment, resolve_replay, resolve_hyperparameters), fed with the same counts: how many chats can take
question rewrites, the file's tokens, and whether its questions are English. What cannot be known before
the run is estimated and said to be: a rewrite is counted with its original's tokens, and a replay example
with the file's mean prompt plus a full-length replay answer. Early stopping may end a run sooner and the
repair pass may add a few steps; the figures are the scheduled run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunery.data.formats import Example
from tunery.train.config import (
    AUTO_SMALL_SET, TrainConfig, resolve_augment, resolve_hyperparameters, resolve_replay,
)


@dataclass
class RunPlanner:
    """Fed one example at a time (add), then asked for the plan (result)."""

    n_epochs: int | None = None  # as the user gives it; None is "auto"
    n: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    augmentable_tokens: int = 0
    kept: list[Example] = field(default_factory=list)  # augmentable chats, while the set can be "small"
    n_augmentable: int = 0

    def add(self, example: Example, tokens: int, assistant_tokens: int) -> None:
        from tunery.data.augment import augmentable

        self.n += 1
        self.tokens += tokens
        self.prompt_tokens += max(0, tokens - assistant_tokens)
        if augmentable(example):
            self.n_augmentable += 1
            self.augmentable_tokens += tokens
            if self.n_augmentable <= AUTO_SMALL_SET:
                self.kept.append(example)

    def result(self) -> dict:
        """{n_epochs, batch_size, augment, replay, examples_per_epoch, trained_tokens_per_epoch,
        trained_tokens, early_stop}."""
        from tunery.train import replay

        if not self.n:
            return {"n_epochs": 0, "batch_size": 0, "augment": 0, "replay": 0, "examples_per_epoch": 0,
                    "trained_tokens_per_epoch": 0, "trained_tokens": 0, "early_stop": False}
        config = TrainConfig(model="-", training_file="-", output_dir="-", n_epochs=self.n_epochs or "auto")
        variants = resolve_augment(config, self.n_augmentable, self.tokens) if self.n_augmentable else 0
        n_replay = resolve_replay(config, variants, replay.english(self.kept)) if self.kept else 0
        examples = self.n + variants * self.n_augmentable + n_replay
        hp = resolve_hyperparameters(config, examples, variants, self.n, self.tokens)
        replay_each = round(self.prompt_tokens / self.n) + replay.MAX_ANSWER_TOKENS
        per_epoch = self.tokens + variants * self.augmentable_tokens + n_replay * replay_each
        return {"n_epochs": hp["n_epochs"], "batch_size": hp["batch_size"], "augment": variants,
                "replay": n_replay, "examples_per_epoch": examples, "trained_tokens_per_epoch": per_epoch,
                "trained_tokens": per_epoch * hp["n_epochs"], "early_stop": self.n_epochs is None}
