"""Bad input to the volume endpoints: a 400 (never a 500) whose message names the field, and nothing stored --
no row, no permission, no directory, no change to an existing volume."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from api_envelope import (
    assert_control_characters_are_4xx,
    assert_unknown_ids_are_404,
    error_text,
    names_on_disk,
)

from openpods.store.tables import Permission, Volume

OWNER = "validowner"


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    handle = make_module_server(import_starter_catalog=False)
    handle.add_user(OWNER)
    return handle


@pytest.fixture(scope="module")
def c(srv: Any) -> httpx.Client:
    return srv.client(OWNER)


def nothing_stored(srv: Any, volume_id: Any, before_disk: list[str]) -> None:
    if isinstance(volume_id, str):  # compared in Python: PostgreSQL refuses NUL bytes in a query parameter
        assert [r for r in srv.rows(Volume, tenant_id="default") if r["volume_id"] == volume_id] == []
        assert [r for r in srv.rows(Permission, object_type="volume") if r["object_id"] == volume_id] == []
    assert names_on_disk(srv, "volumes") == before_disk


BAD_IDS = {
    "empty": "",
    "too-short": "ab",
    "uppercase": "MyVolume",
    "starts-with-digit": "1volume",
    "hyphen": "my-volume",
    "underscore": "my_volume",
    "dot": "my.volume",
    "slash": "a/b",
    "dotdot": "..",
    "space": "my volume",
    "non-ascii": "volumé",
    "nul": "vol\x00ume",
    "too-long": "v" * 129,
    "int": 12345,
    "null": None,
}


@pytest.mark.parametrize("volume_id", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_bad_volume_id(srv: Any, c: httpx.Client, volume_id: Any) -> None:
    before = names_on_disk(srv, "volumes")
    r = c.post("/v3/pods/volumes", json={"volume_id": volume_id})
    assert r.status_code == 400, r.text
    assert "volume_id" in error_text(r)
    nothing_stored(srv, volume_id, before)


def test_longest_and_shortest_ids_are_fine(srv: Any, c: httpx.Client) -> None:
    for volume_id in ("abc", "v" * 128):
        r = c.post("/v3/pods/volumes", json={"volume_id": volume_id})
        assert r.status_code == 200, r.text
        assert c.delete(f"/v3/pods/volumes/{volume_id}").status_code == 200


def test_missing_volume_id(srv: Any, c: httpx.Client) -> None:
    before = names_on_disk(srv, "volumes")
    r = c.post("/v3/pods/volumes", json={"description": "no id"})
    assert r.status_code == 400, r.text
    assert "volume_id" in error_text(r)
    assert names_on_disk(srv, "volumes") == before


BAD_SIZE_LIMITS = {
    "zero": 0,
    "negative": -1,
    "very-negative": -1024,
    "too-big": 1024 * 1024 + 1,
    "text": "1 GB",  # "1024" is read as 1024, as TapisUI sends it (tests/compat)
    "float": 1.5,
    "bool": True,
    "null": None,
}


@pytest.mark.parametrize("size_limit", list(BAD_SIZE_LIMITS.values()), ids=list(BAD_SIZE_LIMITS))
def test_bad_size_limit(srv: Any, c: httpx.Client, new_id: Callable, size_limit: Any) -> None:
    volume_id = new_id("vol")
    before = names_on_disk(srv, "volumes")
    r = c.post("/v3/pods/volumes", json={"volume_id": volume_id, "size_limit": size_limit})
    assert r.status_code == 400, r.text
    assert "size_limit" in error_text(r)
    nothing_stored(srv, volume_id, before)


@pytest.mark.parametrize(
    "body",
    [
        {"description": "x" * 256},
        {"description": "non-ascii é"},
        {"description": 5},
        {"unknown_field": 1},
        {"size": 10},  # read-only
        {"status": "AVAILABLE"},  # read-only
    ],
    ids=["long-description", "non-ascii-description", "int-description", "unknown-field", "size", "status"],
)
def test_bad_fields(srv: Any, c: httpx.Client, new_id: Callable, body: dict[str, Any]) -> None:
    volume_id = new_id("vol")
    before = names_on_disk(srv, "volumes")
    r = c.post("/v3/pods/volumes", json={"volume_id": volume_id, **body})
    assert r.status_code == 400, r.text
    assert next(iter(body)) in error_text(r)
    nothing_stored(srv, volume_id, before)


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'"volume"', b"{", b""],
    ids=["text", "list", "string", "truncated", "empty"],
)
def test_malformed_bodies(srv: Any, c: httpx.Client, content: bytes) -> None:
    before = names_on_disk(srv, "volumes")
    r = c.post("/v3/pods/volumes", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error_text(r)
    assert names_on_disk(srv, "volumes") == before


@pytest.mark.parametrize(
    "body",
    [
        {"size_limit": 0},
        {"size_limit": -5},
        {"size_limit": "big"},
        {"description": "x" * 256},
        {"volume_id": "renamed"},
        {"size": 1},
        {"bogus": True},
    ],
    ids=[
        "size-limit-0",
        "size-limit-negative",
        "size-limit-string",
        "long-description",
        "volume-id",
        "size",
        "unknown",
    ],
)
def test_bad_update_changes_nothing(
    srv: Any, c: httpx.Client, new_id: Callable, body: dict[str, Any]
) -> None:
    volume_id = new_id("vol")
    assert c.post("/v3/pods/volumes", json={"volume_id": volume_id, "size_limit": 7}).status_code == 200
    row = srv.rows(Volume, tenant_id="default", volume_id=volume_id)
    r = c.put(f"/v3/pods/volumes/{volume_id}", json=body)
    assert r.status_code == 400, r.text
    assert next(iter(body)) in error_text(r)
    assert srv.rows(Volume, tenant_id="default", volume_id=volume_id) == row


URL_CALLS = [  # every call on one volume's URL
    ("GET", ""),
    ("PUT", ""),
    ("DELETE", ""),
    ("GET", "/list"),
    ("GET", "/contents/a.txt"),
    ("POST", "/upload/a.txt"),
    ("GET", "/permissions"),
    ("POST", "/permissions"),
    ("DELETE", "/permissions/someone"),
]


def test_unknown_ids_in_urls_are_404(srv: Any, c: httpx.Client) -> None:
    assert_unknown_ids_are_404(c, "/v3/pods/volumes", ("nosuchvolume", "BAD-ID", "x", "v" * 300), URL_CALLS)


@pytest.mark.parametrize(
    "body",
    [
        {"user": "someone", "level": "SUPER"},
        {"user": "someone", "level": ""},
        {"user": "", "level": "READ"},
        {"user": "*", "level": "READ"},  # the wildcard is for templates only
        {"user": "a:b", "level": "READ"},
        {"user": "someone"},
        {"level": "READ"},
        {"user": "someone", "level": "READ", "extra": 1},
    ],
    ids=["bad-level", "empty-level", "empty-user", "wildcard", "colon", "no-level", "no-user", "extra"],
)
def test_bad_permission_bodies(srv: Any, c: httpx.Client, new_id: Callable, body: dict[str, Any]) -> None:
    volume_id = new_id("vol")
    assert c.post("/v3/pods/volumes", json={"volume_id": volume_id}).status_code == 200
    grants = srv.rows(Permission, object_type="volume", object_id=volume_id)
    r = c.post(f"/v3/pods/volumes/{volume_id}/permissions", json=body)
    assert r.status_code == 400, r.text
    error_text(r)
    assert srv.rows(Permission, object_type="volume", object_id=volume_id) == grants


def test_last_admin_cannot_be_removed(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    volume_id = new_id("vol")
    assert c.post("/v3/pods/volumes", json={"volume_id": volume_id}).status_code == 200
    r = c.delete(f"/v3/pods/volumes/{volume_id}/permissions/{OWNER}")
    assert r.status_code == 409, r.text
    r = c.post(f"/v3/pods/volumes/{volume_id}/permissions", json={"user": OWNER, "level": "USER"})
    assert r.status_code == 409, r.text
    assert c.get(f"/v3/pods/volumes/{volume_id}/permissions").json()["result"]["permissions"] == [
        f"{OWNER}:ADMIN"
    ]
    r = c.delete(f"/v3/pods/volumes/{volume_id}/permissions/nobody")
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    "mount",
    [
        {"type": "tapisvolume", "mount_path": "relative/path"},
        {"type": "tapisvolume", "mount_path": "/"},
        {"type": "tapisvolume", "mount_path": "/a/../etc"},
        {"type": "tapisvolume", "mount_path": "/mnt", "sub_path": "../other"},
        {"type": "tapisvolume", "mount_path": "/mnt", "sub_path": "a\\..\\b"},
        {"type": "nfs", "mount_path": "/mnt"},
        {"type": "tapisvolume", "mount_path": "/mnt", "read_only": False},
        {"type": "tapisvolume", "mount_path": "/mnt", "volume_id": "someothervolume"},
    ],
    ids=[
        "relative-mount-path",
        "root-mount-path",
        "dotdot-mount-path",
        "dotdot-sub-path",
        "backslash-sub-path",
        "bad-type",
        "unknown-key",
        "volume-id-not-the-key",
    ],
)
def test_bad_volume_mounts(srv: Any, c: httpx.Client, new_id: Callable, mount: dict[str, Any]) -> None:
    volume_id, pod_id = new_id("vol"), new_id("pod")
    assert c.post("/v3/pods/volumes", json={"volume_id": volume_id}).status_code == 200
    srv.allow_image("localhost/openpods-test/busybox")
    r = c.post(
        "/v3/pods",
        json={
            "pod_id": pod_id,
            "image": "localhost/openpods-test/busybox",
            "volume_mounts": {volume_id: mount},
        },
    )
    assert r.status_code == 400, r.text
    assert "volume_mounts" in error_text(r) or "mount" in error_text(r)
    assert c.get(f"/v3/pods/{pod_id}").status_code == 404


def test_mount_of_a_missing_volume_or_snapshot(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    srv.allow_image("localhost/openpods-test/busybox")
    for mount_type in ("tapisvolume", "tapissnapshot"):
        pod_id = new_id("pod")
        r = c.post(
            "/v3/pods",
            json={
                "pod_id": pod_id,
                "image": "localhost/openpods-test/busybox",
                "volume_mounts": {"nosuchthing": {"type": mount_type, "mount_path": "/m"}},
            },
        )
        assert r.status_code in (400, 404), r.text
        assert "nosuchthing" in error_text(r)
        assert c.get(f"/v3/pods/{pod_id}").status_code == 404


@pytest.mark.parametrize(
    "bad",
    ["a%00b", "vol%00", "%00", "a%01b", "a%0ab"],
    ids=["nul", "nul-end", "only-nul", "control", "newline"],
)
def test_control_characters_in_url_ids_are_4xx(srv: Any, new_id: Callable, bad: str) -> None:
    """An id with a NUL byte or another control character (decoded from the URL) names nothing: 404 or 400 on
    every volume endpoint, and as the user of a permission; never a 500 (PostgreSQL refuses NUL bytes in query
    parameters)."""
    volume_id = new_id("vol")
    assert srv.client(OWNER).post("/v3/pods/volumes", json={"volume_id": volume_id}).status_code == 200
    assert_control_characters_are_4xx(srv, OWNER, "/v3/pods/volumes", bad, URL_CALLS, volume_id)
