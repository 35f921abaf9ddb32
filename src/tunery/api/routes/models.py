"""/v1/models: base models and aliases plus the organization's fine-tuned models (not checkpoints,
as OpenAI); retrieve; delete fine-tuned models."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel

from tunery.api.deps import (
    ERROR_RESPONSES, ListPage, add_method_not_allowed, current_org, get_store, path_models_allowed,
)
from tunery.inference.router import unload_models, with_backend
from tunery.store import Organization, Store
from tunery.store import models as store_models
from tunery.store.wire import list_object, model_object

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    backend: str | None = None  # tunery's extra: the inference backend that serves it (llamacpp, torch)


class ModelDeleted(BaseModel):
    id: str
    object: str = "model"
    deleted: bool


@router.get("/models", response_model=ListPage[Model], summary="List models")
def list_models(request: Request, store: Store = Depends(get_store), org: Organization = Depends(current_org)):
    return list_object([with_backend(request.app, store, org, model_object(info))
                        for info in store_models.available_models(store, org)])


_MODEL = Path(..., max_length=2048)


@router.get("/models/{model:path}", response_model=Model, summary="Retrieve a model")
def retrieve_model(request: Request, model: str = _MODEL, store: Store = Depends(get_store),
                   org: Organization = Depends(current_org)):
    """Base models, aliases, fine-tuned models and their checkpoints (ft:…:ckpt-step-N)."""
    allow = path_models_allowed(request, store)
    info = store_models.describe_model(store, org, model, allow_paths=allow)
    return with_backend(request.app, store, org, model_object(info), allow_paths=allow)


@router.delete("/models/{model:path}", response_model=ModelDeleted, summary="Delete a fine-tuned model")
def delete_model(request: Request, model: str = _MODEL, store: Store = Depends(get_store),
                 org: Organization = Depends(current_org)):
    """Fine-tuned models only (403 for base models). The model stops answering at once."""
    names = store_models.delete_model(store, org, model, allow_paths=path_models_allowed(request, store))
    unload_models(request.app, names)
    return {"id": model, "object": "model", "deleted": True}


add_method_not_allowed(router, "/models", ["GET"])
add_method_not_allowed(router, "/models/{model:path}", ["GET", "DELETE"])
