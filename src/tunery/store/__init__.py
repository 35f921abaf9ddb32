"""The store: SQLAlchemy tables, migrations, blobs, and plain functions (no HTTP).

    store = open_store(settings)            # migrated on first open, one per process
    with store.session() as s: ...          # a write transaction (SQLite: BEGIN IMMEDIATE)
    with store.read() as s: ...             # a read transaction

Heavy libraries (torch, transformers) are never imported here.
"""

from tunery.store.common import Page
from tunery.store.db import Store, make_engine, now, open_store, run_migrations
from tunery.store.files import (
    commit_upload, create_file, delete_file, file_content_path, get_file, list_files, sweep_orphans,
    validate_upload, write_blob,
)
from tunery.store.jobs import (
    JobRequest, add_event, append_event, cancel_job, create_job, get_job, list_checkpoints, list_events,
    list_jobs, pause_job, recover_validating_jobs, resume_job,
)
from tunery.store.models import (
    ServableModel, delete_model, describe_model, find_servable_model, get_fine_tuned_model,
    list_fine_tuned_models, register_model,
)
from tunery.store.orgs import (
    auth_required, create_api_key, ensure_org, get_org, get_org_by_id, list_api_keys, org_for_key,
    revoke_api_key,
)
from tunery.store.tables import (
    ApiKey, File, FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent, Model, Organization,
)

__all__ = [
    "Page", "Store", "make_engine", "now", "open_store", "run_migrations",
    "commit_upload", "create_file", "write_blob", "delete_file", "file_content_path", "get_file", "list_files",
    "sweep_orphans", "validate_upload",
    "JobRequest", "add_event", "append_event", "cancel_job", "create_job", "get_job", "list_checkpoints",
    "list_events", "list_jobs", "pause_job", "recover_validating_jobs", "resume_job",
    "ServableModel", "delete_model", "describe_model", "find_servable_model", "get_fine_tuned_model",
    "list_fine_tuned_models", "register_model",
    "auth_required", "create_api_key", "ensure_org", "get_org", "get_org_by_id", "list_api_keys",
    "org_for_key", "revoke_api_key",
    "ApiKey", "File", "FineTuningJob", "FineTuningJobCheckpoint", "FineTuningJobEvent", "Model", "Organization",
]
