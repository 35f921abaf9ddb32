"""What every backend speaks: sampling parameters, the events of one generation, and the checks all
backends share (context length)."""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass, field
from typing import Iterator

from tunery.errors import InvalidRequest

# --- requests and results ---------------------------------------------------------------

@dataclass
class SamplingParams:
    """How to generate; the field names are the OpenAI request's."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    json_schema: dict | None = None
    ignore_eos: bool = False
    """Benchmarks only: keep generating past end-of-sequence."""

    def validate(self, max_top_logprobs: int = 20) -> "SamplingParams":
        def bad(param: str, msg: str):
            raise InvalidRequest(f"Invalid '{param}': {msg}", param=param, code="invalid_value")

        if self.max_tokens is not None and self.max_tokens < 1:
            bad("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= 2:
            bad("temperature", f"must be between 0 and 2, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be greater than 0 and at most 1, got {self.top_p}")
        if not 1 <= self.n <= 128:
            bad("n", f"must be between 1 and 128, got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not -2 <= v <= 2:
                bad(name, f"must be between -2 and 2, got {v}")
        if len(self.stop) > 4:
            bad("stop", f"at most 4 stop sequences, got {len(self.stop)}")
        if not 0 <= self.top_logprobs <= max_top_logprobs:
            bad("top_logprobs", f"must be between 0 and {max_top_logprobs}, got {self.top_logprobs}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


@dataclass
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass
class Delta:
    """New text of choice `index` (never containing a stop string), with the logprobs of its tokens."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Finished:
    index: int
    finish_reason: str  # "stop" | "length"


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass
class Done:
    usage: Usage


@dataclass
class Failed:
    error: Exception


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str
    logprobs: list[TokenLogprob] | None


class Generation:
    """The event stream of one request: Delta/Finished per choice, then Done (or Failed)."""

    def __init__(self, n: int, prompt_tokens: int, loop: asyncio.AbstractEventLoop | None = None):
        self.n = n
        self.prompt_tokens = prompt_tokens
        self._loop = loop
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._aq: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self.cancelled = False

    def _emit(self, ev) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._aq.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (client went away, server stopping)
                self.cancelled = True
        else:
            self._q.put(ev)

    def cancel(self) -> None:
        """Stop generating (the client went away); the engine drops the sequences at its next step."""
        self.cancelled = True

    def __iter__(self) -> Iterator:
        while True:
            ev = self._q.get()
            yield ev
            if isinstance(ev, (Done, Failed)):
                return

    async def aiter(self):
        try:
            while True:
                ev = await self._aq.get()
                yield ev
                if isinstance(ev, (Done, Failed)):
                    return
        finally:
            self.cancel()

    @staticmethod
    def _collect(events) -> tuple[list[Choice], Usage]:
        texts: dict[int, list[str]] = {}
        lps: dict[int, list[TokenLogprob] | None] = {}
        reasons: dict[int, str] = {}
        for ev in events:
            if isinstance(ev, Delta):
                texts.setdefault(ev.index, []).append(ev.text)
                if ev.logprobs is not None:
                    lps.setdefault(ev.index, []).extend(ev.logprobs)
            elif isinstance(ev, Finished):
                reasons[ev.index] = ev.finish_reason
            elif isinstance(ev, Failed):
                raise ev.error
            elif isinstance(ev, Done):
                usage = ev.usage
        choices = [Choice(i, "".join(texts.get(i, [])), reasons.get(i, "stop"), lps.get(i))
                   for i in sorted(reasons)]
        return choices, usage

    def result(self) -> tuple[list[Choice], Usage]:
        """Block until done: the choices (ordered by index) and usage."""
        return self._collect(iter(self))

    async def aresult(self) -> tuple[list[Choice], Usage]:
        return self._collect([ev async for ev in self.aiter()])


def check_context(ctx: int, n_prompt: int, params: SamplingParams, prompt_param: str) -> None:
    """The OpenAI 400s for an empty prompt and for prompt + max_tokens over the context window."""
    if n_prompt == 0:
        raise InvalidRequest("the prompt is empty", param=prompt_param)
    if params.max_tokens is None:
        if n_prompt >= ctx:
            raise InvalidRequest(
                f"This model's maximum context length is {ctx} tokens. However, your {prompt_param} "
                f"resulted in {n_prompt} tokens. Please reduce the length of the {prompt_param}.",
                param=prompt_param, code="context_length_exceeded")
    elif n_prompt + params.max_tokens > ctx:
        raise InvalidRequest(
            f"This model's maximum context length is {ctx} tokens. However, you requested "
            f"{n_prompt + params.max_tokens} tokens ({n_prompt} in the {prompt_param}, {params.max_tokens} "
            f"in the completion). Please reduce the length of the {prompt_param} or completion.",
            param=prompt_param, code="context_length_exceeded")
