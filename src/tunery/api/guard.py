"""The guard at serve time (issue #15): before a guarded chat model answers, its classifier is asked about the
last user message; P(positive label) below the threshold → the refusal, as an ordinary chat completion
(streamed too), so the official SDK needs no change. With check_answer the produced answer is classified as
well (the answer is generated whole first, then sent or replaced; a stream then arrives in one piece).

The score is the classifier's probability of its positive label as the first completion token (top-5
logprobs; label variants such as " yes"/"yes"/" Yes" are summed). Every verdict is recorded
(store.guards.record_decision) and counted in GET /v1/tunery/guards/{model}. A request may carry
`"tunery_guard": "off"` in its body to skip the guard (what `tunery eval --compare-guard` does to measure
the bot without it); anyone holding the organization's key could remove the guard anyway.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Awaitable, Callable

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from tunery.store.guards import record_decision

TOP_K = 20
"""Label tokens outside the top 20 count as probability 0 (the engine reports top-k, not a chosen token)."""
MAX_CLASSIFIED_CHARS = 4000
"""The classifier sees the last this-many characters of a long question (its context is finite)."""


def bypassed(body) -> bool:
    extra = getattr(body, "model_extra", None) or {}
    return str(extra.get("tunery_guard", "")).lower() in ("off", "false", "0", "none")


def label_probability(top: list[tuple[str, list[int], float]], label: str) -> float:
    """P(label) from a first token's top logprobs: variants differing only in case/leading space summed."""
    want = label.strip().lower()
    return min(1.0, sum(math.exp(lp) for tok, _b, lp in top if tok.strip().lower() == want))


async def classify(request, store, org, guard, text: str) -> float:
    """P(positive label) for one classifier prompt, through the same engine entry as /v1/completions."""
    from tunery.inference.generation import SamplingParams
    from tunery.inference.router import get_engine
    from tunery.api.deps import path_models_allowed
    from tunery.store import find_servable_model

    # The same name rules as the request's own model: with keys, no path can stand in for a classifier.
    servable = await run_in_threadpool(find_servable_model, store, org, guard.classifier,
                                       allow_paths=path_models_allowed(request, store))
    engine = get_engine(request.app)
    handle = await run_in_threadpool(engine.prepare, servable)
    ids = await run_in_threadpool(handle.encode, text)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=TOP_K).validate()
    gen = await run_in_threadpool(engine.submit, handle, ids, params, asyncio.get_running_loop(), "prompt")
    choices, _usage = await gen.aresult()
    lps = choices[0].logprobs if choices else None
    return label_probability(lps[0].top if lps else [], guard.positive_label)


def _prompt(guard, question: str, answer: str | None = None) -> str:
    from tunery.data.discriminator import classifier_prompt

    template = guard.answer_template if answer is not None else guard.prompt_template
    return classifier_prompt(question[-MAX_CLASSIFIED_CHARS:], guard.separator, template,
                             answer=(answer or "")[:MAX_CLASSIFIED_CHARS])


def _last_user(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return m.get("content") or ""
    return ""


async def _decide(request, store, org, guard, stage: str, prompt: str, shown: str) -> tuple[bool, float]:
    score = await classify(request, store, org, guard, prompt)
    allowed = score >= guard.threshold
    await run_in_threadpool(record_decision, store, org, guard.model, stage=stage, score=score, allowed=allowed,
                            text=shown)
    return allowed, score


def _refusal(body, guard, stage: str, score: float):
    """The refusal as the chat.completion (or chunk stream) the SDK expects."""
    from tunery.ids import random_token
    from tunery.inference.wire import SYSTEM_FINGERPRINT

    n = body.n or 1
    base = {"id": "chatcmpl-" + random_token(29), "created": int(time.time()), "model": body.model,
            "system_fingerprint": SYSTEM_FINGERPRINT}
    info = {"allowed": False, "stage": stage, "score": round(score, 6), "threshold": guard.threshold}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not body.stream:
        choices = [{"index": i, "message": {"role": "assistant", "content": guard.refusal, "refusal": None,
                                            "annotations": []}, "logprobs": None, "finish_reason": "stop"}
                   for i in range(n)]
        return JSONResponse({**base, "object": "chat.completion", "choices": choices, "usage": usage,
                             "service_tier": "default", "tunery_guard": info})
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices, extra=None) -> str:
        obj = {**base, "object": "chat.completion.chunk", "choices": choices, **(extra or {})}
        if include_usage:
            obj.setdefault("usage", None)
        return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def events():
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None,
                      "finish_reason": None} for i in range(n)], {"tunery_guard": info})
        for i in range(n):
            yield chunk([{"index": i, "delta": {"content": guard.refusal}, "logprobs": None, "finish_reason": None}])
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
        if include_usage:
            yield chunk([], {"usage": usage})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _as_stream(obj: dict, include_usage: bool) -> StreamingResponse:
    """A whole chat.completion replayed as one chunk per choice (check_answer with stream=true)."""
    base = {k: obj[k] for k in ("id", "created", "model", "system_fingerprint")}

    def chunk(choices, usage=None) -> str:
        o = {**base, "object": "chat.completion.chunk", "choices": choices}
        if include_usage:
            o["usage"] = usage
        return f"data: {json.dumps(o, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def events():
        yield chunk([{"index": c["index"], "delta": {"role": "assistant", "content": "", "refusal": None},
                      "logprobs": None, "finish_reason": None} for c in obj["choices"]])
        for c in obj["choices"]:
            yield chunk([{"index": c["index"], "delta": {"content": c["message"]["content"]},
                          "logprobs": c.get("logprobs"), "finish_reason": None}])
            yield chunk([{"index": c["index"], "delta": {}, "logprobs": None, "finish_reason": c["finish_reason"]}])
        if include_usage:
            yield chunk([], obj["usage"])
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def guarded_chat(request, store, org, guard, body, messages: list[dict],
                       answer: Callable[[bool], Awaitable]) -> object:
    """Answer a chat request to a guarded model. `answer(stream)` is the route's normal path: with
    stream=False it returns the chat.completion dict, with stream=True the streaming response."""
    question = _last_user(messages)
    allowed, score = await _decide(request, store, org, guard, "question", _prompt(guard, question), question)
    if not allowed:
        return _refusal(body, guard, "question", score)
    if not guard.check_answer:
        if body.stream:
            return await answer(True)
        obj = await answer(False)
        obj["tunery_guard"] = {"allowed": True, "stage": "question", "score": round(score, 6),
                               "threshold": guard.threshold}
        return JSONResponse(obj)
    obj = await answer(False)
    texts = [c["message"]["content"] or "" for c in obj["choices"]]
    for text in texts[:1]:  # the first choice stands for all: one classifier call per request
        ok, a_score = await _decide(request, store, org, guard, "answer", _prompt(guard, question, text), text)
        if not ok:
            return _refusal(body, guard, "answer", a_score)
    obj["tunery_guard"] = {"allowed": True, "stage": "answer", "score": round(score, 6),
                           "threshold": guard.threshold}
    if body.stream:
        return _as_stream(obj, bool(body.stream_options and body.stream_options.include_usage))
    return JSONResponse(obj)
