"""Input hardening (issue 9): mount paths are normalized or refused, request bodies are capped while they
stream (413 in the envelope, the rest never read), the bulk allowlist authorizes before it parses and caps its
error list, and digest references are admitted only when an entry names the digest (without an engine)."""

from __future__ import annotations

import contextlib
import json
import select
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from openpods.store.tables import Image, Pod, Template, TemplateTag

IMAGE = "localhost/openpods-test/http:latest"
DIGEST = "sha256:" + "ab" * 32
MB = 1024 * 1024
BODY_CAP = 256 * 1024  # max_request_body_bytes of the module's server


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    server = make_module_server(max_request_body_bytes=BODY_CAP, max_upload_bytes=2 * MB)
    server.add_user("alice")
    server.allow_image("localhost/openpods-test/http")
    return server


def assert_envelope(r: httpx.Response, status: int, *fragments: str) -> list[str] | str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error" and r.headers["content-type"] == "application/json", r.text
    text = json.dumps(body["message"])
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return body["message"]


# ------------------------------------------------------------------------------------------- mount_path

BAD_MOUNT_PATHS = ["//data", "/data//sub", "/./data", "/data/.", "/data/", "/data/./sub"]


@pytest.mark.parametrize("mount_path", BAD_MOUNT_PATHS)
def test_pod_mount_path_not_normalized_is_refused(srv: Any, new_id: Callable[[str], str], mount_path: str) -> None:
    alice = srv.client("alice")
    vol = new_id("vol")
    assert alice.post("/v3/pods/volumes", json={"volume_id": vol}).status_code == 200
    pod_id = new_id("pod")
    body = {"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF",
            "volume_mounts": {vol: {"type": "tapisvolume", "mount_path": mount_path}}}
    assert_envelope(alice.post("/v3/pods", json=body), 400, "mount_path", "normalized")
    assert srv.rows(Pod, pod_id=pod_id) == []
    # The same path, written normally, is fine; an update to the odd spelling is refused and changes nothing.
    good = mount_path.replace("/./", "/").replace("//", "/").rstrip("/").removesuffix("/.")
    body["volume_mounts"][vol]["mount_path"] = good
    assert alice.post("/v3/pods", json=body).status_code == 200, good
    r = alice.put(f"/v3/pods/{pod_id}",
                  json={"volume_mounts": {vol: {"type": "tapisvolume", "mount_path": mount_path}}})
    assert_envelope(r, 400, "mount_path")
    assert srv.rows(Pod, pod_id=pod_id)[0]["volume_mounts"][vol]["mount_path"] == good


@pytest.mark.parametrize("mount_path", BAD_MOUNT_PATHS)
def test_template_mount_path_not_normalized_is_refused(srv: Any, new_id: Callable[[str], str],
                                                       mount_path: str) -> None:
    alice = srv.client("alice")
    template_id = new_id("tpl")
    assert alice.post("/v3/pods/templates", json={"template_id": template_id}).status_code == 200
    definition = {"image": IMAGE, "volume_mounts": {"vol": {"type": "tapisvolume", "mount_path": mount_path}}}
    r = alice.post(f"/v3/pods/templates/{template_id}/tags",
                   json={"pod_definition": definition, "tag": "v1", "commit_message": "m"})
    assert_envelope(r, 400, "mount_path")
    assert srv.rows(TemplateTag, template_id=template_id) == []
    assert len(srv.rows(Template, template_id=template_id)) == 1


def test_two_spellings_of_one_mount_path_cannot_both_be_mounted(srv: Any, new_id: Callable[[str], str]) -> None:
    alice = srv.client("alice")
    vol_a, vol_b = new_id("vol"), new_id("vol")
    for vol in (vol_a, vol_b):
        assert alice.post("/v3/pods/volumes", json={"volume_id": vol}).status_code == 200
    pod_id = new_id("pod")
    body = {"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF",
            "volume_mounts": {vol_a: {"type": "tapisvolume", "mount_path": "/data"},
                              vol_b: {"type": "tapisvolume", "mount_path": "/data/"}}}
    assert_envelope(alice.post("/v3/pods", json=body), 400, "mount_path")
    assert srv.rows(Pod, pod_id=pod_id) == []


# ------------------------------------------------------------------------------------------- body caps


def _raw_request(srv: Any, head: str, body_chunks: Any = None) -> tuple[bytes, int]:
    """Sends ``head`` and then, while the server has not answered, the chunks of ``body_chunks`` (chunked
    encoding); returns (the server's answer, body bytes sent). A small send buffer keeps what the kernel
    holds on our side small; the server's own buffers are bounded too."""
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.settimeout(120)  # only so that a server that never answers fails the test instead of hanging it
    sent = 0
    try:
        sock.sendall(head.encode())
        for chunk in body_chunks or ():
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        else:
            if body_chunks is not None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.find(b"\r\n\r\n") + 4 + _length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer, sent
    finally:
        sock.close()


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_declared_oversized_body_is_refused_before_it_is_sent(srv: Any) -> None:
    token = srv.token("alice")
    head = (f"POST /v3/pods HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tapis-Token: {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {32 * MB}\r\n\r\n")
    answer, _ = _raw_request(srv, head)  # not a byte of the body is sent: the old code waited for it
    status, body = _status_and_body(answer)
    assert status == 413 and body["status"] == "error", answer[:500]
    assert str(BODY_CAP) in body["message"] and "max_request_body_bytes" in body["message"]


def test_streamed_oversized_body_is_refused_without_reading_it_whole(srv: Any, new_id: Callable[[str], str]) -> None:
    token = srv.token("alice")
    head = (f"POST /v3/pods HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tapis-Token: {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    total = 64 * MB
    pod_id = new_id("pod")
    prefix = json.dumps({"pod_id": pod_id, "image": IMAGE, "description": ""})[:-2].encode()

    def chunks() -> Any:
        yield prefix
        for _ in range(total // (64 * 1024)):
            yield b"x" * (64 * 1024)

    answer, sent = _raw_request(srv, head, chunks())
    status, body = _status_and_body(answer)
    assert status == 413, answer[:500]
    assert "max_request_body_bytes" in body["message"]
    # The server stopped reading near the cap: what was sent is the cap plus what the kernel's socket buffers
    # of both ends held, a small part of the 64 MB (the old code read it all, then answered).
    assert sent < total // 4, sent
    assert srv.rows(Pod, pod_id=pod_id) == []


def test_uploads_have_their_own_cap(srv: Any, new_id: Callable[[str], str]) -> None:
    alice = srv.client("alice")
    vol = new_id("vol")
    assert alice.post("/v3/pods/volumes", json={"volume_id": vol}).status_code == 200
    # Larger than the JSON cap, within the upload cap: stored.
    r = alice.post(f"/v3/pods/volumes/{vol}/upload/big.bin", files={"file": ("big.bin", b"a" * (BODY_CAP * 2))})
    assert r.status_code == 200, r.text
    # Past the upload cap: 413 in the envelope, nothing stored.
    r = alice.post(f"/v3/pods/volumes/{vol}/upload/huge.bin", files={"file": ("huge.bin", b"b" * (3 * MB))})
    assert_envelope(r, 413, "max_upload_bytes")
    names = [f["name"] for f in alice.get(f"/v3/pods/volumes/{vol}/list").json()["result"]]
    assert names == ["big.bin"]


def test_bulk_images_checks_admin_before_parsing(srv: Any) -> None:
    junk = [{"image": "NOT VALID", "tenants": ["!"], "extra": 1}] * 2000
    r = srv.client("alice").post("/v3/pods/images/bulk", json=junk)
    assert_envelope(r, 403)
    r = srv.client("alice").post("/v3/pods/images/bulk", content=b"{not json")
    assert_envelope(r, 403)


def test_bulk_images_error_list_is_capped(srv: Any) -> None:
    junk = [{"image": f"NOT VALID {i}"} for i in range(2000)]
    before = srv.count(Image)
    messages = assert_envelope(srv.client("admin").post("/v3/pods/images/bulk", json=junk), 400)
    assert isinstance(messages, list) and len(messages) == 51, len(messages)
    assert messages[0].startswith("0, image:") and messages[-1] == "... and 1950 more errors."
    assert srv.count(Image) == before
    # A valid list still works for the admin.
    r = srv.client("admin").post("/v3/pods/images/bulk", json=[{"image": "localhost/bulk-ok:1"}])
    assert r.status_code == 200 and r.json()["result"][0]["image"] == "localhost/bulk-ok:1", r.text


# ------------------------------------------------------------------------------------------- digests


def test_digest_admitted_only_when_named_without_an_engine(srv: Any, new_id: Callable[[str], str]) -> None:
    """The module's server has no container engine: an entry that allows every tag of a name no longer admits
    ``name@digest`` or ``name:tag@digest`` (the digest could be any image's); an entry naming the digest does."""
    alice = srv.client("alice")
    for image in (f"localhost/openpods-test/http@{DIGEST}", f"localhost/openpods-test/http:latest@{DIGEST}"):
        pod_id = new_id("pod")
        r = alice.post("/v3/pods", json={"pod_id": pod_id, "image": image, "status_requested": "OFF"})
        assert_envelope(r, 400, "image", "digest")
        assert srv.rows(Pod, pod_id=pod_id) == []
    srv.allow_image(f"localhost/pinned/app@{DIGEST}")
    pod_id = new_id("pod")
    r = alice.post("/v3/pods", json={"pod_id": pod_id, "image": f"localhost/pinned/app@{DIGEST}",
                                     "status_requested": "OFF"})
    assert r.status_code == 200, r.text
    other = "sha256:" + "cd" * 32
    r = alice.post("/v3/pods", json={"pod_id": new_id("pod"), "image": f"localhost/pinned/app@{other}",
                                     "status_requested": "OFF"})
    assert_envelope(r, 400, "image")
    r = alice.post("/v3/pods", json={"pod_id": new_id("pod"), "image": "localhost/pinned/app:latest",
                                     "status_requested": "OFF"})
    assert_envelope(r, 400, "image")
