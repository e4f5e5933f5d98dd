"""The Files API: /v1/files to upload (multipart, purpose `batch`), list, read, download and delete the caller's
files (common/files.py). Another tenant's file answers 404 as one that never existed."""

from __future__ import annotations

from typing import IO, Literal, get_args

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel

from api.auth import caller
from api.multipart import read_form
from api.openai_compat.lists import page_args
from api.services import services
from common.errors import InvalidParameter, MissingParameter, PayloadTooLarge, UnsupportedMediaType
from common.files import FileObject
from common.openai_objects import OpenAIList

blueprint = Blueprint("openai_files", __name__, url_prefix="/v1/files")

Purpose = Literal["batch"]
PURPOSES: tuple[str, ...] = get_args(Purpose)


class FileUpload(BaseModel):
    """The form fields of an upload beside its `file` part (what /openapi.json describes)."""

    purpose: Purpose


class FileList(OpenAIList[FileObject]):
    """What GET /v1/files answers."""


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True


@blueprint.post("")
def upload_file() -> Response:
    svc = services()
    # This endpoint's own cap on the whole body, in place of the jobs' (MAX_CONTENT_LENGTH), before it is read.
    request.max_content_length = svc.settings.max_file_bytes + 64 * 1024
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("Upload a file as multipart/form-data, with 'file' and 'purpose' parts.")
    # The file goes to a temporary file as it arrives (to disk past a few MiB), then to S3 as a stream: a 200 MiB
    # input file never sits in the API's memory.
    form = read_form(request, svc.settings.max_file_bytes, spool_files=True)
    try:
        files, purposes = form.spooled.get("file", []), form.fields.get("purpose", [])
        if len(files) != 1:
            raise MissingParameter("file", "Send exactly one 'file' part.")
        if not purposes:
            raise MissingParameter("purpose", "Send a 'purpose' part: 'batch'.")
        if purposes[0] not in PURPOSES:
            raise InvalidParameter("purpose", f"purpose {purposes[0]!r} is not supported here; use 'batch'.")
        upload = files[0]
        if not upload.size:
            raise InvalidParameter("file", "The file is empty.")
        lines = _count_lines(upload.file)
        if lines > svc.settings.max_file_lines:
            raise PayloadTooLarge(f"The file has {lines} lines; a batch file holds at most "
                                  f"{svc.settings.max_file_lines}.")
        created = svc.files.create(caller().tenant, upload.filename or "upload.jsonl", purposes[0], upload.file,
                                   size=upload.size)
    finally:
        for part in (p for parts in form.spooled.values() for p in parts):
            part.file.close()
    return jsonify(created.model_dump())


def _count_lines(file: IO[bytes]) -> int:
    """Lines, the last counted without its newline too; the file is rewound for the upload."""
    lines, last = 0, b"\n"
    while chunk := file.read(1 << 20):
        lines, last = lines + chunk.count(b"\n"), chunk[-1:]
    file.seek(0)
    return lines + (0 if last == b"\n" else 1)


@blueprint.get("")
def list_files() -> Response:
    """The caller's files, newest first: ?limit= (1-100, default 20) and ?after= (the last id of the page before)."""
    found = services().files.page(caller().tenant, *page_args())
    return jsonify(FileList.of(found, [f.id for f in found.data]).model_dump())


@blueprint.get("/<file_id>")
def get_file(file_id: str) -> Response:
    return jsonify(services().files.get(file_id, tenant=caller().tenant).model_dump())


@blueprint.get("/<file_id>/content")
def file_content(file_id: str) -> Response:
    content = services().files.content(file_id, tenant=caller().tenant)
    return Response(content, mimetype="application/octet-stream")


@blueprint.delete("/<file_id>")
def delete_file(file_id: str) -> Response:
    services().files.delete(file_id, tenant=caller().tenant)
    return jsonify(FileDeleted(id=file_id).model_dump())
