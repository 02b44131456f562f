"""The dynamic-config endpoint as Traefik and admins see it, and isolation of a pod whose stored routes are
garbage: it must not break any other pod's route (existing or new), and the problem is reported on that pod.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from openpods.store.tables import Pod

from .conftest import ProxyEnv, free_port, unique, wait_until

SECRET_HEADER = "X-OpenPods-Proxy-Secret"
HELLO = "hello from openpods"


def http_pod(env: ProxyEnv) -> str:
    pod_id = unique()
    env.create(pod_id, networking={"default": {"protocol": "http", "port": 5000}})
    return pod_id


# ------------------------------------------------------------------------------------------- the endpoint


def test_traefik_config_needs_the_secret(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = http_pod(env)
    env.wait_available(pod_id)
    env.wait_status(env.host(pod_id), 200)
    anonymous = env.srv.client()

    missing = anonymous.get("/traefik-config")
    assert missing.status_code == 401
    assert missing.json()["status"] == "error"
    assert pod_id not in missing.text
    wrong = anonymous.get("/traefik-config", headers={SECRET_HEADER: env.srv.ctx.proxy_secret + "x"})
    assert wrong.status_code == 401
    # A user token is not the secret.
    assert env.http.get("/traefik-config").status_code == 401

    good = anonymous.get("/traefik-config", headers={SECRET_HEADER: env.srv.ctx.proxy_secret})
    assert good.status_code == 200
    assert good.headers["content-type"] == "application/json"
    config = good.json()
    routers = config["http"]["routers"]
    mine = [r for r in routers.values() if f"Host(`{env.host(pod_id)}`)" in r["rule"]]
    assert mine, routers
    port = env.row(pod_id)["host_ports"]["default"]
    services = config["http"]["services"]
    assert {"url": f"http://127.0.0.1:{port}"} in services[mine[0]["service"]]["loadBalancer"]["servers"]
    # cached answer: identical while nothing changes
    again = anonymous.get("/traefik-config", headers={SECRET_HEADER: env.srv.ctx.proxy_secret})
    assert again.json() == config


def test_admin_alias_is_for_site_admins_only(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    r = env.http.get("/v3/pods/traefik-config")  # alice: an ordinary user
    assert r.status_code == 403, r.text
    assert r.json()["status"] == "error"
    assert env.srv.client().get("/v3/pods/traefik-config").status_code == 401  # no token
    admin = env.srv.client("admin").get("/v3/pods/traefik-config")
    assert admin.status_code == 200, admin.text
    secret = env.srv.client().get("/traefik-config", headers={SECRET_HEADER: env.srv.ctx.proxy_secret})
    assert admin.json() == secret.json()


# ------------------------------------------------------------------------------------- malformed routes

GARBAGE: dict[str, Any] = {
    # an injection attempt in a rule-bearing field, plus a bad stanza key
    "bad-values": lambda host: {
        "default": {"protocol": "http", "port": 5000, "url": host, "ip_allow_list": ["1.2.3.4`) || Host(`x"]},
        "Bad Key!": {"protocol": "http", "port": 5000, "url": host},
    },
    # stanzas that are not objects, an unknown protocol, a host that is not a hostname
    "bad-types": lambda host: {
        "default": ["not", "an", "object"],
        "two": "garbage",
        "three": {"protocol": "gopher", "url": host},
        "four": {"protocol": "http", "url": "Bad Host`)"},
    },
    # the routes column itself is not an object
    "not-an-object": lambda host: ["garbage", 1, None],
    "a-string": lambda host: "garbage",
}


@pytest.fixture
def bad_pod(proxy_env: ProxyEnv) -> Iterator[str]:
    """A running pod (deleted at the end: its garbage must not outlive the test)."""
    pod_id = http_pod(proxy_env)
    try:
        yield pod_id
    finally:
        proxy_env.http.delete(f"/v3/pods/{pod_id}")


def write_routes(env: ProxyEnv, pod_id: str, routes: Any) -> None:
    """Writes ``routes`` straight into the database, as a bug or a bad migration might (revision bumped, as any
    ORM write does)."""
    with env.srv.ctx.sessions() as s, s.begin():
        pod = s.get(Pod, (env.tenant, pod_id))
        assert pod is not None
        pod.routes = routes


def proxy_reports(env: ProxyEnv, pod_id: str) -> list[str]:
    return [line for line in env.action_logs(pod_id) if "proxy" in line.lower()]


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_malformed_routes_do_not_break_other_pods(proxy_env: ProxyEnv, bad_pod: str, kind: str) -> None:
    env = proxy_env
    good = http_pod(env)
    for pod_id in (good, bad_pod):
        env.wait_available(pod_id)
        env.wait_status(env.host(pod_id), 200)

    write_routes(env, bad_pod, GARBAGE[kind](env.host(bad_pod)))

    # The bad pod loses its route; the good one keeps it.
    env.wait_status(env.host(bad_pod), 404, what=f"(bad pod, {kind})")
    assert env.get(env.host(good)).text.strip() == HELLO
    # The endpoint keeps answering (Traefik would otherwise keep a stale config and route nothing new) ...
    config = env.srv.client().get("/traefik-config", headers={SECRET_HEADER: env.srv.ctx.proxy_secret})
    assert config.status_code == 200, config.text[:500]
    # ... so a pod started after the garbage gets its route too.
    newcomer = http_pod(env)
    env.wait_available(newcomer)
    assert (
        env.wait_status(env.host(newcomer), 200, what="(pod created after the garbage)").text.strip() == HELLO
    )

    # The problem is reported on the bad pod, and only there.
    reports = wait_until(
        lambda: proxy_reports(env, bad_pod), what="a proxy report in the bad pod's action log"
    )
    assert any("skipped" in line or "networking" in line for line in reports), reports
    assert env.row(bad_pod)["proxy_errors"], "proxy_errors of the bad pod are empty"
    for pod_id in (good, newcomer):
        assert not proxy_reports(env, pod_id)
        assert not env.row(pod_id)["proxy_errors"]


def test_malformed_routes_are_reported_once_not_on_every_poll(proxy_env: ProxyEnv, bad_pod: str) -> None:
    """Traefik polls the config every second; a bad pod's report is an action log entry per problem, not a new
    entry per poll (action logs are what the owner reads)."""
    env = proxy_env
    env.wait_available(bad_pod)
    env.wait_status(env.host(bad_pod), 200)
    write_routes(env, bad_pod, GARBAGE["bad-values"](env.host(bad_pod)))
    env.wait_status(env.host(bad_pod), 404)
    wait_until(lambda: proxy_reports(env, bad_pod), what="the first report")
    time.sleep(5)  # ≥ 4 more polls by Traefik
    reports = proxy_reports(env, bad_pod)
    assert len(reports) == 1, f"{len(reports)} proxy reports in ~5 s: {reports[:3]} ..."


def test_restart_repairs_the_routes_and_clears_the_report(proxy_env: ProxyEnv, bad_pod: str) -> None:
    """The spawner derives the routes again on every start: a restart heals a pod whose stored routes were
    garbage, and the pod's proxy problems no longer show once it routes again."""
    env = proxy_env
    env.wait_available(bad_pod)
    env.wait_status(env.host(bad_pod), 200)
    write_routes(env, bad_pod, GARBAGE["bad-values"](env.host(bad_pod)))
    env.wait_status(env.host(bad_pod), 404)
    wait_until(lambda: env.row(bad_pod)["proxy_errors"], what="proxy_errors set")

    instance = env.row(bad_pod)["instance_id"]
    env.action(bad_pod, "restart")
    env.wait_available(bad_pod, other_than_instance=instance)
    assert env.wait_status(env.host(bad_pod), 200, what="(after restart)").text.strip() == HELLO
    assert env.row(bad_pod)["routes"]["default"]["url"] == env.host(bad_pod)
    wait_until(
        lambda: not env.row(bad_pod)["proxy_errors"],
        timeout=10,
        what="the stale proxy_errors of the repaired pod to be cleared",
    )


def test_traefik_stops_with_the_server(make_server: Any, proxy_env: ProxyEnv) -> None:
    """A second, container-less server (no health loop, so it cannot touch the module server's containers):
    its Traefik answers while it runs and is gone when it stops."""
    https_port = free_port()
    srv = make_server(
        roles={"api", "proxy"},
        proxy_enabled=True,
        proxy_http_port=free_port(),
        proxy_https_port=https_port,
        proxy_bind_host="127.0.0.1",
    )
    pid_file = srv.settings.data_dir / "traefik" / "traefik.pid"
    wait_until(
        lambda: socket.create_connection(("127.0.0.1", https_port), timeout=1), what="Traefik listening"
    )
    pid = int(pid_file.read_text().strip())
    os.kill(pid, 0)  # running
    srv.stop()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, timeout=30, what=f"Traefik (pid {pid}) to exit with the server")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", https_port), timeout=1).close()


# ------------------------------------------------------------------------------------------- how routes reach Traefik


@pytest.mark.parametrize("provider", ["file", "http"])
def test_routes_reach_traefik_through_either_provider(
    make_server: Any, proxy_env: ProxyEnv, provider: str
) -> None:
    """A second, container-less server (no health loop, so it cannot touch the module server's containers) with
    ``proxy_provider`` file (routes pushed into Traefik's watched directory) or http (Traefik polls
    /traefik-config). A pod row that points at the module server's running container gets a URL on the second
    server's Traefik, and loses it when the pod stops — the same routes either way."""
    import ssl
    from datetime import UTC, datetime

    import httpx

    env = proxy_env
    backend = http_pod(env)
    env.wait_available(backend)
    port = env.row(backend)["host_ports"]["default"]
    https_port = free_port()
    srv = make_server(
        roles={"api", "proxy"},
        proxy_enabled=True,
        proxy_provider=provider,
        proxy_http_port=free_port(),
        proxy_https_port=https_port,
        proxy_bind_host="127.0.0.1",
    )
    routes_file = srv.settings.data_dir / "traefik" / "dynamic" / "pods.yml"
    static = (srv.settings.data_dir / "traefik" / "traefik.yml").read_text()
    assert ("http:\n    endpoint:" in static) == (provider == "http"), static
    context = ssl.create_default_context(cafile=str(srv.settings.data_dir / "tls" / "ca.crt"))
    pod_id = unique()
    host = f"{pod_id}.{srv.settings.pods_domain(srv.default_tenant)}"

    def get() -> int:
        with httpx.Client(verify=context, timeout=5, trust_env=False) as client:
            r = client.get(
                f"https://127.0.0.1:{https_port}/", headers={"Host": host}, extensions={"sni_hostname": host}
            )
            return r.status_code if r.status_code != 200 or r.text.strip() == HELLO else -1

    now = datetime.now(UTC).replace(tzinfo=None)
    stanza = {"protocol": "http", "port": 5000, "url": host}
    with srv.ctx.sessions() as s, s.begin():
        s.add(
            Pod(
                tenant_id=srv.default_tenant,
                pod_id=pod_id,
                image="img",
                status="AVAILABLE",
                status_requested="ON",
                status_since=now,
                creation_ts=now,
                update_ts=now,
                networking={"default": stanza},
                routes={"default": stanza},
                host_ports={"default": port},
            )
        )
    wait_until(lambda: get() == 200, what=f"the route through the {provider} provider")
    assert (host in routes_file.read_text()) if provider == "file" else not routes_file.exists()

    with srv.ctx.sessions() as s, s.begin():
        s.get(Pod, (srv.default_tenant, pod_id)).status_requested = "OFF"
    wait_until(lambda: get() == 404, what=f"the stopped pod's route to go ({provider} provider)")
