"""/v1/files: multipart upload streamed to disk with a size limit, list, retrieve, content, delete."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from tunery.api.deps import ERROR_RESPONSES, CursorPage, add_method_not_allowed, current_org, get_store
from tunery.errors import InvalidRequest, PayloadTooLarge
from tunery.store import Organization, Store
from tunery.store import files as store_files
from tunery.store.wire import file_object, list_object

router = APIRouter(tags=["files"], responses=ERROR_RESPONSES)

MAX_FIELD_BYTES = 4096
MULTIPART_OVERHEAD = 64 * 1024


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file", "purpose"],
            "properties": {
                "file": {"type": "string", "format": "binary", "description": "The JSONL file."},
                "purpose": {"type": "string", "enum": list(store_files.UPLOAD_PURPOSES)},
            }}}},
    }
}


class _Multipart:
    """Parses one multipart body as it streams: the `file` part goes to an UploadWriter (size-limited,
    on disk), the other fields (purpose, …) to memory."""

    def __init__(self, store: Store, boundary: bytes):
        from python_multipart.multipart import MultipartParser

        self.store = store
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.upload: store_files.UploadWriter | None = None
        self._headers: dict[str, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._part: str | None = None
        self._is_file = False
        self._buf = bytearray()
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    def _part_begin(self):
        self._headers, self._hname, self._hvalue, self._part, self._is_file = {}, b"", b"", None, False
        self._buf = bytearray()

    def _header_field(self, data, start, end):
        self._hname += data[start:end]

    def _header_value(self, data, start, end):
        self._hvalue += data[start:end]

    def _header_end(self):
        self._headers[self._hname.decode("latin-1").lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def _headers_finished(self):
        from python_multipart.multipart import parse_options_header

        _disp, opts = parse_options_header(self._headers.get("content-disposition", b""))
        self._part = opts.get(b"name", b"").decode("utf-8", "replace")
        if self._part == "file":
            if self.upload is not None:
                raise InvalidRequest("send exactly one 'file' part", param="file")
            self._is_file = True
            self.filename = opts.get(b"filename", b"").decode("utf-8", "replace")
            self.upload = store_files.UploadWriter(self.store)

    def _part_data(self, data, start, end):
        if self._is_file:
            self.upload.write(memoryview(data)[start:end])
        else:
            self._buf += data[start:end]
            if len(self._buf) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"form field '{self._part[:64]}' is too long", param=self._part[:64] or None)

    def _part_end(self):
        if self._is_file:
            self.upload.close()  # commit fsyncs it, off the event loop
        elif self._part:
            self.fields[self._part] = self._buf.decode("utf-8", "replace")

    async def read(self, request: Request) -> str:
        """Stream the request body through the parser; returns the checked purpose."""
        from python_multipart.multipart import MultipartParseError

        try:
            async for chunk in request.stream():
                self.parser.write(chunk)
            self.parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest(f"Malformed multipart body: {exc}", param="file") from exc
        except ClientDisconnect:
            raise InvalidRequest("The upload was interrupted.", param="file") from None
        purpose = store_files.check_purpose(self.fields.get("purpose"))
        if self.upload is None or not self.upload.closed:
            raise InvalidRequest("The request has no complete 'file' part.", param="file")
        return purpose


def _multipart_boundary(request: Request, limit: int) -> bytes:
    """The multipart boundary, after refusing a body that is not multipart or declares too many bytes."""
    from python_multipart.multipart import parse_options_header

    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise InvalidRequest("Upload files as multipart/form-data with fields 'file' and 'purpose'.",
                             param="file", code="invalid_content_type")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"The file is larger than this server's limit of {limit} bytes "
                              "(TUNERY_MAX_UPLOAD_BYTES).", param="file")
    return opts[b"boundary"]


@router.post("/files", response_model=FileObject, openapi_extra=_UPLOAD_BODY,
             responses={413: {"description": "File too large"}}, summary="Upload a file")
async def upload_file(request: Request, store: Store = Depends(get_store),
                      org: Organization = Depends(current_org)):
    """Upload a file (multipart: `file`, `purpose`). Purpose fine-tune files are validated at once:
    status becomes processed, or error with status_details naming the problems."""
    form = _Multipart(store, _multipart_boundary(request, store.settings.max_upload_bytes))
    try:
        purpose = await form.read(request)
        row = await run_in_threadpool(form.upload.commit, org, filename=form.filename or "", purpose=purpose)
    finally:
        if form.upload is not None:
            form.upload.abort()  # a no-op after a commit
    return file_object(row)


@router.get("/files", response_model=CursorPage[FileObject], summary="List files")
def list_files(store: Store = Depends(get_store), org: Organization = Depends(current_org),
               purpose: str | None = Query(None, max_length=64),
               after: str | None = Query(None, max_length=256),
               limit: int = Query(10000, ge=1, le=10000),
               order: Literal["asc", "desc"] = Query("desc")):
    page = store_files.list_files(store, org, purpose=purpose, after=after, limit=limit, order=order)
    return list_object([file_object(r) for r in page.data], page.has_more)


_FILE_ID = Path(..., max_length=256)


@router.get("/files/{file_id}", response_model=FileObject, summary="Retrieve a file")
def retrieve_file(file_id: str = _FILE_ID, store: Store = Depends(get_store),
                  org: Organization = Depends(current_org)):
    return file_object(store_files.get_file(store, org, file_id))


@router.delete("/files/{file_id}", response_model=FileDeleted, summary="Delete a file")
def delete_file(file_id: str = _FILE_ID, store: Store = Depends(get_store),
                org: Organization = Depends(current_org)):
    return {"id": store_files.delete_file(store, org, file_id), "object": "file", "deleted": True}


@router.get("/files/{file_id}/content", summary="Retrieve a file's content",
            response_class=FileResponse, responses={200: {"content": {"application/octet-stream": {}}}})
def file_content(file_id: str = _FILE_ID, store: Store = Depends(get_store),
                 org: Organization = Depends(current_org)):
    path = store_files.file_content_path(store, org, file_id)
    return FileResponse(path, media_type="application/octet-stream")


add_method_not_allowed(router, "/files", ["GET", "POST"])
add_method_not_allowed(router, "/files/{file_id}", ["GET", "DELETE"])
add_method_not_allowed(router, "/files/{file_id}/content", ["GET"])
