"""Authorization of every snapshot endpoint, through HTTP against a real server.

Levels: get_snapshot, list_snapshot_files → READ; update_snapshot, get_snapshot_contents,
get_snapshot_permissions → USER; delete_snapshot, set/delete_snapshot_permission → ADMIN; list_snapshots shows
snapshots with any level; create_snapshot needs USER on the *source volume* (and makes the caller ADMIN of the
snapshot); mounting a snapshot into a pod needs READ on it. Site admins hold ADMIN on everything of their tenant.

For every endpoint: no token → 401; a user without permission → 403/404 and nothing changed; READ, USER and
ADMIN are each allowed exactly what the table says; users of the other tenant never see the snapshot.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from openpods.store.tables import Permission, Pod, Snapshot

LEVELS = ("READ", "USER", "ADMIN")
OWNER = "owner"
GRANTEE = "grantee"
STRANGER = "stranger"
EXTRA = "extra"
IMAGE = "localhost/openpods-test/busybox"


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # relative to /v3/pods/snapshots/{snapshot_id}
    level: str

    def call(self, client: httpx.Client, snapshot_id: str, caller: str = GRANTEE) -> httpx.Response:
        url = f"/v3/pods/snapshots/{snapshot_id}{self.path}"
        if self.name == "update_snapshot":
            return client.put(url, json={"description": f"changed by {caller}"})
        if self.name == "set_snapshot_permission":
            return client.post(url, json={"user": EXTRA, "level": "USER"})
        return client.request(self.method, url)


ENDPOINTS = [
    Endpoint("get_snapshot", "GET", "", "READ"),
    Endpoint("list_snapshot_files", "GET", "/list", "READ"),
    Endpoint("update_snapshot", "PUT", "", "USER"),
    Endpoint("get_snapshot_contents", "GET", "/contents/data/f.txt", "USER"),
    Endpoint("get_snapshot_permissions", "GET", "/permissions", "USER"),
    Endpoint("delete_snapshot", "DELETE", "", "ADMIN"),
    Endpoint("set_snapshot_permission", "POST", "/permissions", "ADMIN"),
    Endpoint("delete_snapshot_permission", "DELETE", f"/permissions/{EXTRA}", "ADMIN"),
]
IDS = [e.name for e in ENDPOINTS]


@dataclass
class Env:
    server: Any
    clients: dict[str, httpx.Client]
    volume: str  # owned by OWNER, holds data/f.txt

    def client(self, name: str) -> httpx.Client:
        return self.clients[name]

    def sdir(self, snapshot_id: str, tenant: str = "default") -> Path:
        return self.server.settings.data_dir / "storage" / tenant / "snapshots" / snapshot_id


@pytest.fixture(scope="module")
def env(make_module_server: Any) -> Env:
    server = make_module_server(import_starter_catalog=False)
    server.allow_image(IMAGE)
    for name in (OWNER, GRANTEE, STRANGER, EXTRA):
        server.add_user(name)
    server.add_user(OWNER, tenant="other")
    server.add_user(GRANTEE, tenant="other")
    server.add_user("otheradmin", tenant="other", admin=True)
    clients = {name: server.client(name) for name in (OWNER, GRANTEE, STRANGER, EXTRA)}
    clients["admin"] = server.client("admin")
    clients["anon"] = server.client()
    clients["other:owner"] = server.client(OWNER, tenant="other")
    clients["other:grantee"] = server.client(GRANTEE, tenant="other")
    clients["other:admin"] = server.client("otheradmin", tenant="other")
    owner = clients[OWNER]
    assert owner.post("/v3/pods/volumes", json={"volume_id": "snapsrc"}).status_code == 200
    r = owner.post("/v3/pods/volumes/snapsrc/upload/data/f.txt", files={"file": ("f.txt", b"f")})
    assert r.status_code == 200, r.text
    return Env(server=server, clients=clients, volume="snapsrc")


def make_snapshot(env: Env, snapshot_id: str, grants: dict[str, str] | None = None) -> None:
    """A snapshot of the shared volume's /data owned by OWNER, with EXTRA:READ plus ``grants``."""
    owner = env.client(OWNER)
    r = owner.post(
        "/v3/pods/snapshots",
        json={
            "snapshot_id": snapshot_id,
            "source_volume_id": env.volume,
            "source_volume_path": "/data",
            "description": "permission test snapshot",
        },
    )
    assert r.status_code == 200, r.text
    for user, level in {EXTRA: "READ", **(grants or {})}.items():
        r = owner.post(f"/v3/pods/snapshots/{snapshot_id}/permissions", json={"user": user, "level": level})
        assert r.status_code == 200, r.text


def disk(top: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            out[str((Path(dirpath) / name).relative_to(top))] = "dir"
        for name in filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(top))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def state(env: Env, snapshot_id: str, tenant: str = "default") -> dict[str, Any]:
    s = env.server
    return {
        "row": s.rows(Snapshot, tenant_id=tenant, snapshot_id=snapshot_id),
        "grants": s.rows(Permission, object_type="snapshot", tenant_id=tenant, object_id=snapshot_id),
        "disk": disk(env.sdir(snapshot_id, tenant)),
        "exists": env.sdir(snapshot_id, tenant).is_dir(),
    }


def assert_allowed(
    env: Env, ep: Endpoint, r: httpx.Response, snapshot_id: str, caller: str = GRANTEE
) -> None:
    assert 200 <= r.status_code < 300, (ep.name, r.status_code, r.text)
    owner = env.client(OWNER)
    if ep.name == "get_snapshot_contents":
        assert r.content == b"f"
        return
    assert r.json()["status"] == "success", (ep.name, r.text)
    url = f"/v3/pods/snapshots/{snapshot_id}"
    if ep.name == "get_snapshot":
        assert r.json()["result"]["snapshot_id"] == snapshot_id
    elif ep.name == "list_snapshot_files":
        assert [f["name"] for f in r.json()["result"]] == ["data"]
    elif ep.name == "update_snapshot":
        assert owner.get(url).json()["result"]["description"] == f"changed by {caller}"
    elif ep.name == "get_snapshot_permissions":
        assert f"{OWNER}:ADMIN" in r.json()["result"]["permissions"]
    elif ep.name == "delete_snapshot":
        assert owner.get(url).status_code == 404
        assert env.server.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id) == []
        assert env.server.rows(Permission, object_type="snapshot", object_id=snapshot_id) == []
        assert not env.sdir(snapshot_id).exists()
    elif ep.name == "set_snapshot_permission":
        assert f"{EXTRA}:USER" in owner.get(f"{url}/permissions").json()["result"]["permissions"]
    elif ep.name == "delete_snapshot_permission":
        perms = owner.get(f"{url}/permissions").json()["result"]["permissions"]
        assert not any(p.startswith(f"{EXTRA}:") for p in perms)


# ------------------------------------------------------------------------------------------------ tokens


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_no_token_or_a_bad_token_is_401(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id)
    before = state(env, snapshot_id)
    for client in (env.client("anon"), env.server.client(token="not.a.token")):
        r = ep.call(client, snapshot_id)
        assert r.status_code == 401, (ep.name, r.status_code, r.text)
    assert state(env, snapshot_id) == before


def test_list_and_create_without_token_are_401(env: Env, new_id: Callable[[str], str]) -> None:
    anon = env.client("anon")
    assert anon.get("/v3/pods/snapshots").status_code == 401
    snapshot_id = new_id("snap")
    r = anon.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snapshot_id, "source_volume_id": env.volume, "source_volume_path": "/data"},
    )
    assert r.status_code == 401
    assert env.server.rows(Snapshot, snapshot_id=snapshot_id) == []
    assert not env.sdir(snapshot_id).exists()


# ------------------------------------------------------------------------------------------------ no permission


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_user_without_permission_changes_nothing(
    env: Env, new_id: Callable[[str], str], ep: Endpoint
) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id)
    before = state(env, snapshot_id)
    r = ep.call(env.client(STRANGER), snapshot_id, caller=STRANGER)
    assert r.status_code in (403, 404), (ep.name, r.status_code, r.text)
    assert r.json()["status"] == "error"
    assert b"permission test snapshot" not in r.content
    assert state(env, snapshot_id) == before


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_unknown_snapshot_is_404_for_everyone(env: Env, ep: Endpoint) -> None:
    for caller in (STRANGER, OWNER, "admin"):
        r = ep.call(env.client(caller), "nosuchsnapxyz", caller=caller)
        assert r.status_code == 404, (ep.name, caller, r.status_code, r.text)


# ------------------------------------------------------------------------------------------------ levels


CASES = [(ep, level) for ep in ENDPOINTS for level in LEVELS]


@pytest.mark.parametrize(("ep", "level"), CASES, ids=[f"{ep.name}-{level}" for ep, level in CASES])
def test_level(env: Env, new_id: Callable[[str], str], ep: Endpoint, level: str) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id, {GRANTEE: level})
    allowed = LEVELS.index(level) >= LEVELS.index(ep.level)
    before = state(env, snapshot_id)
    r = ep.call(env.client(GRANTEE), snapshot_id)
    if allowed:
        assert_allowed(env, ep, r, snapshot_id)
    else:
        assert r.status_code == 403, (ep.name, level, r.status_code, r.text)
        body = r.json()
        assert body["status"] == "error" and ep.level in body["message"]
        assert state(env, snapshot_id) == before


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_owner_may_do_everything(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id)
    assert_allowed(env, ep, ep.call(env.client(OWNER), snapshot_id, caller=OWNER), snapshot_id, caller=OWNER)


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_site_admin_may_do_everything(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id)
    r = ep.call(env.client("admin"), snapshot_id, caller="admin")
    assert_allowed(env, ep, r, snapshot_id, caller="admin")


@pytest.mark.parametrize("level", LEVELS)
def test_list_shows_snapshots_with_any_level(env: Env, new_id: Callable[[str], str], level: str) -> None:
    snapshot_id, hidden = new_id("snap"), new_id("snap")
    make_snapshot(env, snapshot_id, {GRANTEE: level})
    make_snapshot(env, hidden)
    listed = [s["snapshot_id"] for s in env.client(GRANTEE).get("/v3/pods/snapshots").json()["result"]]
    assert snapshot_id in listed and hidden not in listed
    stranger = env.client(STRANGER).get("/v3/pods/snapshots").json()["result"]
    assert not {snapshot_id, hidden} & {s["snapshot_id"] for s in stranger}
    admin = env.client("admin").get("/v3/pods/snapshots").json()["result"]
    assert {snapshot_id, hidden} <= {s["snapshot_id"] for s in admin}
    assert (
        env.client(OWNER).delete(f"/v3/pods/snapshots/{snapshot_id}/permissions/{GRANTEE}").status_code == 200
    )
    listed = [s["snapshot_id"] for s in env.client(GRANTEE).get("/v3/pods/snapshots").json()["result"]]
    assert snapshot_id not in listed


def test_user_level_cannot_escalate(env: Env, new_id: Callable[[str], str]) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id, {GRANTEE: "USER"})
    before = state(env, snapshot_id)
    grantee = env.client(GRANTEE)
    url = f"/v3/pods/snapshots/{snapshot_id}"
    assert grantee.post(f"{url}/permissions", json={"user": GRANTEE, "level": "ADMIN"}).status_code == 403
    assert grantee.delete(f"{url}/permissions/{OWNER}").status_code == 403
    assert grantee.delete(url, params={"force": "true"}).status_code == 403
    assert state(env, snapshot_id) == before


def test_last_admin_cannot_be_removed(env: Env, new_id: Callable[[str], str]) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id)
    before = state(env, snapshot_id)
    owner = env.client(OWNER)
    url = f"/v3/pods/snapshots/{snapshot_id}/permissions"
    assert owner.delete(f"{url}/{OWNER}").status_code == 409
    assert owner.post(url, json={"user": OWNER, "level": "READ"}).status_code == 409
    assert env.client("admin").delete(f"{url}/{OWNER}").status_code == 409
    assert state(env, snapshot_id) == before


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
        assert (env.sdir(snapshot_id) / "x.txt").read_bytes() == b"x"
    else:
        expected = 403 if level == "READ" else 404
        assert r.status_code == expected, (level, r.status_code, r.text)
        assert volume_id in r.json()["message"]
        assert env.server.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id) == []
        assert env.server.rows(Permission, object_type="snapshot", object_id=snapshot_id) == []
        assert not env.sdir(snapshot_id).exists()


def test_site_admin_may_snapshot_any_volume(env: Env, new_id: Callable[[str], str]) -> None:
    snapshot_id = new_id("snap")
    r = env.client("admin").post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snapshot_id, "source_volume_id": env.volume, "source_volume_path": "/data"},
    )
    assert r.status_code == 200, r.text


def test_snapshot_access_does_not_grant_volume_access(env: Env, new_id: Callable[[str], str]) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id, {GRANTEE: "ADMIN"})
    grantee = env.client(GRANTEE)
    assert grantee.get(f"/v3/pods/snapshots/{snapshot_id}/contents/data/f.txt").content == b"f"
    assert grantee.get(f"/v3/pods/volumes/{env.volume}").status_code == 404
    assert grantee.get(f"/v3/pods/volumes/{env.volume}/contents/data/f.txt").status_code == 404


# ------------------------------------------------------------------------------------------------ other tenant


@pytest.mark.parametrize("caller", ["other:owner", "other:grantee", "other:admin"])
@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_other_tenant_never_sees_the_snapshot(
    env: Env, new_id: Callable[[str], str], ep: Endpoint, caller: str
) -> None:
    snapshot_id = new_id("snap")
    make_snapshot(env, snapshot_id, {GRANTEE: "ADMIN"})
    before = state(env, snapshot_id)
    r = ep.call(env.client(caller), snapshot_id, caller=caller.split(":")[1])
    assert r.status_code == 404, (ep.name, caller, r.status_code, r.text)
    assert b"permission test snapshot" not in r.content
    assert state(env, snapshot_id) == before
    listed = env.client(caller).get("/v3/pods/snapshots").json()["result"]
    assert snapshot_id not in [s["snapshot_id"] for s in listed]


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
