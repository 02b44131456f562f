"""The image allowlist: reads for everyone with a token, writes for site admins only, tenant scopes, tags, and
its use by create_pod / update_pod."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tapipy import errors as tapipy_errors

from openpods.store.tables import ActionLog, Image, Permission, Pod, PodSecret

BASE = "localhost/openpods-test"


@pytest.fixture(scope="module")
def env(server: Any) -> Any:
    server.add_user("alice")
    server.add_user("bob", tenant="other")
    server.add_user("otheradmin", tenant="other", admin=True)
    return server


def admin(server: Any) -> httpx.Client:
    return server.client("admin")


def images(server: Any) -> list[dict[str, Any]]:
    return server.rows(Image)


def add(server: Any, image: str, tenants: list[str] | None = None, description: str = "") -> httpx.Response:
    body: dict[str, Any] = {"image": image, "description": description}
    if tenants is not None:
        body["tenants"] = tenants
    return admin(server).post("/v3/pods/images", json=body)


def assert_pod_not_stored(server: Any, pod_id: str, tenant: str = "default") -> None:
    assert server.rows(Pod, tenant_id=tenant, pod_id=pod_id) == []
    assert server.rows(PodSecret, tenant_id=tenant, pod_id=pod_id) == []
    assert server.rows(Permission, object_type="pod", tenant_id=tenant, object_id=pod_id) == []
    assert server.rows(ActionLog, object_type="pod", tenant_id=tenant, object_id=pod_id) == []


def assert_image_refused(r: httpx.Response) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == "error"
    assert isinstance(body["message"], list) and all(isinstance(m, str) for m in body["message"])
    assert any("image" in m for m in body["message"]), body["message"]


# ------------------------------------------------------------------------------------------------ reads


def test_get_images_needs_a_token(env: Any) -> None:
    assert env.client().get("/v3/pods/images").status_code == 401
    assert env.client().get(f"/v3/pods/images/{BASE}/http").status_code == 401


def test_add_get_and_list_with_tapipy(env: Any, new_id: Callable[[str], str]) -> None:
    t = env.tapis("admin", env.admin_password)
    name = f"{BASE}/{new_id('img')}"
    added = t.pods.add_image(image=name, tenants=["**"], description="an image")
    assert (added.image, added.tenants, added.description, added.added_by) == (
        name,
        ["**"],
        "an image",
        "admin",
    )
    assert added.creation_ts

    alice = env.tapis("alice")
    got = alice.pods.get_image(image_id=name)  # a name with '/' in the path
    assert (got.image, got.tenants) == (name, ["**"])
    assert name in [i.image for i in alice.pods.get_images()]
    # Users of other tenants read the same site-wide list.
    bob = env.client("bob", tenant="other")
    assert name in [i["image"] for i in bob.get("/v3/pods/images").json()["result"]]


@pytest.mark.parametrize(
    "name",
    [
        "localhost:5000/org/img",
        "localhost:5000/org/img:v1.2",
        "registry.example.org/a/b/c",
        "busybox",
        "busybox:1.36",
    ],
)
def test_names_with_slashes_ports_and_tags(env: Any, name: str) -> None:
    r = add(env, name, ["**"])
    assert r.status_code == 200, r.text
    got = env.client("alice").get(f"/v3/pods/images/{name}")
    assert got.status_code == 200, got.text
    assert got.json()["result"]["image"] == name
    t = env.tapis("alice")
    assert t.pods.get_image(image_id=name).image == name
    r = admin(env).delete(f"/v3/pods/images/{name}")
    assert r.status_code == 200, r.text
    assert env.client("alice").get(f"/v3/pods/images/{name}").status_code == 404


def test_get_unknown_image_is_404(env: Any) -> None:
    r = env.client("alice").get(f"/v3/pods/images/{BASE}/nosuchimage")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    # Names that cannot be images are simply not found (PostgreSQL cannot even compare a NUL byte).
    for odd in ("a%00b", "x" * 2000, "p%C3%B6d", "a/../b"):
        r = env.client("alice").get(f"/v3/pods/images/{odd}")
        assert r.status_code == 404, (odd[:20], r.status_code, r.text[:200])
        r = admin(env).delete(f"/v3/pods/images/{odd}")
        assert r.status_code == 404, (odd[:20], r.status_code, r.text[:200])
    with pytest.raises(tapipy_errors.NotFoundError):
        env.tapis("alice").pods.get_image(image_id=f"{BASE}/nosuchimage")


# ------------------------------------------------------------------------------------------------ writes


def test_add_image_is_admin_only(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('img')}"
    before = images(env)
    for client in (
        env.client("alice"),
        env.client("bob", tenant="other"),
        env.client(token=env.token("admin", tenant="other")),
    ):
        r = client.post("/v3/pods/images", json={"image": name, "tenants": ["**"]})
        assert r.status_code == 403, r.text
        assert r.json()["status"] == "error"
    with pytest.raises(tapipy_errors.ForbiddenError):
        env.tapis("alice").pods.add_image(image=name, tenants=["**"])
    assert images(env) == before
    assert env.client().post("/v3/pods/images", json={"image": name}).status_code == 401
    assert images(env) == before


def test_add_duplicate_image_is_409(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('img')}"
    assert add(env, name, ["**"], "first").status_code == 200
    before = images(env)
    r = add(env, name, ["default"], "second")
    assert r.status_code == 409, r.text
    assert images(env) == before


@pytest.mark.parametrize(
    "body",
    [
        {"image": "Uppercase/Name"},
        {"image": ""},
        {"image": "has space"},
        {"image": "localhost/x", "tenants": ["Bad Tenant"]},
        {"image": "localhost/x", "tenants": "**"},
        {"image": "localhost/x", "description": "é"},
        {"image": "localhost/x", "unknown": 1},
        {"tenants": ["**"]},
    ],
)
def test_add_image_validation(env: Any, body: dict[str, Any]) -> None:
    before = images(env)
    r = admin(env).post("/v3/pods/images", json=body)
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["message"], list)
    assert images(env) == before


def test_add_images_bulk(env: Any, new_id: Callable[[str], str]) -> None:
    names = [f"{BASE}/{new_id('bulk')}" for _ in range(3)]
    t = env.tapis("admin", env.admin_password)
    added = t.pods.add_images(request_body=[{"image": n, "tenants": ["**"]} for n in names[:2]])
    assert sorted(i.image for i in added) == sorted(names[:2])
    stored = {row["image"] for row in images(env)}
    assert set(names[:2]) <= stored

    # A duplicate (already stored, or twice in the request) refuses the whole request: nothing added.
    before = images(env)
    for body in ([{"image": names[2]}, {"image": names[0]}], [{"image": names[2]}, {"image": names[2]}]):
        r = admin(env).post("/v3/pods/images/bulk", json=body)
        assert r.status_code == 409, r.text
        assert images(env) == before

    # skip_duplicates=true adds the new ones and skips the rest.
    r = admin(env).post(
        "/v3/pods/images/bulk",
        params={"skip_duplicates": "true"},
        json=[{"image": names[0]}, {"image": names[2]}, {"image": names[2]}],
    )
    assert r.status_code == 200, r.text
    assert [i["image"] for i in r.json()["result"]] == [names[2]]
    assert names[2] in {row["image"] for row in images(env)}
    # tapipy passes the query parameter as Python's True.
    more = f"{BASE}/{new_id('bulk')}"
    added = t.pods.add_images(request_body=[{"image": more}, {"image": names[0]}], skip_duplicates=True)
    assert [i.image for i in added] == [more]


def test_add_images_bulk_is_admin_only_and_atomic(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('bulk')}"
    before = images(env)
    r = env.client("alice").post("/v3/pods/images/bulk", json=[{"image": name}])
    assert r.status_code == 403, r.text
    assert images(env) == before
    # One invalid entry: 400 and nothing added.
    r = admin(env).post("/v3/pods/images/bulk", json=[{"image": name}, {"image": "BAD NAME"}])
    assert r.status_code == 400, r.text
    assert images(env) == before


def test_delete_image(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('img')}"
    assert add(env, name, ["**"]).status_code == 200
    before = images(env)
    for client in (env.client("alice"), env.client("bob", tenant="other")):
        r = client.delete(f"/v3/pods/images/{name}")
        assert r.status_code == 403, r.text
    assert env.client().delete(f"/v3/pods/images/{name}").status_code == 401
    assert images(env) == before

    t = env.tapis("admin", env.admin_password)
    result = t.pods.delete_image(image_id=name)
    assert result == name  # as the original: the result is the deleted image's id
    assert name not in {row["image"] for row in images(env)}
    r = admin(env).delete(f"/v3/pods/images/{name}")
    assert r.status_code == 404


# ------------------------------------------------------------------------------------------------ use by pods


def create(
    server: Any, image: str, pod_id: str, user: str = "alice", tenant: str | None = None
) -> httpx.Response:
    return server.client(user, tenant=tenant).post("/v3/pods", json={"pod_id": pod_id, "image": image})


def test_create_pod_refuses_images_not_on_the_allowlist(env: Any, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    r = create(env, f"{BASE}/{new_id('notallowed')}", pod_id)
    assert_image_refused(r)
    assert_pod_not_stored(env, pod_id)
    with pytest.raises(tapipy_errors.BadRequestError) as info:
        env.tapis("alice").pods.create_pod(pod_id=pod_id, image=f"{BASE}/nope")
    assert "image" in str(info.value.message)
    assert_pod_not_stored(env, pod_id)


def test_prefix_of_an_allowed_name_is_not_allowed(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('img')}"
    assert add(env, name, ["**"]).status_code == 200
    for image in (
        f"{name}x",
        f"{name}/sub",
        f"{name}x:latest",
        f"other.registry/{name}",
        name.rsplit("/", 1)[0],
    ):
        pod_id = new_id("pod")
        assert_image_refused(create(env, image, pod_id))
        assert_pod_not_stored(env, pod_id)


def test_entry_without_tag_admits_every_tag(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('img')}"
    assert add(env, name, ["**"]).status_code == 200
    for image in (name, f"{name}:latest", f"{name}:v2"):
        r = create(env, image, new_id("pod"))
        assert r.status_code == 200, (image, r.text)
        assert r.json()["result"]["image"] == image


def test_entry_without_tag_does_not_admit_an_unconfirmed_digest(env: Any, new_id: Callable[[str], str]) -> None:
    """``name@sha256:…`` and ``name:tag@sha256:…`` name content, not a tag: an engine runs whatever image has
    that digest. Without an engine to confirm the digest belongs to an allowed tag (this server has none) they
    are refused, unless an entry names the digest (tests/api/test_security_input.py, tests/integration/
    test_security_input.py)."""
    name = f"{BASE}/{new_id('img')}"
    assert add(env, name, ["**"]).status_code == 200
    for image in (f"{name}@sha256:{'a' * 64}", f"{name}:v2@sha256:{'b' * 64}"):
        pod_id = new_id("pod")
        assert_image_refused(create(env, image, pod_id))
        assert_pod_not_stored(env, pod_id)


def test_entry_with_tag_admits_only_that_tag(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('img')}"
    assert add(env, f"{name}:v1", ["**"]).status_code == 200
    assert create(env, f"{name}:v1", new_id("pod")).status_code == 200
    for image in (f"{name}:v2", f"{name}:latest", name, f"{name}:v1x"):
        pod_id = new_id("pod")
        assert_image_refused(create(env, image, pod_id))
        assert_pod_not_stored(env, pod_id)


def test_registry_port_entry(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"localhost:5000/org/{new_id('img')}"
    assert add(env, name, ["**"]).status_code == 200
    assert create(env, f"{name}:v3", new_id("pod")).status_code == 200
    # The same path on another registry (or none) is another image.
    for image in (name.replace("localhost:5000", "localhost:5001"), name.replace("localhost:5000/", "")):
        pod_id = new_id("pod")
        assert_image_refused(create(env, image, pod_id))
        assert_pod_not_stored(env, pod_id)


@pytest.mark.parametrize(
    ("tenants", "default_ok", "other_ok"),
    [
        (["**"], True, True),
        (["default"], True, False),
        (["other"], False, True),
        (["default", "other"], True, True),
        (["**", "-other"], True, False),
        (["**", "-default"], False, True),
        (["default", "-default"], False, False),  # deny wins
    ],
)
def test_tenant_scopes(
    env: Any, new_id: Callable[[str], str], tenants: list[str], default_ok: bool, other_ok: bool
) -> None:
    name = f"{BASE}/{new_id('scoped')}"
    assert add(env, name, tenants).status_code == 200
    for user, tenant, expected in (("alice", None, default_ok), ("bob", "other", other_ok)):
        pod_id = new_id("pod")
        r = create(env, name, pod_id, user=user, tenant=tenant)
        if expected:
            assert r.status_code == 200, (tenants, tenant, r.text)
        else:
            assert_image_refused(r)
            assert_pod_not_stored(env, pod_id, tenant or "default")


def test_removed_image_refuses_new_pods(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('img')}"
    assert add(env, name, ["**"]).status_code == 200
    assert create(env, name, new_id("pod")).status_code == 200
    assert admin(env).delete(f"/v3/pods/images/{name}").status_code == 200
    pod_id = new_id("pod")
    assert_image_refused(create(env, name, pod_id))
    assert_pod_not_stored(env, pod_id)


def test_update_pod_refuses_images(env: Any, new_id: Callable[[str], str]) -> None:
    name = f"{BASE}/{new_id('img')}"
    assert add(env, name, ["**"]).status_code == 200
    pod_id = new_id("pod")
    assert create(env, name, pod_id).status_code == 200
    before = env.rows(Pod, pod_id=pod_id)
    for image in (f"{BASE}/notallowed", "Bad Name"):
        r = env.client("alice").put(f"/v3/pods/{pod_id}", json={"image": image})
        assert_image_refused(r)
        assert env.rows(Pod, pod_id=pod_id) == before


def test_site_allow_list_setting(make_server: Any, new_id: Callable[[str], str]) -> None:
    srv = make_server(image_allow_list=[f"{BASE}/fromsettings", f"{BASE}/pinned:v1"])
    srv.add_user("alice")
    alice = srv.client("alice")
    assert (
        alice.post(
            "/v3/pods", json={"pod_id": new_id("pod"), "image": f"{BASE}/fromsettings:any"}
        ).status_code
        == 200
    )
    assert (
        alice.post("/v3/pods", json={"pod_id": new_id("pod"), "image": f"{BASE}/pinned:v1"}).status_code
        == 200
    )
    pod_id = new_id("pod")
    assert_image_refused(alice.post("/v3/pods", json={"pod_id": pod_id, "image": f"{BASE}/pinned:v2"}))
    assert_pod_not_stored(srv, pod_id)
    # The setting admits the image in every tenant.
    srv.add_user("bob", tenant="other")
    r = srv.client("bob", tenant="other").post(
        "/v3/pods", json={"pod_id": new_id("pod"), "image": f"{BASE}/fromsettings"}
    )
    assert r.status_code == 200, r.text
