"""The store on SQLite and PostgreSQL: migrations, files, job transitions, events, models, keys."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, update

from test_api_support import chat_jsonl, preference_jsonl
from tunery.errors import InvalidRequest, ModelNotFound, NotFound, PermissionDenied
from tunery.store import (
    JobRequest, Store, add_event, auth_required, cancel_job, create_api_key, create_file, create_job, delete_file,
    delete_model, ensure_org, file_content_path, find_servable_model, get_file, get_job, list_api_keys,
    list_events, list_files, list_fine_tuned_models, list_jobs, org_for_key, pause_job, recover_validating_jobs,
    register_model, resume_job, revoke_api_key, sweep_orphans,
)
from tunery.store.files import commit_upload, new_upload_tempfile
from tunery.store.tables import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent

pytest_plugins = ["test_api_support"]  # the server, store and PostgreSQL fixtures


def _job(store, org, **kw):
    f = create_file(store, org, filename="train.jsonl", purpose="fine-tune", content=chat_jsonl())
    assert f.status == "processed", f.status_details
    return create_job(store, org, JobRequest(model="gpt-4o-mini", training_file=f.id, **kw))


def test_migrations_create_every_table_and_are_idempotent(store):
    names = set(inspect(store.engine).get_table_names())
    assert {"organizations", "api_keys", "files", "fine_tuning_jobs", "fine_tuning_job_events",
            "fine_tuning_job_checkpoints", "models", "alembic_version"} <= names
    cols = {c["name"] for c in inspect(store.engine).get_columns("fine_tuning_jobs")}
    assert {"attempts", "lease_owner", "lease_expires_at", "output_dir", "resolved_hyperparameters",
            "metadata", "seed"} <= cols
    again = Store(store.settings)  # a second process starting: migrations are a no-op
    assert set(inspect(again.engine).get_table_names()) == names
    again.close()


def test_sqlite_runs_in_wal_mode(tunery_home):
    from tunery.settings import Settings

    s = Store(Settings.from_env())
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    s.close()


def test_files_roundtrip_pagination_and_org_isolation(store):
    a, b = ensure_org(store, "a"), ensure_org(store, "b")
    ids = [create_file(store, a, filename=f"f{i}.txt", purpose="user_data", content=b"x" * i).id for i in range(5)]
    other = create_file(store, b, filename="b.txt", purpose="user_data", content=b"b")
    page = list_files(store, a, limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2] and page.has_more
    page2 = list_files(store, a, limit=2, after=page.data[-1].id)
    assert [f.id for f in page2.data] == ids[::-1][2:4]
    assert [f.id for f in list_files(store, a, order="asc").data] == ids
    assert list_files(store, a, purpose="fine-tune").data == []
    with pytest.raises(NotFound):
        get_file(store, a, other.id)
    with pytest.raises(InvalidRequest):
        list_files(store, a, after=other.id)  # a cursor from another org's list
    path = file_content_path(store, a, ids[3])
    assert path.read_bytes() == b"xxx" and path.name == ids[3]
    delete_file(store, a, ids[3])
    assert not path.exists()
    with pytest.raises(NotFound):
        delete_file(store, a, ids[3])


def test_fine_tune_file_is_validated_on_create(store):
    org = ensure_org(store, "personal")
    good = create_file(store, org, filename="good.jsonl", purpose="fine-tune", content=chat_jsonl())
    assert good.status == "processed" and good.validation["format"] == "chat"
    bad = create_file(store, org, filename="bad.jsonl", purpose="fine-tune", content=b'{"messages": 3}\nnope\n')
    assert bad.status == "error"
    assert "line" in bad.status_details and "bad.jsonl" in bad.status_details and ".upload-" not in bad.status_details


def test_failed_commit_leaves_no_blob_and_no_row(store):
    fd, tmp = new_upload_tempfile(store)
    with open(fd, "wb") as f:
        f.write(b"data")
    before = set(store.files_dir.iterdir())
    with pytest.raises(Exception):  # foreign key: the org does not exist, so the insert fails
        commit_upload(store, "org-missing", tmp, filename="x", purpose="user_data", nbytes=4)
    assert set(store.files_dir.iterdir()) == before - {tmp}
    assert not tmp.exists()
    org = ensure_org(store, "personal")
    assert list_files(store, org).data == []


def test_sweep_orphans_removes_crash_leftovers_only(store):
    org = ensure_org(store, "personal")
    kept = create_file(store, org, filename="k", purpose="user_data", content=b"k")
    orphan = store.files_dir / "file-orphan000000000000000"
    orphan.write_bytes(b"o")
    stale_tmp = store.files_dir / ".upload-stale.tmp"
    stale_tmp.write_bytes(b"t")
    assert sweep_orphans(store, min_age_seconds=0) == 2
    assert Path(kept.path).exists() and not orphan.exists() and not stale_tmp.exists()


def test_job_create_and_state_machine(store):
    org = ensure_org(store, "personal")
    job = _job(store, org, suffix="s1", metadata={"team": "x"})
    assert job.status == "queued" and job.base_model == "smollm2-135m-instruct"
    assert 0 <= job.seed < 2**31 and job.attempts == 0 and job.output_dir
    assert job.hyperparameters == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    msgs = [e.message for e in list_events(store, org, job.id).data]
    assert msgs[0] == "Files validated, moving job to queued state" and msgs[-1].startswith("Created fine-tuning job")
    assert pause_job(store, org, job.id).status == "paused"
    with pytest.raises(InvalidRequest, match="paused"):
        pause_job(store, org, job.id)
    assert resume_job(store, org, job.id).status == "queued"
    with pytest.raises(InvalidRequest):
        resume_job(store, org, job.id)
    done = cancel_job(store, org, job.id)
    assert done.status == "cancelled" and done.finished_at
    with pytest.raises(InvalidRequest, match="already finished"):
        cancel_job(store, org, job.id)
    with pytest.raises(NotFound):
        get_job(store, ensure_org(store, "other"), job.id)


def test_cancel_wins_over_a_worker_write(store):
    """The worker's writes are conditional on status='running' and its lease: after cancel they do nothing."""
    org = ensure_org(store, "personal")
    job = _job(store, org)
    with store.session() as s:  # what the worker's claim does
        s.execute(update(FineTuningJob).where(FineTuningJob.id == job.id)
                  .values(status="running", lease_owner="w1", lease_expires_at=2**40, attempts=1))
    assert pause_job(store, org, job.id).status == "paused"
    assert resume_job(store, org, job.id).status == "queued"
    with store.session() as s:
        s.execute(update(FineTuningJob).where(FineTuningJob.id == job.id).values(status="running", lease_owner="w1"))
    cancel_job(store, org, job.id)
    with store.session() as s:
        res = s.execute(update(FineTuningJob).where(FineTuningJob.id == job.id, FineTuningJob.status == "running",
                                                    FineTuningJob.lease_owner == "w1").values(status="succeeded"))
        assert res.rowcount == 0
    assert get_job(store, org, job.id).status == "cancelled"


def test_recover_jobs_left_validating(store):
    org = ensure_org(store, "personal")
    job = _job(store, org)
    with store.session() as s:  # as if the process died between create's two writes
        s.execute(update(FineTuningJob).where(FineTuningJob.id == job.id).values(status="validating_files"))
    assert recover_validating_jobs(store) == 1
    assert get_job(store, org, job.id).status == "queued"


def test_dpo_needs_preference_data(store):
    org = ensure_org(store, "personal")
    pref = create_file(store, org, filename="p.jsonl", purpose="fine-tune", content=preference_jsonl())
    assert pref.status == "processed", pref.status_details
    job = create_job(store, org, JobRequest(model="gpt-4o-mini", training_file=pref.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}))
    assert job.status == "queued" and job.method == {"type": "dpo"}
    assert job.hyperparameters == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
                                   "beta": 0.2}
    assert [j.id for j in list_jobs(store, org).data] == [job.id]
    with pytest.raises(InvalidRequest) as e:
        create_job(store, org, JobRequest(model="gpt-4o-mini", training_file=pref.id))
    assert e.value.param == "training_file"


def test_job_list_pagination_and_metadata_filter(store):
    org = ensure_org(store, "personal")
    f = create_file(store, org, filename="t.jsonl", purpose="fine-tune", content=chat_jsonl())
    jobs = [create_job(store, org, JobRequest(model="gpt-4o-mini", training_file=f.id,
                                              metadata={"i": str(i % 2)})).id for i in range(5)]
    page = list_jobs(store, org, limit=3)
    assert [j.id for j in page.data] == jobs[::-1][:3] and page.has_more
    assert [j.id for j in list_jobs(store, org, after=page.data[-1].id).data] == jobs[::-1][3:]
    assert [j.id for j in list_jobs(store, org, metadata={"i": "1"}).data] == [jobs[3], jobs[1]]
    assert list_jobs(store, org, metadata={"i": "1"}, limit=1).has_more


def test_events_are_newest_first_and_page(store):
    org = ensure_org(store, "personal")
    job = _job(store, org)
    for i in range(7):
        add_event(store, job.id, f"Step {i}/7: training loss=1.0", type="metrics", data={"step": i})
    page = list_events(store, org, job.id, limit=4)
    assert [e.data["step"] for e in page.data] == [6, 5, 4, 3] and page.has_more
    rest = list_events(store, org, job.id, after=page.data[-1].id, limit=100)
    assert [e.data["step"] for e in rest.data[:3]] == [2, 1, 0] and not rest.has_more


def test_find_servable_model(store, tmp_path):
    org, other = ensure_org(store, "personal"), ensure_org(store, "other")
    base = find_servable_model(store, org, "gpt-4o-mini")
    assert base.base_model == "smollm2-135m-instruct" and base.adapter_dir is None
    job = _job(store, org, suffix="demo")
    name = f"ft:smollm2-135m-instruct:personal:demo:abc123XY"
    ckpt_name = name + ":ckpt-step-4"
    with store.session() as s:
        s.add(FineTuningJobCheckpoint(id="ftckpt-1", job_id=job.id, created_at=1, step_number=4,
                                      fine_tuned_model_checkpoint=ckpt_name, metrics={}, path=str(tmp_path / "c4")))
    ck = find_servable_model(store, org, ckpt_name)  # usable while the job still runs
    assert ck.adapter_dir == tmp_path / "c4" and ck.base_model == "smollm2-135m-instruct"
    register_model(store, org, model_id=name, base_model="smollm2-135m-instruct", job_id=job.id,
                   path=tmp_path / "final")
    assert find_servable_model(store, org, name).adapter_dir == tmp_path / "final"
    assert [m.id for m in list_fine_tuned_models(store, org)] == [name]
    for who, what in ((other, name), (other, ckpt_name), (org, "ft:x:personal::nope"), (org, "no-such-model")):
        with pytest.raises(ModelNotFound):
            find_servable_model(store, who, what)
    with pytest.raises(PermissionDenied):
        delete_model(store, org, "gpt-4o-mini")
    delete_model(store, org, name)
    for what in (name, ckpt_name):
        with pytest.raises(ModelNotFound):
            find_servable_model(store, org, what)
    assert list_fine_tuned_models(store, org) == []


def test_api_keys(store):
    assert not auth_required(store)
    row, key = create_api_key(store, "acme", "ci")
    assert auth_required(store) and key.startswith("sk-tunery-")
    assert org_for_key(store, key).name == "acme"
    assert org_for_key(store, key + "x") is None
    assert [k.id for k, _ in list_api_keys(store)] == [row.id]
    revoke_api_key(store, row.id)
    assert org_for_key(store, key) is None and not auth_required(store)
    with pytest.raises(InvalidRequest):
        ensure_org(store, "../bad")


def test_concurrent_writers_lose_nothing(store):
    """Threads creating files and events at once: no 'database is locked', no lost rows."""
    org = ensure_org(store, "personal")
    job = _job(store, org)
    errors: list[BaseException] = []

    def work(i):
        try:
            for j in range(5):
                create_file(store, org, filename=f"{i}-{j}", purpose="user_data", content=b"z")
                add_event(store, job.id, f"event {i}-{j}")
                list_files(store, org, limit=5)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len([f for f in list_files(store, org).data if f.purpose == "user_data"]) == 40
    with store.read() as s:
        seqs = list(s.execute(select(FineTuningJobEvent.seq).where(FineTuningJobEvent.job_id == job.id)).scalars())
    assert len(seqs) == 3 + 40 and len(set(seqs)) == len(seqs)


def test_non_finite_numbers_are_stored_as_null(store):
    org = ensure_org(store, "personal")
    job = _job(store, org)
    add_event(store, job.id, "Step 1/2: training loss=nan", type="metrics",
              data={"step": 1, "train_loss": float("nan"), "nested": [float("inf"), 1.5]})
    ev = list_events(store, org, job.id, limit=1).data[0]
    assert ev.data == {"step": 1, "train_loss": None, "nested": [None, 1.5]}


def test_migrations_match_the_table_definitions(store):
    """A column added to tables.py without a migration (or the reverse) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tunery.store.tables import Base

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_store_and_routes_never_import_torch(tmp_path):
    """store/ and the files/jobs/models routes import (and work) without torch: torch stays at the edges."""
    import subprocess
    import sys

    code = f"""
import os, sys
os.environ["TUNERY_HOME"] = {str(tmp_path)!r}
import tunery.store, tunery.api.deps, tunery.api.routes.files, tunery.api.routes.fine_tuning, tunery.api.routes.models
from tunery.store import JobRequest, create_file, create_job, ensure_org, find_servable_model, open_store
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_api_support import chat_jsonl
s = open_store(); org = ensure_org(s, "personal")
f = create_file(s, org, filename="t.jsonl", purpose="fine-tune", content=chat_jsonl())
create_job(s, org, JobRequest(model="gpt-4o-mini", training_file=f.id))
find_servable_model(s, org, "gpt-4o-mini")
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
assert not heavy, heavy
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
