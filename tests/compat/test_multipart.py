"""Multipart uploads to volumes (issue 10, item 7): a malformed multipart body is the client's error — 400 in the
envelope, nothing written, the server fine afterwards — and the request shapes real clients send work: the
original suite's ``files={"file": open(...)}`` (tapis-project/pods_service ``tests/test_volumes.py`` @
6d1ddaecb1dd10fa8989693795adf82684fc9897) and tapipy's ``upload_to_volume(volume_id=..., path=..., file=...)``
(the commented-out variant in that same test, and the user guide), and TapisUI's through tapis-typescript
(``gen/pods/src/apis/VolumesApi.ts`` @ 0121c6b8a3491e106e223b366888dca962e04487 of tapis-project/tapis-typescript:
FormData with one ``file`` part, the path ``encodeURIComponent``-ed into the URL). Real server, SQLite and
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

USER = "uploader"
B = "compatboundary"
HEADERS = {"Content-Type": f"multipart/form-data; boundary={B}"}
PART = f'--{B}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'.encode()

MALFORMED = {
    "garbage before the first boundary": b"this is not multipart at all\r\n" * 3,
    "header line without a colon": f"--{B}\r\nContent-Disposition form-data\r\n\r\nx\r\n--{B}--\r\n".encode(),
    "junk after the boundary": f"--{B}XYZ\r\n".encode() + b"x" * 100,
    "bad header name": f'--{B}\r\nCont\x01ent: x\r\n\r\nx\r\n--{B}--\r\n'.encode(),
    "truncated inside the headers": PART[:40],
    "truncated inside the data": PART + b"\r\npartial data, and then the body ends",
    "boundary but no parts": f"--{B}--\r\n".encode(),
    "empty body": b"",
}


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    server = make_module_server()
    server.add_user(USER)
    return server


@pytest.fixture(scope="module")
def volume(srv: Any) -> str:
    r = srv.client(USER).post("/v3/pods/volumes", json={"volume_id": "mpvolume"})
    assert r.status_code == 200, r.text
    return "mpvolume"


def files_in(srv: Any, volume_id: str) -> list[Any]:
    r = srv.client(USER).get(f"/v3/pods/volumes/{volume_id}/list")
    assert r.status_code == 200, r.text
    return r.json()["result"]


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_multipart_is_400_and_writes_nothing(srv: Any, volume: str, body: bytes) -> None:
    http = srv.client(USER)
    r = http.post(f"/v3/pods/volumes/{volume}/upload/broken.txt", content=body, headers=HEADERS)
    assert r.status_code == 400, r.text
    assert r.json()["status"] == "error" and r.json()["message"]
    assert all("broken" not in str(f) for f in files_in(srv, volume))
    # The server (and that connection) carry on.
    assert http.get(f"/v3/pods/volumes/{volume}").status_code == 200


def test_wrong_content_types_are_400(srv: Any, volume: str) -> None:
    http = srv.client(USER)
    for headers in ({"Content-Type": "multipart/form-data"}, {"Content-Type": "application/json"}, {}):
        r = http.post(f"/v3/pods/volumes/{volume}/upload/x.txt", content=b"{}", headers=headers)
        assert r.status_code == 400, (headers, r.text)


def test_original_suite_and_tapipy_upload_shapes(srv: Any, volume: str, tmp_path: Path,
                                                 new_id: Callable[[str], str]) -> None:
    http = srv.client(USER)
    config = tmp_path / "config.json"
    config.write_text('{"a": 1}')
    with open(config, "rb") as fh:
        r = http.post(f"/v3/pods/volumes/{volume}/upload/config.json", files={"file": fh})
    assert r.status_code == 200, r.text
    t = srv.tapis(USER)
    with open(config, "rb") as fh:
        t.pods.upload_to_volume(volume_id=volume, path="dir/tapipy.json", file=fh)
    r = http.get(f"/v3/pods/volumes/{volume}/contents/dir/tapipy.json")
    assert r.status_code == 200 and r.content == b'{"a": 1}'


def test_tapis_typescript_upload_shape(srv: Any, volume: str) -> None:
    http = srv.client(USER)
    r = http.post(f"/v3/pods/volumes/{volume}/upload/ui%2Fform%20file.txt",
                  files={"file": ("form file.txt", b"from the browser", "text/plain")})
    assert r.status_code == 200, r.text
    r = http.get(f"/v3/pods/volumes/{volume}/contents/ui/form%20file.txt")
    assert r.status_code == 200 and r.content == b"from the browser"


def test_malformed_upload_by_a_stranger_is_refused_before_parsing(srv: Any, volume: str) -> None:
    srv.add_user("mpstranger")
    r = srv.client("mpstranger").post(f"/v3/pods/volumes/{volume}/upload/x.txt", content=MALFORMED["empty body"],
                                      headers=HEADERS)
    assert r.status_code in (403, 404)
