"""Per-stanza access control through the whole stack: ip_allow_list, CORS answered by Traefik, and tapis_auth
(forward-auth to OpenPods, the browser login flow with its callback on the pod's own host, response headers
seen at the pod, allowed users checked on every request).

Pods that must show what reached them run busybox httpd with a CGI script printing its environment
(``GET /cgi-bin/env``): request headers appear as ``HTTP_<NAME>=value``.
"""

from __future__ import annotations

import html
import re
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from .conftest import ECHO_IMAGE, ENV_CGI_COMMAND, USER, ProxyEnv, unique, wait_until

HELLO = "hello from openpods"


def cgi_env(response: httpx.Response) -> dict[str, str]:
    """The CGI script's environment, parsed from its text/plain body."""
    assert response.status_code == 200, response.text
    out: dict[str, str] = {}
    for line in response.text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            out[name] = value
    return out


def http_stanza(**fields: Any) -> dict[str, Any]:
    return {"protocol": "http", "port": 5000, **fields}


def start(env: ProxyEnv, networking: dict[str, Any], *, command: list[str] | None = None) -> str:
    pod_id = unique()
    fields: dict[str, Any] = {"networking": networking}
    if command is not None:
        fields["command"] = command
    env.create(pod_id, **fields)
    env.wait_available(pod_id)
    return pod_id


# ------------------------------------------------------------------------------------------- ip_allow_list


def test_ip_allow_list_allows_and_denies(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    allowed = start(env, {"default": http_stanza(ip_allow_list=["127.0.0.1/32", "::1"])})
    denied = start(env, {"default": http_stanza(ip_allow_list=["10.0.0.0/8", "2001:db8::/32"])})
    assert env.wait_status(env.host(allowed), 200).text.strip() == HELLO
    # The route exists (no 404) but our address (127.0.0.1) is refused by Traefik.
    response = env.wait_status(env.host(denied), 403)
    assert HELLO not in response.text
    # Plain HTTP is no way around it: it only redirects to the protected HTTPS URL.
    plain = env.get(env.host(denied), scheme="http")
    assert plain.status_code in (301, 302, 307, 308)
    assert HELLO not in plain.text


def test_ip_allow_list_on_a_tcp_stanza(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pods = {}
    for name, ranges in (("allowed", ["127.0.0.0/8"]), ("denied", ["10.0.0.0/8"])):
        pod_id = unique()
        env.create(
            pod_id,
            image=ECHO_IMAGE,
            networking={"default": {"protocol": "tcp", "port": 7000, "ip_allow_list": ranges}},
        )
        pods[name] = pod_id
    for pod_id in pods.values():
        env.wait_available(pod_id)
    payload = b"hello tcp\n"
    wait_until(
        lambda: env.tls_exchange(env.host(pods["allowed"]), payload) == payload, what="allowed TCP pod"
    )
    # Until Traefik has loaded the denied pod's router, its SNI falls through to the HTTPS handler (an HTTP 400
    # for our bytes); once loaded, the allow list closes the connection without a byte. The echo never answers.
    answers: list[bytes] = []

    def denied_closed() -> bool:
        answers.append(env.tls_exchange(env.host(pods["denied"]), payload))
        return answers[-1] == b""

    wait_until(denied_closed, what="the denied TCP pod's router (connection closed)")
    assert not any(payload in a for a in answers), answers


# ------------------------------------------------------------------------------------------------- CORS


def test_cors_preflight_answered_with_the_configured_values(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(
        env,
        {
            "default": http_stanza(
                cors_allow_origins=["https://ui.example.org", "http://localhost:3000"],
                cors_allow_methods=["GET", "POST"],
                cors_allow_headers=["X-Tapis-Token", "Content-Type"],
                cors_allow_credentials=True,
                cors_max_age=90,
                tapis_auth=True,  # a preflight carries no token: it must be answered before forward-auth
            )
        },
        command=ENV_CGI_COMMAND,
    )
    host = env.host(pod_id)
    env.wait_status(host, 401)  # routed (tapis_auth on, no token)

    preflight = {
        "Origin": "https://ui.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-Tapis-Token",
    }
    response = env.get(host, "/cgi-bin/env", method="OPTIONS", headers=preflight)
    assert response.status_code in (200, 204), response.text
    h = response.headers
    assert h["access-control-allow-origin"] == "https://ui.example.org"
    assert h["access-control-allow-methods"] == "GET,POST"
    assert h["access-control-allow-headers"] == "X-Tapis-Token,Content-Type"
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-max-age"] == "90"
    assert "HTTP_" not in response.text  # answered by Traefik, not by the pod

    second = env.get(host, "/", method="OPTIONS", headers={**preflight, "Origin": "http://localhost:3000"})
    assert second.headers["access-control-allow-origin"] == "http://localhost:3000"
    stranger = env.get(
        host, "/", method="OPTIONS", headers={**preflight, "Origin": "https://evil.example.org"}
    )
    assert stranger.headers.get("access-control-allow-origin") in (None, "")

    # An actual cross-origin request with a token gets the CORS headers on the pod's answer.
    token = env.srv.token(USER)
    actual = env.get(
        host, "/cgi-bin/env", headers={"Origin": "https://ui.example.org", "X-Tapis-Token": token}
    )
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == "https://ui.example.org"
    assert actual.headers["access-control-allow-credentials"] == "true"


# ------------------------------------------------------------------------------------------- tapis_auth


def test_tapis_auth_without_a_token(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(env, {"default": http_stanza(tapis_auth=True)})
    host = env.host(pod_id)

    api_client = env.wait_status(host, 401, "/some/page?x=1")
    assert api_client.headers["content-type"].startswith("application/json")
    body = api_client.json()
    assert body["status"] == "error"
    assert body["result"] is None
    assert body["message"]
    assert HELLO not in api_client.text

    browser = env.get(host, "/some/page?x=1", headers={"Accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 302, browser.text
    location = urlsplit(browser.headers["location"])
    assert location.path == "/v3/oauth2/login"
    assert f"{location.scheme}://{location.netloc}" == env.srv.tenant_base_url()
    query = parse_qs(location.query)
    assert query["pod"] == [pod_id]
    assert query["tenant"] == [env.tenant]
    assert query["return_to"] == ["/some/page?x=1"]

    # An invalid token is a 401 too, never the pod.
    bad = env.get(host, headers={"X-Tapis-Token": "not-a-jwt"})
    assert bad.status_code == 401
    expired = env.get(host, headers={"X-Tapis-Token": env.srv.token(USER, ttl_sec=-10)})
    assert expired.status_code == 401


def test_tapis_auth_valid_token_passes_with_the_configured_headers_at_the_pod(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(
        env,
        {
            "default": http_stanza(
                tapis_auth=True,
                tapis_auth_allowed_users=[USER, "bob"],
                tapis_auth_response_headers={
                    "X-User": "<<tapisusername>>",
                    "X-Tenant": "<<tapistenantid>>",
                    "X-Site": "<<tapissiteid>>",
                    "X-Greeting": "hi <<tapisusername>>@<<tapistenantid>>",
                },
            )
        },
        command=ENV_CGI_COMMAND,
    )
    host = env.host(pod_id)
    env.wait_status(host, 401, "/cgi-bin/env")

    token = env.srv.token(USER)
    seen = cgi_env(env.get(host, "/cgi-bin/env?x=1", headers={"X-Tapis-Token": token}))
    assert seen["HTTP_X_USER"] == USER
    assert seen["HTTP_X_TENANT"] == env.tenant
    assert seen["HTTP_X_SITE"] == env.settings.site_id
    assert seen["HTTP_X_GREETING"] == f"hi {USER}@{env.tenant}"
    assert seen["HTTP_X_TAPIS_USERNAME"] == USER
    assert seen["QUERY_STRING"] == "x=1"

    # Another allowed user gets their own name; a client cannot spoof the headers (neither the name itself
    # nor an alias that CGI reads as the same variable).
    spoof = {
        "X-Tapis-Token": env.srv.token("bob"),
        "X-User": "mallory",
        "X_User": "mallory",
        "X-Tapis-Username": "mallory",
        "X_Tapis_Username": "mallory",
    }
    seen = cgi_env(env.get(host, "/cgi-bin/env", headers=spoof))
    assert seen["HTTP_X_USER"] == "bob"
    assert seen["HTTP_X_TAPIS_USERNAME"] == "bob"
    assert "mallory" not in "\n".join(f"{k}={v}" for k, v in seen.items())


def test_tapis_auth_user_not_allowed_gets_403(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(
        env,
        {"default": http_stanza(tapis_auth=True, tapis_auth_allowed_users=[USER])},
        command=ENV_CGI_COMMAND,
    )
    host = env.host(pod_id)
    env.wait_status(host, 401, "/cgi-bin/env")
    assert env.get(host, "/cgi-bin/env", headers={"X-Tapis-Token": env.srv.token(USER)}).status_code == 200
    denied = env.get(host, "/cgi-bin/env", headers={"X-Tapis-Token": env.srv.token("bob")})
    assert denied.status_code == 403
    assert "HTTP_" not in denied.text
    assert denied.json()["status"] == "error"
    # A token of the same user name in another tenant is not the same user.
    other = env.get(host, "/cgi-bin/env", headers={"X-Tapis-Token": env.srv.token(USER, tenant="other")})
    assert other.status_code in (401, 403)
    assert "HTTP_" not in other.text


def test_tapis_auth_on_a_second_stanza(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(
        env,
        {
            "default": http_stanza(),
            "private": http_stanza(
                tapis_auth=True,
                tapis_auth_allowed_users=["bob"],
                tapis_auth_response_headers={"X-Who": "<<tapisusername>>"},
            ),
        },
        command=ENV_CGI_COMMAND,
    )
    # Both stanzas point at port 5000: one open, one behind tapis_auth with its own allowed users.
    env.wait_status(env.host(pod_id), 200, "/cgi-bin/env")
    private = env.host(pod_id, "private")
    env.wait_status(private, 401, "/cgi-bin/env")
    assert env.get(private, "/cgi-bin/env", headers={"X-Tapis-Token": env.srv.token(USER)}).status_code == 403
    seen = cgi_env(env.get(private, "/cgi-bin/env", headers={"X-Tapis-Token": env.srv.token("bob")}))
    assert seen["HTTP_X_WHO"] == "bob"
    # the open stanza is not affected by the other's auth
    assert "HTTP_X_WHO" not in cgi_env(env.get(env.host(pod_id), "/cgi-bin/env"))


def _cookie_from(response: httpx.Response, name: str = "X-Tapis-Token") -> tuple[str, Any]:
    header = response.headers.get("set-cookie")
    assert header, f"no Set-Cookie in {response.status_code} {response.headers}"
    cookie = SimpleCookie()
    cookie.load(header)
    assert name in cookie, header
    return cookie[name].value, cookie[name]


def login(env: ProxyEnv, host: str, path: str, username: str, password: str) -> tuple[str, httpx.Response]:
    """The browser flow, step by step: pod URL → login page → POST credentials → callback on the pod host →
    cookie + redirect. Returns the cookie value and the callback's response."""
    first = env.get(host, path, headers={"Accept": "text/html"})
    assert first.status_code == 302, first.text
    login_url = first.headers["location"]
    with httpx.Client(timeout=30, trust_env=False) as browser:
        page = browser.get(login_url)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        form = dict(re.findall(r'<input\s+type="hidden"\s+name="([^"]+)"\s+value="([^"]*)"', page.text))
        assert set(form) == {"tenant", "pod", "return_to"}, page.text
        form = {k: html.unescape(v) for k, v in form.items()}
        posted = browser.post(
            login_url.split("?", 1)[0], data={**form, "username": username, "password": password}
        )
    assert posted.status_code in (302, 303), posted.text
    callback = urlsplit(posted.headers["location"])
    assert callback.scheme == "https"
    assert callback.hostname == host
    assert callback.port == env.https_port
    # The callback is on the pod's own host, routed by Traefik to the API: the cookie is set for that host.
    answer = env.get(host, f"{callback.path}?{callback.query}", headers={"Accept": "text/html"})
    assert answer.status_code in (302, 303), answer.text
    value, morsel = _cookie_from(answer)
    assert morsel["httponly"]
    assert morsel["secure"]
    assert not morsel["domain"]  # host-only: sent to this pod's host alone
    return value, answer


def test_browser_login_flow(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(
        env,
        {
            "default": http_stanza(
                tapis_auth=True,
                tapis_auth_allowed_users=[USER],
                tapis_auth_response_headers={"X-User": "<<tapisusername>>"},
            )
        },
        command=ENV_CGI_COMMAND,
    )
    host = env.host(pod_id)
    env.wait_status(host, 401, "/cgi-bin/env")

    cookie, answer = login(env, host, "/cgi-bin/env?from=browser", USER, f"{USER}-pw")
    assert answer.headers["location"] == "/cgi-bin/env?from=browser"  # back where the browser wanted to go
    with_cookie = env.get(
        host,
        "/cgi-bin/env?from=browser",
        headers={"Accept": "text/html", "Cookie": f"X-Tapis-Token={cookie}"},
    )
    seen = cgi_env(with_cookie)
    assert seen["HTTP_X_USER"] == USER
    assert seen["QUERY_STRING"] == "from=browser"
    # The cookie is a real token of that user (an API client may use it as the header, too).
    assert env.get(host, "/cgi-bin/env", headers={"X-Tapis-Token": cookie}).status_code == 200

    # The one-time code cannot be replayed.
    callback = answer.request.url
    replay = env.get(host, f"{callback.path}?{callback.query.decode()}")
    assert replay.status_code == 401
    assert "set-cookie" not in replay.headers


def test_browser_login_wrong_password_and_disallowed_user(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(env, {"default": http_stanza(tapis_auth=True, tapis_auth_allowed_users=[USER])})
    host = env.host(pod_id)
    env.wait_status(host, 401)
    login_url = env.get(host, headers={"Accept": "text/html"}).headers["location"]
    action = login_url.split("?", 1)[0]
    form = {"tenant": env.tenant, "pod": pod_id, "return_to": "/"}
    with httpx.Client(timeout=30, trust_env=False) as browser:
        wrong = browser.post(action, data={**form, "username": USER, "password": "wrong"})
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers and "location" not in wrong.headers
        bob = browser.post(action, data={**form, "username": "bob", "password": "bob-pw"})
        assert bob.status_code == 403
        assert "location" not in bob.headers


def test_allowed_users_are_checked_on_every_request(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    stanza = http_stanza(
        tapis_auth=True,
        tapis_auth_allowed_users=[USER, "bob"],
        tapis_auth_response_headers={"X-User": "<<tapisusername>>"},
    )
    pod_id = start(env, {"default": stanza}, command=ENV_CGI_COMMAND)
    host = env.host(pod_id)
    env.wait_status(host, 401, "/cgi-bin/env")

    bob_cookie, _ = login(env, host, "/cgi-bin/env", "bob", "bob-pw")
    as_bob = {"Cookie": f"X-Tapis-Token={bob_cookie}"}
    assert cgi_env(env.get(host, "/cgi-bin/env", headers=as_bob))["HTTP_X_USER"] == "bob"

    # The owner removes bob; the change applies when the pod is restarted.
    r = env.http.put(
        f"/v3/pods/{pod_id}", json={"networking": {"default": {**stanza, "tapis_auth_allowed_users": [USER]}}}
    )
    assert r.status_code == 200, r.text
    instance = env.row(pod_id)["instance_id"]
    env.action(pod_id, "restart")
    env.wait_available(pod_id, other_than_instance=instance)
    alice = {"X-Tapis-Token": env.srv.token(USER)}
    env.wait_status(host, 200, "/cgi-bin/env", headers=alice, what="(after restart)")

    # The same cookie (still a valid token) no longer opens the pod.
    denied = env.get(host, "/cgi-bin/env", headers=as_bob)
    assert denied.status_code == 403
    assert "HTTP_X_USER" not in denied.text
    assert cgi_env(env.get(host, "/cgi-bin/env", headers=alice))["HTTP_X_USER"] == USER


def test_browser_login_returns_to_the_configured_return_path(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(
        env,
        {"default": http_stanza(tapis_auth=True, tapis_auth_return_path="/cgi-bin/env")},
        command=ENV_CGI_COMMAND,
    )
    host = env.host(pod_id)
    env.wait_status(host, 401, "/cgi-bin/env")
    cookie, answer = login(env, host, "/somewhere/else", "carol", "carol-pw")
    assert answer.headers["location"] == "/cgi-bin/env"  # the stanza's return path, not where we started
    landing = env.get(host, answer.headers["location"], headers={"Cookie": f"X-Tapis-Token={cookie}"})
    seen = cgi_env(landing)
    assert seen["HTTP_X_TAPIS_USERNAME"] == "carol"
