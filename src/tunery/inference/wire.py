"""OpenAI wire shapes for chat completions and completions (exactly the SDK's types), and the
request → engine plumbing the two routes share."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from pydantic import BaseModel, ConfigDict, Field

from tunery import __version__
from tunery.errors import InvalidRequest, TuneryError
from tunery.inference.generation import Delta, Done, Failed, Finished, Generation, SamplingParams, TokenLogprob
from tunery.inference.grammar import schema_of

SYSTEM_FINGERPRINT = f"fp_tunery_{__version__.replace('.', '_')}"


# strict: "8" for max_tokens or "yes" for stream is a 400, as at OpenAI, not silently coerced.
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(..., min_length=1, max_length=2048, description="A base model, alias, ft:… model or checkpoint")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(...)
    max_tokens: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


def _stops(stop) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _check_common(body: _Common) -> None:
    if body.logit_bias:
        raise InvalidRequest("logit_bias is not supported by tunery's engine", param="logit_bias",
                             code="unsupported_parameter")


def chat_params(body: ChatCompletionRequest) -> SamplingParams:
    _check_common(body)
    if body.tools:
        raise InvalidRequest("tools (function calling) are not supported by tunery's engine yet; "
                             "ask for JSON with response_format instead", param="tools", code="unsupported_parameter")
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    return SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        n=body.n or 1, seed=body.seed, stop=_stops(body.stop),
        presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
        logprobs=bool(body.logprobs), top_logprobs=body.top_logprobs or 0,
        json_schema=schema_of(body.response_format),
    ).validate()


def completion_params(body: CompletionRequest) -> SamplingParams:
    _check_common(body)
    if body.suffix:
        raise InvalidRequest("suffix (insertion) is not supported by tunery's engine", param="suffix",
                             code="unsupported_parameter")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequest("best_of other than n is not supported by tunery's engine", param="best_of",
                             code="unsupported_parameter")
    return SamplingParams(
        max_tokens=16 if body.max_tokens is None else body.max_tokens,  # the legacy endpoint's default
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        n=body.n or 1, seed=body.seed, stop=_stops(body.stop),
        presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
        logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0,
    ).validate(max_top_logprobs=5)


def chat_messages(body: ChatCompletionRequest) -> list[dict]:
    """Messages as the chat template wants them: text content, developer → system."""
    out = []
    for i, m in enumerate(body.messages):
        content = m.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    parts.append(part["text"])
                else:
                    raise InvalidRequest(f"messages[{i}].content: only text parts are supported, got "
                                         f"{part.get('type')!r}", param=f"messages[{i}].content")
            content = "".join(parts)
        role = {"developer": "system"}.get(m.role, m.role)
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidRequest(f"messages[{i}].role must be system, developer, user, assistant or tool, "
                                 f"not {m.role!r}", param=f"messages[{i}].role")
        msg = {"role": role, "content": content or ""}
        if m.name:
            msg["name"] = m.name
        out.append(msg)
    return out


# --- responses ---------------------------------------------------------------------------

def _chat_lp(lps: list[TokenLogprob] | None) -> dict | None:
    if lps is None:
        return None
    return {"content": [{"token": lp.token, "bytes": lp.bytes, "logprob": lp.logprob,
                         "top_logprobs": [{"token": t, "bytes": b, "logprob": v} for t, b, v in lp.top]}
                        for lp in lps], "refusal": None}


def _completion_lp(lps: list[TokenLogprob] | None, offset: int) -> dict | None:
    if lps is None:
        return None
    offsets, pos = [], offset
    for lp in lps:
        offsets.append(pos)
        pos += len(lp.token)
    return {"tokens": [lp.token for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{t: v for t, _b, v in lp.top} for lp in lps], "text_offset": offsets}


class Answer:
    """Builds one endpoint's response (whole or streamed) from the engine's events."""

    def __init__(self, kind: str, model: str, n: int, include_usage: bool, logprobs: bool, echo: list[str] | None = None):
        from tunery.ids import random_token

        self.kind = kind  # "chat" | "text"
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + random_token(29)
        self.created = int(time.time())
        self.model = model
        self.n = n
        self.include_usage = include_usage
        self.logprobs = logprobs
        self.echo = echo  # completions: prompt text per prompt, prepended to its choices

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.system_fingerprint}

    system_fingerprint = SYSTEM_FINGERPRINT

    async def whole(self, gens: list[Generation]) -> dict:
        results = await asyncio.gather(*(g.aresult() for g in gens))
        choices = []
        prompt_tokens = completion_tokens = 0
        for p, (cs, usage) in enumerate(results):
            prompt_tokens += usage.prompt_tokens
            completion_tokens += usage.completion_tokens
            for c in cs:
                idx = p * self.n + c.index
                if self.kind == "chat":
                    choices.append({"index": idx, "message": {"role": "assistant", "content": c.text, "refusal": None,
                                                              "annotations": []},
                                    "logprobs": _chat_lp(c.logprobs) if self.logprobs else None,
                                    "finish_reason": c.finish_reason})
                else:
                    prefix = self.echo[p] if self.echo else ""
                    choices.append({"index": idx, "text": prefix + c.text,
                                    "logprobs": _completion_lp(c.logprobs, len(prefix)) if self.logprobs else None,
                                    "finish_reason": c.finish_reason})
        choices.sort(key=lambda c: c["index"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        obj = self._base("chat.completion" if self.kind == "chat" else "text_completion")
        obj.update(choices=choices, usage=usage)
        if self.kind == "chat":
            obj["service_tier"] = "default"
        return obj

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        obj = self._base("chat.completion.chunk" if self.kind == "chat" else "text_completion")
        obj["choices"] = choices
        if self.include_usage:
            obj["usage"] = usage
        return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def stream(self, gens: list[Generation]) -> AsyncIterator[str]:
        """Server-sent events: chunks as the SDK parses them, an error object on failure, then [DONE]."""
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(p: int, g: Generation):
            async for ev in g.aiter():
                await merged.put((p, ev))

        tasks = [asyncio.create_task(pump(p, g)) for p, g in enumerate(gens)]
        offsets: dict[int, int] = {}
        prompt_tokens = completion_tokens = 0
        remaining = len(gens)
        try:
            if self.kind == "chat":
                yield self._chunk([{"index": p * self.n + i, "delta": {"role": "assistant", "content": "",
                                                                       "refusal": None},
                                    "logprobs": None, "finish_reason": None}
                                   for p in range(len(gens)) for i in range(self.n)])
            elif self.echo:
                yield self._chunk([{"index": p * self.n + i, "text": self.echo[p], "logprobs": None,
                                    "finish_reason": None} for p in range(len(gens)) for i in range(self.n)])
            while remaining:
                p, ev = await merged.get()
                if isinstance(ev, Delta):
                    idx = p * self.n + ev.index
                    if self.kind == "chat":
                        yield self._chunk([{"index": idx, "delta": {"content": ev.text},
                                            "logprobs": _chat_lp(ev.logprobs) if self.logprobs else None,
                                            "finish_reason": None}])
                    else:
                        start = offsets.get(idx, len(self.echo[p]) if self.echo else 0)
                        offsets[idx] = start + len(ev.text)
                        yield self._chunk([{"index": idx, "text": ev.text,
                                            "logprobs": _completion_lp(ev.logprobs, start) if self.logprobs else None,
                                            "finish_reason": None}])
                elif isinstance(ev, Finished):
                    idx = p * self.n + ev.index
                    if self.kind == "chat":
                        yield self._chunk([{"index": idx, "delta": {}, "logprobs": None,
                                            "finish_reason": ev.finish_reason}])
                    else:
                        yield self._chunk([{"index": idx, "text": "", "logprobs": None,
                                            "finish_reason": ev.finish_reason}])
                elif isinstance(ev, Done):
                    prompt_tokens += ev.usage.prompt_tokens
                    completion_tokens += ev.usage.completion_tokens
                    remaining -= 1
                elif isinstance(ev, Failed):
                    err = ev.error
                    body = err.to_body() if isinstance(err, TuneryError) else {
                        "error": {"message": f"generation failed ({type(err).__name__})", "type": "server_error",
                                  "param": None, "code": "internal_error"}}
                    yield f"data: {json.dumps(body)}\n\n"
                    return
            if self.include_usage:
                yield self._chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                       "total_tokens": prompt_tokens + completion_tokens})
            yield "data: [DONE]\n\n"
        finally:
            for g in gens:
                g.cancel()
            for t in tasks:
                t.cancel()
