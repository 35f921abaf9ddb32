"""Inference: a router in front of backends (llama.cpp, tunery's torch engine) serving base models,
LoRA adapters and full fine-tunes."""

from tunery.inference.config import ModelHandle, Servable
from tunery.inference.engine import Engine
from tunery.inference.generation import (
    Choice, Delta, Done, Failed, Finished, Generation, SamplingParams, TokenLogprob, Usage,
)
from tunery.inference.router import Router, get_engine

__all__ = [
    "Choice", "Delta", "Done", "Engine", "Failed", "Finished", "Generation", "ModelHandle",
    "Router", "SamplingParams", "Servable", "TokenLogprob", "Usage", "get_engine",
]
