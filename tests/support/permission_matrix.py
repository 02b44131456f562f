"""Who may call what on one kind of object (pod, volume, snapshot, template), through HTTP against a real server.

A test module describes its kind with a :class:`Kind` -- the endpoints and the least level each needs, how the
owner creates an object, everything a call could change about it, what an allowed call of a kind-specific
endpoint must have done -- and subclasses :class:`PermissionMatrix` with it. The matrix then checks, for every
endpoint:

- no token or a bad token: 401, nothing changed;
- a user without permission (on an object of the owner alone, and on one where another user holds ADMIN):
  ``Kind.no_access``, the object's description not in the answer, nothing changed; with 404 the answer is the
  one for an object that does not exist;
- an id that names no object: 404 for a stranger, the owner of other objects and a site admin;
- a READ, USER or ADMIN grantee gets exactly what the table says; a refused call is a 403 whose message names
  the level it needs, and changes nothing;
- the owner and a site admin of the tenant may do everything;
- the owner, an ADMIN grantee and the site admin of another tenant (same usernames) get 404, change nothing,
  leave no trace in their tenant and never see the object in a list;

and the grant rules every kind shares: lists show objects with any level (and no more after a revoke); USER
cannot escalate; the last ADMIN can be neither removed nor downgraded (not even by a site admin); one of two
ADMINs may step down, after which everything above READ is refused to them.

The six endpoints every kind has are recognised by their operation ids (``get_<kind>``, ``update_<kind>``,
``delete_<kind>``, ``get_<kind>_permissions``, ``set_<kind>_permission``, ``delete_<kind>_permission``) and
checked here; ``Kind.assert_allowed`` checks the others.

Import with ``sys.path`` pointing at this folder (the suite runs with ``--import-mode=importlib``, where test
folders are not packages).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from api_envelope import ok, refused
from file_tree import tree

from openpods.store.tables import Permission

LEVELS = ("READ", "USER", "ADMIN")
RANK: dict[str | None, int] = {None: 0, "READ": 1, "USER": 2, "ADMIN": 3}
OTHER_TENANT = "other"
# Client keys of the other tenant's users: the same usernames as the owner and the grantee, and its site admin.
OUTSIDERS = ("other:owner", "other:grantee", "other:admin")

Send = Callable[[str], dict[str, Any]]  # caller -> keyword arguments of httpx.Client.request


@dataclass(frozen=True)
class Users:
    owner: str = "owner"
    grantee: str = "grantee"
    stranger: str = "stranger"
    extra: str = "extra"  # holds READ on every test object, so delete_<kind>_permission has a target


def no_body(caller: str) -> dict[str, Any]:
    return {}


def change_description(caller: str) -> dict[str, Any]:
    """The body of an update that the check of ``update_<kind>`` recognises."""
    return {"json": {"description": f"changed by {caller}"}}


def grant(user: str, level: str) -> Send:
    return lambda caller: {"json": {"user": user, "level": level}}


@dataclass(frozen=True)
class Endpoint:
    name: str  # operation id
    method: str
    path: str  # relative to the object's URL
    level: str  # the least level that may call it
    send: Send = no_body
    raw: bool = False  # answers a file's bytes, not an envelope
    auth_only: bool = False  # implemented by a later issue: only the authorization part is checked


@dataclass
class Env:
    server: Any
    users: Users
    clients: dict[str, httpx.Client]

    def client(self, name: str) -> httpx.Client:
        return self.clients[name]


def _nothing(*args: Any) -> None:
    return None


@dataclass(frozen=True)
class Kind:
    """What the matrix needs to know of one kind of object; the test module's endpoint table is its core."""

    # "volume": the object_type of its grants, the middle of its operation ids; ``<name>_id`` is its id field
    name: str
    collection: str  # "/v3/pods/volumes"
    model: type  # the table of its rows
    endpoints: list[Endpoint]
    description: str  # of every test object: must never reach a user who may not see the object
    create: Callable[[Env, str], None]  # the owner creates an object with that description
    users: Users
    # (env, id): a valid create_<kind> body (default: only the id), for the no-token test
    create_body: Callable[[Env, str], dict[str, Any]] | None = None
    folder: str | None = None  # its storage folder (data_dir/storage/<tenant>/<folder>/<id>), if it has one
    # (env, id, tenant): what else a call could change, besides its row, grants and folder
    more_state: Callable[[Env, str, str], dict[str, Any]] = lambda env, object_id, tenant: {}
    # (env, id, tenant): what else must be gone when the object is, besides its row, grants and folder
    assert_gone: Callable[[Env, str, str], None] = _nothing
    # (env, ep, answer, id, caller): what an allowed call of a kind-specific endpoint must have done
    assert_allowed: Callable[[Env, Endpoint, httpx.Response, str, str], None] = _nothing
    # (env, client key): what a caller's call needs besides the object (pods: a template of the caller's)
    prepare: Callable[[Env, str], None] = _nothing
    extra_lists: tuple[str, ...] = ()  # list URLs besides the collection that show readable objects
    no_access: tuple[int, ...] = (403, 404)  # answer to a user without any permission
    # Grants that make an object public to its tenant (templates: ``*`` READ), tried where they must not
    # count: the last ADMIN, another tenant.
    public: Mapping[str, str] = field(default_factory=dict)

    @property
    def id_field(self) -> str:
        return f"{self.name}_id"

    def make_env(self, server: Any, image: str) -> Env:
        """The users of the matrix on ``server``, and a client for each: the four users, ``admin`` (site
        admin), ``anon`` (no token), ``badtoken`` and the :data:`OUTSIDERS`."""
        users = self.users
        server.allow_image(image)
        for name in (users.owner, users.grantee, users.stranger, users.extra):
            server.add_user(name)
        server.add_user(users.owner, tenant=OTHER_TENANT)
        server.add_user(users.grantee, tenant=OTHER_TENANT)
        server.add_user("otheradmin", tenant=OTHER_TENANT, admin=True)
        clients = {
            name: server.client(name) for name in (users.owner, users.grantee, users.stranger, users.extra)
        }
        clients["admin"] = server.client("admin")
        clients["anon"] = server.client()
        clients["badtoken"] = server.client(token="not.a.token")
        clients["other:owner"] = server.client(users.owner, tenant=OTHER_TENANT)
        clients["other:grantee"] = server.client(users.grantee, tenant=OTHER_TENANT)
        clients["other:admin"] = server.client("otheradmin", tenant=OTHER_TENANT)
        return Env(server=server, users=users, clients=clients)

    def url(self, object_id: str) -> str:
        return f"{self.collection}/{object_id}"

    def call(
        self, ep: Endpoint, client: httpx.Client, object_id: str, caller: str | None = None
    ) -> httpx.Response:
        """``ep`` on the object; ``caller`` (default: the grantee) goes into bodies that name who sent them."""
        return client.request(
            ep.method, self.url(object_id) + ep.path, **ep.send(caller or self.users.grantee)
        )

    def storage_dir(self, env: Env, object_id: str, tenant: str = "default") -> Path:
        assert self.folder is not None, f"a {self.name} has no storage folder"
        return env.server.settings.data_dir / "storage" / tenant / self.folder / object_id

    def rows(self, env: Env, object_id: str, tenant: str = "default") -> dict[str, Any]:
        """The object's row and its grants."""
        server = env.server
        return {
            "row": server.rows(self.model, tenant_id=tenant, **{self.id_field: object_id}),
            "grants": server.rows(Permission, object_type=self.name, tenant_id=tenant, object_id=object_id),
        }

    def state(self, env: Env, object_id: str, tenant: str = "default") -> dict[str, Any]:
        """Everything a call could change about the object (a refused call must leave it equal)."""
        out = {**self.rows(env, object_id, tenant), **self.more_state(env, object_id, tenant)}
        if self.folder is not None:
            top = self.storage_dir(env, object_id, tenant)
            out.update(disk=tree(top), exists=top.is_dir())
        return out

    def assert_absent(self, env: Env, object_id: str, tenant: str = "default") -> None:
        """No trace of the object in the tenant."""
        assert self.rows(env, object_id, tenant) == {"row": [], "grants": []}
        if self.folder is not None:
            assert not self.storage_dir(env, object_id, tenant).exists()
        self.assert_gone(env, object_id, tenant)

    def make(self, env: Env, object_id: str, grants: Mapping[str, str] | None = None) -> None:
        """An object of the owner with ``extra``:READ plus ``grants``."""
        self.create(env, object_id)
        owner = env.client(self.users.owner)
        for user, level in {self.users.extra: "READ", **(grants or {})}.items():
            ok(owner.post(f"{self.url(object_id)}/permissions", json={"user": user, "level": level}))

    def new(self, env: Env, new_id: Callable[[str], str], grants: Mapping[str, str] | None = None) -> str:
        object_id = new_id(self.name)
        self.make(env, object_id, grants)
        return object_id

    def permissions(self, client: httpx.Client, object_id: str) -> list[str]:
        return ok(client.get(f"{self.url(object_id)}/permissions"))["permissions"]

    def list_urls(self) -> tuple[str, ...]:
        return (self.collection, *self.extra_lists)

    def listed(self, client: httpx.Client, url: str) -> set[str]:
        """Ids in a list answer: a list of objects, or a dict keyed by id."""
        result = ok(client.get(url))
        return set(result) if isinstance(result, dict) else {item[self.id_field] for item in result}


def assert_allowed(
    kind: Kind, env: Env, ep: Endpoint, r: httpx.Response, object_id: str, caller: str
) -> None:
    """An allowed call answered and did what it says."""
    if ep.auth_only:
        assert r.status_code not in (401, 403, 404), (ep.name, r.status_code, r.text)
        return
    if ep.raw:
        assert r.status_code == 200, (ep.name, r.status_code, r.text)
        kind.assert_allowed(env, ep, r, object_id, caller)
        return
    result = ok(r)
    owner = env.client(kind.users.owner)
    extra = kind.users.extra
    name = kind.name
    if ep.name == f"get_{name}":
        assert result[kind.id_field] == object_id
    elif ep.name == f"update_{name}":
        assert ok(owner.get(kind.url(object_id)))["description"] == f"changed by {caller}"
    elif ep.name == f"delete_{name}":
        refused(owner.get(kind.url(object_id)), 404)
        kind.assert_absent(env, object_id, "default")
        assert env.server.rows(Permission, object_type=name, object_id=object_id) == []  # in no tenant
    elif ep.name == f"get_{name}_permissions":
        assert f"{kind.users.owner}:ADMIN" in result["permissions"]
        assert f"{extra}:READ" in result["permissions"]
    elif ep.name == f"set_{name}_permission":
        assert f"{extra}:USER" in kind.permissions(owner, object_id)
    elif ep.name == f"delete_{name}_permission":
        assert not any(p.startswith(f"{extra}:") for p in kind.permissions(owner, object_id))
    kind.assert_allowed(env, ep, r, object_id, caller)


class PermissionMatrix:
    """The matrix of one kind: subclass it in the test module with ``kind = Kind(...)``; the module provides a
    module-scoped ``env`` fixture (an :class:`Env`, see :meth:`Kind.make_env`)."""

    kind: ClassVar[Kind]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrizes ``ep`` over the kind's endpoints, combined with ``level`` (each level), ``caller`` (the
        owner, the site admin) or ``outsider`` (:data:`OUTSIDERS`); a lone ``level`` over the levels."""
        args = set(inspect.signature(metafunc.function).parameters)
        endpoints = self.kind.endpoints
        with_ep = {"level": LEVELS, "caller": (self.kind.users.owner, "admin"), "outsider": OUTSIDERS}
        for arg, values in with_ep.items():
            if {"ep", arg} <= args:
                cases = [(ep, value) for ep in endpoints for value in values]
                ids = [f"{ep.name}-{value}" for ep, value in cases]
                metafunc.parametrize(("ep", arg), cases, ids=ids)
                return
        if "ep" in args:
            metafunc.parametrize("ep", endpoints, ids=[ep.name for ep in endpoints])
        elif "level" in args:
            metafunc.parametrize("level", LEVELS)

    # ------------------------------------------------------------------------------------------ every endpoint

    def test_no_token_or_a_bad_token_is_401(
        self, env: Env, new_id: Callable[[str], str], ep: Endpoint
    ) -> None:
        k = self.kind
        object_id = k.new(env, new_id)
        before = k.state(env, object_id, "default")
        for client in (env.client("anon"), env.client("badtoken")):
            refused(k.call(ep, client, object_id), 401)
        assert k.state(env, object_id, "default") == before

    def test_user_without_permission_changes_nothing(
        self, env: Env, new_id: Callable[[str], str], ep: Endpoint
    ) -> None:
        """On an object of the owner alone, and on one where another user holds ADMIN."""
        k, stranger = self.kind, self.kind.users.stranger
        k.prepare(env, stranger)
        for grants in ({}, {k.users.grantee: "ADMIN"}):
            object_id = k.new(env, new_id, grants)
            before = k.state(env, object_id, "default")
            r = k.call(ep, env.client(stranger), object_id, stranger)
            text = refused(r, *k.no_access)
            assert k.description.encode() not in r.content
            if k.no_access == (
                404,
            ):  # existence is not revealed: the answer for an object that does not exist
                missing_id = new_id("nosuch")
                missing = refused(k.call(ep, env.client(stranger), missing_id, stranger), 404)
                assert text.replace(object_id, "X") == missing.replace(missing_id, "X")
            assert k.state(env, object_id, "default") == before, grants

    def test_unknown_id_is_404_for_everyone(self, env: Env, ep: Endpoint) -> None:
        k = self.kind
        for caller in (k.users.stranger, k.users.owner, "admin"):
            k.prepare(env, caller)
            refused(k.call(ep, env.client(caller), f"nosuch{k.name}xyz", caller), 404)

    def test_level(self, env: Env, new_id: Callable[[str], str], ep: Endpoint, level: str) -> None:
        k, grantee = self.kind, self.kind.users.grantee
        object_id = k.new(env, new_id, {grantee: level})
        k.prepare(env, grantee)
        before = k.state(env, object_id, "default")
        r = k.call(ep, env.client(grantee), object_id, grantee)
        if RANK[level] >= RANK[ep.level]:
            assert_allowed(k, env, ep, r, object_id, grantee)
        else:
            assert ep.level in refused(r, 403), (ep.name, level, r.text)
            assert k.state(env, object_id, "default") == before

    def test_owner_and_site_admin_may_do_everything(
        self, env: Env, new_id: Callable[[str], str], ep: Endpoint, caller: str
    ) -> None:
        k = self.kind
        object_id = k.new(env, new_id)
        k.prepare(env, caller)
        assert_allowed(k, env, ep, k.call(ep, env.client(caller), object_id, caller), object_id, caller)

    def test_other_tenant_never_sees_it(
        self, env: Env, new_id: Callable[[str], str], ep: Endpoint, outsider: str
    ) -> None:
        k = self.kind
        object_id = k.new(env, new_id, {k.users.grantee: "ADMIN", **k.public})
        k.prepare(env, outsider)
        before = k.state(env, object_id, "default")
        r = k.call(ep, env.client(outsider), object_id, outsider.split(":")[1])
        refused(r, 404)
        assert k.description.encode() not in r.content
        assert k.state(env, object_id, "default") == before
        k.assert_absent(env, object_id, OTHER_TENANT)
        for url in k.list_urls():
            assert object_id not in k.listed(env.client(outsider), url)

    # ------------------------------------------------------------------------------------------ grant rules

    def test_list_and_create_without_token_are_401(self, env: Env, new_id: Callable[[str], str]) -> None:
        k, anon = self.kind, env.client("anon")
        for url in k.list_urls():
            refused(anon.get(url), 401)
        object_id = new_id(k.name)
        body = k.create_body(env, object_id) if k.create_body else {k.id_field: object_id}
        refused(anon.post(k.collection, json=body), 401)
        for tenant in ("default", OTHER_TENANT):
            k.assert_absent(env, object_id, tenant)

    def test_list_shows_objects_with_any_level(
        self, env: Env, new_id: Callable[[str], str], level: str
    ) -> None:
        k, grantee = self.kind, env.client(self.kind.users.grantee)
        shown = k.new(env, new_id, {k.users.grantee: level})
        hidden = k.new(env, new_id)
        for url in k.list_urls():
            seen = k.listed(grantee, url)
            assert shown in seen and hidden not in seen, url
            assert not {shown, hidden} & k.listed(env.client(k.users.stranger), url), url
            assert {shown, hidden} <= k.listed(env.client("admin"), url), url
        # Revoking the grant hides the object again.
        ok(env.client(k.users.owner).delete(f"{k.url(shown)}/permissions/{k.users.grantee}"))
        for url in k.list_urls():
            assert shown not in k.listed(grantee, url), url
        refused(grantee.get(k.url(shown)), *k.no_access)

    def test_user_level_cannot_escalate(self, env: Env, new_id: Callable[[str], str]) -> None:
        k, users = self.kind, self.kind.users
        object_id = k.new(env, new_id, {users.grantee: "USER"})
        before = k.state(env, object_id, "default")
        grantee = env.client(users.grantee)
        permissions = f"{k.url(object_id)}/permissions"
        refused(grantee.post(permissions, json={"user": users.grantee, "level": "ADMIN"}), 403)
        refused(grantee.delete(f"{permissions}/{users.owner}"), 403)
        refused(grantee.delete(k.url(object_id), params={"force": "true"}), 403)
        assert k.state(env, object_id, "default") == before

    def test_last_admin_cannot_be_removed_or_downgraded(self, env: Env, new_id: Callable[[str], str]) -> None:
        k, owner_name = self.kind, self.kind.users.owner
        object_id = k.new(env, new_id, k.public)
        before = k.state(env, object_id, "default")
        owner = env.client(owner_name)
        permissions = f"{k.url(object_id)}/permissions"
        refused(owner.delete(f"{permissions}/{owner_name}"), 409)
        for level in ("USER", "READ"):
            refused(owner.post(permissions, json={"user": owner_name, "level": level}), 409)
        # Not even a site admin can leave the object without an ADMIN.
        refused(env.client("admin").delete(f"{permissions}/{owner_name}"), 409)
        assert k.state(env, object_id, "default") == before

    def test_one_of_two_admins_can_step_down(self, env: Env, new_id: Callable[[str], str]) -> None:
        k, users = self.kind, self.kind.users
        object_id = k.new(env, new_id, {users.grantee: "ADMIN", **k.public})
        owner, grantee = env.client(users.owner), env.client(users.grantee)
        permissions = f"{k.url(object_id)}/permissions"
        perms = ok(owner.post(permissions, json={"user": users.owner, "level": "READ"}))["permissions"]
        assert f"{users.owner}:READ" in perms
        # Now the grantee is the last ADMIN.
        refused(grantee.delete(f"{permissions}/{users.grantee}"), 409)
        refused(grantee.post(permissions, json={"user": users.grantee, "level": "USER"}), 409)
        expected = [f"{users.owner}:READ", f"{users.grantee}:ADMIN", f"{users.extra}:READ"]
        expected += [f"{user}:{level}" for user, level in k.public.items()]
        assert sorted(k.permissions(grantee, object_id)) == sorted(expected)
        # The former owner is a reader now: everything above READ is refused and changes nothing.
        k.prepare(env, users.owner)
        before = k.state(env, object_id, "default")
        for ep in k.endpoints:
            if ep.level != "READ":
                r = k.call(ep, owner, object_id, users.owner)
                assert ep.level in refused(r, 403), (ep.name, r.text)
        assert k.state(env, object_id, "default") == before
