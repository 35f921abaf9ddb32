"""Inference: an engine serving base models, LoRA adapters and full fine-tunes with continuous batching."""

from tunery.inference.engine import (
    Choice,
    Delta,
    Done,
    Engine,
    EngineConfig,
    Failed,
    Finished,
    Generation,
    ModelHandle,
    SamplingParams,
    Servable,
    TokenLogprob,
    Usage,
    get_engine,
)

__all__ = [
    "Choice", "Delta", "Done", "Engine", "EngineConfig", "Failed", "Finished", "Generation", "ModelHandle",
    "SamplingParams", "Servable", "TokenLogprob", "Usage", "get_engine",
]
