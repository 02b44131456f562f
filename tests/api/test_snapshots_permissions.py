"""Authorization of every snapshot endpoint, through HTTP against a real server.

Levels: get_snapshot, list_snapshot_files → READ; update_snapshot, get_snapshot_contents,
get_snapshot_permissions → USER; delete_snapshot, set/delete_snapshot_permission → ADMIN; list_snapshots shows
snapshots with any level; create_snapshot needs USER on the *source volume* (and makes the caller ADMIN of the
snapshot); mounting a snapshot into a pod needs READ on it. Site admins hold ADMIN on everything of their tenant.

The matrix of tests/support/permission_matrix.py checks every endpoint: no token → 401; a user without
permission → 404 and nothing changed; READ, USER and ADMIN are each allowed exactly what the table says; users
of the other tenant never see the snapshot. This file adds what is particular to snapshots.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from permission_matrix import LEVELS, Endpoint, Env, Kind, PermissionMatrix, Users, change_description, grant

from openpods.store.tables import Permission, Pod, Snapshot

OWNER = "owner"
GRANTEE = "grantee"
STRANGER = "stranger"
EXTRA = "extra"
IMAGE = "localhost/openpods-test/busybox"
SOURCE = "snapsrc"  # a volume of OWNER holding data/f.txt, made by the env fixture

ENDPOINTS = [
    Endpoint("get_snapshot", "GET", "", "READ"),
    Endpoint("list_snapshot_files", "GET", "/list", "READ"),
    Endpoint("update_snapshot", "PUT", "", "USER", change_description),
    Endpoint("get_snapshot_contents", "GET", "/contents/data/f.txt", "USER", raw=True),
    Endpoint("get_snapshot_permissions", "GET", "/permissions", "USER"),
    Endpoint("delete_snapshot", "DELETE", "", "ADMIN"),
    Endpoint("set_snapshot_permission", "POST", "/permissions", "ADMIN", grant(EXTRA, "USER")),
    Endpoint("delete_snapshot_permission", "DELETE", f"/permissions/{EXTRA}", "ADMIN"),
]


def create_body(env: Env, snapshot_id: str) -> dict[str, Any]:
    return {"snapshot_id": snapshot_id, "source_volume_id": SOURCE, "source_volume_path": "/data"}


def create_snapshot(env: Env, snapshot_id: str) -> None:
    """A snapshot of the shared volume's /data, owned by OWNER."""
    r = env.client(OWNER).post(
        "/v3/pods/snapshots", json={**create_body(env, snapshot_id), "description": SNAPSHOTS.description}
    )
    assert r.status_code == 200, r.text


def assert_allowed(env: Env, ep: Endpoint, r: httpx.Response, snapshot_id: str, caller: str) -> None:
    if ep.name == "get_snapshot_contents":
        assert r.content == b"f"
    elif ep.name == "list_snapshot_files":
        assert [f["name"] for f in r.json()["result"]] == ["data"]


SNAPSHOTS = Kind(
    name="snapshot",
    collection="/v3/pods/snapshots",
    model=Snapshot,
    endpoints=ENDPOINTS,
    description="permission test snapshot",
    create=create_snapshot,
    users=Users(OWNER, GRANTEE, STRANGER, EXTRA),
    create_body=create_body,
    folder="snapshots",
    assert_allowed=assert_allowed,
    no_access=(404,),
)
make_snapshot = SNAPSHOTS.make
sdir = SNAPSHOTS.storage_dir


@pytest.fixture(scope="module")
def env(make_module_server: Any) -> Env:
    env = SNAPSHOTS.make_env(make_module_server(), IMAGE)
    owner = env.client(OWNER)
    assert owner.post("/v3/pods/volumes", json={"volume_id": SOURCE}).status_code == 200
    r = owner.post(f"/v3/pods/volumes/{SOURCE}/upload/data/f.txt", files={"file": ("f.txt", b"f")})
    assert r.status_code == 200, r.text
    return env


class TestSnapshotMatrix(PermissionMatrix):
    kind = SNAPSHOTS


# ------------------------------------------------------------------------------------------------ create_snapshot


@pytest.mark.parametrize("level", [None, *LEVELS])
def test_create_snapshot_needs_user_on_the_source_volume(
    env: Env, new_id: Callable[[str], str], level: str | None
) -> None:
    volume_id, snapshot_id = new_id("vol"), new_id("snap")
    owner = env.client(OWNER)
    assert owner.post("/v3/pods/volumes", json={"volume_id": volume_id}).status_code == 200
    assert (
        owner.post(f"/v3/pods/volumes/{volume_id}/upload/x.txt", files={"file": ("x", b"x")}).status_code
        == 200
    )
    if level:
        r = owner.post(f"/v3/pods/volumes/{volume_id}/permissions", json={"user": GRANTEE, "level": level})
        assert r.status_code == 200
    r = env.client(GRANTEE).post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snapshot_id, "source_volume_id": volume_id, "source_volume_path": "/"},
    )
    if level in ("USER", "ADMIN"):
        assert r.status_code == 200, r.text
        # The creator becomes ADMIN of the snapshot (not of the volume).
        perms = env.client(GRANTEE).get(f"/v3/pods/snapshots/{snapshot_id}/permissions").json()["result"]
        assert perms["permissions"] == [f"{GRANTEE}:ADMIN"]
        assert (sdir(env, snapshot_id) / "x.txt").read_bytes() == b"x"
    else:
        expected = 403 if level == "READ" else 404
        assert r.status_code == expected, (level, r.status_code, r.text)
        assert volume_id in r.json()["message"]
        assert env.server.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id) == []
        assert env.server.rows(Permission, object_type="snapshot", object_id=snapshot_id) == []
        assert not sdir(env, snapshot_id).exists()


def test_site_admin_may_snapshot_any_volume(env: Env, new_id: Callable[[str], str]) -> None:
    snapshot_id = new_id("snap")
    r = env.client("admin").post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snapshot_id, "source_volume_id": SOURCE, "source_volume_path": "/data"},
    )
    assert r.status_code == 200, r.text


def test_snapshot_access_does_not_grant_volume_access(env: Env, new_id: Callable[[str], str]) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id, {GRANTEE: "ADMIN"})
    grantee = env.client(GRANTEE)
    assert grantee.get(f"/v3/pods/snapshots/{snapshot_id}/contents/data/f.txt").content == b"f"
    assert grantee.get(f"/v3/pods/volumes/{SOURCE}").status_code == 404
    assert grantee.get(f"/v3/pods/volumes/{SOURCE}/contents/data/f.txt").status_code == 404


# ------------------------------------------------------------------------------------------------ other tenant


def test_other_tenant_cannot_mount_the_snapshot(env: Env, new_id: Callable[[str], str]) -> None:
    snapshot_id, pod_id = new_id("snap"), new_id("pod")
    make_snapshot(env, snapshot_id, {GRANTEE: "ADMIN"})
    r = env.client("other:admin").post(
        "/v3/pods",
        json={
            "pod_id": pod_id,
            "image": IMAGE,
            "volume_mounts": {snapshot_id: {"type": "tapissnapshot", "mount_path": "/m"}},
        },
    )
    assert r.status_code in (400, 404), r.text
    assert env.server.rows(Pod, tenant_id="other", pod_id=pod_id) == []


# ------------------------------------------------------------------------------------------------ mounting


@pytest.mark.parametrize("level", [None, *LEVELS])
def test_mounting_a_snapshot_needs_read(env: Env, new_id: Callable[[str], str], level: str | None) -> None:
    snapshot_id, pod_id, pod2 = new_id("snap"), new_id("pod"), new_id("pod")
    make_snapshot(env, snapshot_id, {GRANTEE: level} if level else {})
    mounts = {snapshot_id: {"type": "tapissnapshot", "mount_path": "/mnt/snap"}}
    grantee = env.client(GRANTEE)
    r = grantee.post(
        "/v3/pods",
        json={"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF", "volume_mounts": mounts},
    )
    # update_pod on a pod of one's own, adding the mount
    assert (
        grantee.post("/v3/pods", json={"pod_id": pod2, "image": IMAGE, "status_requested": "OFF"}).status_code
        == 200
    )
    before = env.server.rows(Pod, tenant_id="default", pod_id=pod2)
    u = grantee.put(f"/v3/pods/{pod2}", json={"volume_mounts": mounts})
    if level:
        assert r.status_code == 200, r.text
        assert r.json()["result"]["volume_mounts"][snapshot_id]["type"] == "tapissnapshot"
        assert u.status_code == 200, u.text
    else:
        assert r.status_code in (403, 404), r.text
        assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == []
        assert u.status_code in (403, 404), u.text
        assert env.server.rows(Pod, tenant_id="default", pod_id=pod2) == before


def test_template_cannot_mount_a_snapshot_without_read(env: Env, new_id: Callable[[str], str]) -> None:
    """A user with no permission on a snapshot writes a template that mounts it and creates a pod from it: the
    pod must not get the snapshot (the tag or the pod is refused)."""
    snapshot_id, template_id, pod_id = new_id("snap"), new_id("tpl"), new_id("pod")
    make_snapshot(env, snapshot_id)
    stranger = env.client(STRANGER)
    assert stranger.post("/v3/pods/templates", json={"template_id": template_id}).status_code == 200
    tag = stranger.post(
        f"/v3/pods/templates/{template_id}/tags",
        json={
            "pod_definition": {
                "image": IMAGE,
                "volume_mounts": {snapshot_id: {"type": "tapissnapshot", "mount_path": "/loot"}},
            },
            "commit_message": "mount it",
        },
    )
    if tag.status_code in (403, 404):
        return
    assert tag.status_code == 200, tag.text
    r = stranger.post("/v3/pods", json={"pod_id": pod_id, "template": template_id, "status_requested": "OFF"})
    assert r.status_code in (403, 404), (
        f"{STRANGER} created pod {pod_id} whose template mounts snapshot {snapshot_id} without READ on it "
        f"({r.status_code})"
    )
    assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == []
