"""What the trainer reports and returns: callbacks (the worker turns them into job events) and results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class CheckpointInfo:
    """One epoch checkpoint on disk (a servable model dir plus resume state)."""

    step: int
    epoch: int
    path: Path
    metrics: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    status: Literal["succeeded", "cancelled", "paused"]
    hyperparameters: dict
    """Resolved numbers: n_epochs, batch_size, learning_rate_multiplier (+ learning_rate, seed, method...)."""
    trained_tokens: int
    final_metrics: dict
    checkpoints: list[CheckpointInfo]
    model_dir: Path | None
    """output_dir/final (adapter or full weights) when succeeded."""
    resume_dir: Path | None = None
    """output_dir/resume when paused."""


class TrainCallbacks:
    """Override what you need; every method is a no-op by default. Called from the training thread."""

    def on_event(self, level: str, message: str) -> None:
        """Lifecycle lines: level "info" | "warn" | "error"."""

    def on_metrics(self, data: dict) -> None:
        """Every step: {step, total_steps, epoch, train_loss, train_mean_token_accuracy, trained_tokens,
        tokens_per_second} plus valid_* at regular steps and full_valid_* at epoch ends."""

    def on_resolved(self, hyperparameters: dict) -> None:
        """Once, before the first step: resolved hyperparameters plus total_steps and estimated_seconds."""

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        """After each epoch checkpoint is written (only the last `keep_checkpoints` stay on disk)."""

    def should_stop(self) -> str | None:
        """Polled before every step: None to go on, "cancel" to stop, "pause" to save resume state and stop."""
        return None
