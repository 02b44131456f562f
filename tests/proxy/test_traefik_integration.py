"""End-to-end: rendered dynamic config → a real Traefik (supervised) → local backends.

One Traefik serves the whole module; the fake API (tests/proxy/conftest.py) serves the rendered config to
Traefik's HTTP provider, as the OpenPods API will. Route changes go live after about a second; every check
polls with a generous deadline instead of asserting on time.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from openpods.domain.traefik_config import PodRoutes, RenderResult, render_dynamic_config
from openpods.proxy.traefik import proxy_render_settings

from .conftest import (
    FakeApi,
    HttpBackend,
    Postgres,
    Proxy,
    TcpEcho,
    free_port,
    start_proxy,
    stop_proxy,
    wait_until,
)

DOMAIN = "pods.localhost"


def host(pod_id: str, key: str = "default") -> str:
    return f"{pod_id}.{DOMAIN}" if key == "default" else f"{pod_id}-{key}.{DOMAIN}"


def routes(pod_id: str, stanzas: dict[str, Any], backends: dict[str, str], tenant: str = "tacc") -> PodRoutes:
    return PodRoutes(tenant, pod_id, stanzas, {k: host(pod_id, k) for k in stanzas}, backends)


class Env:
    def __init__(self, proxy: Proxy, a: HttpBackend, b: HttpBackend, echo: TcpEcho) -> None:
        self.proxy, self.a, self.b, self.echo = proxy, a, b, echo
        self.render_settings = proxy_render_settings(
            proxy.settings, forward_auth_url=proxy.api.url + "/v3/pods/{pod_id_net}/auth?tenant={tenant_id}"
        )
        self.last: RenderResult | None = None

    def base_pods(self) -> list[PodRoutes]:
        a, b, echo = self.a.address, self.b.address, self.echo.address
        http = {"protocol": "http", "port": 5000}
        return [
            routes(
                "web1", {"default": http, "alt": {"protocol": "http", "port": 8080}}, {"default": a, "alt": b}
            ),
            routes("echo1", {"default": {"protocol": "tcp", "port": 7}}, {"default": echo}),
            routes(
                "allow1", {"default": {**http, "ip_allow_list": ["127.0.0.1", "::1/128"]}}, {"default": a}
            ),
            routes(
                "deny1",
                {"default": {**http, "ip_allow_list": ["10.0.0.0/8", "2001:db8::/32"]}},
                {"default": a},
            ),
            routes(
                "denytcp",
                {"default": {"protocol": "tcp", "ip_allow_list": ["10.0.0.0/8"]}},
                {"default": echo},
            ),
            routes(
                "cors1",
                {
                    "default": {
                        **http,
                        "cors_allow_origins": ["https://ui.example.org"],
                        "cors_allow_methods": ["GET", "POST"],
                        "cors_allow_headers": ["X-Tapis-Token", "Content-Type"],
                        "cors_allow_credentials": True,
                        "cors_max_age": 90,
                        "tapis_auth": True,
                    }
                },
                {"default": a},
            ),
            routes(
                "auth1",
                {
                    "default": {**http, "tapis_auth": True, "tapis_auth_response_headers": {"X-Custom": "x"}},
                    "second": {**http, "tapis_auth": True},
                },
                {"default": a, "second": b},
            ),
            # Malformed data of several kinds, in another tenant: must not affect anything above.
            routes(
                "broken",
                {
                    "default": {"protocol": "http", "ip_allow_list": ["1.2.3.4`) || Host(`x"]},
                    "hdr": {
                        "protocol": "http",
                        "tapis_auth": True,
                        "tapis_auth_response_headers": {"X\r\nY": "1"},
                    },
                    "port": {"protocol": "tcp", "port": "x"},
                    "origin": {"protocol": "http", "cors_allow_origins": ["https://a.org/`"]},
                },
                {"default": a, "hdr": a, "port": echo, "origin": a},
                tenant="dev",
            ),
            PodRoutes("dev", "badhost", {"default": {}}, {"default": "Bad Host`)"}, {"default": a}),
        ]

    def publish(self, pods: list[PodRoutes]) -> RenderResult:
        self.last = render_dynamic_config(pods, self.render_settings)
        self.proxy.api.config = self.last.config
        return self.last


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    a, b, echo = HttpBackend("A"), HttpBackend("B"), TcpEcho()
    api = FakeApi().start()
    tmp = Path(tempfile.mkdtemp(prefix="openpods-traefik-"))
    proxy = start_proxy(tmp, api)
    try:
        environment = Env(proxy, a, b, echo)
        environment.publish(environment.base_pods())
        # the first route to answer means Traefik has loaded the config
        wait_until(lambda: proxy.get(host("web1")).status_code == 200, what="first route")
        yield environment
    finally:
        stop_proxy(proxy)
        api.close()
        a.close()
        b.close()
        echo.close()
        shutil.rmtree(tmp, ignore_errors=True)


def tls_tcp_exchange(proxy: Proxy, server_name: str, payload: bytes) -> bytes:
    """Open TLS to the websecure entrypoint with SNI ``server_name``, send ``payload``, return the answer."""
    ctx = proxy.ssl_context()
    ctx.check_hostname = False  # a wrong SNI gets Traefik's default certificate
    try:
        with (
            socket.create_connection(("127.0.0.1", proxy.https_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall(payload)
            return tls.recv(65536)
    except (TimeoutError, ssl.SSLError, ConnectionError):
        return b""  # refused, reset or closed during the handshake: nothing reached


# --- tests -------------------------------------------------------------------------------------------------


def test_config_is_polled_with_the_secret(env: Env) -> None:
    assert env.proxy.api.config_polls > 0
    assert env.proxy.api.bad_secret_polls == 0


def test_malformed_pods_are_reported(env: Env) -> None:
    assert env.last is not None
    errors = env.last.errors
    assert set(errors) == {("dev", "broken"), ("dev", "badhost")}
    assert len(errors[("dev", "broken")]) == 4


def test_https_reaches_backend_verified_against_ca(env: Env) -> None:
    response = wait_until(lambda: env.proxy.get(host("web1"), "/hello?x=1"), what="web1")
    assert response.status_code == 200
    body = response.json()
    assert body["backend"] == "A"
    assert body["path"] == "/hello?x=1"
    assert body["headers"]["X-Forwarded-Proto"] == "https"
    assert body["headers"]["Host"].startswith(host("web1"))


def test_certificate_is_rejected_without_the_ca(env: Env) -> None:
    with httpx.Client(timeout=5, trust_env=False) as client, pytest.raises(httpx.ConnectError):
        client.get(
            f"https://127.0.0.1:{env.proxy.https_port}/",
            headers={"Host": host("web1")},
            extensions={"sni_hostname": host("web1")},
        )


def test_second_stanza_gets_its_own_url(env: Env) -> None:
    response = wait_until(lambda: env.proxy.get(host("web1", "alt")), what="web1-alt")
    assert response.status_code == 200
    assert response.json()["backend"] == "B"


def test_plain_http_redirects_to_https(env: Env) -> None:
    response = env.proxy.get(host("web1"), "/path?q=1", scheme="http")
    assert response.status_code in (301, 308)
    assert response.headers["location"] == f"https://{host('web1')}:{env.proxy.https_port}/path?q=1"


def test_unknown_host_is_not_routed(env: Env) -> None:
    assert env.proxy.get(host("nosuchpod")).status_code == 404


def test_tcp_over_tls_with_sni_reaches_echo(env: Env) -> None:
    answer = wait_until(lambda: tls_tcp_exchange(env.proxy, host("echo1"), b"ping\n"), what="echo")
    assert answer == b"ping\n"


def test_tcp_with_wrong_sni_reaches_nothing(env: Env) -> None:
    answer = tls_tcp_exchange(env.proxy, host("nosuchpod"), b"ping\n")
    assert b"ping" not in answer  # at most Traefik's own HTTP 400/404, never the echo


def test_ip_allow_list_allows_and_denies(env: Env) -> None:
    assert env.proxy.get(host("allow1")).status_code == 200
    assert env.proxy.get(host("deny1")).status_code == 403
    assert tls_tcp_exchange(env.proxy, host("denytcp"), b"ping\n") == b""


def test_cors_preflight_answered_with_configured_values(env: Env) -> None:
    calls_before = len(env.proxy.api.auth_calls)
    response = env.proxy.get(
        host("cors1"),
        "/api",
        method="OPTIONS",
        headers={
            "Origin": "https://ui.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Tapis-Token",
        },
    )
    assert response.status_code == 200
    h = response.headers
    assert h["access-control-allow-origin"] == "https://ui.example.org"
    assert h["access-control-allow-methods"] == "GET,POST"
    assert h["access-control-allow-headers"] == "X-Tapis-Token,Content-Type"
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-max-age"] == "90"
    # answered by Traefik: neither forward-auth (tapis_auth is on) nor the pod saw it
    assert len(env.proxy.api.auth_calls) == calls_before
    assert all(r.get("Access-Control-Request-Method") is None for r in env.a.requests)

    other = env.proxy.get(
        host("cors1"),
        "/api",
        method="OPTIONS",
        headers={"Origin": "https://evil.example.org", "Access-Control-Request-Method": "POST"},
    )
    assert other.headers.get("access-control-allow-origin") in (None, "")


def test_forward_auth(env: Env) -> None:
    proxy = env.proxy
    no_token = proxy.get(host("auth1"), "/secret")
    assert no_token.status_code == 401
    assert no_token.json()["message"] == "no token"
    call = proxy.api.auth_calls[-1]
    assert call["pod_id_net"] == "auth1"
    assert call["query"] == {"tenant": ["tacc"]}
    assert call["forwarded_host"].startswith(host("auth1"))
    assert call["forwarded_uri"] == "/secret"

    browser = proxy.get(host("auth1"), "/page", headers={"Accept": "text/html"})
    assert browser.status_code == 302
    assert browser.headers["location"] == "/v3/pods/auth1/auth/login"  # not resolved against the auth URL

    assert proxy.get(host("auth1"), headers={"X-Tapis-Token": "other"}).status_code == 403

    spoofed = {"X-Tapis-Token": "good", "X-Tapis-Username": "mallory", "X_Tapis_Username": "mallory"}
    ok = proxy.get(host("auth1"), "/app", headers=spoofed)
    assert ok.status_code == 200
    seen = ok.json()["headers"]
    assert seen["X-Tapis-Username"] == "alice"  # the client's spoofed value is replaced
    assert "X_Tapis_Username" not in seen  # aliases (read as X-Tapis-Username by WSGI/CGI) are dropped
    assert seen["X-Custom"] == "alice@auth1"
    assert "X-Other" not in seen  # not in tapis_auth_response_headers: not copied

    # the second stanza is authorized against its own config
    second = proxy.get(host("auth1", "second"), headers={"X-Tapis-Token": "good"})
    assert second.status_code == 200
    assert second.json()["backend"] == "B"
    assert proxy.api.auth_calls[-1]["pod_id_net"] == "auth1-second"
    assert "X-Custom" not in second.json()["headers"]


def test_malformed_pod_does_not_break_other_routes(env: Env) -> None:
    assert env.proxy.get(host("web1")).status_code == 200
    # the broken pod's stanzas have no routes
    assert env.proxy.get(host("broken")).status_code == 404
    assert env.proxy.get(host("broken", "hdr")).status_code == 404


def test_postgres_through_traefik(env: Env, postgres_server: Postgres) -> None:
    pg = routes(
        "db1",
        {"default": {"protocol": "postgres", "port": 5432}},
        {"default": f"127.0.0.1:{postgres_server.port}"},
    )
    env.publish([*env.base_pods(), pg])
    common = {
        "host": host("db1"),
        "hostaddr": "127.0.0.1",
        "port": env.proxy.https_port,
        "user": postgres_server.user,
        "password": postgres_server.password,
        "dbname": postgres_server.dbname,
        "connect_timeout": 5,
    }

    def query(**extra: Any) -> Any:
        with psycopg.connect(**{**common, **extra}) as conn:
            return conn.execute("select current_user, inet_server_port()").fetchone()

    assert wait_until(lambda: query(sslmode="require"), what="postgres via traefik") == (
        postgres_server.user,
        postgres_server.port,
    )
    # with full verification of the generated certificate
    assert query(sslmode="verify-full", sslrootcert=str(env.proxy.ca_file))[0] == postgres_server.user
    with pytest.raises(psycopg.OperationalError):
        query(sslmode="require", password="wrong")


PODMAN_IMAGE = "localhost/openpods-test/postgres:15"


def _podman_image_available() -> bool:
    if shutil.which("podman") is None:
        return False
    return subprocess.run(["podman", "image", "exists", PODMAN_IMAGE], capture_output=True).returncode == 0


@pytest.mark.skipif(
    not _podman_image_available(), reason=f"{PODMAN_IMAGE} not built (scripts/build-postgres-image.sh)"
)
def test_postgres_image_through_traefik(env: Env, tmp_path: Path) -> None:
    conf = os.environ.get("CONTAINERS_CONF")
    if not conf:
        conf = str(tmp_path / "containers.conf")
        Path(conf).write_text(
            '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n'
        )
    penv = {**os.environ, "CONTAINERS_CONF": conf}
    name = f"openpods-test-pg-{os.getpid()}"
    port = free_port()
    subprocess.run(
        [
            "podman", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5432",
            "-e", "POSTGRES_USER=bob", "-e", "POSTGRES_PASSWORD=pw-in-pod", "-e", "POSTGRES_DB=appdb",
            PODMAN_IMAGE,
        ],
        check=True, capture_output=True, env=penv,
    )  # fmt: skip
    try:
        env.publish(
            [
                *env.base_pods(),
                routes("pgpod", {"default": {"protocol": "postgres"}}, {"default": f"127.0.0.1:{port}"}),
            ]
        )

        def query() -> Any:
            with psycopg.connect(
                host=host("pgpod"), hostaddr="127.0.0.1", port=env.proxy.https_port, user="bob",
                password="pw-in-pod", dbname="appdb", sslmode="require", connect_timeout=5,
            ) as conn:  # fmt: skip
                return conn.execute("select current_database(), current_user").fetchone()

        assert wait_until(query, timeout=60, what="postgres container via traefik") == ("appdb", "bob")
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "2", name], capture_output=True, env=penv)


def test_removed_pod_stops_routing(env: Env) -> None:
    assert env.proxy.get(host("web1")).status_code == 200
    env.publish([p for p in env.base_pods() if p.pod_id != "web1"])
    try:
        wait_until(lambda: env.proxy.get(host("web1")).status_code == 404, what="web1 route removal")
        assert env.proxy.get(host("allow1")).status_code == 200
    finally:
        env.publish(env.base_pods())
    wait_until(lambda: env.proxy.get(host("web1")).status_code == 200, what="web1 route back")
