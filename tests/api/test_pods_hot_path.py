"""The API hot path (issue 11, item 3), through HTTP against a real server:

- get_pod and list_pods answer from views cached by the pod row's revision, and a list unchanged since the
  last one from a cached body: every kind of change must show at once (API writes, controller writes,
  grants given and taken, deletes), and the list shows exactly what get_pod shows;
- a token is verified once per ``token_cache_sec`` (not on every request), never past its ``exp``, and the
  cache forgets a user whose site-admin flag changed in this process.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import jwt
import pytest
from sqlalchemy import create_engine, delete, text, update
from sqlalchemy.pool import NullPool

from openpods.auth.token_cache import VerifiedTokenCache
from openpods.auth.tokens import Identity
from openpods.domain import status as st
from openpods.store.db import transaction
from openpods.store.tables import Permission, Pod

IMAGE = "localhost/openpods-test/http"


@pytest.fixture(scope="module", autouse=True)
def _image(server: Any) -> None:
    server.allow_image(IMAGE)


def ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [p["pod_id"] for p in resp.json()["result"]]


def by_id(resp: Any, pod_id: str) -> dict[str, Any]:
    return next(p for p in resp.json()["result"] if p["pod_id"] == pod_id)


def test_list_and_get_show_every_change_at_once(server: Any, new_id: Any) -> None:
    owner, reader = new_id("owner"), new_id("reader")
    oc, rc = server.client(owner), server.client(reader)
    pod_id = new_id("pod")
    assert oc.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF"}).status_code == 200
    assert pod_id in ids(oc.get("/v3/pods"))
    assert pod_id not in ids(rc.get("/v3/pods"))
    assert rc.get(f"/v3/pods/{pod_id}").status_code == 404
    oc.get("/v3/pods")  # cached now

    # An API write.
    assert oc.put(f"/v3/pods/{pod_id}", json={"description": "first"}).status_code == 200
    assert by_id(oc.get("/v3/pods"), pod_id)["description"] == "first"
    assert oc.get(f"/v3/pods/{pod_id}").json()["result"]["description"] == "first"

    # A controller's write (ORM, as the health loop and the spawner write).
    with transaction(server.ctx.sessions) as s:
        pod = s.get(Pod, ("default", pod_id))
        assert pod is not None
        pod.status, pod.status_container = st.ERROR, {"phase": "Failed", "message": "exit 3"}
    assert by_id(oc.get("/v3/pods"), pod_id)["status"] == st.ERROR
    assert oc.get(f"/v3/pods/{pod_id}").json()["result"]["status_container"]["message"] == "exit 3"

    # A grant given shows in the grantee's list and get at once; taken back, it is gone at once.
    assert oc.post(f"/v3/pods/{pod_id}/permissions", json={"user": reader, "level": "READ"}).status_code == 200
    assert pod_id in ids(rc.get("/v3/pods"))
    assert rc.get(f"/v3/pods/{pod_id}").status_code == 200
    assert oc.delete(f"/v3/pods/{pod_id}/permissions/{reader}").status_code == 200
    assert pod_id not in ids(rc.get("/v3/pods"))
    assert rc.get(f"/v3/pods/{pod_id}").status_code == 404

    # Deleted: gone from the list, 404 on get.
    assert oc.delete(f"/v3/pods/{pod_id}").status_code == 200
    assert pod_id not in ids(oc.get("/v3/pods"))
    assert oc.get(f"/v3/pods/{pod_id}").status_code == 404


def test_a_write_by_another_process_shows_at_once(server: Any, new_id: Any) -> None:
    """Another process (spawner, health loop, another API replica) writes through its own connections: the
    next get and list show it. On PostgreSQL these reads run on the event loop's autocommit connections."""
    owner = new_id("owner")
    c = server.client(owner)
    pod_id = new_id("pod")
    assert c.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF"}).status_code == 200
    assert c.get(f"/v3/pods/{pod_id}").status_code == 200 and pod_id in ids(c.get("/v3/pods"))  # cached now
    other = create_engine(server.settings.effective_database_url, poolclass=NullPool)
    try:
        for n in range(8):  # past psycopg's prepare threshold
            with other.begin() as conn:
                conn.execute(update(Pod).where(Pod.tenant_id == "default", Pod.pod_id == pod_id)
                             .values(description=f"elsewhere {n}", revision=Pod.revision + 1))
            assert c.get(f"/v3/pods/{pod_id}").json()["result"]["description"] == f"elsewhere {n}"
            assert by_id(c.get("/v3/pods"), pod_id)["description"] == f"elsewhere {n}"
        with other.begin() as conn:
            conn.execute(delete(Permission).where(Permission.object_id == pod_id, Permission.username == owner))
        assert c.get(f"/v3/pods/{pod_id}").status_code == 404
        assert pod_id not in ids(c.get("/v3/pods"))
    finally:
        other.dispose()
    if server.ctx.engine.dialect.name == "postgresql":
        assert server.ctx.reads is not None and len(server.ctx.reads) >= 1


def test_reads_survive_the_database_cutting_every_connection(server: Any, new_id: Any) -> None:
    """PostgreSQL restarted (or an idle timeout): the event loop's read connections are broken while idle; the
    next get and list answer on new ones, not with 503 or 500."""
    if server.ctx.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's connections only (SQLite opens a local file)")
    user = new_id("user")
    clients = [server.client(user) for _ in range(4)]
    c = clients[0]
    pod_id = new_id("pod")
    assert c.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF"}).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:  # reads at once: several idle connections
        assert set(pool.map(lambda i: clients[i % 4].get(f"/v3/pods/{pod_id}").status_code, range(80))) == {200}
    assert server.ctx.reads is not None and len(server.ctx.reads) >= 1
    with server.ctx.engine.connect() as conn:
        cut = conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all()
    assert cut
    for _ in range(2 * server.settings.api_read_connections):  # every broken idle connection is met once
        assert c.get(f"/v3/pods/{pod_id}").status_code == 200
        assert pod_id in ids(c.get("/v3/pods"))


def test_a_pod_deleted_and_made_again_is_shown_anew(server: Any, new_id: Any) -> None:
    """The same id made again starts its revisions over: the caches must not take it for the old pod."""
    c = server.client(new_id("user"))
    pod_id = new_id("pod")
    revisions = []
    for description in ("first life", "second life"):
        made = c.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "status_requested": "OFF",
                                        "description": description})
        assert made.status_code == 200, made.text
        assert by_id(c.get("/v3/pods"), pod_id)["description"] == description
        assert c.get(f"/v3/pods/{pod_id}").json()["result"]["description"] == description
        with server.session() as s:
            revisions.append(s.get(Pod, ("default", pod_id)).revision)
        assert c.delete(f"/v3/pods/{pod_id}").status_code == 200
    assert revisions[0] == revisions[1]  # the same revision both times: what makes this a trap


def test_a_listed_pod_is_exactly_what_get_pod_shows(server: Any, new_id: Any) -> None:
    user = new_id("user")
    c = server.client(user)
    plain, rich = new_id("plain"), new_id("rich")
    assert c.post("/v3/pods", json={"pod_id": plain, "image": IMAGE, "status_requested": "OFF"}).status_code == 200
    body = {"pod_id": rich, "image": IMAGE, "status_requested": "OFF", "description": "a \"quoted\" <b>&",
            "command": ["sh", "-c", "echo 'ünïcode' \\n"], "arguments": ["--x=1"],
            "environment_variables": {"GREETING": "grüß dich", "EMPTY": ""},
            "networking": {"default": {"protocol": "http", "port": 8080}, "alt": {"protocol": "tcp", "port": 5432}},
            "time_to_stop_instance": 3600}
    created = c.post("/v3/pods", json=body)
    assert created.status_code == 200, created.text
    # Before anything was cached: get_pod renders what create_pod answered (the ORM object's view).
    assert c.get(f"/v3/pods/{rich}").json()["result"] == created.json()["result"]
    listed = c.get("/v3/pods").json()
    assert [p["pod_id"] for p in listed["result"]] == sorted([plain, rich])
    for pod_id in (plain, rich):
        got = c.get(f"/v3/pods/{pod_id}")
        assert got.headers["content-type"] == "application/json"
        assert by_id(c.get("/v3/pods"), pod_id) == got.json()["result"]
    assert listed["status"] == "success" and listed["message"] and listed["metadata"] == {}


def test_the_site_admin_lists_the_whole_tenant_and_another_tenant_nothing(server: Any, new_id: Any) -> None:
    user = new_id("user")
    pod_id = new_id("pod")
    assert server.client(user).post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE,
                                                      "status_requested": "OFF"}).status_code == 200
    assert pod_id in ids(server.client("admin").get("/v3/pods"))
    server.add_user("otheradmin", tenant="other", admin=True)
    other = server.client("otheradmin", tenant="other")
    assert pod_id not in ids(other.get("/v3/pods"))
    assert other.get(f"/v3/pods/{pod_id}").status_code == 404


def test_a_token_is_verified_once_not_per_request(server: Any, new_id: Any, monkeypatch: Any) -> None:
    calls: list[str] = []
    real = server.ctx.tokens.verify

    def counting(token: str, **kw: Any) -> Identity:
        calls.append(token)
        return real(token, **kw)

    monkeypatch.setattr(server.ctx.tokens, "verify", counting)
    c = server.client(new_id("user"))
    for _ in range(10):
        assert c.get("/v3/pods").status_code == 200
    assert len(calls) == 1
    bad = server.client(token="not-a-token")
    for _ in range(3):
        assert bad.get("/v3/pods").status_code == 401
    assert len(calls) == 4  # failures are never cached


def test_a_changed_site_admin_flag_applies_to_tokens_in_use(server: Any, new_id: Any) -> None:
    name, pod_owner = new_id("promoted"), new_id("owner")
    pod_id = new_id("pod")
    assert server.client(pod_owner).post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE,
                                                           "status_requested": "OFF"}).status_code == 200
    server.add_user(name)
    c = server.client(name)
    assert c.get(f"/v3/pods/{pod_id}").status_code == 404
    server.add_user(name, admin=True)  # the in-process change forgets the user's cached tokens
    assert c.get(f"/v3/pods/{pod_id}").status_code == 200
    server.add_user(name, admin=False)
    assert c.get(f"/v3/pods/{pod_id}").status_code == 404


# ------------------------------------------------------------------------------------------- the cache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_cache_entries_live_at_most_ttl_and_never_past_exp(server: Any) -> None:
    clock = Clock()
    cache = VerifiedTokenCache(ttl_sec=5, timer=clock)
    alice = Identity("default", "alice")
    long_lived = server.ctx.tokens.issue("default", "alice", ttl_sec=3600)["access_token"]
    cache.put(long_lived, alice)
    clock.now += 4.9
    assert cache.get(long_lived) == alice
    clock.now += 0.2
    assert cache.get(long_lived) is None  # older than ttl: verified again

    # A token expiring in 2 s is cached for 2 s, not 5.
    exp_soon = server.ctx.tokens.issue("default", "alice", ttl_sec=60)["access_token"]
    clock.now = jwt.decode(exp_soon, options={"verify_signature": False})["exp"] - 2
    cache.put(exp_soon, alice)
    clock.now += 1.5
    assert cache.get(exp_soon) == alice
    clock.now += 1.0
    assert cache.get(exp_soon) is None


def test_forget_drops_one_users_entries(server: Any) -> None:
    cache = VerifiedTokenCache(ttl_sec=60)
    tokens = {u: server.ctx.tokens.issue("default", u)["access_token"] for u in ("alice", "bob")}
    for u, t in tokens.items():
        cache.put(t, Identity("default", u))
    cache.forget("default", "alice")
    assert cache.get(tokens["alice"]) is None
    assert cache.get(tokens["bob"]) == Identity("default", "bob")
    assert VerifiedTokenCache(ttl_sec=0).lookup(tokens["bob"], lambda t: Identity("default", "x")).username == "x"
