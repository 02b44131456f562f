"""The volume and snapshot files API through HTTP: uploads (streamed, parents created, explicit overwrite),
downloads (a file as it is, a directory as a zip), ``size`` (MB, rounded up, current in every answer),
``size_limit`` enforcement with nothing half-written, and deleting volumes and snapshots that pods mount.

Decisions under test: a directory downloads as a zip even without ``zip=true``, and ``zip=true`` on a file is a
400; an upload onto an existing file is a 409 unless ``?overwrite=true``; deleting a volume or snapshot that a
pod which is not STOPPED mounts is a 409 unless ``?force=true``.
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from file_tree import tree

from openpods.storage.local import TEMP_PREFIX
from openpods.store.tables import Permission, Snapshot, Volume

MB = 1024 * 1024
IMAGE = "localhost/openpods-test/busybox"
OWNER = "filesowner"


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    handle = make_module_server(import_starter_catalog=False)
    handle.add_user(OWNER)
    handle.allow_image(IMAGE)
    return handle


@pytest.fixture(scope="module")
def c(srv: Any) -> httpx.Client:
    return srv.client(OWNER)


def vdir(srv: Any, volume_id: str) -> Path:
    return srv.settings.data_dir / "storage" / "default" / "volumes" / volume_id


def sdir(srv: Any, snapshot_id: str) -> Path:
    return srv.settings.data_dir / "storage" / "default" / "snapshots" / snapshot_id


def make_volume(c: httpx.Client, volume_id: str, size_limit: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"volume_id": volume_id, "description": "files test"}
    if size_limit is not None:
        body["size_limit"] = size_limit
    r = c.post("/v3/pods/volumes", json=body)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def put(c: httpx.Client, volume_id: str, path: str, data: bytes, **params: Any) -> httpx.Response:
    return c.post(f"/v3/pods/volumes/{volume_id}/upload/{path}", files={"file": ("f", data)}, params=params)


def temp_files(top: Path) -> list[str]:
    return [name for _, _, files in os.walk(top) for name in files if name.startswith(TEMP_PREFIX)]


def volume_size(c: httpx.Client, volume_id: str) -> int:
    r = c.get(f"/v3/pods/volumes/{volume_id}")
    assert r.status_code == 200, r.text
    return r.json()["result"]["size"]


# ------------------------------------------------------------------------------------------------ uploads


def test_upload_creates_parents_and_answers_a_file_model(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    make_volume(c, vol)
    r = put(c, vol, "a/b/c/deep.txt", b"deep\n")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["result"] == "/a/b/c/deep.txt"  # the spec types the result as a string
    info = r.json()["metadata"]["file"]
    assert info["path"] == "/a/b/c/deep.txt"
    assert info["name"] == "deep.txt"
    assert info["type"] == "file"
    assert info["size"] == 5
    assert info["lastModified"].endswith("Z")
    assert info["nativePermissions"] == "rw-r--r--"
    assert (vdir(srv, vol) / "a" / "b" / "c" / "deep.txt").read_bytes() == b"deep\n"
    listing = c.get(f"/v3/pods/volumes/{vol}/list", params={"path": "/a/b/c"}).json()["result"]
    assert [(f["name"], f["path"], f["type"], f["size"]) for f in listing] == [
        ("deep.txt", "/a/b/c/deep.txt", "file", 5)
    ]
    # ?path= naming a file answers that one file.
    one = c.get(f"/v3/pods/volumes/{vol}/list", params={"path": "a/b/c/deep.txt"}).json()["result"]
    assert [f["path"] for f in one] == ["/a/b/c/deep.txt"]
    # Root listing, '' and '/' are the same.
    for path in (None, "", "/"):
        params = {} if path is None else {"path": path}
        assert [f["name"] for f in c.get(f"/v3/pods/volumes/{vol}/list", params=params).json()["result"]] == [
            "a"
        ]
    assert c.get(f"/v3/pods/volumes/{vol}/list", params={"path": "nope"}).status_code == 404


def test_upload_refuses_to_overwrite_unless_asked(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    make_volume(c, vol)
    assert put(c, vol, "f.txt", b"first").status_code == 200
    r = put(c, vol, "f.txt", b"second")
    assert r.status_code == 409, r.text
    assert "overwrite" in r.json()["message"]
    assert (vdir(srv, vol) / "f.txt").read_bytes() == b"first"
    r = put(c, vol, "f.txt", b"second", overwrite="false")
    assert r.status_code == 409
    r = put(c, vol, "f.txt", b"second", overwrite="true")
    assert r.status_code == 200, r.text
    assert (vdir(srv, vol) / "f.txt").read_bytes() == b"second"
    assert temp_files(vdir(srv, vol)) == []
    # A directory is never replaced by a file, nor can a file hold children.
    assert put(c, vol, "d/x.txt", b"x").status_code == 200
    r = put(c, vol, "d", b"x", overwrite="true")
    assert r.status_code in (400, 409), r.text
    assert (vdir(srv, vol) / "d").is_dir()
    r = put(c, vol, "f.txt/child", b"x")
    assert r.status_code in (400, 409), r.text
    assert (vdir(srv, vol) / "f.txt").read_bytes() == b"second"


def test_upload_refusals(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    make_volume(c, vol)
    for path in ("", "/", "//"):
        r = c.post(f"/v3/pods/volumes/{vol}/upload/{path}", files={"file": ("f", b"x")})
        assert r.status_code in (400, 404, 405), (path, r.status_code, r.text)
    # No part named 'file'.
    r = c.post(f"/v3/pods/volumes/{vol}/upload/x.txt", files={"other": ("f", b"x")})
    assert r.status_code == 400, r.text
    assert "file" in str(r.json()["message"])
    r = c.post(f"/v3/pods/volumes/{vol}/upload/x.txt", content=b"raw body")
    assert r.status_code == 400, r.text
    assert tree(vdir(srv, vol)) == {}
    r = put(c, "nosuchvolume", "x.txt", b"x")
    assert r.status_code == 404


def test_upload_of_an_empty_file_and_of_binary_data(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    make_volume(c, vol)
    assert put(c, vol, "empty", b"").status_code == 200
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value, including \r\n and boundary-like runs
    data += b"\r\n--" + b"-" * 70 + b"\r\n"
    r = put(c, vol, "bin/all.bytes", data)
    assert r.status_code == 200 and r.json()["metadata"]["file"]["size"] == len(data)
    got = c.get(f"/v3/pods/volumes/{vol}/contents/bin/all.bytes")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-length"] == str(len(data))
    assert 'filename="all.bytes"' in got.headers["content-disposition"]
    empty = c.get(f"/v3/pods/volumes/{vol}/contents/empty")
    assert (empty.status_code, empty.content) == (200, b"")


# ------------------------------------------------------------------------------------------------ downloads


def test_directories_download_as_zip_files_as_they_are(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    make_volume(c, vol)
    put(c, vol, "d/one.txt", b"one")
    put(c, vol, "d/sub/two.txt", b"two")
    (vdir(srv, vol) / "d" / "emptydir").mkdir()
    for params in ({}, {"zip": "true"}, {"zip": "false"}):
        r = c.get(f"/v3/pods/volumes/{vol}/contents/d", params=params)
        assert r.status_code == 200, (params, r.text)
        assert r.headers["content-type"] == "application/zip"
        assert 'filename="d.zip"' in r.headers["content-disposition"]
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            assert sorted(zf.namelist()) == ["d/", "d/emptydir/", "d/one.txt", "d/sub/", "d/sub/two.txt"]
            assert zf.read("d/sub/two.txt") == b"two"
    # Nested directory: named after itself.
    r = c.get(f"/v3/pods/volumes/{vol}/contents/d/sub")
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["sub/", "sub/two.txt"]
    # zip=true on a file is a 400 (download files as they are).
    r = c.get(f"/v3/pods/volumes/{vol}/contents/d/one.txt", params={"zip": "true"})
    assert r.status_code == 400, r.text
    assert "zip" in str(r.json()["message"])
    r = c.get(f"/v3/pods/volumes/{vol}/contents/d/one.txt", params={"zip": "false"})
    assert (r.status_code, r.content) == (200, b"one")
    # The whole volume cannot be downloaded.
    for path in ("", "/", "//"):
        r = c.get(f"/v3/pods/volumes/{vol}/contents/{path}")
        assert r.status_code in (400, 404), (path, r.status_code)
    r = c.get(f"/v3/pods/volumes/{vol}/contents/nope.txt")
    assert r.status_code == 404
    assert r.json()["status"] == "error"


def test_snapshot_downloads(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_volume(c, vol)
    put(c, vol, "data/a.txt", b"a")
    put(c, vol, "data/b/c.txt", b"c")
    r = c.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/data"},
    )
    assert r.status_code == 200, r.text
    assert c.get(f"/v3/pods/snapshots/{snap}/contents/data/a.txt").content == b"a"
    r = c.get(f"/v3/pods/snapshots/{snap}/contents/data/b")
    assert r.headers["content-type"] == "application/zip"
    assert c.get(f"/v3/pods/snapshots/{snap}/contents/data/a.txt", params={"zip": "true"}).status_code == 400
    assert c.get(f"/v3/pods/snapshots/{snap}/contents/").status_code in (400, 404)
    listing = c.get(f"/v3/pods/snapshots/{snap}/list", params={"path": "/data"}).json()["result"]
    assert [(f["name"], f["type"]) for f in listing] == [("a.txt", "file"), ("b", "dir")]
    # Files in a snapshot are read-only on disk.
    assert listing[0]["nativePermissions"] == "r--r--r--"


def test_snapshot_destination_path_and_single_file_source(
    srv: Any, c: httpx.Client, new_id: Callable
) -> None:
    vol = new_id("vol")
    make_volume(c, vol)
    put(c, vol, "data/cfg.json", b"{}")
    # A directory into an explicit destination.
    s1 = new_id("snap")
    r = c.post(
        "/v3/pods/snapshots",
        json={
            "snapshot_id": s1,
            "source_volume_id": vol,
            "source_volume_path": "/data",
            "destination_path": "/backup/today",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["destination_path"] == "/backup/today"
    assert (sdir(srv, s1) / "backup" / "today" / "cfg.json").read_bytes() == b"{}"
    # The whole volume.
    s2 = new_id("snap")
    r = c.post(
        "/v3/pods/snapshots", json={"snapshot_id": s2, "source_volume_id": vol, "source_volume_path": "/"}
    )
    assert r.status_code == 200, r.text
    assert (sdir(srv, s2) / "data" / "cfg.json").read_bytes() == b"{}"
    # A single file: by default it keeps its path; or it is named by destination_path.
    s3 = new_id("snap")
    r = c.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": s3, "source_volume_id": vol, "source_volume_path": "/data/cfg.json"},
    )
    assert r.status_code == 200, r.text
    assert c.get(f"/v3/pods/snapshots/{s3}/contents/data/cfg.json").content == b"{}"
    s4 = new_id("snap")
    r = c.post(
        "/v3/pods/snapshots",
        json={
            "snapshot_id": s4,
            "source_volume_id": vol,
            "source_volume_path": "/data/cfg.json",
            "destination_path": "copy.json",
        },
    )
    assert r.status_code == 200, r.text
    assert c.get(f"/v3/pods/snapshots/{s4}/contents/copy.json").content == b"{}"
    assert [f["name"] for f in c.get(f"/v3/pods/snapshots/{s4}/list").json()["result"]] == ["copy.json"]
    # A single file to the snapshot's root has no name.
    s5 = new_id("snap")
    r = c.post(
        "/v3/pods/snapshots",
        json={
            "snapshot_id": s5,
            "source_volume_id": vol,
            "source_volume_path": "/data/cfg.json",
            "destination_path": "/",
        },
    )
    assert r.status_code == 400, r.text
    assert srv.rows(Snapshot, tenant_id="default", snapshot_id=s5) == []
    assert not sdir(srv, s5).exists()


# ------------------------------------------------------------------------------------------------ size


def test_size_is_megabytes_rounded_up_and_current(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    assert make_volume(c, vol)["size"] == 0
    assert volume_size(c, vol) == 0
    put(c, vol, "one-byte", b"x")
    assert volume_size(c, vol) == 1
    put(c, vol, "one-mb", b"\0" * (MB - 1))
    assert volume_size(c, vol) == 1  # exactly 1 MiB
    put(c, vol, "more", b"\0")
    assert volume_size(c, vol) == 2
    # Written behind the API's back (as a pod that mounts the volume does): still current.
    (vdir(srv, vol) / "from-a-pod.bin").write_bytes(b"\0" * (3 * MB))
    assert volume_size(c, vol) == 5
    listed = [v for v in c.get("/v3/pods/volumes").json()["result"] if v["volume_id"] == vol]
    assert listed[0]["size"] == 5
    r = c.put(f"/v3/pods/volumes/{vol}", json={"description": "resized"})
    assert r.status_code == 200 and r.json()["result"]["size"] == 5
    (vdir(srv, vol) / "from-a-pod.bin").unlink()
    assert volume_size(c, vol) == 2
    # The snapshot's size is that of what it holds.
    snap = new_id("snap")
    r = c.post(
        "/v3/pods/snapshots", json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/"}
    )
    assert r.status_code == 200 and r.json()["result"]["size"] == 2
    assert c.get(f"/v3/pods/snapshots/{snap}").json()["result"]["size"] == 2


def test_size_limit_refusal_leaves_nothing(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    make_volume(c, vol, size_limit=1)
    keep = os.urandom(700_000)
    assert put(c, vol, "keep.bin", keep).status_code == 200
    before = tree(vdir(srv, vol))

    def refused(r: httpx.Response) -> None:
        assert r.status_code == 413, r.text
        message = str(r.json()["message"])
        assert "limit" in message.lower() or "exceed" in message.lower(), message
        assert tree(vdir(srv, vol)) == before
        assert temp_files(vdir(srv, vol)) == []
        assert (vdir(srv, vol) / "keep.bin").read_bytes() == keep

    refused(put(c, vol, "more.bin", os.urandom(400_000)))
    refused(put(c, vol, "new/dirs/more.bin", os.urandom(400_000)))  # directories it made are gone too
    # Overwriting: the replaced file counts once, but 1.1 MB is still too much; the old content stays.
    refused(put(c, vol, "keep.bin", os.urandom(1_100_000), overwrite="true"))
    assert volume_size(c, vol) == 1
    # Up to the limit exactly is fine (the replaced file does not count twice).
    exact = os.urandom(MB)
    r = put(c, vol, "keep.bin", exact, overwrite="true")
    assert r.status_code == 200, r.text
    assert (vdir(srv, vol) / "keep.bin").read_bytes() == exact
    r = put(c, vol, "one-more-byte", b"x")
    assert r.status_code == 413
    assert not (vdir(srv, vol) / "one-more-byte").exists()
    # Raising the limit lets it through; size is current in the answer.
    r = c.put(f"/v3/pods/volumes/{vol}", json={"size_limit": 2})
    assert r.status_code == 200 and r.json()["result"]["size_limit"] == 2
    assert put(c, vol, "one-more-byte", b"x").status_code == 200
    assert volume_size(c, vol) == 2


def test_size_limit_counts_what_pods_wrote(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    make_volume(c, vol, size_limit=1)
    (vdir(srv, vol) / "written-by-a-pod").write_bytes(b"\0" * (2 * MB))  # pods are not stopped by the limit
    r = put(c, vol, "tiny", b"x")
    assert r.status_code == 413, r.text
    assert not (vdir(srv, vol) / "tiny").exists()
    assert volume_size(c, vol) == 2


def test_snapshot_size_limit(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    make_volume(c, vol)
    put(c, vol, "data/big.bin", b"\0" * (MB + 1))
    snap = new_id("snap")
    r = c.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/data", "size_limit": 1},
    )
    assert r.status_code == 413, r.text
    assert srv.rows(Snapshot, tenant_id="default", snapshot_id=snap) == []
    assert srv.rows(Permission, object_type="snapshot", object_id=snap) == []
    assert not sdir(srv, snap).exists()
    assert c.get(f"/v3/pods/snapshots/{snap}").status_code == 404
    r = c.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/data", "size_limit": 2},
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["size"] == 2


# ------------------------------------------------------------------------------------------------ lifecycle


def test_delete_volume_and_snapshot_remove_their_files(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_volume(c, vol)
    put(c, vol, "x/y.txt", b"y")
    assert (
        c.post(
            "/v3/pods/snapshots",
            json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/x"},
        ).status_code
        == 200
    )
    r = c.delete(f"/v3/pods/snapshots/{snap}")
    assert r.status_code == 200, r.text
    assert not sdir(srv, snap).exists()  # read-only on disk, removed all the same
    assert srv.rows(Snapshot, tenant_id="default", snapshot_id=snap) == []
    assert srv.rows(Permission, object_type="snapshot", object_id=snap) == []
    r = c.delete(f"/v3/pods/volumes/{vol}")
    assert r.status_code == 200, r.text
    assert not vdir(srv, vol).exists()
    assert srv.rows(Volume, tenant_id="default", volume_id=vol) == []
    assert srv.rows(Permission, object_type="volume", object_id=vol) == []
    assert c.get(f"/v3/pods/volumes/{vol}").status_code == 404
    assert c.delete(f"/v3/pods/volumes/{vol}").status_code == 404
    # The id can be used again, and starts empty.
    make_volume(c, vol)
    assert c.get(f"/v3/pods/volumes/{vol}/list").json()["result"] == []


def test_a_leftover_directory_is_never_reused_or_removed(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol = new_id("vol")
    stray = vdir(srv, vol)
    stray.mkdir(parents=True)
    (stray / "precious.txt").write_bytes(b"data of a volume whose row was lost")
    r = c.post("/v3/pods/volumes", json={"volume_id": vol})
    assert r.status_code == 409, r.text
    assert srv.rows(Volume, tenant_id="default", volume_id=vol) == []
    assert (stray / "precious.txt").read_bytes() == b"data of a volume whose row was lost"


def test_duplicate_ids_are_409(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_volume(c, vol)
    put(c, vol, "f", b"f")
    r = c.post("/v3/pods/volumes", json={"volume_id": vol, "description": "again"})
    assert r.status_code == 409, r.text
    assert c.get(f"/v3/pods/volumes/{vol}").json()["result"]["description"] == "files test"
    body = {"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/"}
    assert c.post("/v3/pods/snapshots", json=body).status_code == 200
    r = c.post("/v3/pods/snapshots", json={**body, "description": "again"})
    assert r.status_code == 409, r.text
    assert (sdir(srv, snap) / "f").read_bytes() == b"f"


def test_update_volume_and_snapshot(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_volume(c, vol)
    r = c.put(f"/v3/pods/volumes/{vol}", json={"description": "new words", "size_limit": 5})
    assert r.status_code == 200, r.text
    got = c.get(f"/v3/pods/volumes/{vol}").json()["result"]
    assert (got["description"], got["size_limit"]) == ("new words", 5)
    assert got["update_ts"] >= got["creation_ts"]
    r = c.put(f"/v3/pods/volumes/{vol}", json={"description": "new words"})
    assert r.status_code == 200 and r.json()["status"] == "error"  # no change, Tapis style
    assert (
        c.post(
            "/v3/pods/snapshots",
            json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/"},
        ).status_code
        == 200
    )
    r = c.put(
        f"/v3/pods/snapshots/{snap}",
        json={"description": "renamed", "cron": "@daily", "retention_policy": "keep_last=3"},
    )
    assert r.status_code == 200, r.text
    got = c.get(f"/v3/pods/snapshots/{snap}").json()["result"]
    assert (got["description"], got["cron"], got["retention_policy"]) == ("renamed", "@daily", "keep_last=3")
    # Source and destination cannot be changed.
    r = c.put(f"/v3/pods/snapshots/{snap}", json={"source_volume_path": "/elsewhere"})
    assert r.status_code == 400, r.text
    assert c.get(f"/v3/pods/snapshots/{snap}").json()["result"]["source_volume_path"] == "/"


@pytest.mark.parametrize("kind", ["volume", "snapshot"])
def test_delete_of_a_mounted_object_needs_force(
    srv: Any, c: httpx.Client, new_id: Callable, kind: str
) -> None:
    vol = new_id("vol")
    make_volume(c, vol)
    put(c, vol, "f", b"f")
    object_id = vol
    mount_type = "tapisvolume"
    if kind == "snapshot":
        object_id = new_id("snap")
        mount_type = "tapissnapshot"
        assert (
            c.post(
                "/v3/pods/snapshots",
                json={"snapshot_id": object_id, "source_volume_id": vol, "source_volume_path": "/"},
            ).status_code
            == 200
        )
    top = (vdir if kind == "volume" else sdir)(srv, object_id)
    url = f"/v3/pods/{kind}s/{object_id}"
    # A STOPPED pod that mounts it does not block the delete; a pod that is not stopped does.
    stopped, running = new_id("pod"), new_id("pod")
    mounts = {object_id: {"type": mount_type, "mount_path": "/mnt/x"}}
    r = c.post(
        "/v3/pods",
        json={"pod_id": stopped, "image": IMAGE, "status_requested": "OFF", "volume_mounts": mounts},
    )
    assert r.status_code == 200, r.text
    r = c.post("/v3/pods", json={"pod_id": running, "image": IMAGE, "volume_mounts": mounts})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status"] != "STOPPED"
    r = c.delete(url)
    assert r.status_code == 409, r.text
    assert running in r.json()["message"]
    assert "force" in r.json()["message"]
    assert top.is_dir() and c.get(url).status_code == 200
    r = c.delete(url, params={"force": "false"})
    assert r.status_code == 409
    # A user with USER (not ADMIN) cannot force it.
    srv.add_user("forcer")
    assert c.post(f"{url}/permissions", json={"user": "forcer", "level": "USER"}).status_code == 200
    r = srv.client("forcer").delete(url, params={"force": "true"})
    assert r.status_code == 403, r.text
    assert top.is_dir()
    # Its ADMIN can.
    r = c.delete(url, params={"force": "true"})
    assert r.status_code == 200, r.text
    assert not top.exists()
    assert c.get(url).status_code == 404


def test_a_volume_with_scheduled_snapshots_needs_force(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_volume(c, vol)
    assert (
        c.post(
            "/v3/pods/snapshots",
            json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/", "cron": "@hourly"},
        ).status_code
        == 200
    )
    r = c.delete(f"/v3/pods/volumes/{vol}")
    assert r.status_code == 409, r.text
    assert snap in r.json()["message"]
    assert c.delete(f"/v3/pods/volumes/{vol}", params={"force": "true"}).status_code == 200
    # The snapshot itself stays (it is a copy).
    assert c.get(f"/v3/pods/snapshots/{snap}").status_code == 200


@pytest.mark.parametrize(
    "name",
    ["résumé.txt", "日本語.txt", "emoji-😀.txt", 'quote"d.txt', "semi;colon.txt", "sp ace.txt"],
    ids=["latin1", "cjk", "emoji", "quote", "semicolon", "space"],
)
def test_any_valid_name_uploads_lists_and_downloads(
    srv: Any, c: httpx.Client, new_id: Callable, name: str
) -> None:
    """A file name that the upload accepted must download too (as a file, and inside a zip of its directory,
    also when the directory itself has that name): a 200 with the right bytes, never a 500."""
    vol = new_id("vol")
    make_volume(c, vol)
    data = f"content of {name}".encode()
    r = put(c, vol, f"dir/{name}", data)
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["file"]["name"] == name
    assert [
        f["name"] for f in c.get(f"/v3/pods/volumes/{vol}/list", params={"path": "dir"}).json()["result"]
    ] == [name]
    got = c.get(f"/v3/pods/volumes/{vol}/contents/dir/{name}")
    assert got.status_code == 200, (name, got.status_code, got.text[:200])
    assert got.content == data
    assert "attachment" in got.headers["content-disposition"]
    # The directory that holds it, zipped; and a directory of that name.
    r = put(c, vol, f"{name}/inner.txt", b"inner")
    assert r.status_code == 200, r.text
    for directory, member in (("dir", f"dir/{name}"), (name, f"{name}/inner.txt")):
        z = c.get(f"/v3/pods/volumes/{vol}/contents/{directory}")
        assert z.status_code == 200, (directory, z.status_code, z.text[:200])
        with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
            assert member in zf.namelist(), zf.namelist()


def test_delete_of_a_volume_mounted_through_a_template_needs_force(
    srv: Any, c: httpx.Client, new_id: Callable
) -> None:
    """A pod that is not stopped mounts the volume through its template (not its own volume_mounts): the volume
    is just as much in use."""
    vol, template_id, pod_id = new_id("vol"), new_id("tpl"), new_id("pod")
    make_volume(c, vol)
    assert c.post("/v3/pods/templates", json={"template_id": template_id}).status_code == 200
    r = c.post(
        f"/v3/pods/templates/{template_id}/tags",
        json={
            "pod_definition": {
                "image": IMAGE,
                "volume_mounts": {vol: {"type": "tapisvolume", "mount_path": "/d"}},
            },
            "commit_message": "with a volume",
        },
    )
    assert r.status_code == 200, r.text
    r = c.post("/v3/pods", json={"pod_id": pod_id, "template": template_id})
    assert r.status_code == 200, r.text
    assert c.get(f"/v3/pods/{pod_id}/derived").json()["result"]["volume_mounts"][vol]["mount_path"] == "/d"
    r = c.delete(f"/v3/pods/volumes/{vol}")
    assert r.status_code == 409, (r.status_code, r.text)
    assert vdir(srv, vol).is_dir()


def _health_passes() -> float:
    from openpods.controllers.health import PASS_SECONDS

    for metric in PASS_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


def test_directories_without_a_row_are_reported_never_removed(
    make_server: Any, new_id: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 6: nothing is ever deleted just because a database row is missing -- an unexpected directory is
    reported (a WARNING naming it), not removed. The controllers run (health every 0.2 s) while we wait."""
    import logging
    import time

    srv = make_server(import_starter_catalog=False, roles={"api", "health"}, health_interval_sec=0.2)
    srv.add_user(OWNER)
    c = srv.client(OWNER)
    lost = new_id("vol")
    make_volume(c, lost)
    put(c, lost, "precious.txt", b"keep me")
    with srv.session() as s, s.begin():  # the row is lost (a restore from an old backup, a bad migration ...)
        s.delete(s.get(Volume, ("default", lost)))
    storage = srv.settings.data_dir / "storage" / "default"
    stray_vol = storage / "volumes" / "strayvol"
    stray_snap = storage / "snapshots" / "straysnap"
    for d in (stray_vol, stray_snap):
        d.mkdir(parents=True)
        (d / "data.bin").write_bytes(b"keep me too")
    caplog.set_level(logging.INFO)
    start = _health_passes()
    deadline = time.monotonic() + 60
    while _health_passes() < start + 5:
        assert time.monotonic() < deadline, "the health loop did not run"
        time.sleep(0.1)
    assert (vdir(srv, lost) / "precious.txt").read_bytes() == b"keep me"
    for d in (stray_vol, stray_snap):
        assert (d / "data.bin").read_bytes() == b"keep me too"
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("openpods")
    ]
    for name in (lost, "strayvol", "straysnap"):
        assert any(name in m for m in warnings), (
            f"no warning names the unexpected directory {name}: {warnings}"
        )
