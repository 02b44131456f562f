"""Authorization of every volume endpoint, through HTTP against a real server.

Levels (READ < USER < ADMIN; the creator gets ADMIN; site admins hold ADMIN on everything of their tenant):
get_volume, list_volume_files → READ; update_volume, get_volume_contents, upload_to_volume,
get_volume_permissions → USER; delete_volume, set/delete_volume_permission → ADMIN; list_volumes shows volumes
with any level; create_volume needs only a token. Mounting a volume into a pod (create_pod / update_pod) needs
USER on it.

The matrix of tests/support/permission_matrix.py checks every endpoint: no token → 401; a user without
permission → 404 and nothing changed; READ, USER and ADMIN are each allowed exactly what the table says, and a
refused call changes nothing (row, grants, files on disk); users of the other tenant -- even its site admin,
even with the same usernames -- never see the volume. This file adds what is particular to volumes.
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

from openpods.store.tables import Pod, Volume

OWNER = "owner"
GRANTEE = "grantee"
STRANGER = "stranger"
EXTRA = "extra"  # holds READ on every test volume, so delete_volume_permission has a target
IMAGE = "localhost/openpods-test/busybox"

ENDPOINTS = [
    Endpoint("get_volume", "GET", "", "READ"),
    Endpoint("list_volume_files", "GET", "/list", "READ"),
    Endpoint("update_volume", "PUT", "", "USER", change_description),
    Endpoint("get_volume_contents", "GET", "/contents/data/f.txt", "USER", raw=True),
    Endpoint(
        "upload_to_volume",
        "POST",
        "/upload/new/up.txt",
        "USER",
        lambda caller: {"files": {"file": ("up.txt", f"from {caller}".encode())}},
    ),
    Endpoint("get_volume_permissions", "GET", "/permissions", "USER"),
    Endpoint("delete_volume", "DELETE", "", "ADMIN"),
    Endpoint("set_volume_permission", "POST", "/permissions", "ADMIN", grant(EXTRA, "USER")),
    Endpoint("delete_volume_permission", "DELETE", f"/permissions/{EXTRA}", "ADMIN"),
]


def create_volume(env: Env, volume_id: str) -> None:
    """A volume of OWNER holding data/f.txt."""
    owner = env.client(OWNER)
    r = owner.post("/v3/pods/volumes", json={"volume_id": volume_id, "description": VOLUMES.description})
    assert r.status_code == 200, r.text
    r = owner.post(f"/v3/pods/volumes/{volume_id}/upload/data/f.txt", files={"file": ("f.txt", b"f")})
    assert r.status_code == 200, r.text


def assert_allowed(env: Env, ep: Endpoint, r: httpx.Response, volume_id: str, caller: str) -> None:
    if ep.name == "get_volume_contents":
        assert r.content == b"f"
    elif ep.name == "list_volume_files":
        assert [f["name"] for f in r.json()["result"]] == ["data"]
    elif ep.name == "upload_to_volume":
        assert (vdir(env, volume_id) / "new" / "up.txt").read_bytes() == f"from {caller}".encode()


VOLUMES = Kind(
    name="volume",
    collection="/v3/pods/volumes",
    model=Volume,
    endpoints=ENDPOINTS,
    description="permission test volume",
    create=create_volume,
    users=Users(OWNER, GRANTEE, STRANGER, EXTRA),
    folder="volumes",
    assert_allowed=assert_allowed,
    no_access=(404,),
)
make_volume = VOLUMES.make
state = VOLUMES.state
vdir = VOLUMES.storage_dir


@pytest.fixture(scope="module")
def env(make_module_server: Any) -> Env:
    return VOLUMES.make_env(make_module_server(), IMAGE)


class TestVolumeMatrix(PermissionMatrix):
    kind = VOLUMES


def test_any_user_can_create_and_becomes_admin(env: Env, new_id: Callable[[str], str]) -> None:
    volume_id = new_id("vol")
    stranger = env.client(STRANGER)
    r = stranger.post("/v3/pods/volumes", json={"volume_id": volume_id})
    assert r.status_code == 200, r.text
    assert stranger.get(f"/v3/pods/volumes/{volume_id}/permissions").json()["result"]["permissions"] == [
        f"{STRANGER}:ADMIN"
    ]


# ------------------------------------------------------------------------------------------------ other tenant


def test_same_volume_id_in_two_tenants_are_two_volumes(env: Env, new_id: Callable[[str], str]) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id)
    other = env.client("other:owner")
    r = other.post("/v3/pods/volumes", json={"volume_id": volume_id, "description": "other tenant"})
    assert r.status_code == 200, r.text
    r = other.post(f"/v3/pods/volumes/{volume_id}/upload/data/f.txt", files={"file": ("f", b"other")})
    assert r.status_code == 200, r.text
    assert other.get(f"/v3/pods/volumes/{volume_id}/contents/data/f.txt").content == b"other"
    assert env.client(OWNER).get(f"/v3/pods/volumes/{volume_id}/contents/data/f.txt").content == b"f"
    assert (vdir(env, volume_id, "other") / "data" / "f.txt").read_bytes() == b"other"
    assert other.delete(f"/v3/pods/volumes/{volume_id}").status_code == 200
    assert not vdir(env, volume_id, "other").exists()
    assert env.client(OWNER).get(f"/v3/pods/volumes/{volume_id}/contents/data/f.txt").content == b"f"


def test_other_tenant_cannot_mount_or_snapshot_the_volume(env: Env, new_id: Callable[[str], str]) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id, {GRANTEE: "ADMIN"})
    before = state(env, volume_id)
    other = env.client("other:admin")
    pod_id = new_id("pod")
    r = other.post(
        "/v3/pods",
        json={
            "pod_id": pod_id,
            "image": IMAGE,
            "volume_mounts": {volume_id: {"type": "tapisvolume", "mount_path": "/m"}},
        },
    )
    assert r.status_code in (400, 404), r.text
    assert env.server.rows(Pod, tenant_id="other", pod_id=pod_id) == []
    snapshot_id = new_id("snap")
    r = other.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snapshot_id, "source_volume_id": volume_id, "source_volume_path": "/data"},
    )
    assert r.status_code == 404, r.text
    assert not (env.server.settings.data_dir / "storage" / "other" / "snapshots" / snapshot_id).exists()
    assert state(env, volume_id) == before


# ------------------------------------------------------------------------------------------------ mounting


def pod_body(pod_id: str, volume_id: str) -> dict[str, Any]:
    return {
        "pod_id": pod_id,
        "image": IMAGE,
        "status_requested": "OFF",
        "volume_mounts": {volume_id: {"type": "tapisvolume", "mount_path": "/mnt/data"}},
    }


@pytest.mark.parametrize("level", [None, *LEVELS])
def test_create_pod_mounting_a_volume_needs_user(
    env: Env, new_id: Callable[[str], str], level: str | None
) -> None:
    volume_id, pod_id = new_id("vol"), new_id("pod")
    make_volume(env, volume_id, {GRANTEE: level} if level else {})
    r = env.client(GRANTEE).post("/v3/pods", json=pod_body(pod_id, volume_id))
    if level in ("USER", "ADMIN"):
        assert r.status_code == 200, r.text
        assert r.json()["result"]["volume_mounts"][volume_id]["mount_path"] == "/mnt/data"
    else:
        assert r.status_code in (403, 404), (level, r.status_code, r.text)
        assert volume_id in r.json()["message"]
        assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == []


@pytest.mark.parametrize("level", [None, *LEVELS])
def test_update_pod_mounting_a_volume_needs_user(
    env: Env, new_id: Callable[[str], str], level: str | None
) -> None:
    volume_id, pod_id = new_id("vol"), new_id("pod")
    make_volume(env, volume_id, {GRANTEE: level} if level else {})
    grantee = env.client(GRANTEE)
    r = grantee.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF"})
    assert r.status_code == 200, r.text
    before = env.server.rows(Pod, tenant_id="default", pod_id=pod_id)
    r = grantee.put(
        f"/v3/pods/{pod_id}", json={"volume_mounts": pod_body(pod_id, volume_id)["volume_mounts"]}
    )
    if level in ("USER", "ADMIN"):
        assert r.status_code == 200, r.text
        assert (
            grantee.get(f"/v3/pods/{pod_id}").json()["result"]["volume_mounts"][volume_id]["type"]
            == "tapisvolume"
        )
    else:
        assert r.status_code in (403, 404), (level, r.status_code, r.text)
        assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == before


def test_site_admin_may_mount_any_volume_of_the_tenant(env: Env, new_id: Callable[[str], str]) -> None:
    volume_id, pod_id = new_id("vol"), new_id("pod")
    make_volume(env, volume_id)
    r = env.client("admin").post("/v3/pods", json=pod_body(pod_id, volume_id))
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------------ through templates


def template_with_mount(client: httpx.Client, template_id: str, mounts: dict[str, Any]) -> httpx.Response:
    """A template with one tag ``latest`` whose pod definition mounts ``mounts``; answers the tag request."""
    r = client.post("/v3/pods/templates", json={"template_id": template_id, "description": "mounts"})
    assert r.status_code == 200, r.text
    return client.post(
        f"/v3/pods/templates/{template_id}/tags",
        json={
            "pod_definition": {"image": IMAGE, "volume_mounts": mounts},
            "commit_message": "mount it",
            "tag": "latest",
        },
    )


def derived_mounts(env: Env, pod_id: str, tenant: str = "default") -> dict[str, Any]:
    rows = env.server.rows(Pod, tenant_id=tenant, pod_id=pod_id)
    if not rows:
        return {}
    r = env.client("admin").get(f"/v3/pods/{pod_id}/derived")
    assert r.status_code == 200, r.text
    return r.json()["result"].get("volume_mounts") or {}


def test_own_template_cannot_mount_a_volume_without_user(env: Env, new_id: Callable[[str], str]) -> None:
    """A user with no permission on a volume writes a template that mounts it, then creates a pod from it:
    the pod must not get the volume (the template tag, or the pod, is refused)."""
    volume_id, template_id, pod_id = new_id("vol"), new_id("tpl"), new_id("pod")
    make_volume(env, volume_id, {GRANTEE: "READ"})
    mounts = {volume_id: {"type": "tapisvolume", "mount_path": "/loot"}}
    for caller in (STRANGER, GRANTEE):  # no permission at all; READ only
        tid, pid = f"{template_id}{caller}", f"{pod_id}{caller}"
        client = env.client(caller)
        tag = template_with_mount(client, tid, mounts)
        if tag.status_code in (403, 404):
            continue  # refused at the tag: fine
        assert tag.status_code == 200, tag.text
        r = client.post("/v3/pods", json={"pod_id": pid, "template": tid, "status_requested": "OFF"})
        assert r.status_code in (403, 404), (
            f"{caller} created pod {pid} whose template mounts volume {volume_id} without USER on it "
            f"({r.status_code}); derived volume_mounts: {derived_mounts(env, pid)}"
        )
        assert env.server.rows(Pod, tenant_id="default", pod_id=pid) == []


def test_shared_template_cannot_lend_its_mounts(env: Env, new_id: Callable[[str], str]) -> None:
    """The owner of a volume publishes a template (READ for everyone) that mounts it; another user who has no
    USER on the volume creates a pod from that template: refused, as if the user had written the mount."""
    volume_id, template_id, pod_id = new_id("vol"), new_id("tpl"), new_id("pod")
    make_volume(env, volume_id)
    tag = template_with_mount(
        env.client(OWNER), template_id, {volume_id: {"type": "tapisvolume", "mount_path": "/shared"}}
    )
    assert tag.status_code == 200, tag.text
    r = env.client(OWNER).post(
        f"/v3/pods/templates/{template_id}/permissions", json={"user": "*", "level": "READ"}
    )
    assert r.status_code == 200, r.text
    r = env.client(STRANGER).post(
        "/v3/pods", json={"pod_id": pod_id, "template": template_id, "status_requested": "OFF"}
    )
    assert r.status_code in (403, 404), (
        f"a pod from a shared template mounts volume {volume_id} for a user without USER on it "
        f"({r.status_code}); derived volume_mounts: {derived_mounts(env, pod_id)}"
    )
    assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == []
    # The owner may use the template.
    r = env.client(OWNER).post(
        "/v3/pods", json={"pod_id": new_id("pod"), "template": template_id, "status_requested": "OFF"}
    )
    assert r.status_code == 200, r.text
