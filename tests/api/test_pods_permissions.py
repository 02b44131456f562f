"""Authorization of every pod endpoint, through HTTP against a real server.

The table (user guide, behaviour reference 2.2/4.2): GET pod, logs, derived → READ; PUT, credentials,
GET permissions → USER; DELETE, stop/start/restart, exec, upload_to_pod, set/delete permissions,
save_pod_as_template_tag → ADMIN; list/create → any token (list only shows pods with ≥ READ). Site admins
may do everything in their tenant. Users of another tenant never see or touch the pod (404).

For every endpoint: no token → 401; a user without permission → 403/404 and nothing changed; READ, USER and
ADMIN are each allowed exactly what the table says, and a refused call changes nothing. Endpoints that other
issues implement (exec, upload_to_pod) are checked for the authorization part only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from openpods.store.tables import ActionLog, Permission, Pod, PodLog, PodSecret, Template, TemplateTag

IMAGE = "localhost/openpods-test/http"
LEVELS = ("READ", "USER", "ADMIN")
OWNER = "owner"
GRANTEE = "grantee"
STRANGER = "stranger"
EXTRA = "extra"  # holds READ on every test pod, so delete_pod_permission has a target


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # relative to /v3/pods/{pod_id}
    level: str
    # Implemented by a later issue: assert only the authorization part.
    auth_only: bool = False

    def call(self, client: httpx.Client, pod_id: str, caller: str = GRANTEE) -> httpx.Response:
        url = f"/v3/pods/{pod_id}{self.path}"
        if self.name == "update_pod":
            return client.put(url, json={"description": f"changed by {caller}"})
        if self.name == "set_pod_permission":
            return client.post(url, json={"user": EXTRA, "level": "USER"})
        if self.name == "exec_pod_commands":
            return client.post(url, json={"commands": ["echo", "hi"]})
        if self.name == "upload_to_pod":
            return client.post(
                url, files={"file": ("hello.txt", b"hello\n")}, data={"dest_path": "/tmp/hello.txt"}
            )
        if self.name == "save_pod_as_template_tag":
            return client.post(
                url, json={"template_id": f"tpl{caller}", "tag": "v1", "commit_message": "from pod"}
            )
        return client.request(self.method, url)


ENDPOINTS = [
    Endpoint("get_pod", "GET", "", "READ"),
    Endpoint("get_pod_logs", "GET", "/logs", "READ"),
    Endpoint("get_derived_pod", "GET", "/derived", "READ"),
    Endpoint("update_pod", "PUT", "", "USER"),
    Endpoint("get_pod_credentials", "GET", "/credentials", "USER"),
    Endpoint("get_pod_permissions", "GET", "/permissions", "USER"),
    Endpoint("delete_pod", "DELETE", "", "ADMIN"),
    Endpoint("stop_pod", "GET", "/stop", "ADMIN"),
    Endpoint("start_pod", "GET", "/start", "ADMIN"),
    Endpoint("restart_pod", "GET", "/restart", "ADMIN"),
    Endpoint("set_pod_permission", "POST", "/permissions", "ADMIN"),
    Endpoint("delete_pod_permission", "DELETE", f"/permissions/{EXTRA}", "ADMIN"),
    Endpoint("save_pod_as_template_tag", "POST", "/save_pod_as_template_tag", "ADMIN"),
    Endpoint("exec_pod_commands", "POST", "/exec", "ADMIN", auth_only=True),
    Endpoint("upload_to_pod", "POST", "/upload_to_pod", "ADMIN", auth_only=True),
]
BY_NAME = {e.name: e for e in ENDPOINTS}
ENDPOINT_IDS = [e.name for e in ENDPOINTS]


@dataclass
class Env:
    server: Any
    clients: dict[str, httpx.Client]

    def client(self, name: str) -> httpx.Client:
        return self.clients[name]


@pytest.fixture(scope="module")
def env(server: Any) -> Env:
    server.allow_image(IMAGE)
    for name in (OWNER, GRANTEE, STRANGER, EXTRA):
        server.add_user(name)
    # Same usernames in the other tenant, one of them a site admin there.
    server.add_user(OWNER, tenant="other")
    server.add_user(GRANTEE, tenant="other")
    server.add_user("otheradmin", tenant="other", admin=True)
    clients = {name: server.client(name) for name in (OWNER, GRANTEE, STRANGER, EXTRA)}
    clients["admin"] = server.client("admin")
    clients["anon"] = server.client()
    clients["badtoken"] = server.client(token="not.a.token")
    clients["other:owner"] = server.client(OWNER, tenant="other")
    clients["other:grantee"] = server.client(GRANTEE, tenant="other")
    clients["other:admin"] = server.client("otheradmin", tenant="other")
    return Env(server=server, clients=clients)


def make_pod(env: Env, pod_id: str, grants: dict[str, str] | None = None) -> None:
    """A STOPPED pod owned by OWNER, with EXTRA:READ plus ``grants``."""
    owner = env.client(OWNER)
    r = owner.post(
        "/v3/pods",
        json={
            "pod_id": pod_id,
            "image": IMAGE,
            "status_requested": "OFF",
            "description": "permission test pod",
        },
    )
    assert r.status_code == 200, r.text
    for user, level in {EXTRA: "READ", **(grants or {})}.items():
        r = owner.post(f"/v3/pods/{pod_id}/permissions", json={"user": user, "level": level})
        assert r.status_code == 200, r.text


def make_template(env: Env, caller: str) -> None:
    """A template ``tpl<caller>`` owned by the caller (save_pod_as_template_tag needs USER on it)."""
    template_id = f"tpl{caller}"
    with env.server.session() as s:
        exists = s.get(Template, ("default", template_id)) is not None
    if not exists:
        r = env.client(caller).post(
            "/v3/pods/templates", json={"template_id": template_id, "description": "t"}
        )
        assert r.status_code == 200, r.text


def state(env: Env, pod_id: str, tenant: str = "default") -> dict[str, Any]:
    """Everything an endpoint could change about one pod, read from the database and the API."""
    s = env.server
    view = env.client(OWNER).get(f"/v3/pods/{pod_id}") if tenant == "default" else None
    return {
        "pod": s.rows(Pod, tenant_id=tenant, pod_id=pod_id),
        "secret": s.rows(PodSecret, tenant_id=tenant, pod_id=pod_id),
        "logs": s.rows(PodLog, tenant_id=tenant, pod_id=pod_id),
        "grants": s.rows(Permission, object_type="pod", tenant_id=tenant, object_id=pod_id),
        "actions": s.rows(ActionLog, object_type="pod", tenant_id=tenant, object_id=pod_id),
        "tags": s.count(TemplateTag),
        "view": (view.status_code, view.json()) if view is not None else None,
    }


def assert_allowed(env: Env, ep: Endpoint, r: httpx.Response, pod_id: str) -> None:
    if ep.auth_only:
        assert r.status_code not in (401, 403, 404), (ep.name, r.status_code, r.text)
        return
    assert 200 <= r.status_code < 300, (ep.name, r.status_code, r.text)
    assert r.json()["status"] == "success", (ep.name, r.text)
    owner = env.client(OWNER)
    if ep.name == "delete_pod":
        assert owner.get(f"/v3/pods/{pod_id}").status_code == 404
        assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == []
    elif ep.name == "update_pod":
        assert owner.get(f"/v3/pods/{pod_id}").json()["result"]["description"].startswith("changed by")
    elif ep.name == "stop_pod":
        assert owner.get(f"/v3/pods/{pod_id}").json()["result"]["status_requested"] == "OFF"
    elif ep.name in ("start_pod", "restart_pod"):
        assert owner.get(f"/v3/pods/{pod_id}").json()["result"]["status"] == "REQUESTED"
    elif ep.name == "set_pod_permission":
        assert f"{EXTRA}:USER" in owner.get(f"/v3/pods/{pod_id}/permissions").json()["result"]["permissions"]
    elif ep.name == "delete_pod_permission":
        perms = owner.get(f"/v3/pods/{pod_id}/permissions").json()["result"]["permissions"]
        assert not any(p.startswith(f"{EXTRA}:") for p in perms)
    elif ep.name == "get_pod_credentials":
        assert r.json()["result"]["user_username"] == pod_id
    elif ep.name == "get_pod_permissions":
        assert f"{OWNER}:ADMIN" in r.json()["result"]["permissions"]
    elif ep.name == "save_pod_as_template_tag":
        assert r.json()["result"]["tag"] == "v1"
    elif ep.name in ("get_pod", "get_derived_pod"):
        assert r.json()["result"]["pod_id"] == pod_id


# ------------------------------------------------------------------------------------------------ no token


@pytest.mark.parametrize("ep", ENDPOINTS, ids=ENDPOINT_IDS)
def test_no_token_or_bad_token_is_401(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    before = state(env, pod_id)
    for client in (env.client("anon"), env.client("badtoken")):
        r = ep.call(client, pod_id)
        assert r.status_code == 401, (ep.name, r.status_code, r.text)
        assert r.json()["status"] == "error"
    assert state(env, pod_id) == before


def test_list_and_create_without_token_are_401(env: Env, new_id: Callable[[str], str]) -> None:
    anon = env.client("anon")
    assert anon.get("/v3/pods").status_code == 401
    pod_id = new_id("pod")
    r = anon.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE})
    assert r.status_code == 401
    assert env.server.rows(Pod, pod_id=pod_id) == []


# ------------------------------------------------------------------------------------------------ no permission


@pytest.mark.parametrize("ep", ENDPOINTS, ids=ENDPOINT_IDS)
def test_user_without_permission_changes_nothing(
    env: Env, new_id: Callable[[str], str], ep: Endpoint
) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    make_template(env, STRANGER)
    before = state(env, pod_id)
    r = ep.call(env.client(STRANGER), pod_id, caller=STRANGER)
    assert r.status_code in (403, 404), (ep.name, r.status_code, r.text)
    assert r.json()["status"] == "error"
    assert state(env, pod_id) == before


@pytest.mark.parametrize("ep", ENDPOINTS, ids=ENDPOINT_IDS)
def test_unknown_pod_is_404_for_everyone(env: Env, ep: Endpoint) -> None:
    for caller in (STRANGER, "admin"):
        if ep.name == "save_pod_as_template_tag":
            make_template(env, caller)
        r = ep.call(env.client(caller), "nosuchpodxyz", caller=caller)
        assert r.status_code == 404, (ep.name, caller, r.status_code, r.text)


# ------------------------------------------------------------------------------------------------ levels


CASES = [(ep, level) for ep in ENDPOINTS for level in LEVELS]


@pytest.mark.parametrize(("ep", "level"), CASES, ids=[f"{ep.name}-{level}" for ep, level in CASES])
def test_level(env: Env, new_id: Callable[[str], str], ep: Endpoint, level: str) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id, {GRANTEE: level})
    make_template(env, GRANTEE)
    allowed = LEVELS.index(level) >= LEVELS.index(ep.level)
    before = state(env, pod_id)
    r = ep.call(env.client(GRANTEE), pod_id)
    if allowed:
        assert_allowed(env, ep, r, pod_id)
    else:
        assert r.status_code == 403, (ep.name, level, r.status_code, r.text)
        body = r.json()
        assert body["status"] == "error" and body["message"]
        assert state(env, pod_id) == before


@pytest.mark.parametrize("level", LEVELS)
def test_list_shows_pods_with_any_level(env: Env, new_id: Callable[[str], str], level: str) -> None:
    pod_id = new_id("pod")
    hidden = new_id("pod")
    make_pod(env, pod_id, {GRANTEE: level})
    make_pod(env, hidden)
    listed = [p["pod_id"] for p in env.client(GRANTEE).get("/v3/pods").json()["result"]]
    assert pod_id in listed
    assert hidden not in listed
    assert not {pod_id, hidden} & {p["pod_id"] for p in env.client(STRANGER).get("/v3/pods").json()["result"]}
    # Revoking the grant hides the pod again.
    assert env.client(OWNER).delete(f"/v3/pods/{pod_id}/permissions/{GRANTEE}").status_code == 200
    assert pod_id not in [p["pod_id"] for p in env.client(GRANTEE).get("/v3/pods").json()["result"]]


def test_any_user_can_create_and_becomes_admin(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    stranger = env.client(STRANGER)
    r = stranger.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE})
    assert r.status_code == 200, r.text
    perms = stranger.get(f"/v3/pods/{pod_id}/permissions").json()["result"]["permissions"]
    assert perms == [f"{STRANGER}:ADMIN"]
    assert pod_id in [p["pod_id"] for p in stranger.get("/v3/pods").json()["result"]]


def test_user_level_cannot_escalate(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id, {GRANTEE: "USER"})
    before = state(env, pod_id)
    grantee = env.client(GRANTEE)
    r = grantee.post(f"/v3/pods/{pod_id}/permissions", json={"user": GRANTEE, "level": "ADMIN"})
    assert r.status_code == 403
    r = grantee.delete(f"/v3/pods/{pod_id}/permissions/{OWNER}")
    assert r.status_code == 403
    assert state(env, pod_id) == before


@pytest.mark.parametrize(
    "body",
    [
        {"user": EXTRA, "level": "OWNER"},
        {"user": EXTRA, "level": ""},
        {"user": EXTRA},
        {"level": "READ"},
        {"user": "", "level": "READ"},
        {"user": "a:b", "level": "READ"},
        {"user": "a/b", "level": "READ"},
        {"user": "x" * 129, "level": "READ"},
        {"user": "a\nb", "level": "READ"},
        {"user": EXTRA, "level": "READ", "extra": 1},
        {"user": 5, "level": "READ"},
    ],
    ids=[
        "bad-level",
        "empty-level",
        "no-level",
        "no-user",
        "empty-user",
        "colon",
        "slash",
        "long",
        "newline",
        "unknown-field",
        "int-user",
    ],
)
def test_set_permission_validation(env: Env, new_id: Callable[[str], str], body: dict[str, Any]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    before = state(env, pod_id)
    r = env.client(OWNER).post(f"/v3/pods/{pod_id}/permissions", json=body)
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["message"], list)
    assert state(env, pod_id) == before


def test_levels_are_case_insensitive(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    r = env.client(OWNER).post(f"/v3/pods/{pod_id}/permissions", json={"user": GRANTEE, "level": "user"})
    assert r.status_code == 200, r.text
    assert f"{GRANTEE}:USER" in r.json()["result"]["permissions"]


def test_wildcard_user_is_refused_on_pods(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    before = state(env, pod_id)
    r = env.client(OWNER).post(f"/v3/pods/{pod_id}/permissions", json={"user": "*", "level": "READ"})
    assert r.status_code == 400, r.text
    assert state(env, pod_id) == before
    assert pod_id not in [p["pod_id"] for p in env.client(STRANGER).get("/v3/pods").json()["result"]]


# ------------------------------------------------------------------------------------------------ site admin


@pytest.mark.parametrize("ep", ENDPOINTS, ids=ENDPOINT_IDS)
def test_site_admin_may_do_everything(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    make_template(env, "admin")
    r = ep.call(env.client("admin"), pod_id, caller="admin")
    assert_allowed(env, ep, r, pod_id)


def test_site_admin_lists_every_pod_of_the_tenant(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    assert pod_id in [p["pod_id"] for p in env.client("admin").get("/v3/pods").json()["result"]]


# ------------------------------------------------------------------------------------------------ other tenant


@pytest.mark.parametrize("ep", ENDPOINTS, ids=ENDPOINT_IDS)
def test_other_tenant_never_sees_the_pod(env: Env, new_id: Callable[[str], str], ep: Endpoint) -> None:
    """Same usernames in tenant 'other' (the owner, an ADMIN grantee, and a site admin there): 404."""
    pod_id = new_id("pod")
    make_pod(env, pod_id, {GRANTEE: "ADMIN"})
    before = state(env, pod_id)
    for caller in ("other:owner", "other:grantee", "other:admin"):
        client = env.client(caller)
        name = caller.split(":")[1]
        if ep.name == "save_pod_as_template_tag":
            client.post("/v3/pods/templates", json={"template_id": f"tpl{name}"})
        r = ep.call(client, pod_id, caller=name)
        assert r.status_code == 404, (ep.name, caller, r.status_code, r.text)
        assert pod_id not in [p["pod_id"] for p in client.get("/v3/pods").json()["result"]]
    assert state(env, pod_id) == before


def test_same_pod_id_in_two_tenants_are_two_pods(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    other = env.client("other:owner")
    r = other.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "description": "other tenant"})
    assert r.status_code == 200, r.text
    assert other.get(f"/v3/pods/{pod_id}").json()["result"]["description"] == "other tenant"
    assert (
        env.client(OWNER).get(f"/v3/pods/{pod_id}").json()["result"]["description"] == "permission test pod"
    )
    # Deleting one leaves the other.
    assert other.delete(f"/v3/pods/{pod_id}").status_code == 200
    assert env.client(OWNER).get(f"/v3/pods/{pod_id}").status_code == 200
    assert len(env.server.rows(Permission, object_type="pod", tenant_id="default", object_id=pod_id)) == 2


# ------------------------------------------------------------------------------------------------ last ADMIN


def test_last_admin_cannot_be_removed_or_downgraded(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    owner = env.client(OWNER)
    before = state(env, pod_id)
    r = owner.delete(f"/v3/pods/{pod_id}/permissions/{OWNER}")
    assert r.status_code == 409, r.text
    assert r.json()["status"] == "error"
    for level in ("USER", "READ"):
        r = owner.post(f"/v3/pods/{pod_id}/permissions", json={"user": OWNER, "level": level})
        assert r.status_code == 409, r.text
    # Not even a site admin can leave the pod without an ADMIN.
    assert env.client("admin").delete(f"/v3/pods/{pod_id}/permissions/{OWNER}").status_code == 409
    assert state(env, pod_id) == before


def test_one_of_two_admins_can_step_down(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id, {GRANTEE: "ADMIN"})
    owner = env.client(OWNER)
    r = owner.post(f"/v3/pods/{pod_id}/permissions", json={"user": OWNER, "level": "READ"})
    assert r.status_code == 200, r.text
    assert f"{OWNER}:READ" in r.json()["result"]["permissions"]
    # Now GRANTEE is the last ADMIN.
    grantee = env.client(GRANTEE)
    assert grantee.delete(f"/v3/pods/{pod_id}/permissions/{GRANTEE}").status_code == 409
    assert (
        grantee.post(f"/v3/pods/{pod_id}/permissions", json={"user": GRANTEE, "level": "USER"}).status_code
        == 409
    )
    perms = grantee.get(f"/v3/pods/{pod_id}/permissions").json()["result"]["permissions"]
    assert sorted(perms) == sorted([f"{OWNER}:READ", f"{GRANTEE}:ADMIN", f"{EXTRA}:READ"])


def test_delete_permission_of_user_without_one_is_404(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    before = state(env, pod_id)
    r = env.client(OWNER).delete(f"/v3/pods/{pod_id}/permissions/nobodyhere")
    assert r.status_code == 404, r.text
    assert state(env, pod_id) == before


# ------------------------------------------------------------------------------------------------ side doors


@pytest.mark.parametrize("wanted", ["ON", "OFF", "RESTART"])
def test_user_level_cannot_start_stop_or_restart_through_update(
    env: Env, new_id: Callable[[str], str], wanted: str
) -> None:
    """``status_requested`` is the desired state the controllers reconcile toward (OFF stops the container,
    RESTART restarts it, ON starts a STOPPED pod), i.e. exactly what stop/start/restart do, which the table
    reserves for ADMIN. A USER's update_pod that changes it must be refused (403) and change nothing."""
    pod_id = new_id("pod")
    make_pod(env, pod_id, {GRANTEE: "USER"})  # STOPPED, status_requested OFF
    if wanted != "ON":
        assert env.client(OWNER).get(f"/v3/pods/{pod_id}/start").status_code == 200  # REQUESTED, ON
    before = state(env, pod_id)
    r = env.client(GRANTEE).put(f"/v3/pods/{pod_id}", json={"status_requested": wanted})
    assert r.status_code == 403, (wanted, r.status_code, r.text[:300])
    assert state(env, pod_id) == before


@pytest.mark.parametrize("wanted", ["ON", "OFF", "RESTART"])
def test_admin_level_may_set_status_requested_through_update(
    env: Env, new_id: Callable[[str], str], wanted: str
) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id, {GRANTEE: "ADMIN"})
    if wanted != "ON":
        assert env.client(OWNER).get(f"/v3/pods/{pod_id}/start").status_code == 200
    r = env.client(GRANTEE).put(f"/v3/pods/{pod_id}", json={"status_requested": wanted})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status_requested"] == wanted
