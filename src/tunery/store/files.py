"""Files: blobs on disk named by file id, one row each, validated on upload for purpose fine-tune.

Nothing is half-written: an upload goes to a temp file, is validated, then renamed to its
final name inside the transaction that inserts its row; if the transaction fails the blob
is removed. A crash between rename and commit leaves only an orphan blob (no row), which
`sweep_orphans` removes at start-up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from sqlalchemy import delete, select

from tunery.data import validate_file
from tunery.errors import InvalidRequest, NotFound, PayloadTooLarge
from tunery.ids import file_id
from tunery.store.common import Page, org_id_of, paginate
from tunery.store.db import Store, now
from tunery.store.tables import File

log = logging.getLogger("tunery.store")

# What users may upload (the SDK's FilePurpose); fine-tune-results files are written by the worker.
UPLOAD_PURPOSES = ("fine-tune", "assistants", "batch", "vision", "user_data", "evals")
ALL_PURPOSES = UPLOAD_PURPOSES + ("fine-tune-results", "assistants_output", "batch_output")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_filename(name: str | None) -> str:
    """The name to show: the last path component, no control characters, at most 255 chars."""
    name = _CONTROL.sub("", name or "")
    name = re.split(r"[/\\]", name)[-1].strip()
    if name in ("", ".", ".."):
        name = "upload"
    return name[:255]


def check_purpose(purpose: str | None, *, upload: bool = True) -> str:
    allowed = UPLOAD_PURPOSES if upload else ALL_PURPOSES
    if purpose not in allowed:
        shown = (purpose or "")[:64]
        raise InvalidRequest(f"'{shown}' is not a supported purpose. Use one of: {', '.join(allowed)}.",
                             param="purpose", code="invalid_value")
    return purpose


def new_upload_tempfile(store: Store) -> tuple[int, Path]:
    """An open fd and path for streaming an upload to disk next to its final location."""
    store.files_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=store.files_dir)
    return fd, Path(tmp)


class UploadWriter:
    """Streams one upload to a temp file beside the blobs, enforcing the size limit as bytes arrive.
    `commit` validates and stores it atomically; `abort` (or any failure) leaves nothing behind."""

    def __init__(self, store: Store, limit: int | None = None):
        self.store = store
        self.limit = store.settings.max_upload_bytes if limit is None else limit
        self.nbytes = 0
        self._fd, self.tmp = new_upload_tempfile(store)

    def write(self, data) -> None:
        self.nbytes += len(data)
        if self.nbytes > self.limit:
            raise PayloadTooLarge(f"The file is larger than this server's limit of {self.limit} bytes "
                                  "(TUNERY_MAX_UPLOAD_BYTES).", param="file")
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    def abort(self) -> None:
        try:
            self.close()
        except OSError:
            pass
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None

    def commit(self, org, *, filename: str, purpose: str) -> File:
        """Blocking (fsync, validation): call it off the event loop."""
        self.close()
        tmp, self.tmp = self.tmp, None
        return commit_upload(self.store, org, tmp, filename=filename, purpose=purpose, nbytes=self.nbytes)


# --- validation hook (the one place the data toolkit is called) --------------------------------

def validate_upload(path: Path, purpose: str, display_name: str | None = None
                    ) -> tuple[str, str | None, dict | None]:
    """(status, status_details, report dict) for a freshly uploaded file (named display_name in messages)."""
    if purpose != "fine-tune":
        return "processed", None, None
    try:
        report = validate_file(path)
    except Exception as exc:  # a validator crash must not lose the upload; report it as the status
        log.exception("validate_file failed on %s", path)
        return "error", f"The file could not be validated: {type(exc).__name__}: {exc}"[:4000], None
    if display_name:
        report.path = display_name  # messages name the user's file, not our temp file
    info = json.loads(json.dumps(report.to_dict(), default=str))
    # A file's role is known only at job creation: the 10-example minimum is for training files and is
    # checked there (jobs._check_file), so a small held-out set uploads as processed.
    if all(p.kind == "too_few_examples" for p in report.errors):
        return "processed", None, info
    return "error", report.summary()[:20000], info


def validate_pair(train_path: Path, valid_path: Path) -> str | None:
    """Problems of a validation file next to its training file (overlap, mixed formats), or None."""
    try:
        report = validate_file(train_path, validation_path=valid_path)
    except Exception:  # pairing is an extra check; each file alone already passed validation
        log.exception("validate_file(%s, validation_path=%s) failed", train_path, valid_path)
        return None
    problems = [p for p in report.errors if p.file == "validation"]
    if not problems:
        return None
    return "The validation file does not go with the training file: " + "; ".join(
        p.describe() for p in problems[:5])


# --- rows ----------------------------------------------------------------------------------------

def commit_upload(store: Store, org, tmp_path: Path, *, filename: str, purpose: str, nbytes: int,
                  validate: bool = True) -> File:
    """Validate a fully written temp file, move it to its final name and insert its row, atomically."""
    tmp_path = Path(tmp_path)
    try:
        status, details, info = (validate_upload(tmp_path, purpose, clean_filename(filename)) if validate
                                 else ("processed", None, None))
        _fsync(tmp_path)  # the bytes are on disk before any row names them
        fid = file_id()
        final = store.files_dir / fid
        try:
            with store.session() as s:
                row = add_file_row(s, fid=fid, org=org, filename=filename, purpose=purpose, nbytes=nbytes,
                                   path=final, status=status, status_details=details, validation=info)
                s.flush()
                os.replace(tmp_path, final)
                _fsync(final.parent)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        return row
    finally:
        tmp_path.unlink(missing_ok=True)


def add_file_row(session, *, fid: str, org, filename: str, purpose: str, nbytes: int, path: Path,
                 status: str = "processed", status_details: str | None = None, validation: dict | None = None,
                 created_at: int | None = None) -> File:
    """Insert one file row inside the caller's transaction (uploads, and the worker's result file)."""
    row = File(id=fid, org_id=org_id_of(org), filename=clean_filename(filename), purpose=purpose,
               bytes=int(nbytes), created_at=created_at or now(), status=status, status_details=status_details,
               path=str(path), validation=validation)
    session.add(row)
    return row


def stored_path(store: Store, org, fid: str) -> Path | None:
    """Where a file's content is kept, or None when the organization has no such file (the worker's view;
    the API's is file_content_path)."""
    try:
        return Path(get_file(store, org, fid).path)
    except NotFound:
        return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_file(store: Store, org, *, filename: str, purpose: str, content: bytes,
                validate: bool = True) -> File:
    """Store `content`, held in memory, as a file with its row, validated like an upload (the API streams
    uploads through UploadWriter and commit_upload instead)."""
    check_purpose(purpose, upload=False)
    fd, tmp = new_upload_tempfile(store)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return commit_upload(store, org, tmp, filename=filename, purpose=purpose, nbytes=len(content),
                         validate=validate)


def write_blob(store: Store, content: bytes) -> tuple[str, Path]:
    """(a new file id, where its content now is, on disk), for a caller that adds the file's row in its own
    transaction with add_file_row (the worker's result file: one transaction with the job's success). The
    caller removes the blob if that transaction does not commit."""
    fd, tmp = new_upload_tempfile(store)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        _fsync(tmp)
        fid = file_id()
        final = store.files_dir / fid
        os.replace(tmp, final)
        return fid, final
    finally:
        tmp.unlink(missing_ok=True)


def _not_found(fid: str) -> NotFound:
    return NotFound(f"No such File object: {str(fid)[:100]}", param="file_id", code="file_not_found")


def get_file(store: Store, org, fid: str) -> File:
    with store.read() as s:
        row = s.execute(select(File).where(File.id == fid, File.org_id == org_id_of(org))).scalar_one_or_none()
    if row is None:
        raise _not_found(fid)
    return row


def list_files(store: Store, org, *, purpose: str | None = None, after: str | None = None,
               limit: int = 10000, order: str = "desc") -> Page[File]:
    with store.read() as s:
        stmt = select(File).where(File.org_id == org_id_of(org))
        if purpose is not None:
            stmt = stmt.where(File.purpose == purpose)
        return paginate(s, stmt, File, order_col=File.pk, after=after, limit=limit, desc=order != "asc")


def file_content_path(store: Store, org, fid: str) -> Path:
    row = get_file(store, org, fid)
    path = Path(row.path)
    if not path.is_file():
        raise NotFound(f"The content of {fid} is missing from the file store", param="file_id",
                       code="file_not_found")
    return path


def delete_file(store: Store, org, fid: str) -> str:
    with store.session() as s:
        row = s.execute(select(File).where(File.id == fid, File.org_id == org_id_of(org))).scalar_one_or_none()
        if row is None:
            raise _not_found(fid)
        path = Path(row.path)
        s.execute(delete(File).where(File.pk == row.pk))
    path.unlink(missing_ok=True)
    return fid


def sweep_orphans(store: Store, *, min_age_seconds: float = 3600) -> int:
    """Remove stale temp uploads and blobs that no row names (left by a crash). Returns the count."""
    d = store.files_dir
    if not d.is_dir():
        return 0
    cutoff = time.time() - min_age_seconds
    with store.read() as s:
        known = {Path(p).name for p in s.execute(select(File.path)).scalars()}
    removed = 0
    for p in d.iterdir():
        try:
            if not p.is_file() or p.stat().st_mtime > cutoff or p.name in known:
                continue
            if p.name.startswith(".upload-") or p.name.startswith("file-"):
                p.unlink()
                removed += 1
        except OSError:
            continue
    return removed
