"""The trainer: LoRA and full fine-tuning of open causal LMs (see loop.py for the loop itself)."""

from tunery.train.callbacks import CheckpointInfo, TrainCallbacks, TrainResult
from tunery.train.config import BASE_LEARNING_RATE, TrainConfig, resolve_hyperparameters


def train(config: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Fine-tune config.model on config.training_file (imports torch lazily)."""
    from tunery.train.loop import train as _train

    return _train(config, callbacks)


__all__ = ["BASE_LEARNING_RATE", "CheckpointInfo", "TrainCallbacks", "TrainConfig", "TrainResult",
           "resolve_hyperparameters", "train"]
