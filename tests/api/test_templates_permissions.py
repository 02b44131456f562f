"""Authorization of every template endpoint, through HTTP against a real server.

The table (behaviour reference 2.2 / 2.7): get_template, list_template_tags, get_template_tag → READ;
update_template, add_template_tag, get_template_permissions → USER; delete_template, set/delete permissions →
ADMIN; list_templates, list_templates_and_tags and add_template → any token (the lists show templates where the
caller or ``*`` holds READ). The wildcard user ``*`` may hold only READ, which makes a template public to its
tenant (never to another tenant). A pod may use a template the caller can READ, and a tag may chain to one;
``save_pod_as_template_tag`` needs ADMIN on the pod and USER on the template. Site admins may do everything in
their tenant; nobody of another tenant ever sees a template.

The matrix of tests/support/permission_matrix.py checks every endpoint: no token → 401; a user without
permission → 404 and nothing changed (database rows compared); READ, USER and ADMIN each get exactly what the
table says, and a refused call changes nothing. This file adds what is particular to templates.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from api_envelope import ok, refused
from permission_matrix import LEVELS, Endpoint, Env, Kind, PermissionMatrix, Users, change_description, grant

from openpods.store.tables import Pod, Template, TemplateTag

IMAGE = "localhost/openpods-test/http"
OWNER = "towner"
GRANTEE = "tgrantee"
STRANGER = "tstranger"
EXTRA = "textra"  # holds READ on every test template, so delete_template_permission has a target
RANK = {None: 0, "READ": 1, "USER": 2, "ADMIN": 3}


def add_tag(caller: str) -> dict[str, Any]:
    return {
        "json": {
            "pod_definition": {"image": IMAGE, "description": f"by {caller}"},
            "tag": "added",
            "commit_message": f"tag by {caller}",
        }
    }


ENDPOINTS = [
    Endpoint("get_template", "GET", "", "READ"),
    Endpoint("list_template_tags", "GET", "/tags", "READ"),
    Endpoint("get_template_tag", "GET", "/tags/latest", "READ"),
    Endpoint("update_template", "PUT", "", "USER", change_description),
    Endpoint("add_template_tag", "POST", "/tags", "USER", add_tag),
    Endpoint("get_template_permissions", "GET", "/permissions", "USER"),
    Endpoint("delete_template", "DELETE", "", "ADMIN"),
    Endpoint("set_template_permission", "POST", "/permissions", "ADMIN", grant(EXTRA, "USER")),
    Endpoint("delete_template_permission", "DELETE", f"/permissions/{EXTRA}", "ADMIN"),
]


def create_template(env: Env, template_id: str) -> None:
    """A template of OWNER with one ``latest`` tag."""
    c = env.client(OWNER)
    ok(c.post("/v3/pods/templates", json={"template_id": template_id, "description": TEMPLATES.description}))
    ok(
        c.post(
            f"/v3/pods/templates/{template_id}/tags",
            json={
                "pod_definition": {"image": IMAGE, "environment_variables": {"FROM": "owner"}},
                "commit_message": "v1",
            },
        )
    )


def tags(env: Env, template_id: str, tenant: str) -> dict[str, Any]:
    return {"tags": env.server.rows(TemplateTag, tenant_id=tenant, template_id=template_id)}


def no_tags(env: Env, template_id: str, tenant: str) -> None:
    assert tags(env, template_id, tenant) == {"tags": []}


def assert_allowed(env: Env, ep: Endpoint, r: httpx.Response, template_id: str, caller: str) -> None:
    result = r.json()["result"]
    s = env.server
    if ep.name == "list_template_tags":
        assert [t["tag"] for t in result] == ["latest"]
    elif ep.name == "get_template_tag":
        assert isinstance(result, list) and result[0]["template_id"] == template_id
    elif ep.name == "update_template":
        assert (
            s.rows(Template, tenant_id="default", template_id=template_id)[0]["description"]
            == f"changed by {caller}"
        )
    elif ep.name == "add_template_tag":
        assert result["tag"] == "added" and result["added_by"] == caller
        assert len(s.rows(TemplateTag, tenant_id="default", template_id=template_id)) == 2


TEMPLATES = Kind(
    name="template",
    collection="/v3/pods/templates",
    model=Template,
    endpoints=ENDPOINTS,
    description="permission test",
    create=create_template,
    users=Users(OWNER, GRANTEE, STRANGER, EXTRA),
    more_state=tags,
    assert_gone=no_tags,
    assert_allowed=assert_allowed,
    extra_lists=("/v3/pods/templates/tags",),
    no_access=(404,),
    public={"*": "READ"},
)
make_template = TEMPLATES.make
state = TEMPLATES.state


@pytest.fixture(scope="module")
def env(make_module_server: Any) -> Env:
    return TEMPLATES.make_env(make_module_server(), IMAGE)


class TestTemplateMatrix(PermissionMatrix):
    kind = TEMPLATES


def test_other_tenant_cannot_use_the_template_for_a_pod_or_a_chain(
    env: Env, new_id: Callable[[str], str]
) -> None:
    template_id = new_id("tpl")
    make_template(env, template_id, {"*": "READ"})
    other = env.client("other:owner")
    pod_id = new_id("pod")
    r = other.post("/v3/pods", json={"pod_id": pod_id, "template": template_id, "status_requested": "OFF"})
    refused(r, 404)
    assert env.server.rows(Pod, tenant_id="other", pod_id=pod_id) == []
    own = new_id("own")
    ok(other.post("/v3/pods/templates", json={"template_id": own}))
    r = other.post(
        f"/v3/pods/templates/{own}/tags",
        json={"pod_definition": {"template": template_id}, "commit_message": "chain"},
    )
    assert r.status_code in (400, 404), r.text
    assert state(env, own, tenant="other")["tags"] == []


def test_template_ids_are_unique_per_tenant_only(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("tpl")
    make_template(env, template_id)
    other = env.client("other:owner")
    ok(other.post("/v3/pods/templates", json={"template_id": template_id, "description": "other tenant's"}))
    ok(
        other.post(
            f"/v3/pods/templates/{template_id}/tags",
            json={
                "pod_definition": {"image": IMAGE, "environment_variables": {"FROM": "other"}},
                "commit_message": "m",
            },
        )
    )
    assert ok(env.client(OWNER).get(f"/v3/pods/templates/{template_id}"))["description"] == "permission test"
    assert ok(other.get(f"/v3/pods/templates/{template_id}"))["description"] == "other tenant's"
    env.server.allow_image(IMAGE)
    pods = {}
    for client, tenant, expected in ((env.client(OWNER), "default", "owner"), (other, "other", "other")):
        pods[tenant] = new_id("pod")
        ok(
            client.post(
                "/v3/pods", json={"pod_id": pods[tenant], "template": template_id, "status_requested": "OFF"}
            )
        )
        derived = ok(client.get(f"/v3/pods/{pods[tenant]}/derived"))
        assert derived["environment_variables"] == {"FROM": expected}, tenant
    # Deleting one tenant's template leaves the other's alone (and only that tenant's pods block it).
    ok(other.delete(f"/v3/pods/{pods['other']}"))
    ok(other.delete(f"/v3/pods/templates/{template_id}"))
    assert state(env, template_id)["row"] and len(state(env, template_id)["tags"]) == 1
    ok(env.client(OWNER).get(f"/v3/pods/{pods['default']}/derived"))


# ------------------------------------------------------------------------------------------------ lists


def test_lists_show_only_templates_the_caller_can_read(env: Env, new_id: Callable[[str], str]) -> None:
    read, user, admin, none, public = (new_id(p) for p in ("read", "user", "admin", "none", "public"))
    make_template(env, read, {GRANTEE: "READ"})
    make_template(env, user, {GRANTEE: "USER"})
    make_template(env, admin, {GRANTEE: "ADMIN"})
    make_template(env, none)
    make_template(env, public, {"*": "READ"})
    mine = {read, user, admin, none, public}

    listed = {t["template_id"] for t in ok(env.client(GRANTEE).get("/v3/pods/templates"))} & mine
    assert listed == {read, user, admin, public}
    with_tags = ok(env.client(GRANTEE).get("/v3/pods/templates/tags"))
    assert set(with_tags) & mine == {read, user, admin, public}
    assert [t["tag"] for t in with_tags[read]["tags"]] == ["latest"]
    assert {t["template_id"] for t in ok(env.client(STRANGER).get("/v3/pods/templates"))} & mine == {public}
    assert {t["template_id"] for t in ok(env.client(OWNER).get("/v3/pods/templates"))} & mine == mine
    assert {t["template_id"] for t in ok(env.client("admin").get("/v3/pods/templates"))} & mine == mine
    # Permissions never leak through the template view.
    for t in ok(env.client(GRANTEE).get("/v3/pods/templates")):
        assert "permissions" not in t


def test_add_template_needs_only_a_token_and_makes_the_creator_admin(
    env: Env, new_id: Callable[[str], str]
) -> None:
    template_id = new_id("tpl")
    ok(env.client(STRANGER).post("/v3/pods/templates", json={"template_id": template_id}))
    perms = ok(env.client(STRANGER).get(f"/v3/pods/templates/{template_id}/permissions"))["permissions"]
    assert perms == [f"{STRANGER}:ADMIN"]
    refused(env.client(OWNER).get(f"/v3/pods/templates/{template_id}"), 404)


# ------------------------------------------------------------------------------------------------ wildcard


def test_wildcard_read_makes_a_template_public_to_its_tenant(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("pub")
    make_template(env, template_id)
    stranger = env.client(STRANGER)
    refused(stranger.get(f"/v3/pods/templates/{template_id}"), 404)

    perms = ok(
        env.client(OWNER).post(
            f"/v3/pods/templates/{template_id}/permissions", json={"user": "*", "level": "READ"}
        )
    )["permissions"]
    assert "*:READ" in perms
    assert ok(stranger.get(f"/v3/pods/templates/{template_id}"))["template_id"] == template_id
    assert [t["tag"] for t in ok(stranger.get(f"/v3/pods/templates/{template_id}/tags"))] == ["latest"]
    assert ok(stranger.get(f"/v3/pods/templates/{template_id}/tags/latest"))[0]["template_id"] == template_id
    assert template_id in {t["template_id"] for t in ok(stranger.get("/v3/pods/templates"))}
    pod_id = new_id("pod")
    ok(stranger.post("/v3/pods", json={"pod_id": pod_id, "template": template_id, "status_requested": "OFF"}))
    assert ok(stranger.get(f"/v3/pods/{pod_id}/derived"))["environment_variables"] == {"FROM": "owner"}

    # READ only: everything that needs USER or ADMIN stays refused, and changes nothing.
    before = state(env, template_id)
    for ep in ENDPOINTS:
        if ep.level != "READ":
            refused(TEMPLATES.call(ep, stranger, template_id, STRANGER), 403)
    assert state(env, template_id) == before

    # An explicit grant still counts on top of the wildcard.
    ok(
        env.client(OWNER).post(
            f"/v3/pods/templates/{template_id}/permissions", json={"user": STRANGER, "level": "USER"}
        )
    )
    ok(stranger.put(f"/v3/pods/templates/{template_id}", json={"description": "by stranger"}))

    # Removing the wildcard makes it private again.
    ok(env.client(OWNER).delete(f"/v3/pods/templates/{template_id}/permissions/{STRANGER}"))
    ok(env.client(OWNER).delete(f"/v3/pods/templates/{template_id}/permissions/*"))
    refused(stranger.get(f"/v3/pods/templates/{template_id}"), 404)
    r = stranger.post(
        "/v3/pods", json={"pod_id": new_id("pod"), "template": template_id, "status_requested": "OFF"}
    )
    refused(r, 404)


@pytest.mark.parametrize("level", ["USER", "ADMIN", "user", "admin"])
def test_wildcard_may_hold_only_read(env: Env, new_id: Callable[[str], str], level: str) -> None:
    template_id = new_id("tpl")
    make_template(env, template_id)
    before = state(env, template_id)
    r = env.client(OWNER).post(
        f"/v3/pods/templates/{template_id}/permissions", json={"user": "*", "level": level}
    )
    refused(r, 400)
    assert "*" in r.text and "READ" in r.text
    assert state(env, template_id) == before
    # Even a site admin cannot.
    refused(
        env.client("admin").post(
            f"/v3/pods/templates/{template_id}/permissions", json={"user": "*", "level": level}
        ),
        400,
    )
    assert state(env, template_id) == before


def test_wildcard_read_then_upgrade_is_refused(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("tpl")
    make_template(env, template_id, {"*": "READ"})
    before = state(env, template_id)
    refused(
        env.client(OWNER).post(
            f"/v3/pods/templates/{template_id}/permissions", json={"user": "*", "level": "ADMIN"}
        ),
        400,
    )
    assert state(env, template_id) == before
    refused(env.client(STRANGER).delete(f"/v3/pods/templates/{template_id}"), 403)


# ------------------------------------------------------------------------------------------------ grants


def test_bad_permission_requests_are_400_or_404(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("tpl")
    make_template(env, template_id)
    before = state(env, template_id)
    owner = env.client(OWNER)
    url = f"/v3/pods/templates/{template_id}/permissions"
    refused(owner.post(url, json={"user": GRANTEE, "level": "OWNER"}), 400)
    refused(owner.post(url, json={"user": GRANTEE}), 400)
    refused(owner.post(url, json={"user": "", "level": "READ"}), 400)
    refused(owner.post(url, json={"user": "a:b", "level": "READ"}), 400)
    refused(owner.delete(f"{url}/{STRANGER}"), 404)
    assert state(env, template_id) == before


def test_revoking_a_grant_takes_access_away(env: Env, new_id: Callable[[str], str]) -> None:
    template_id = new_id("tpl")
    make_template(env, template_id, {GRANTEE: "USER"})
    grantee = env.client(GRANTEE)
    ok(grantee.get(f"/v3/pods/templates/{template_id}"))
    ok(env.client(OWNER).delete(f"/v3/pods/templates/{template_id}/permissions/{GRANTEE}"))
    refused(grantee.get(f"/v3/pods/templates/{template_id}"), 404)
    assert template_id not in {t["template_id"] for t in ok(grantee.get("/v3/pods/templates"))}


# ------------------------------------------------------------------------------------------------ use by pods


@pytest.mark.parametrize("level", [None, *LEVELS])
def test_a_pod_may_use_a_template_the_caller_can_read(
    env: Env, new_id: Callable[[str], str], level: str | None
) -> None:
    template_id = new_id("tpl")
    make_template(env, template_id, {GRANTEE: level} if level else None)
    pod_id = new_id("pod")
    r = env.client(GRANTEE).post(
        "/v3/pods", json={"pod_id": pod_id, "template": template_id, "status_requested": "OFF"}
    )
    if level is None:
        refused(r, 404)
        assert template_id in r.json()["message"]
        assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == []
    else:
        assert ok(r)["template"].startswith(f"{template_id}:latest@")


@pytest.mark.parametrize("level", [None, *LEVELS])
def test_a_tag_may_chain_to_a_template_the_caller_can_read(
    env: Env, new_id: Callable[[str], str], level: str | None
) -> None:
    parent, child = new_id("parent"), new_id("child")
    make_template(env, parent, {GRANTEE: level} if level else None)
    ok(env.client(GRANTEE).post("/v3/pods/templates", json={"template_id": child}))
    r = env.client(GRANTEE).post(
        f"/v3/pods/templates/{child}/tags",
        json={"pod_definition": {"template": parent}, "commit_message": "chain"},
    )
    if level is None:
        refused(r, 404)
        assert state(env, child)["tags"] == []
    else:
        ok(r)


def _volume_of_owner(env: Env, new_id: Callable[[str], str]) -> dict[str, Any]:
    """A volume of OWNER that STRANGER may not use, as a volume_mounts dict; STRANGER mounting it directly in a
    pod is refused (the baseline the template tests compare with)."""
    volume = new_id("vol")
    ok(env.client(OWNER).post("/v3/pods/volumes", json={"volume_id": volume}))
    mount = {volume: {"type": "tapisvolume", "mount_path": "/data"}}
    r = env.client(STRANGER).post(
        "/v3/pods",
        json={"pod_id": new_id("pod"), "image": IMAGE, "volume_mounts": mount, "status_requested": "OFF"},
    )
    assert r.status_code in (400, 403, 404), r.text
    return mount


def test_own_template_cannot_mount_a_volume_the_user_may_not_use(
    env: Env, new_id: Callable[[str], str]
) -> None:
    mount = _volume_of_owner(env, new_id)
    stranger = env.client(STRANGER)
    own = new_id("own")
    ok(stranger.post("/v3/pods/templates", json={"template_id": own}))
    r = stranger.post(
        f"/v3/pods/templates/{own}/tags",
        json={"pod_definition": {"image": IMAGE, "volume_mounts": mount}, "commit_message": "mount it"},
    )
    if r.status_code != 200:  # refusing the tag is fine, too
        assert r.status_code in (400, 403, 404), r.text
        return
    pod_id = new_id("pod")
    r = stranger.post("/v3/pods", json={"pod_id": pod_id, "template": own, "status_requested": "OFF"})
    assert r.status_code in (400, 403, 404), f"mounted another user's volume through a template: {r.text}"
    assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == []


def test_public_template_mounting_its_authors_volume_is_refused_to_others(
    env: Env, new_id: Callable[[str], str]
) -> None:
    mount = _volume_of_owner(env, new_id)
    public = new_id("public")
    make_template(env, public, {"*": "READ"})
    ok(
        env.client(OWNER).post(
            f"/v3/pods/templates/{public}/tags",
            json={
                "pod_definition": {"image": IMAGE, "volume_mounts": mount},
                "commit_message": "with my volume",
            },
        )
    )
    pod_id = new_id("pod")
    r = env.client(STRANGER).post(
        "/v3/pods", json={"pod_id": pod_id, "template": public, "status_requested": "OFF"}
    )
    assert r.status_code in (400, 403, 404), f"mounted another user's volume through a template: {r.text}"
    assert env.server.rows(Pod, tenant_id="default", pod_id=pod_id) == []
    # The volume's owner may use that template.
    ok(
        env.client(OWNER).post(
            "/v3/pods", json={"pod_id": new_id("pod"), "template": public, "status_requested": "OFF"}
        )
    )


# ------------------------------------------------------------------------------------------------ save as tag


@pytest.mark.parametrize("template_level", [None, *LEVELS])
@pytest.mark.parametrize("pod_level", [None, *LEVELS])
def test_save_pod_as_template_tag_needs_admin_on_pod_and_user_on_template(
    env: Env, new_id: Callable[[str], str], pod_level: str | None, template_level: str | None
) -> None:
    template_id, pod_id = new_id("tpl"), new_id("pod")
    make_template(env, template_id, {GRANTEE: template_level} if template_level else None)
    owner = env.client(OWNER)
    ok(
        owner.post(
            "/v3/pods",
            json={"pod_id": pod_id, "image": IMAGE, "description": "to save", "status_requested": "OFF"},
        )
    )
    if pod_level:
        ok(owner.post(f"/v3/pods/{pod_id}/permissions", json={"user": GRANTEE, "level": pod_level}))
    before = state(env, template_id)
    r = env.client(GRANTEE).post(
        f"/v3/pods/{pod_id}/save_pod_as_template_tag",
        json={"template_id": template_id, "tag": "saved", "commit_message": "saved by grantee"},
    )
    if pod_level == "ADMIN" and RANK[template_level] >= RANK["USER"]:
        tag = ok(r)
        assert tag["added_by"] == GRANTEE and tag["pod_definition"]["description"] == "to save"
        assert len(state(env, template_id)["tags"]) == 2
        return
    if pod_level is None:
        refused(r, 404)
    elif pod_level != "ADMIN":
        refused(r, 403)
    elif template_level is None:
        refused(r, 404)
    else:
        refused(r, 403)
    assert state(env, template_id) == before


def test_save_pod_as_template_tag_into_another_tenants_template_is_404(
    env: Env, new_id: Callable[[str], str]
) -> None:
    template_id, pod_id = new_id("tpl"), new_id("pod")
    other = env.client("other:owner")
    ok(other.post("/v3/pods/templates", json={"template_id": template_id}))
    ok(env.client(OWNER).post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF"}))
    r = env.client(OWNER).post(
        f"/v3/pods/{pod_id}/save_pod_as_template_tag",
        json={"template_id": template_id, "commit_message": "cross tenant"},
    )
    refused(r, 404)
    assert state(env, template_id, tenant="other")["tags"] == []
