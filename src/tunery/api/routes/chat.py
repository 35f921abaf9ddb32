"""/v1/chat/completions: chat with base, fine-tuned and checkpoint models (whole or streamed as SSE)."""

from __future__ import annotations

import asyncio
import functools

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from tunery.api.deps import ERROR_RESPONSES, check_choices, current_org, get_store, path_models_allowed
from tunery.api.guard import bypassed, guarded_chat
from tunery.inference.router import get_engine
from tunery.inference.wire import Answer, ChatCompletionRequest, chat_messages, chat_params
from tunery.store import Organization, Store, find_servable_model
from tunery.store.guards import find_guard

router = APIRouter(tags=["chat"], responses={
    **ERROR_RESPONSES,
    429: {"model": ERROR_RESPONSES[400]["model"], "description": "Too many requests waiting; retry shortly"}})

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions", summary="Create a chat completion", response_model=None,
             responses={200: {"description": "A chat.completion object, or with stream=true server-sent "
                                             "chat.completion.chunk events ending with data: [DONE]",
                              "content": {"application/json": {}, "text/event-stream": {}}}})
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 store: Store = Depends(get_store), org: Organization = Depends(current_org)):
    params = chat_params(body)
    messages = chat_messages(body)
    check_choices(params.n, get_engine(request.app))
    answer = functools.partial(_answer, request, store, org, body, messages, params)
    # A model bound to a topic classifier answers through its guard (tunery.api.guard; issue #15).
    guard = None if bypassed(body) else await run_in_threadpool(find_guard, store, org, body.model)
    if guard is not None:
        return await guarded_chat(request, store, org, guard, body, messages, answer)
    return await answer(True) if body.stream else JSONResponse(await answer(False))


async def _answer(request: Request, store: Store, org: Organization, body: ChatCompletionRequest, messages,
                  params, stream: bool):
    """The model's own answer: a StreamingResponse, or the whole chat.completion as a dict."""
    engine = get_engine(request.app)
    servable = await run_in_threadpool(find_servable_model, store, org, body.model,
                                       allow_paths=path_models_allowed(request, store))
    handle = await run_in_threadpool(engine.prepare, servable)
    ids = await run_in_threadpool(handle.encode_chat, messages)
    gen = await run_in_threadpool(engine.submit, handle, ids, params, asyncio.get_running_loop(), "messages")
    include_usage = bool(stream and body.stream_options and body.stream_options.include_usage)
    answer = Answer("chat", body.model, params.n, include_usage, params.logprobs)
    if stream:
        return StreamingResponse(answer.stream([gen]), media_type="text/event-stream", headers=_SSE_HEADERS)
    return await answer.whole([gen])
