"""Streaming multipart: the bytes of one file part as they arrive, so an upload can be checked (size limit)
while it streams and refused early, instead of being spooled whole to a temporary file first
(:func:`file_part_chunks`); or written once to a temporary file together with its small text parts, for
uploads whose destination needs the whole file (:func:`spool_upload`: a container's archive API needs the
size before the content)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from openpods.api.envelope import BadRequest
from openpods.storage.spool import new_locked_file


class _PartHeaders:
    """Follows a streaming parser through each part's headers; ``on_part`` gets the part's Content-Disposition
    options (``name``, ``filename``, as bytes) once they are complete."""

    def __init__(self, on_part: Callable[[dict[bytes, bytes]], None]) -> None:
        self.on_part = on_part
        self.parts = 0  # parts begun so far
        self._header = self._value = self._disposition = b""

    def parser(self, boundary: bytes, on_part_data: Callable[[bytes, int, int], None],
               on_part_end: Callable[[], None]) -> MultipartParser:
        return MultipartParser(boundary, callbacks={
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._value_part,
            "on_header_end": self._header_end, "on_headers_finished": self._finished,
            "on_part_data": on_part_data, "on_part_end": on_part_end,
        })

    def _begin(self) -> None:
        self.parts += 1
        self._header = self._value = self._disposition = b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _value_part(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def _finished(self) -> None:
        self.on_part(parse_options_header(self._disposition)[1])


async def file_part_chunks(request: Request, field: str = "file") -> AsyncIterator[bytes]:
    """Yields the content of the multipart part named ``field``; BadRequest if the body is not multipart
    or has no such part. Other parts are skipped."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest(["file: the body must be multipart/form-data with a part named 'file'."])
    out: list[bytes] = []
    state = {"in_file": False, "found": False}

    def on_part(options: dict[bytes, bytes]) -> None:
        state["in_file"] = options.get(b"name") == field.encode() and not state["found"]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["in_file"]:
            out.append(bytes(data[start:end]))

    def on_part_end() -> None:
        if state["in_file"]:
            state.update(in_file=False, found=True)

    parser = _PartHeaders(on_part).parser(boundary, on_part_data, on_part_end)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            while out:
                yield out.pop(0)
            if state["found"]:
                break
        else:
            parser.finalize()
    except MultipartParseError as exc:
        # A malformed body is the client's error: 400, and the caller discards what was written so far.
        raise BadRequest([f"file: the multipart body is malformed ({exc})."]) from None
    while out:
        yield out.pop(0)
    if not state["found"]:
        raise BadRequest(["file: a complete file part named 'file' is required."])


@dataclass
class SpooledUpload:
    """A file part written to one temporary file, and the small text parts that came with it."""

    path: str
    size: int
    filename: str | None
    fields: dict[str, str]


@contextlib.asynccontextmanager
async def spool_upload(request: Request, directory: Path, text_fields: Collection[str], *, field: str = "file",
                       max_text_bytes: int = 4096, max_parts: int = 8,
                       batch_bytes: int = 1 << 20) -> AsyncIterator[SpooledUpload]:
    """Read a multipart upload once: the part ``field`` streams into a temporary file in ``directory`` (written
    in batches off the event loop; the body is never held whole in memory or spooled twice), and each part
    named in ``text_fields`` — a plain field or, as tapipy sends them, a file part — is kept as UTF-8 text of at
    most ``max_text_bytes``. Other parts are skipped. BadRequest for a body without the file part, a malformed
    body, more than ``max_parts`` parts, or a text part that is too long or not UTF-8. The temporary file is
    removed on exit; one that a killed process left is found by its free lock (``storage.spool``)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    missing = BadRequest([f"{field}: a file part named '{field}' is required."])
    if content_type != b"multipart/form-data" or not boundary:
        raise missing
    fd, tmp = await asyncio.to_thread(new_locked_file, directory)  # locked while the upload runs
    out = os.fdopen(fd, "wb")
    pending: list[bytes] = []
    texts: dict[str, bytearray] = {}
    state: dict[str, Any] = {"target": None, "filename": None, "found": False, "size": 0, "pending": 0}
    problems: list[str] = []

    def on_part(options: dict[bytes, bytes]) -> None:
        name = options.get(b"name", b"").decode("utf-8", "replace")
        state["target"] = None
        if name == field and not state["found"]:
            state["target"] = field
            raw_name = options.get(b"filename")
            state["filename"] = raw_name.decode("utf-8", "replace") if raw_name is not None else None
        elif name in text_fields and name not in texts:
            state["target"] = name
            texts[name] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        target = state["target"]
        if target == field:
            chunk = bytes(data[start:end])
            pending.append(chunk)
            state["pending"] += len(chunk)
            state["size"] += len(chunk)
        elif target is not None:
            text = texts[target]
            text += data[start:min(end, start + max_text_bytes + 1 - len(text))]
            if len(text) > max_text_bytes:
                problems.append(f"{target}: must be at most {max_text_bytes} bytes.")
                state["target"] = None

    def on_part_end() -> None:
        if state["target"] == field:
            state["found"] = True
        state["target"] = None

    headers = _PartHeaders(on_part)
    parser = headers.parser(boundary, on_part_data, on_part_end)

    async def flush() -> None:
        if pending:
            batch = b"".join(pending)
            pending.clear()
            state["pending"] = 0
            await asyncio.to_thread(out.write, batch)

    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if headers.parts > max_parts:
                    raise BadRequest([f"the form has more than {max_parts} parts."])
                if problems:
                    raise BadRequest(problems[:1])
                if state["pending"] >= batch_bytes:
                    await flush()
            parser.finalize()
        except MultipartParseError as exc:
            raise BadRequest([f"{field}: the multipart body is malformed ({exc})."]) from None
        if problems:
            raise BadRequest(problems[:1])
        await flush()
        await asyncio.to_thread(out.flush)  # kept open: the lock marks the file as in use until the end
        if not state["found"]:
            raise missing
        fields: dict[str, str] = {}
        for name, raw in texts.items():
            try:
                fields[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest([f"{name}: must be UTF-8 text."]) from None
        yield SpooledUpload(path=tmp, size=state["size"], filename=state["filename"], fields=fields)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        out.close()
