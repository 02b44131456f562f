"""``api.multipart.spool_upload`` (the body of upload_to_pod / upload_to_jupyter read once) and the spool
directory's cleanup of files left by killed processes (``storage.spool``)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openpods.api.envelope import TapisError
from openpods.api.multipart import spool_upload
from openpods.storage import spool


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    seen: dict[str, Any] = {}

    async def upload(request: Request) -> JSONResponse:
        try:
            async with spool_upload(request, tmp_path / "spool", ("dest_path",), max_text_bytes=16,
                                    max_parts=4, batch_bytes=1000) as up:
                seen["during"] = sorted(p.name for p in (tmp_path / "spool").iterdir())
                with open(up.path, "rb") as f:
                    content = f.read()
                return JSONResponse({"size": up.size, "filename": up.filename, "fields": up.fields,
                                     "content": content.decode("latin-1")})
        except TapisError as exc:
            return JSONResponse({"error": str(exc.message)}, status_code=exc.status_code)

    app = Starlette(routes=[Route("/up", upload, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        c.seen = seen  # type: ignore[attr-defined]
        yield c


async def test_the_file_and_its_text_fields_in_one_pass(client: httpx.AsyncClient, tmp_path: Path) -> None:
    data = os.urandom(5000).hex().encode()  # several write batches
    # tapipy's shape: dest_path as a file part, before or after the file
    r = await client.post("/up", files={"file": ("a.bin", data), "dest_path": (None, "/tmp/x")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == len(data) and body["content"].encode("latin-1") == data
    assert body["filename"] == "a.bin" and body["fields"] == {"dest_path": "/tmp/x"}
    r = await client.post("/up", files=[("dest_path", ("dest_path", b"/tmp/y")), ("file", ("b", b"xyz"))])
    assert r.json()["fields"] == {"dest_path": "/tmp/y"} and r.json()["content"] == "xyz"
    # one spool file while the upload runs, none afterwards
    assert len(client.seen["during"]) == 1 and client.seen["during"][0].startswith(spool.PREFIX)  # type: ignore[attr-defined]
    assert list((tmp_path / "spool").iterdir()) == []


@pytest.mark.parametrize("files, message", [
    ({"other": ("x", b"x")}, "file: a file part named 'file' is required."),
    ({"file": ("a", b"x"), "dest_path": (None, "/" + "a" * 40)}, "dest_path: must be at most 16 bytes."),
    ({"file": ("a", b"x"), "dest_path": (None, b"\xff\xfe")}, "dest_path: must be UTF-8 text."),
    ([(f"f{i}", (None, b"x")) for i in range(5)] + [("file", ("a", b"x"))], "more than 4 parts"),
])
async def test_bad_forms_are_400_and_leave_nothing(client: httpx.AsyncClient, tmp_path: Path, files: Any,
                                                   message: str) -> None:
    r = await client.post("/up", files=files)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert list((tmp_path / "spool").iterdir()) == []


async def test_not_multipart_or_malformed_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/up", json={"file": "x"})
    assert r.status_code == 400 and "file part named 'file'" in r.json()["error"]
    r = await client.post("/up", content=b"--b\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400, r.text


def test_remove_stale_deletes_only_files_whose_process_died(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    fd, live = spool.new_locked_file(directory)  # an upload of this process, in progress
    # An upload of a process that was killed: created and locked there, the lock gone with the process.
    code = ("import sys; from pathlib import Path; from openpods.storage import spool; "
            "print(spool.new_locked_file(Path(sys.argv[1]))[1])")
    dead = subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True,
                          check=True).stdout.strip()
    (directory / "unrelated").write_text("not a spool file")
    assert spool.remove_stale(directory) == 1
    assert not os.path.exists(dead) and os.path.exists(live) and (directory / "unrelated").exists()
    with pytest.raises(BlockingIOError):  # still ours
        fcntl.flock(os.open(live, os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    assert spool.remove_stale(directory) == 1 and not os.path.exists(live)
    assert spool.remove_stale(tmp_path / "missing") == 0
