"""multipart/form-data request bodies, read with python-multipart (the parser Starlette uses).

Werkzeug's own parser compiles two regular expressions from each request's boundary, and clients pick a new
random boundary for every request, so none is ever cached; python-multipart's state machine compiles nothing
per request, which makes parsing an upload much cheaper (bench/results/2026-11-29-service-path.md).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import IO

from flask import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from common.errors import InvalidRequest, PayloadTooLarge

MAX_PARTS = 1000  # werkzeug's default limit
_CHUNK_BYTES = 64 * 1024
# A spooled file part stays in memory up to this size, then moves to a temporary file on disk.
_SPOOL_MEMORY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class FilePart:
    data: bytes
    content_type: str
    filename: str = ""


@dataclass(frozen=True)
class SpooledPart:
    """A file part too large to hold in memory (a batch's input file): its content in a temporary file, rewound."""

    file: IO[bytes]
    size: int
    content_type: str
    filename: str = ""


@dataclass
class Form:
    """The parts of a body by name, in the order sent: file parts (with a filename; spooled ones apart) and text
    fields."""

    files: dict[str, list[FilePart]] = field(default_factory=lambda: defaultdict(list))
    spooled: dict[str, list[SpooledPart]] = field(default_factory=lambda: defaultdict(list))
    fields: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    data: bytearray = field(default_factory=bytearray)
    spool: IO[bytes] | None = None  # where a spooled file part's content goes instead of `data`
    size: int = 0
    name: str = ""
    is_file: bool = False
    filename: str = ""


class _FormBuilder:
    """python-multipart's callbacks, collecting parts; a file part over max_file_bytes stops the parse. With
    `spool_files`, file parts go to temporary files rather than memory."""

    def __init__(self, max_file_bytes: int, spool_files: bool) -> None:
        self.form = Form()
        self.ended = False
        self._max_file_bytes = max_file_bytes
        self._spool_files = spool_files
        self._part = _Part()
        self._count = 0

    def on_part_begin(self) -> None:
        self._count += 1
        if self._count > MAX_PARTS:
            raise PayloadTooLarge(f"The multipart body has more than {MAX_PARTS} parts.")
        self._part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._part.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._part.header_value += data[start:end]

    def on_header_end(self) -> None:
        part = self._part
        part.headers[part.header_name.decode("latin-1").lower()] = part.header_value.decode("latin-1")
        part.header_name, part.header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        part = self._part
        disposition, params = parse_options_header(part.headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise InvalidRequest("Every multipart part needs 'Content-Disposition: form-data; name=...'.")
        part.name = params[b"name"].decode("utf-8", errors="replace")
        part.is_file = b"filename" in params
        part.filename = params.get(b"filename", b"").decode("utf-8", errors="replace")
        if part.is_file and self._spool_files:
            part.spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES)  # noqa: SIM115 (the Form owns it)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if part.spool is not None:
            part.spool.write(data[start:end])
        else:
            part.data += data[start:end]
        if part.is_file and part.size > self._max_file_bytes:
            index = len(self.form.files[part.name]) + len(self.form.spooled[part.name])
            raise PayloadTooLarge(f"{part.name}[{index}] is larger than {self._max_file_bytes} bytes.")

    def on_part_end(self) -> None:
        part = self._part
        if part.is_file:
            # The media type alone, as werkzeug's `mimetype` gave it: "image/png; x=y" is stored as "image/png".
            content_type = part.headers.get("content-type", "").split(";")[0].strip() or "application/octet-stream"
            if part.spool is not None:
                part.spool.seek(0)
                self.form.spooled[part.name].append(SpooledPart(part.spool, part.size, content_type, part.filename))
            else:
                self.form.files[part.name].append(FilePart(bytes(part.data), content_type, part.filename))
            return
        try:
            self.form.fields[part.name].append(part.data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"The form field {part.name!r} is not UTF-8 text.") from exc

    def on_end(self) -> None:
        self.ended = True


def read_form(request: Request, max_file_bytes: int, spool_files: bool = False) -> Form:
    """Parse the request's multipart body (its size already capped by MAX_CONTENT_LENGTH); with `spool_files`, file
    parts are in `Form.spooled`, in temporary files, for the caller to close."""
    _, params = parse_options_header(request.headers.get("Content-Type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("The multipart Content-Type has no boundary.")
    builder = _FormBuilder(max_file_bytes, spool_files)
    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": builder.on_part_begin, "on_part_data": builder.on_part_data,
            "on_part_end": builder.on_part_end, "on_header_field": builder.on_header_field,
            "on_header_value": builder.on_header_value, "on_header_end": builder.on_header_end,
            "on_headers_finished": builder.on_headers_finished, "on_end": builder.on_end,
        })
        while chunk := request.stream.read(_CHUNK_BYTES):
            parser.write(chunk)
    except FormParserError as exc:
        raise InvalidRequest(f"The multipart body is malformed: {exc}") from exc
    if not builder.ended:
        raise InvalidRequest("The multipart body ended before its closing boundary.")
    return builder.form
