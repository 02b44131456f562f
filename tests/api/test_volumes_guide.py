"""The user guide's "Storage Interactions" examples (volumes and snapshots), run as written with the unmodified
tapipy client against a real server.

The guide's curl paths are outdated; tapipy follows the spec's paths (``/v3/pods/volumes/...``,
``/v3/pods/snapshots/...``), which is what these tests exercise. Design decisions the examples rely on:

- the guide's ``volume_mounts`` carry an extra ``volume_id`` key: it is accepted (and not stored);
- a snapshot's ``destination_path`` defaults to its ``source_volume_path``, so a snapshot of ``/data`` holds
  ``/data/...`` and ``get_snapshot_contents(path='/data')`` works;
- a directory downloads as a zip even with ``zip=False``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from tapipy import errors as tapipy_errors
from tapipy.tapis import Tapis

from openpods.store.tables import Permission, Snapshot, Volume

IMAGE = "localhost/openpods-test/busybox"
SQL = b"CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n"


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    handle = make_module_server(import_starter_catalog=False)
    handle.allow_image(IMAGE)
    handle.add_user("guideuser")
    return handle


@pytest.fixture(scope="module")
def t(srv: Any) -> Tapis:
    return srv.tapis("guideuser")


def volume_dir(srv: Any, volume_id: str, tenant: str = "default") -> Path:
    return srv.settings.data_dir / "storage" / tenant / "volumes" / volume_id


def snapshot_dir(srv: Any, snapshot_id: str, tenant: str = "default") -> Path:
    return srv.settings.data_dir / "storage" / tenant / "snapshots" / snapshot_id


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def test_guide_volume_examples(srv: Any, t: Tapis, tmp_path: Path) -> None:
    # Create a volume
    vol = t.pods.create_volume(volume_id="myvolume", description="My persistent volume", size_limit=1024)
    assert vol.volume_id == "myvolume"
    assert vol.description == "My persistent volume"
    assert vol.size_limit == 1024
    assert vol.size == 0
    assert vol.status == "AVAILABLE"
    assert volume_dir(srv, "myvolume").is_dir()
    assert srv.rows(Permission, object_type="volume", object_id="myvolume")[0]["level"] == "ADMIN"

    # Attach the volume to a pod on pod creation (can also update existing pods)
    pod = t.pods.create_pod(
        pod_id="mypod",
        image=IMAGE,
        volume_mounts={
            "myvolume": {"type": "tapisvolume", "mount_path": "/mnt/data", "volume_id": "myvolume"}
        },
    )
    mount = pod.volume_mounts.myvolume
    assert (mount.type, mount.mount_path) == ("tapisvolume", "/mnt/data")
    # The guide's extra key is accepted but not stored: the dict key already names the volume.
    assert not hasattr(mount, "volume_id")
    assert t.pods.get_pod(pod_id="mypod").volume_mounts.myvolume.mount_path == "/mnt/data"

    # List files in the volume
    files = t.pods.list_volume_files(volume_id="myvolume")
    assert files == []

    # Upload a file to the volume
    local = tmp_path / "file.sql"
    local.write_bytes(SQL)
    with open(local, "rb") as file:
        uploaded = t.pods.upload_to_volume(volume_id="myvolume", path="/data/file.sql", file=file)
    assert uploaded == "/data/file.sql"  # the spec types the result as a string
    assert (volume_dir(srv, "myvolume") / "data" / "file.sql").read_bytes() == SQL

    files = t.pods.list_volume_files(volume_id="myvolume")
    assert [(f.name, f.type, f.path) for f in files] == [("data", "dir", "/data")]
    for f in files:
        assert f.lastModified.endswith("Z")
        assert len(f.nativePermissions) == 9

    # Get contents of a file or directory (as zip, set zip=True)
    contents = t.pods.get_volume_contents(volume_id="myvolume", path="/data", zip=False)
    # A directory comes as a zip archive either way.
    assert unzip(contents) == {"data/": b"", "data/file.sql": SQL}
    assert unzip(t.pods.get_volume_contents(volume_id="myvolume", path="/data", zip=True)) == {
        "data/": b"",
        "data/file.sql": SQL,
    }
    assert t.pods.get_volume_contents(volume_id="myvolume", path="/data/file.sql", zip=False) == SQL
    assert t.pods.get_volume_contents(volume_id="myvolume", path="data/file.sql") == SQL

    # size is current: 1 byte .. 1 MB counts as 1 MB (rounded up).
    assert t.pods.get_volume(volume_id="myvolume").size == 1
    assert [v.size for v in t.pods.list_volumes() if v.volume_id == "myvolume"] == [1]

    # "... (can also update existing pods)"
    t.pods.create_volume(volume_id="myvolumetwo", description="second volume")
    updated = t.pods.update_pod(
        pod_id="mypod",
        volume_mounts={
            "myvolume": {"type": "tapisvolume", "mount_path": "/mnt/data", "volume_id": "myvolume"},
            "myvolumetwo": {"type": "tapisvolume", "mount_path": "/mnt/two", "volume_id": "myvolumetwo"},
        },
    )
    assert updated.volume_mounts.myvolumetwo.mount_path == "/mnt/two"


def test_guide_snapshot_examples(srv: Any, t: Tapis) -> None:
    if not srv.rows(Volume, tenant_id="default", volume_id="myvolume"):
        t.pods.create_volume(volume_id="myvolume", description="My persistent volume", size_limit=1024)
        t.pods.upload_to_volume(volume_id="myvolume", path="/data/file.sql", file=io.BytesIO(SQL))

    # Create a snapshot
    snap = t.pods.create_snapshot(
        snapshot_id="mysnapshot",
        source_volume_id="myvolume",
        source_volume_path="/data",
        description="Backup of my data",
    )
    assert snap.snapshot_id == "mysnapshot"
    assert snap.source_volume_id == "myvolume"
    assert snap.source_volume_path == "/data"
    assert snap.description == "Backup of my data"
    assert snap.status == "AVAILABLE"
    assert snap.size == 1
    assert snap.cron == "" and snap.retention_policy == ""
    assert (snapshot_dir(srv, "mysnapshot") / "data" / "file.sql").read_bytes() == SQL

    # List files in the snapshot
    files = t.pods.list_snapshot_files(snapshot_id="mysnapshot")
    assert [(f.name, f.type, f.path) for f in files] == [("data", "dir", "/data")]

    # Get contents of a file or directory
    contents = t.pods.get_snapshot_contents(snapshot_id="mysnapshot", path="/data")
    assert unzip(contents) == {"data/": b"", "data/file.sql": SQL}
    assert t.pods.get_snapshot_contents(snapshot_id="mysnapshot", path="/data/file.sql") == SQL

    # A snapshot is a point-in-time copy: later changes to the volume do not show in it.
    t.pods.upload_to_volume(volume_id="myvolume", path="/data/later.txt", file=io.BytesIO(b"later\n"))
    assert [f.name for f in t.pods.list_snapshot_files(snapshot_id="mysnapshot")] == ["data"]
    assert unzip(t.pods.get_snapshot_contents(snapshot_id="mysnapshot", path="/data")) == {
        "data/": b"",
        "data/file.sql": SQL,
    }
    # ... and the snapshot is read-only on disk.
    for path in (
        snapshot_dir(srv, "mysnapshot") / "data",
        snapshot_dir(srv, "mysnapshot") / "data" / "file.sql",
    ):
        assert path.stat().st_mode & 0o222 == 0, path

    assert [s.snapshot_id for s in t.pods.list_snapshots()] == ["mysnapshot"]
    assert t.pods.get_snapshot(snapshot_id="mysnapshot").source_volume_path == "/data"
    row = srv.rows(Snapshot, tenant_id="default", snapshot_id="mysnapshot")[0]
    assert row["parent_snapshot_id"] == ""

    # The snapshot can be mounted into a pod (READ on it is enough; it is mounted read-only).
    pod = t.pods.create_pod(
        pod_id="mysnappod",
        image=IMAGE,
        volume_mounts={
            "mysnapshot": {"type": "tapissnapshot", "mount_path": "/mnt/snap", "volume_id": "mysnapshot"}
        },
    )
    assert pod.volume_mounts.mysnapshot.type == "tapissnapshot"


def test_guide_errors_come_back_as_tapipy_errors(srv: Any, t: Tapis) -> None:
    with pytest.raises(tapipy_errors.BaseTapyException) as exc:
        t.pods.get_volume(volume_id="nosuchvolume")
    assert exc.value.response.status_code == 404
    assert "nosuchvolume" in exc.value.message
    with pytest.raises(tapipy_errors.BaseTapyException) as exc:
        t.pods.list_snapshot_files(snapshot_id="nosuchsnapshot")
    assert exc.value.response.status_code == 404
