"""Pod URLs through the whole stack: the pods API → spawner → a real container → OpenPods' /traefik-config →
the Traefik OpenPods supervises → the pod. HTTPS (verified against OpenPods' CA), a second stanza's own URL,
plain HTTP redirects, stop and delete removing routes, TLS TCP routed on SNI, and a real PostgreSQL server
reached with psycopg through Traefik's PostgreSQL STARTTLS support.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import httpx
import psycopg
import pytest

from .conftest import (
    ECHO_IMAGE,
    HTTP_IMAGE,
    POSTGRES_IMAGE,
    TWO_PORTS_COMMAND,
    ProxyEnv,
    pg_query,
    unique,
    wait_until,
)

HELLO = "hello from openpods"


def test_https_reaches_the_pod_verified_against_the_generated_ca(proxy_env: ProxyEnv, pod_id: str) -> None:
    env = proxy_env
    created = env.create(pod_id, networking={"default": {"protocol": "http", "port": 5000}})
    assert created["networking"]["default"]["url"] == env.host(pod_id)
    env.wait_available(pod_id)

    response = env.wait_status(env.host(pod_id), 200)
    assert response.text.strip() == HELLO
    assert response.http_version in ("HTTP/1.1", "HTTP/2")

    # The certificate is the one OpenPods generated: without its CA the handshake fails.
    with httpx.Client(timeout=5, trust_env=False) as client, pytest.raises(httpx.ConnectError):
        client.get(
            f"https://127.0.0.1:{env.https_port}/",
            headers={"Host": env.host(pod_id)},
            extensions={"sni_hostname": env.host(pod_id)},
        )
    # ... and it is valid for the pod's name (checked by the ssl module, not only by httpx).
    with (
        socket.create_connection(("127.0.0.1", env.https_port), timeout=5) as raw,
        env.ssl_context.wrap_socket(raw, server_hostname=env.host(pod_id)) as tls,
    ):
        assert tls.getpeercert() is not None

    # An unknown pod host gets Traefik's 404, not another pod.
    assert env.get(env.host(unique())).status_code == 404


def test_second_stanza_gets_its_own_url(proxy_env: ProxyEnv, pod_id: str) -> None:
    env = proxy_env
    created = env.create(
        pod_id,
        command=TWO_PORTS_COMMAND,
        networking={
            "default": {"protocol": "http", "port": 5000},
            "second": {"protocol": "http", "port": 6000},
        },
    )
    assert created["networking"]["default"]["url"] == env.host(pod_id)
    assert (
        created["networking"]["second"]["url"]
        == env.host(pod_id, "second")
        == f"{pod_id}-second.pods.localhost"
    )
    env.wait_available(pod_id)

    assert env.wait_status(env.host(pod_id), 200).text.strip() == HELLO
    assert env.wait_status(env.host(pod_id, "second"), 200).text.strip() == "second stanza"
    # the stanza's own port, not the default one (and the other way round)
    assert env.get(env.host(pod_id, "second")).text.strip() == "second stanza"
    assert env.get(env.host(pod_id)).text.strip() == HELLO


def test_plain_http_redirects_to_https(proxy_env: ProxyEnv, pod_id: str) -> None:
    env = proxy_env
    env.create(pod_id, networking={"default": {"protocol": "http", "port": 5000}})
    env.wait_available(pod_id)
    env.wait_status(env.host(pod_id), 200)

    plain = env.get(env.host(pod_id), "/index.html?q=1", scheme="http")
    assert plain.status_code in (301, 302, 307, 308), plain.text
    location = plain.headers["location"]
    assert location == f"https://{env.host(pod_id)}:{env.https_port}/index.html?q=1"
    # following it (by hand: the name does not resolve here) reaches the pod over HTTPS
    followed = env.get(env.host(pod_id), "/index.html?q=1")
    assert followed.status_code == 200
    assert followed.text.strip() == HELLO


def test_stopped_pod_stops_routing_and_a_started_one_routes_again(proxy_env: ProxyEnv, pod_id: str) -> None:
    env = proxy_env
    other = unique()
    env.create(pod_id, networking={"default": {"protocol": "http", "port": 5000}})
    env.create(other, networking={"default": {"protocol": "http", "port": 5000}})
    env.wait_available(pod_id)
    env.wait_available(other)
    env.wait_status(env.host(pod_id), 200)
    env.wait_status(env.host(other), 200)

    env.action(pod_id, "stop")
    env.wait_status(env.host(pod_id), 404, what="(stopped pod)")
    wait_until(lambda: env.get_pod(pod_id)["status"] == "STOPPED", what="STOPPED")
    assert env.get(env.host(pod_id)).status_code == 404
    assert env.get(env.host(other)).status_code == 200  # the other pod is untouched

    env.action(pod_id, "start")
    env.wait_available(pod_id)
    assert env.wait_status(env.host(pod_id), 200).text.strip() == HELLO


def test_deleted_pod_route_is_gone(proxy_env: ProxyEnv, pod_id: str) -> None:
    env = proxy_env
    env.create(
        pod_id,
        command=TWO_PORTS_COMMAND,
        networking={
            "default": {"protocol": "http", "port": 5000},
            "second": {"protocol": "http", "port": 6000},
        },
    )
    env.wait_available(pod_id)
    env.wait_status(env.host(pod_id), 200)
    env.wait_status(env.host(pod_id, "second"), 200)

    env.delete(pod_id)
    env.wait_status(env.host(pod_id), 404, what="(deleted pod)")
    env.wait_status(env.host(pod_id, "second"), 404, what="(deleted pod, second stanza)")
    # the container is gone as well, and the config no longer mentions the pod
    wait_until(
        lambda: not env.engine.pod_containers(env.tenant, pod_id), timeout=60, what="container removal"
    )
    r = env.srv.client().get("/traefik-config", headers={"X-OpenPods-Proxy-Secret": env.srv.ctx.proxy_secret})
    assert r.status_code == 200
    assert pod_id not in r.text


def test_tcp_over_tls_with_sni_reaches_the_echo_pod(proxy_env: ProxyEnv, pod_id: str) -> None:
    env = proxy_env
    created = env.create(pod_id, image=ECHO_IMAGE, networking={"default": {"protocol": "tcp", "port": 7000}})
    assert created["networking"]["default"]["url"] == env.host(pod_id)
    env.wait_available(pod_id)

    payload = f"ping {pod_id}\n".encode()
    assert (
        wait_until(lambda: env.tls_exchange(env.host(pod_id), payload) == payload, what="echo via TLS")
        is True
    )
    big = bytes(range(256)) * 256  # 64 KiB, binary
    assert env.tls_exchange(env.host(pod_id), big, timeout=10) == big


def test_tcp_with_the_wrong_sni_reaches_nothing(proxy_env: ProxyEnv, pod_id: str) -> None:
    env = proxy_env
    env.create(pod_id, image=ECHO_IMAGE, networking={"default": {"protocol": "tcp", "port": 7000}})
    env.wait_available(pod_id)
    payload = b"ping wrong sni\n"
    wait_until(lambda: env.tls_exchange(env.host(pod_id), payload) == payload, what="echo via TLS")

    for name in (env.host(unique()), env.host(pod_id, "other"), "localhost", f"{pod_id}.pods.example.org"):
        answer = env.tls_exchange(name, payload)
        assert payload not in answer, f"SNI {name!r} reached the echo pod"
    # Without SNI at all: nothing either.
    ctx = ssl.create_default_context(cafile=str(env.ca_file))
    ctx.check_hostname = False
    answer = b""
    try:
        with (
            socket.create_connection(("127.0.0.1", env.https_port), timeout=5) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            tls.sendall(payload)
            answer = tls.recv(65536)
    except (OSError, ssl.SSLError):
        pass
    assert payload not in answer


def test_postgres_pod_reached_through_traefik(proxy_env: ProxyEnv, pod_id: str) -> None:
    env = proxy_env
    env.create(
        pod_id,
        image=POSTGRES_IMAGE,
        environment_variables={
            "POSTGRES_USER": "bob",
            "POSTGRES_PASSWORD": "pw-in-pod",
            "POSTGRES_DB": "appdb",
        },
        networking={"default": {"protocol": "postgres", "port": 5432}},
        resources={"cpu_request": 100, "cpu_limit": 1000, "mem_request": 64, "mem_limit": 512},
    )
    env.wait_available(pod_id)
    creds = {"user": "bob", "password": "pw-in-pod", "dbname": "appdb"}

    def ready() -> Any:
        return pg_query(env, pod_id, "select current_database(), current_user", sslmode="require", **creds)

    assert wait_until(ready, timeout=90, interval=0.5, what="PostgreSQL in the pod via Traefik") == [
        ("appdb", "bob")
    ]

    # A real server: writes and reads back, over TLS.
    conninfo = {
        "host": env.host(pod_id),
        "hostaddr": "127.0.0.1",
        "port": env.https_port,
        "connect_timeout": 5,
        "sslmode": "require",
        **creds,
    }
    with psycopg.connect(**conninfo) as conn:
        assert conn.info.pgconn.ssl_in_use
        conn.execute("create table t (id int primary key, name text)")
        conn.execute("insert into t values (1, 'one'), (2, 'two')")
        assert conn.execute("select name from t order by id").fetchall() == [("one",), ("two",)]
        assert conn.execute("select version()").fetchone()[0].startswith("PostgreSQL 15")

    # Full verification of the certificate against OpenPods' CA and the pod's name.
    rows = pg_query(
        env, pod_id, "select count(*) from t", sslmode="verify-full", sslrootcert=str(env.ca_file), **creds
    )
    assert rows == [(2,)]
    # Wrong password: refused by the server in the pod.
    with pytest.raises(psycopg.OperationalError):
        pg_query(env, pod_id, "select 1", sslmode="require", **{**creds, "password": "wrong"})
    # Without TLS there is no route (Traefik routes on SNI).
    with pytest.raises(psycopg.OperationalError):
        pg_query(env, pod_id, "select 1", sslmode="disable", **creds)


def test_http_image_is_the_one_routed(proxy_env: ProxyEnv) -> None:
    """Sanity: the route's backend is the pod's published port (the same answer directly and via Traefik)."""
    env = proxy_env
    pod_id = unique()
    env.create(pod_id, image=HTTP_IMAGE, networking={"default": {"protocol": "http", "port": 5000}})
    env.wait_available(pod_id)
    port = int(env.row(pod_id)["host_ports"]["default"])
    direct = wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2), what="direct answer")
    via = env.wait_status(env.host(pod_id), 200)
    assert direct.text == via.text
