"""/v1/fine_tuning/jobs: create (every check up front), list, retrieve, cancel, pause, resume,
events and checkpoints. Training itself happens in the worker."""

from __future__ import annotations

from typing import Any, Literal, Union

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema
from typing_extensions import Annotated

from tunery.api.deps import (
    ERROR_RESPONSES, CursorPage, add_method_not_allowed, current_org, get_store, path_models_allowed,
)
from tunery.errors import InvalidRequest
from tunery.store import Organization, Store
from tunery.store import jobs as store_jobs
from tunery.store.wire import checkpoint_object, event_object, job_object, list_object

router = APIRouter(tags=["fine-tuning"], responses=ERROR_RESPONSES)

Auto = Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Typed for the schema only: the store checks values and ranges with messages naming the field.
AutoInt = Annotated[Any, WithJsonSchema({"anyOf": [{"type": "string", "enum": ["auto"]}, {"type": "integer"}]})]
AutoFloat = Annotated[Any, WithJsonSchema({"anyOf": [{"type": "string", "enum": ["auto"]}, {"type": "number"}]})]


class Hyperparameters(_Strict):
    n_epochs: AutoInt = None
    batch_size: AutoInt = None
    learning_rate_multiplier: AutoFloat = None


class DpoHyperparameters(Hyperparameters):
    beta: AutoFloat = None


class SupervisedMethod(_Strict):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class WandbIntegration(BaseModel):
    project: str = Field(max_length=512)
    entity: str | None = Field(None, max_length=512)
    name: str | None = Field(None, max_length=512)
    tags: list[str] | None = Field(None, max_length=50)


class Integration(_Strict):
    type: Literal["wandb"]
    wandb: WandbIntegration


class JobCreate(_Strict):
    """POST /v1/fine_tuning/jobs (the SDK's JobCreateParams)."""

    model: str = Field(min_length=1, max_length=1024,
                       description="A base model, alias (gpt-4o-mini, …) or local directory")
    training_file: str = Field(min_length=1, max_length=256)
    validation_file: str | None = Field(None, max_length=256)
    suffix: str | None = Field(None, max_length=64)
    seed: StrictInt | None = None
    hyperparameters: Hyperparameters | None = Field(None, description="Deprecated; use method")
    method: Method | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = Field(None, max_length=8)


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    n_epochs: Union[Auto, int, None] = None
    batch_size: Union[Auto, int, None] = None
    learning_rate_multiplier: Union[Auto, float, None] = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    user_provided_suffix: str | None = None


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] | None = None
    data: Any = None


class CheckpointMetrics(BaseModel):
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


_JOB_ID = Path(..., max_length=256)


@router.post("/fine_tuning/jobs", response_model=FineTuningJob, summary="Create a fine-tuning job")
def create_job(body: JobCreate, request: Request, store: Store = Depends(get_store),
               org: Organization = Depends(current_org)):
    """Checks the model, files, suffix, seed, method and hyperparameters now, answering 400 with the bad
    field in `param`; then the job goes validating_files → queued for the worker."""
    job = store_jobs.create_job(store, org, _job_request(body), allow_paths=path_models_allowed(request, store))
    return job_object(job, org)


def _job_request(body: JobCreate) -> store_jobs.JobRequest:
    """The fields as the SDK sent them; a hyperparameter sent as null counts as not sent."""
    raw = body.model_dump(exclude_unset=True)
    req = store_jobs.JobRequest(**{k: raw.get(k) for k in (
        "model", "training_file", "validation_file", "suffix", "seed", "hyperparameters", "method",
        "metadata", "integrations")})
    if req.hyperparameters is not None:
        req.hyperparameters = {k: v for k, v in req.hyperparameters.items() if v is not None}
    if isinstance(req.method, dict):
        for kind in ("supervised", "dpo"):
            inner = req.method.get(kind)
            if isinstance(inner, dict) and isinstance(inner.get("hyperparameters"), dict):
                inner["hyperparameters"] = {k: v for k, v in inner["hyperparameters"].items() if v is not None}
    return req


def _metadata_filter(request: Request) -> tuple[dict[str, str] | None, bool]:
    out: dict[str, str] = {}
    no_metadata = False
    for key, value in request.query_params.multi_items():
        if key == "metadata":
            if value != "null":
                raise InvalidRequest("filter with metadata[key]=value, or metadata=null for jobs without metadata",
                                     param="metadata")
            no_metadata = True
        elif key.startswith("metadata[") and key.endswith("]"):
            name = key[len("metadata["):-1]
            if not name or len(name) > 64 or len(value) > 512:
                raise InvalidRequest("metadata filter keys are at most 64 and values 512 characters",
                                     param="metadata")
            out[name] = value
    return (out or None), no_metadata


@router.get("/fine_tuning/jobs", response_model=CursorPage[FineTuningJob], summary="List fine-tuning jobs")
def list_jobs(request: Request, store: Store = Depends(get_store), org: Organization = Depends(current_org),
              after: str | None = Query(None, max_length=256), limit: int = Query(20, ge=1, le=1000)):
    """Newest first; filter with metadata[key]=value."""
    metadata, no_metadata = _metadata_filter(request)
    page = store_jobs.list_jobs(store, org, after=after, limit=limit, metadata=metadata, no_metadata=no_metadata)
    return list_object([job_object(r, org) for r in page.data], page.has_more)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}", response_model=FineTuningJob,
            summary="Retrieve a fine-tuning job")
def retrieve_job(fine_tuning_job_id: str = _JOB_ID, store: Store = Depends(get_store),
                 org: Organization = Depends(current_org)):
    return job_object(store_jobs.get_job(store, org, fine_tuning_job_id), org)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response_model=FineTuningJob,
             summary="Cancel a fine-tuning job")
def cancel_job(fine_tuning_job_id: str = _JOB_ID, store: Store = Depends(get_store),
               org: Organization = Depends(current_org)):
    """Any job not yet finished becomes cancelled at once (the worker stops at its next step)."""
    return job_object(store_jobs.cancel_job(store, org, fine_tuning_job_id), org)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", response_model=FineTuningJob,
             summary="Pause a fine-tuning job")
def pause_job(fine_tuning_job_id: str = _JOB_ID, store: Store = Depends(get_store),
              org: Organization = Depends(current_org)):
    """A queued or running job becomes paused; the worker saves its state to resume exactly."""
    return job_object(store_jobs.pause_job(store, org, fine_tuning_job_id), org)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", response_model=FineTuningJob,
             summary="Resume a paused fine-tuning job")
def resume_job(fine_tuning_job_id: str = _JOB_ID, store: Store = Depends(get_store),
               org: Organization = Depends(current_org)):
    return job_object(store_jobs.resume_job(store, org, fine_tuning_job_id), org)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", response_model=CursorPage[FineTuningJobEvent],
            summary="List a fine-tuning job's events")
def list_events(fine_tuning_job_id: str = _JOB_ID, store: Store = Depends(get_store),
                org: Organization = Depends(current_org), after: str | None = Query(None, max_length=256),
                limit: int = Query(20, ge=1, le=1000)):
    """Newest first: lifecycle messages and metrics events (data holds the trainer's numbers)."""
    page = store_jobs.list_events(store, org, fine_tuning_job_id, after=after, limit=limit)
    return list_object([event_object(r) for r in page.data], page.has_more)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
            response_model=CursorPage[FineTuningJobCheckpoint], summary="List a fine-tuning job's checkpoints")
def list_checkpoints(fine_tuning_job_id: str = _JOB_ID, store: Store = Depends(get_store),
                     org: Organization = Depends(current_org), after: str | None = Query(None, max_length=256),
                     limit: int = Query(10, ge=1, le=1000)):
    page = store_jobs.list_checkpoints(store, org, fine_tuning_job_id, after=after, limit=limit)
    return list_object([checkpoint_object(r) for r in page.data], page.has_more)


add_method_not_allowed(router, "/fine_tuning/jobs", ["GET", "POST"])
add_method_not_allowed(router, "/fine_tuning/jobs/{fine_tuning_job_id}", ["GET"])
for _action in ("cancel", "pause", "resume"):
    add_method_not_allowed(router, f"/fine_tuning/jobs/{{fine_tuning_job_id}}/{_action}", ["POST"])
for _listing in ("events", "checkpoints"):
    add_method_not_allowed(router, f"/fine_tuning/jobs/{{fine_tuning_job_id}}/{_listing}", ["GET"])
