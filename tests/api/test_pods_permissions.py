"""Authorization of every pod endpoint, through HTTP against a real server.

The table (user guide, behaviour reference 2.2/4.2): GET pod, logs, derived → READ; PUT, credentials,
GET permissions → USER; DELETE, stop/start/restart, exec, upload_to_pod, set/delete permissions,
save_pod_as_template_tag → ADMIN; list/create → any token (list only shows pods with ≥ READ). Site admins
may do everything in their tenant. Users of another tenant never see or touch the pod (404).

The matrix of tests/support/permission_matrix.py checks every endpoint: no token → 401; a user without
permission → 403/404 and nothing changed; READ, USER and ADMIN are each allowed exactly what the table says,
and a refused call changes nothing. Endpoints that other issues implement (exec, upload_to_pod) are checked for
the authorization part only. This file adds what is particular to pods.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from api_envelope import ok
from permission_matrix import Endpoint, Env, Kind, PermissionMatrix, Users, change_description, grant

from openpods.store.tables import ActionLog, Permission, Pod, PodLog, PodSecret, Template, TemplateTag

IMAGE = "localhost/openpods-test/http"
OWNER = "owner"
GRANTEE = "grantee"
STRANGER = "stranger"
EXTRA = "extra"  # holds READ on every test pod, so delete_pod_permission has a target


def save_as_tag(caller: str) -> dict[str, Any]:
    """Into the caller's own template (see ``prepare``)."""
    return {"json": {"template_id": f"tpl{caller}", "tag": "v1", "commit_message": "from pod"}}


ENDPOINTS = [
    Endpoint("get_pod", "GET", "", "READ"),
    Endpoint("get_pod_logs", "GET", "/logs", "READ"),
    Endpoint("get_derived_pod", "GET", "/derived", "READ"),
    Endpoint("update_pod", "PUT", "", "USER", change_description),
    Endpoint("get_pod_credentials", "GET", "/credentials", "USER"),
    Endpoint("get_pod_permissions", "GET", "/permissions", "USER"),
    Endpoint("delete_pod", "DELETE", "", "ADMIN"),
    Endpoint("stop_pod", "GET", "/stop", "ADMIN"),
    Endpoint("start_pod", "GET", "/start", "ADMIN"),
    Endpoint("restart_pod", "GET", "/restart", "ADMIN"),
    Endpoint("set_pod_permission", "POST", "/permissions", "ADMIN", grant(EXTRA, "USER")),
    Endpoint("delete_pod_permission", "DELETE", f"/permissions/{EXTRA}", "ADMIN"),
    Endpoint("save_pod_as_template_tag", "POST", "/save_pod_as_template_tag", "ADMIN", save_as_tag),
    Endpoint(
        "exec_pod_commands",
        "POST",
        "/exec",
        "ADMIN",
        lambda caller: {"json": {"commands": ["echo", "hi"]}},
        auth_only=True,
    ),
    Endpoint(
        "upload_to_pod",
        "POST",
        "/upload_to_pod",
        "ADMIN",
        lambda caller: {
            "files": {"file": ("hello.txt", b"hello\n")},
            "data": {"dest_path": "/tmp/hello.txt"},
        },
        auth_only=True,
    ),
]


def create_body(env: Env, pod_id: str) -> dict[str, Any]:
    return {"pod_id": pod_id, "image": IMAGE}


def create_pod(env: Env, pod_id: str) -> None:
    """A STOPPED pod of OWNER."""
    r = env.client(OWNER).post(
        "/v3/pods",
        json={**create_body(env, pod_id), "status_requested": "OFF", "description": PODS.description},
    )
    assert r.status_code == 200, r.text


def make_template(env: Env, caller: str) -> None:
    """A template ``tpl<name>`` of the caller (a client key, ``other:<name>`` in the other tenant):
    save_pod_as_template_tag needs USER on it, so that only the pod decides whether the call is allowed."""
    tenant, _, name = caller.rpartition(":")
    template_id = f"tpl{name}"
    if not env.server.rows(Template, tenant_id=tenant or "default", template_id=template_id):
        ok(
            env.client(caller).post(
                "/v3/pods/templates", json={"template_id": template_id, "description": "t"}
            )
        )


def more_state(env: Env, pod_id: str, tenant: str) -> dict[str, Any]:
    """What a pod endpoint could change besides the pod's row and grants, from the database and the API."""
    s = env.server
    view = env.client(OWNER).get(f"/v3/pods/{pod_id}") if tenant == "default" else None
    return {
        "secret": s.rows(PodSecret, tenant_id=tenant, pod_id=pod_id),
        "logs": s.rows(PodLog, tenant_id=tenant, pod_id=pod_id),
        "actions": s.rows(ActionLog, object_type="pod", tenant_id=tenant, object_id=pod_id),
        "tags": s.count(TemplateTag),
        "view": (view.status_code, view.json()) if view is not None else None,
    }


def assert_allowed(env: Env, ep: Endpoint, r: httpx.Response, pod_id: str, caller: str) -> None:
    result = r.json()["result"]
    pod = env.client(OWNER).get(f"/v3/pods/{pod_id}")
    if ep.name == "stop_pod":
        assert pod.json()["result"]["status_requested"] == "OFF"
    elif ep.name in ("start_pod", "restart_pod"):
        assert pod.json()["result"]["status"] == "REQUESTED"
    elif ep.name == "get_pod_credentials":
        assert result["user_username"] == pod_id
    elif ep.name == "save_pod_as_template_tag":
        assert result["tag"] == "v1"
    elif ep.name == "get_derived_pod":
        assert result["pod_id"] == pod_id


PODS = Kind(
    name="pod",
    collection="/v3/pods",
    model=Pod,
    endpoints=ENDPOINTS,
    description="permission test pod",
    create=create_pod,
    users=Users(OWNER, GRANTEE, STRANGER, EXTRA),
    create_body=create_body,
    more_state=more_state,
    assert_allowed=assert_allowed,
    prepare=make_template,
)
state = PODS.state


make_pod = PODS.make


@pytest.fixture(scope="module")
def env(server: Any) -> Env:
    return PODS.make_env(server, IMAGE)


class TestPodMatrix(PermissionMatrix):
    kind = PODS


def test_any_user_can_create_and_becomes_admin(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    stranger = env.client(STRANGER)
    r = stranger.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE})
    assert r.status_code == 200, r.text
    perms = stranger.get(f"/v3/pods/{pod_id}/permissions").json()["result"]["permissions"]
    assert perms == [f"{STRANGER}:ADMIN"]
    assert pod_id in [p["pod_id"] for p in stranger.get("/v3/pods").json()["result"]]


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


def test_site_admin_lists_every_pod_of_the_tenant(env: Env, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    make_pod(env, pod_id)
    assert pod_id in [p["pod_id"] for p in env.client("admin").get("/v3/pods").json()["result"]]


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


# ------------------------------------------------------------------------------------------------ grants


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
