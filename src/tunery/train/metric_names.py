"""The names of the trainer's metrics, in one place (torch-free).

The trainer reports each step's metrics as <split><name> (train_loss, valid_mean_token_accuracy, ...);
the worker keeps EVENT_KEYS of them in the job's metrics events, a checkpoint row keeps its objective's
checkpoint names, the API's checkpoint object shows CHECKPOINT_KEYS (OpenAI's shape) and the result file
has RESULT_COLUMNS (OpenAI's header). The order of each tuple is the order of the keys on the wire.
"""

from __future__ import annotations

SPLITS = ("train_", "valid_", "full_valid_")
"""train_: the step's batch; valid_: a validation batch; full_valid_: the whole validation file (epoch ends)."""
SFT_METRICS = ("loss", "mean_token_accuracy")
DPO_METRICS = ("reward_accuracy", "reward_margin", "chosen_rewards", "rejected_rewards", "chosen_logps",
               "rejected_logps", "chosen_nll")
"""chosen_nll: the preferred outputs' mean token negative log-likelihood (the loss adds nll_weight × it)."""
DPO_CHECKPOINT_METRICS = SFT_METRICS + ("reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps")
"""What a DPO checkpoint keeps per split (the rewards are derived from the logps)."""


def per_split(names: tuple[str, ...]) -> tuple[str, ...]:
    """Every split's prefixed name, split-major: train_a, train_b, valid_a, ..."""
    return tuple(f"{p}{k}" for p in SPLITS for k in names)


def by_metric(names: tuple[str, ...]) -> tuple[str, ...]:
    """Every split's prefixed name, metric-major: train_a, valid_a, full_valid_a, train_b, ..."""
    return tuple(f"{p}{k}" for k in names for p in SPLITS)


CHECKPOINT_KEYS = ("step",) + per_split(SFT_METRICS)
"""The metrics of OpenAI's fine_tuning.job.checkpoint object."""
EVENT_KEYS = (("step", "total_steps", "epoch") + per_split(SFT_METRICS) + ("trained_tokens", "tokens_per_second")
              + per_split(DPO_METRICS))
"""What a metrics event's data may hold (the worker drops anything else the trainer reports)."""
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
"""OpenAI's result file header (its names differ from the events' for two columns)."""
RESULT_SOURCES = dict(zip(RESULT_COLUMNS, ("step", "train_loss", "train_mean_token_accuracy", "valid_loss",
                                           "valid_mean_token_accuracy")))
"""The event key each result file column is read from."""
CURVE_KEYS = by_metric(SFT_METRICS)
"""The supervised curves a job shows: loss and token accuracy of every split."""
