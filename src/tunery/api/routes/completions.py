"""/v1/completions: the legacy text-completion endpoint (prompt in, text out; whole or streamed)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from tunery.api.deps import ERROR_RESPONSES, check_choices, current_org, get_store, path_models_allowed
from tunery.errors import InvalidRequest
from tunery.inference.router import get_engine
from tunery.inference.wire import Answer, CompletionRequest, completion_params
from tunery.store import Organization, Store, find_servable_model

router = APIRouter(tags=["completions"], responses={
    **ERROR_RESPONSES,
    429: {"model": ERROR_RESPONSES[400]["model"], "description": "Too many requests waiting; retry shortly"}})


def _prompts(prompt) -> list[str | list[int]]:
    """The four prompt forms (string, strings, token ids, lists of token ids) as a list of prompts."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


@router.post("/completions", summary="Create a completion", response_model=None,
             responses={200: {"description": "A text_completion object, or with stream=true server-sent "
                                             "text_completion events ending with data: [DONE]",
                              "content": {"application/json": {}, "text/event-stream": {}}}})
async def create_completion(body: CompletionRequest, request: Request,
                            store: Store = Depends(get_store), org: Organization = Depends(current_org)):
    params = completion_params(body)
    prompts = _prompts(body.prompt)
    engine = get_engine(request.app)
    check_choices(params.n, engine, n_prompts=len(prompts))
    handle = await _prepare(request, store, org, engine, body.model)
    encoded = await run_in_threadpool(lambda: [_encode(handle, p) for p in prompts])
    gens = await _submit_all(engine, handle, encoded, params)
    echo = [p if isinstance(p, str) else handle.tokenizer.decode(p) for p in prompts] if body.echo else None
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    answer = Answer("text", body.model, params.n, include_usage, params.logprobs, echo=echo)
    if body.stream:
        return StreamingResponse(answer.stream(gens), media_type="text/event-stream", headers=_SSE_HEADERS)
    return JSONResponse(await answer.whole(gens))


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _prepare(request: Request, store: Store, org: Organization, engine, model: str):
    """The engine's handle on the requested model (loaded if it is not yet)."""
    servable = await run_in_threadpool(find_servable_model, store, org, model,
                                       allow_paths=path_models_allowed(request, store))
    return await run_in_threadpool(engine.prepare, servable)


def _encode(handle, prompt) -> list[int]:
    """A prompt's token ids: a string is tokenized, token ids are checked against the model's vocabulary."""
    if isinstance(prompt, str):
        return handle.encode(prompt)
    vocab = handle.backend.vocab_size
    if any(not isinstance(t, int) or not 0 <= t < vocab for t in prompt):
        raise InvalidRequest(f"prompt token ids must be integers in [0, {vocab})", param="prompt")
    return list(prompt)


async def _submit_all(engine, handle, encoded: list[list[int]], params) -> list:
    """One generation per prompt; if one cannot be queued, the ones already queued are cancelled."""
    loop = asyncio.get_running_loop()
    gens = []
    try:
        for ids in encoded:
            gens.append(await run_in_threadpool(engine.submit, handle, ids, params, loop, "prompt"))
    except Exception:
        for g in gens:
            g.cancel()
        raise
    return gens
