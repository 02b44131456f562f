"""Streaming multipart: the bytes of one file part as they arrive, so an upload can be checked (size limit)
while it streams and refused early, instead of being spooled whole to a temporary file first."""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from openpods.api.envelope import BadRequest


async def file_part_chunks(request: Request, field: str = "file") -> AsyncIterator[bytes]:
    """Yields the content of the multipart part named ``field``; BadRequest if the body is not multipart
    or has no such part. Other parts are skipped."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest(["file: the body must be multipart/form-data with a part named 'file'."])
    out: list[bytes] = []
    state = {"header": b"", "value": b"", "disposition": b"", "in_file": False, "found": False}

    def on_part_begin() -> None:
        state.update(header=b"", value=b"", disposition=b"", in_file=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        if state["header"].lower() == b"content-disposition":
            state["disposition"] = state["value"]
        state.update(header=b"", value=b"")

    def on_headers_finished() -> None:
        _, options = parse_options_header(state["disposition"])
        state["in_file"] = options.get(b"name") == field.encode() and not state["found"]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["in_file"]:
            out.append(bytes(data[start:end]))

    def on_part_end() -> None:
        if state["in_file"]:
            state.update(in_file=False, found=True)

    parser = MultipartParser(boundary, callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            while out:
                yield out.pop(0)
            if state["found"]:
                break
        else:
            parser.finalize()
    except MultipartParseError as exc:  # the client's malformed body, not a server error
        raise BadRequest([f"file: the multipart body is malformed ({exc})."]) from None
    while out:
        yield out.pop(0)
    if not state["found"]:
        raise BadRequest(["file: a complete file part named 'file' is required."])
