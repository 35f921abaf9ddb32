"""/v1/tunery/guards: bind a chat model to a topic classifier (tunery's own resource, beyond OpenAI's API).

    POST   /v1/tunery/guards/{model}   set or replace the guard (body: classifier, threshold, refusal, …)
    GET    /v1/tunery/guards/{model}   the guard and its decision counts
    DELETE /v1/tunery/guards/{model}   remove it
    GET    /v1/tunery/guards           every guard of the organization
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from tunery.api.deps import ERROR_RESPONSES, add_method_not_allowed, current_org, get_store, path_models_allowed
from tunery.store import Organization, Store
from tunery.store import guards as G

router = APIRouter(prefix="/tunery/guards", tags=["guards (tunery)"], responses=ERROR_RESPONSES)


class GuardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classifier: str = Field(..., min_length=1, max_length=1200,
                            description='A completions model answering " yes"/" no" (a discriminator fine-tune)')
    threshold: float = Field(G.DEFAULT_THRESHOLD, ge=0, le=1,
                             description="P(positive label) below this → the refusal")
    refusal: str = Field(G.DEFAULT_REFUSAL, min_length=1, max_length=4000)
    separator: str = Field(G.DEFAULT_SEPARATOR, min_length=1, max_length=200,
                           description="Ends every classifier prompt, as in its training data")
    prompt_template: str = Field(G.DEFAULT_TEMPLATE, max_length=2000, description="Contains {question}")
    positive_label: str = Field(G.DEFAULT_POSITIVE, min_length=1, max_length=64)
    check_answer: bool = Field(False, description="Also classify the produced answer")
    answer_template: str = Field(G.DEFAULT_ANSWER_TEMPLATE, max_length=2000, description="Contains {answer}")


@router.get("", summary="List guards")
async def list_guards(store: Store = Depends(get_store), org: Organization = Depends(current_org)) -> dict:
    def run():
        return [G.guard_object(store, org, g) for g in G.list_guards(store, org)]
    return {"object": "list", "data": await run_in_threadpool(run), "has_more": False}


@router.post("/{model:path}", summary="Set a model's guard")
async def set_guard(model: str, body: GuardRequest, request: Request, store: Store = Depends(get_store),
                    org: Organization = Depends(current_org)) -> dict:
    allow_paths = path_models_allowed(request, store)

    def run():
        row = G.set_guard(store, org, model, G.GuardSpec(**body.model_dump()), allow_paths=allow_paths)
        return G.guard_object(store, org, row)
    return await run_in_threadpool(run)


@router.get("/{model:path}", summary="Retrieve a model's guard and its decision counts")
async def get_guard(model: str, store: Store = Depends(get_store), org: Organization = Depends(current_org)) -> dict:
    return await run_in_threadpool(lambda: G.guard_object(store, org, G.get_guard(store, org, model)))


@router.delete("/{model:path}", summary="Remove a model's guard")
async def delete_guard(model: str, store: Store = Depends(get_store),
                       org: Organization = Depends(current_org)) -> dict:
    await run_in_threadpool(G.delete_guard, store, org, model)
    return {"object": "tunery.guard.deleted", "model": model, "deleted": True}


add_method_not_allowed(router, "", ["GET"])
add_method_not_allowed(router, "/{model:path}", ["GET", "POST", "DELETE"])
