"""Authorization of every volume endpoint, through HTTP against a real server.

Levels (READ < USER < ADMIN; the creator gets ADMIN; site admins hold ADMIN on everything of their tenant):
get_volume, list_volume_files → READ; update_volume, get_volume_contents, upload_to_volume,
get_volume_permissions → USER; delete_volume, set/delete_volume_permission → ADMIN; list_volumes shows volumes
with any level; create_volume needs only a token. Mounting a volume into a pod (create_pod / update_pod) needs
USER on it.

For every endpoint: no token → 401; a user without permission → 403/404 and nothing changed; READ, USER and
ADMIN are each allowed exactly what the table says, and a refused call changes nothing (row, grants, files on
disk); users of the other tenant -- even its site admin, even with the same usernames -- never see the volume.
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

from openpods.store.tables import Permission, Pod, Volume

LEVELS = ("READ", "USER", "ADMIN")
OWNER = "owner"
GRANTEE = "grantee"
STRANGER = "stranger"
EXTRA = "extra"  # holds READ on every test volume, so delete_volume_permission has a target
IMAGE = "localhost/openpods-test/busybox"


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # relative to /v3/pods/volumes/{volume_id}
    level: str

    def call(self, client: httpx.Client, volume_id: str, caller: str = GRANTEE) -> httpx.Response:
        url = f"/v3/pods/volumes/{volume_id}{self.path}"
        if self.name == "update_volume":
            return client.put(url, json={"description": f"changed by {caller}"})
        if self.name == "set_volume_permission":
            return client.post(url, json={"user": EXTRA, "level": "USER"})
        if self.name == "upload_to_volume":
            return client.post(url, files={"file": ("up.txt", f"from {caller}".encode())})
        return client.request(self.method, url)


ENDPOINTS = [
    Endpoint("get_volume", "GET", "", "READ"),
    Endpoint("list_volume_files", "GET", "/list", "READ"),
    Endpoint("update_volume", "PUT", "", "USER"),
    Endpoint("get_volume_contents", "GET", "/contents/data/f.txt", "USER"),
    Endpoint("upload_to_volume", "POST", "/upload/new/up.txt", "USER"),
    Endpoint("get_volume_permissions", "GET", "/permissions", "USER"),
    Endpoint("delete_volume", "DELETE", "", "ADMIN"),
    Endpoint("set_volume_permission", "POST", "/permissions", "ADMIN"),
    Endpoint("delete_volume_permission", "DELETE", f"/permissions/{EXTRA}", "ADMIN"),
]
IDS = [e.name for e in ENDPOINTS]


@dataclass
class Env:
    server: Any
    clients: dict[str, httpx.Client]

    def client(self, name: str) -> httpx.Client:
        return self.clients[name]

    def vdir(self, volume_id: str, tenant: str = "default") -> Path:
        return self.server.settings.data_dir / "storage" / tenant / "volumes" / volume_id


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
    return Env(server=server, clients=clients)


def make_volume(env: Env, volume_id: str, grants: dict[str, str] | None = None) -> None:
    """A volume owned by OWNER holding data/f.txt, with EXTRA:READ plus ``grants``."""
    owner = env.client(OWNER)
    r = owner.post("/v3/pods/volumes", json={"volume_id": volume_id, "description": "permission test volume"})
    assert r.status_code == 200, r.text
    r = owner.post(f"/v3/pods/volumes/{volume_id}/upload/data/f.txt", files={"file": ("f.txt", b"f")})
    assert r.status_code == 200, r.text
    for user, level in {EXTRA: "READ", **(grants or {})}.items():
        r = owner.post(f"/v3/pods/volumes/{volume_id}/permissions", json={"user": user, "level": level})
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


def state(env: Env, volume_id: str, tenant: str = "default") -> dict[str, Any]:
    """Everything an endpoint could change about one volume."""
    s = env.server
    return {
        "row": s.rows(Volume, tenant_id=tenant, volume_id=volume_id),
        "grants": s.rows(Permission, object_type="volume", tenant_id=tenant, object_id=volume_id),
        "disk": disk(env.vdir(volume_id, tenant)),
        "exists": env.vdir(volume_id, tenant).is_dir(),
    }


def assert_allowed(env: Env, ep: Endpoint, r: httpx.Response, volume_id: str, caller: str = GRANTEE) -> None:
    assert 200 <= r.status_code < 300, (ep.name, r.status_code, r.text)
    owner = env.client(OWNER)
    if ep.name == "get_volume_contents":
        assert r.content == b"f"
        return
    assert r.json()["status"] == "success", (ep.name, r.text)
    if ep.name == "get_volume":
        assert r.json()["result"]["volume_id"] == volume_id
    elif ep.name == "list_volume_files":
        assert [f["name"] for f in r.json()["result"]] == ["data"]
    elif ep.name == "update_volume":
        assert (
            owner.get(f"/v3/pods/volumes/{volume_id}").json()["result"]["description"]
            == f"changed by {caller}"
        )
    elif ep.name == "upload_to_volume":
        assert (env.vdir(volume_id) / "new" / "up.txt").read_bytes() == f"from {caller}".encode()
    elif ep.name == "get_volume_permissions":
        assert f"{OWNER}:ADMIN" in r.json()["result"]["permissions"]
    elif ep.name == "delete_volume":
        assert owner.get(f"/v3/pods/volumes/{volume_id}").status_code == 404
        assert env.server.rows(Volume, tenant_id="default", volume_id=volume_id) == []
        assert env.server.rows(Permission, object_type="volume", object_id=volume_id) == []
        assert not env.vdir(volume_id).exists()
    elif ep.name == "set_volume_permission":
        perms = owner.get(f"/v3/pods/volumes/{volume_id}/permissions").json()["result"]["permissions"]
        assert f"{EXTRA}:USER" in perms
    elif ep.name == "delete_volume_permission":
        perms = owner.get(f"/v3/pods/volumes/{volume_id}/permissions").json()["result"]["permissions"]
        assert not any(p.startswith(f"{EXTRA}:") for p in perms)


# ------------------------------------------------------------------------------------------------ tokens


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_no_token_or_a_bad_token_is_401(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id)
    before = state(env, volume_id)
    for client in (env.client("anon"), env.server.client(token="not.a.token")):
        r = ep.call(client, volume_id)
        assert r.status_code == 401, (ep.name, r.status_code, r.text)
        assert r.json()["status"] == "error"
    assert state(env, volume_id) == before


def test_list_and_create_without_token_are_401(env: Env, new_id: Callable[[str], str]) -> None:
    anon = env.client("anon")
    assert anon.get("/v3/pods/volumes").status_code == 401
    volume_id = new_id("vol")
    assert anon.post("/v3/pods/volumes", json={"volume_id": volume_id}).status_code == 401
    assert env.server.rows(Volume, volume_id=volume_id) == []
    assert not env.vdir(volume_id).exists()


# ------------------------------------------------------------------------------------------------ no permission


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_user_without_permission_changes_nothing(
    env: Env, new_id: Callable[[str], str], ep: Endpoint
) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id)
    before = state(env, volume_id)
    r = ep.call(env.client(STRANGER), volume_id, caller=STRANGER)
    assert r.status_code in (403, 404), (ep.name, r.status_code, r.text)
    assert r.json()["status"] == "error"
    assert b"permission test volume" not in r.content
    assert state(env, volume_id) == before


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_unknown_volume_is_404_for_everyone(env: Env, ep: Endpoint) -> None:
    for caller in (STRANGER, OWNER, "admin"):
        r = ep.call(env.client(caller), "nosuchvolumexyz", caller=caller)
        assert r.status_code == 404, (ep.name, caller, r.status_code, r.text)


# ------------------------------------------------------------------------------------------------ levels


CASES = [(ep, level) for ep in ENDPOINTS for level in LEVELS]


@pytest.mark.parametrize(("ep", "level"), CASES, ids=[f"{ep.name}-{level}" for ep, level in CASES])
def test_level(env: Env, new_id: Callable[[str], str], ep: Endpoint, level: str) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id, {GRANTEE: level})
    allowed = LEVELS.index(level) >= LEVELS.index(ep.level)
    before = state(env, volume_id)
    r = ep.call(env.client(GRANTEE), volume_id)
    if allowed:
        assert_allowed(env, ep, r, volume_id)
    else:
        assert r.status_code == 403, (ep.name, level, r.status_code, r.text)
        body = r.json()
        assert body["status"] == "error" and ep.level in body["message"]
        assert state(env, volume_id) == before


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_owner_may_do_everything(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id)
    assert_allowed(env, ep, ep.call(env.client(OWNER), volume_id, caller=OWNER), volume_id, caller=OWNER)


@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_site_admin_may_do_everything(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id)
    assert_allowed(
        env, ep, ep.call(env.client("admin"), volume_id, caller="admin"), volume_id, caller="admin"
    )


@pytest.mark.parametrize("level", LEVELS)
def test_list_shows_volumes_with_any_level(env: Env, new_id: Callable[[str], str], level: str) -> None:
    volume_id, hidden = new_id("vol"), new_id("vol")
    make_volume(env, volume_id, {GRANTEE: level})
    make_volume(env, hidden)
    listed = [v["volume_id"] for v in env.client(GRANTEE).get("/v3/pods/volumes").json()["result"]]
    assert volume_id in listed
    assert hidden not in listed
    stranger = env.client(STRANGER).get("/v3/pods/volumes").json()["result"]
    assert not {volume_id, hidden} & {v["volume_id"] for v in stranger}
    assert {volume_id, hidden} <= {
        v["volume_id"] for v in env.client("admin").get("/v3/pods/volumes").json()["result"]
    }
    # Revoking the grant hides the volume again.
    assert env.client(OWNER).delete(f"/v3/pods/volumes/{volume_id}/permissions/{GRANTEE}").status_code == 200
    listed = [v["volume_id"] for v in env.client(GRANTEE).get("/v3/pods/volumes").json()["result"]]
    assert volume_id not in listed
    assert env.client(GRANTEE).get(f"/v3/pods/volumes/{volume_id}").status_code == 404


def test_any_user_can_create_and_becomes_admin(env: Env, new_id: Callable[[str], str]) -> None:
    volume_id = new_id("vol")
    stranger = env.client(STRANGER)
    r = stranger.post("/v3/pods/volumes", json={"volume_id": volume_id})
    assert r.status_code == 200, r.text
    assert stranger.get(f"/v3/pods/volumes/{volume_id}/permissions").json()["result"]["permissions"] == [
        f"{STRANGER}:ADMIN"
    ]


def test_user_level_cannot_escalate(env: Env, new_id: Callable[[str], str]) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id, {GRANTEE: "USER"})
    before = state(env, volume_id)
    grantee = env.client(GRANTEE)
    assert (
        grantee.post(
            f"/v3/pods/volumes/{volume_id}/permissions", json={"user": GRANTEE, "level": "ADMIN"}
        ).status_code
        == 403
    )
    assert grantee.delete(f"/v3/pods/volumes/{volume_id}/permissions/{OWNER}").status_code == 403
    assert grantee.delete(f"/v3/pods/volumes/{volume_id}", params={"force": "true"}).status_code == 403
    assert state(env, volume_id) == before


def test_one_of_two_admins_can_step_down(env: Env, new_id: Callable[[str], str]) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id, {GRANTEE: "ADMIN"})
    owner = env.client(OWNER)
    r = owner.post(f"/v3/pods/volumes/{volume_id}/permissions", json={"user": OWNER, "level": "READ"})
    assert r.status_code == 200, r.text
    grantee = env.client(GRANTEE)
    assert grantee.delete(f"/v3/pods/volumes/{volume_id}/permissions/{GRANTEE}").status_code == 409
    perms = grantee.get(f"/v3/pods/volumes/{volume_id}/permissions").json()["result"]["permissions"]
    assert sorted(perms) == sorted([f"{OWNER}:READ", f"{GRANTEE}:ADMIN", f"{EXTRA}:READ"])
    # The former owner is now a reader: no more uploads.
    r = owner.post(f"/v3/pods/volumes/{volume_id}/upload/x.txt", files={"file": ("x", b"x")})
    assert r.status_code == 403
    assert not (env.vdir(volume_id) / "x.txt").exists()


# ------------------------------------------------------------------------------------------------ other tenant


@pytest.mark.parametrize("caller", ["other:owner", "other:grantee", "other:admin"])
@pytest.mark.parametrize("ep", ENDPOINTS, ids=IDS)
def test_other_tenant_never_sees_the_volume(
    env: Env, new_id: Callable[[str], str], ep: Endpoint, caller: str
) -> None:
    volume_id = new_id("vol")
    make_volume(env, volume_id, {GRANTEE: "ADMIN"})
    before = state(env, volume_id)
    r = ep.call(env.client(caller), volume_id, caller=caller.split(":")[1])
    assert r.status_code == 404, (ep.name, caller, r.status_code, r.text)
    assert b"permission test volume" not in r.content
    assert state(env, volume_id) == before
    assert not env.vdir(volume_id, "other").exists()
    listed = env.client(caller).get("/v3/pods/volumes").json()["result"]
    assert volume_id not in [v["volume_id"] for v in listed]


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
    assert (env.vdir(volume_id, "other") / "data" / "f.txt").read_bytes() == b"other"
    assert other.delete(f"/v3/pods/volumes/{volume_id}").status_code == 200
    assert not env.vdir(volume_id, "other").exists()
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
