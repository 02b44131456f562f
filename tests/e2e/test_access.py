"""Per-stanza access control through the whole stack: ip_allow_list, CORS answered by Traefik, and tapis_auth
(forward-auth to OpenPods, the browser login flow with its callback on the pod's own host, response headers
seen at the pod, allowed users checked on every request).

Issue 9 (items 2 and 11): neither the visitor's X-Tapis-Token nor any OpenPods cookie reaches a pod; the login
cookie is a pod-scoped session, useless at the API and at other pods, revoked with the user's tokens; the
one-time code is bound to the browser (state cookie) and never appears in Traefik's access log; forward-auth
and the login page reveal nothing about which pods exist; Jupyter uploads go only into Jupyter pods (ADMIN).

Pods that must show what reached them run busybox httpd with a CGI script printing its environment
(``GET /cgi-bin/env``): request headers appear as ``HTTP_<NAME>=value``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import yaml

from .conftest import ECHO_IMAGE, ENV_CGI_COMMAND, HTTP_IMAGE, SMALL, USER, ProxyEnv, unique, wait_until

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
    assert set(query) == {"flow"}  # a signed login flow: tenant, pod, return path, state hash
    flow = jwt.decode(query["flow"][0], options={"verify_signature": False})
    assert (flow["pod"], flow["tid"], flow["ret"]) == (pod_id, env.tenant, "/some/page?x=1")

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


SESSION_COOKIE = "__Host-openpods-session"
STATE_PREFIX = "__Host-openpods-state-"


def _set_cookies(response: httpx.Response) -> dict[str, Any]:
    """Every cookie the response sets, by name (morsels)."""
    out: dict[str, Any] = {}
    for header in response.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        out.update(cookie)
    return out


def _cookie_from(response: httpx.Response, name: str = SESSION_COOKIE) -> tuple[str, Any]:
    cookies = _set_cookies(response)
    assert name in cookies, f"no {name} in {response.status_code} {response.headers}"
    return cookies[name].value, cookies[name]


def post_form(env: ProxyEnv, host: str, path: str, data: dict[str, str], cookies: str = "") -> httpx.Response:
    """A form POST through Traefik to ``host`` (SNI and Host set; redirects not followed)."""
    with httpx.Client(verify=env.ssl_context, timeout=10.0, trust_env=False) as client:
        return client.post(
            f"https://127.0.0.1:{env.https_port}{path}",
            data=data,
            headers={"Host": f"{host}:{env.https_port}", **({"Cookie": cookies} if cookies else {})},
            extensions={"sni_hostname": host},
        )


@dataclass
class Login:
    """What a browser holds after the steps of the login flow."""

    state_cookie: str  # "name=value" of the flow's state cookie on the pod host
    callback_path: str
    form: dict[str, str]  # code + tenant, as the login answer's auto-submitting form posts them
    answer: httpx.Response | None = None  # the callback's answer
    cookie: str = ""  # the pod session cookie's value


def start_login(env: ProxyEnv, host: str, path: str, username: str, password: str) -> Login:
    """Pod URL → 302 + state cookie → login page → POST credentials → the page that POSTs the code to the
    pod host (not posted yet)."""
    first = env.get(host, path, headers={"Accept": "text/html"})
    assert first.status_code == 302, first.text
    states = {k: m for k, m in _set_cookies(first).items() if k.startswith(STATE_PREFIX)}
    assert len(states) == 1, first.headers
    (state_name, morsel), = states.items()
    assert morsel["secure"] and morsel["httponly"] and not morsel["domain"] and morsel["path"] == "/"
    login_url = first.headers["location"]
    assert "code" not in parse_qs(urlsplit(login_url).query)
    with httpx.Client(timeout=30, trust_env=False) as browser:
        page = browser.get(login_url)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        form = dict(re.findall(r'<input\s+type="hidden"\s+name="([^"]+)"\s+value="([^"]*)"', page.text))
        assert set(form) == {"flow"}, page.text
        posted = browser.post(
            login_url.split("?", 1)[0],
            data={"flow": html.unescape(form["flow"]), "username": username, "password": password},
        )
    assert posted.status_code == 200, posted.text
    action = re.search(r'<form method="post" action="([^"]+)"', posted.text)
    assert action, posted.text
    callback = urlsplit(html.unescape(action.group(1)))
    assert callback.scheme == "https"
    assert callback.hostname == host
    assert callback.port == env.https_port
    assert not callback.query  # the code travels in the POST body, never in a URL
    fields = {k: html.unescape(v) for k, v in
              re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', posted.text)}
    assert set(fields) == {"code", "tenant"}, posted.text
    return Login(f"{state_name}={morsel.value}", callback.path, fields)


def finish_login(env: ProxyEnv, host: str, flow: Login, *, cookies: str | None = None) -> Login:
    """The auto-submitted POST of the code to the callback on the pod's own host (routed by Traefik to the
    API), with the browser's cookies for that host (default: the flow's state cookie)."""
    answer = post_form(env, host, flow.callback_path, flow.form,
                       flow.state_cookie if cookies is None else cookies)
    flow.answer = answer
    if answer.status_code in (302, 303):
        value, morsel = _cookie_from(answer)
        assert morsel["httponly"]
        assert morsel["secure"]
        assert not morsel["domain"]  # host-only: sent to this pod's host alone
        flow.cookie = value
    return flow


def login(env: ProxyEnv, host: str, path: str, username: str, password: str) -> tuple[str, httpx.Response]:
    """The whole browser flow; returns the pod session cookie's value and the callback's answer."""
    flow = finish_login(env, host, start_login(env, host, path, username, password))
    assert flow.answer is not None and flow.answer.status_code in (302, 303), flow.answer and flow.answer.text
    return flow.cookie, flow.answer


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

    flow = finish_login(env, host, start_login(env, host, "/cgi-bin/env?from=browser", USER, f"{USER}-pw"))
    answer, cookie = flow.answer, flow.cookie
    assert answer is not None and answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/cgi-bin/env?from=browser"  # back where the browser wanted to go
    with_cookie = env.get(
        host,
        "/cgi-bin/env?from=browser",
        headers={"Accept": "text/html", "Cookie": f"{SESSION_COOKIE}={cookie}"},
    )
    seen = cgi_env(with_cookie)
    assert seen["HTTP_X_USER"] == USER
    assert seen["QUERY_STRING"] == "from=browser"

    # The one-time code cannot be replayed, not even by the same browser.
    replay = post_form(env, host, flow.callback_path, flow.form, flow.state_cookie)
    assert replay.status_code == 401
    assert "set-cookie" not in replay.headers
    # Codes are not accepted in a URL at all.
    in_url = env.get(host, f"{flow.callback_path}?code={flow.form['code']}&tenant={env.tenant}")
    assert in_url.status_code == 400
    assert "set-cookie" not in in_url.headers


def test_browser_login_wrong_password_and_disallowed_user(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(env, {"default": http_stanza(tapis_auth=True, tapis_auth_allowed_users=[USER])})
    host = env.host(pod_id)
    env.wait_status(host, 401)
    login_url = env.get(host, headers={"Accept": "text/html"}).headers["location"]
    action = login_url.split("?", 1)[0]
    form = {"flow": parse_qs(urlsplit(login_url).query)["flow"][0]}
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
    as_bob = {"Cookie": f"{SESSION_COOKIE}={bob_cookie}"}
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

    # The same cookie (still valid) no longer opens the pod.
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
    landing = env.get(host, answer.headers["location"], headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    seen = cgi_env(landing)
    assert seen["HTTP_X_TAPIS_USERNAME"] == "carol"


# ------------------------------------------------------------------- credentials stay with OpenPods (issue 9)


def _dump(seen: dict[str, str]) -> str:
    return "\n".join(f"{k}={v}" for k, v in seen.items())


def test_neither_token_nor_openpods_cookies_reach_the_pod(proxy_env: ProxyEnv) -> None:
    """With and without tapis_auth, on the default and a second stanza: X-Tapis-Token and every OpenPods
    cookie are gone before the pod, the pod's own cookies (Jupyter's) still arrive."""
    env = proxy_env
    pod_id = start(
        env,
        {
            "default": http_stanza(),
            "priv": http_stanza(tapis_auth=True, tapis_auth_response_headers={"X-User": "<<tapisusername>>"}),
        },
        command=ENV_CGI_COMMAND,
    )
    open_host, priv_host = env.host(pod_id), env.host(pod_id, "priv")
    env.wait_status(open_host, 200, "/cgi-bin/env")
    env.wait_status(priv_host, 401, "/cgi-bin/env")
    token = env.srv.token(USER)
    theirs = "_xsrf=2|abc; username-pod=jupyter-session"
    # Before any login: the visitor's API token, as header (also as its alias) and as the old cookie.
    for host in (open_host, priv_host):
        for headers in ({"X-Tapis-Token": token}, {"X-Tapis-Token": token, "X_Tapis_Token": token},
                        {"X-Tapis-Token": token, "Cookie": f"{theirs}; X-Tapis-Token={token}"}):
            seen = cgi_env(env.get(host, "/cgi-bin/env", headers=headers))
            assert token not in _dump(seen), (host, headers, _dump(seen))
    session, _ = login(env, priv_host, "/cgi-bin/env", USER, f"{USER}-pw")
    ours = f"{SESSION_COOKIE}={session}; X-Tapis-Token={token}; {STATE_PREFIX}0123456789abcdef=st; openpods-x=1"
    cases = [
        (open_host, {"X-Tapis-Token": token}, None),
        (open_host, {"X-Tapis-Token": token, "Cookie": f"{theirs}; {ours}"}, theirs),
        (open_host, {"Cookie": f"{ours}; {theirs}"}, theirs),
        (open_host, {"Cookie": ours}, None),
        (open_host, {"Cookie": theirs}, theirs),
        (priv_host, {"X-Tapis-Token": token}, None),
        (priv_host, {"X-Tapis-Token": token, "Cookie": f"{theirs}; {ours}"}, theirs),
        (priv_host, {"Cookie": f"{ours}; {theirs}"}, theirs),  # a browser signed in with its cookie
        (priv_host, {"Cookie": ours}, None),
    ]
    for host, headers, expected_cookie in cases:
        seen = cgi_env(env.get(host, "/cgi-bin/env", headers=headers))
        dump = _dump(seen)
        assert token not in dump and session not in dump, (host, headers, dump)
        assert "HTTP_X_TAPIS_TOKEN" not in seen, (host, dump)
        headers_seen = "\n".join(f"{k}={v}" for k, v in seen.items() if k.startswith("HTTP_"))
        assert "openpods" not in headers_seen.lower(), (host, headers_seen)
        assert seen.get("HTTP_COOKIE") == expected_cookie, (host, headers, dump)
        if host == priv_host:
            assert seen["HTTP_X_USER"] == USER


def test_pod_session_cookie_is_useless_against_the_api_and_other_pods(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    user = "carol"
    first = start(env, {"default": http_stanza(tapis_auth=True)}, command=ENV_CGI_COMMAND)
    second = start(env, {"default": http_stanza(tapis_auth=True)}, command=ENV_CGI_COMMAND)
    host, other = env.host(first), env.host(second)
    env.wait_status(host, 401, "/cgi-bin/env")
    env.wait_status(other, 401, "/cgi-bin/env")
    cookie, _ = login(env, host, "/cgi-bin/env", user, f"{user}-pw")
    as_cookie = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
    assert cgi_env(env.get(host, "/cgi-bin/env", headers=as_cookie))["HTTP_X_TAPIS_USERNAME"] == user

    # not an API token: neither at the API nor as the pod's X-Tapis-Token
    api = env.srv.client(token=cookie).get("/v3/pods")
    assert api.status_code == 401, api.text
    assert env.get(host, "/cgi-bin/env", headers={"X-Tapis-Token": cookie}).status_code == 401
    # not for another pod (even one the user may use)
    assert env.get(other, "/cgi-bin/env", headers=as_cookie).status_code == 401
    browser = env.get(other, "/cgi-bin/env", headers={**as_cookie, "Accept": "text/html"})
    assert browser.status_code == 302
    assert "HTTP_" not in browser.text

    # revocation reaches pod sessions too: logout of every token of the user
    token = env.srv.token(user)
    r = env.srv.client(token=token).post("/v3/oauth2/logout", params={"all": "true"})
    assert r.status_code == 200, r.text
    denied = env.get(host, "/cgi-bin/env", headers=as_cookie)
    assert denied.status_code == 401
    assert "HTTP_" not in denied.text
    assert env.srv.client(token=token).get("/v3/pods").status_code == 401


def test_login_code_is_bound_to_the_browser_that_started_the_login(proxy_env: ProxyEnv) -> None:
    """Login CSRF: a code obtained by an attacker's own login cannot sign in a victim's browser."""
    env = proxy_env
    pod_id = start(env, {"default": http_stanza(tapis_auth=True)}, command=ENV_CGI_COMMAND)
    host = env.host(pod_id)
    env.wait_status(host, 401, "/cgi-bin/env")

    attacker = start_login(env, host, "/cgi-bin/env", "bob", "bob-pw")
    victim = start_login(env, host, "/cgi-bin/env", USER, f"{USER}-pw")
    for cookies in ("", victim.state_cookie, victim.state_cookie.split("=", 1)[0] + "=forged"):
        tried = finish_login(env, host, attacker, cookies=cookies).answer
        assert tried is not None and tried.status_code == 401, (cookies, tried and tried.text)
        assert SESSION_COOKIE not in _set_cookies(tried)
    # The same code from the browser that started that login works (so it was a valid code).
    done = finish_login(env, host, attacker).answer
    assert done is not None and done.status_code == 303
    assert finish_login(env, host, victim).answer.status_code == 303  # type: ignore[union-attr]


def _access_log(env: ProxyEnv) -> Path:
    static = yaml.safe_load((env.traefik_dir / "traefik.yml").read_text())
    assert static.get("accessLog", {}).get("filePath"), "this test needs Traefik's access log on"
    return Path(static["accessLog"]["filePath"])


def test_one_time_codes_and_cookies_stay_out_of_traefiks_access_log(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    pod_id = start(env, {"default": http_stanza(tapis_auth=True)}, command=ENV_CGI_COMMAND)
    host = env.host(pod_id)
    env.wait_status(host, 401, "/cgi-bin/env")
    log_path = _access_log(env)
    flow = finish_login(env, host, start_login(env, host, "/cgi-bin/env?marker=1", USER, f"{USER}-pw"))
    assert flow.answer is not None and flow.answer.status_code == 303
    code = flow.form["code"]

    def logged() -> str | None:
        text = log_path.read_text(errors="replace")
        return text if flow.callback_path in text else None

    text = wait_until(logged, what="the callback request in Traefik's access log")
    assert "marker=1" in text  # the log has the requests of this login, with their queries
    assert code not in text
    assert code.split(".")[2] not in text  # not even the signature part
    assert flow.cookie not in text


def test_forward_auth_and_login_page_do_not_reveal_which_pods_exist(proxy_env: ProxyEnv) -> None:
    env = proxy_env
    protected = start(env, {"default": http_stanza(tapis_auth=True)})
    plain = start(env, {"default": http_stanza()})
    missing = unique()
    anonymous = env.srv.client()
    bob = env.srv.client("bob")

    def answers(pod_id: str) -> list[tuple[int, str]]:
        out = []
        for client in (anonymous, bob):
            for accept in ("application/json", "text/html"):
                r = client.get(f"/v3/pods/{pod_id}/auth", params={"tenant": env.tenant},
                               headers={"Accept": accept})
                out.append((r.status_code, r.text.replace(pod_id, "<id>")))
            page = client.get("/v3/oauth2/login", params={"tenant": env.tenant, "pod": pod_id, "return_to": "/"})
            out.append((page.status_code, page.text.replace(pod_id, "<id>")))
        return out

    expected = answers(missing)
    assert {status for status, _ in expected} <= {400, 404}
    assert answers(protected) == expected
    assert answers(plain) == expected
    # Traefik's calls (signed by the proxy config) still work.
    env.wait_status(env.host(protected), 401)


def test_upload_to_jupyter_only_into_jupyter_pods_with_admin(proxy_env: ProxyEnv) -> None:
    """Real containers: a Jupyter pod (made from the 'jupyterlab' template) gets the file in its home; a plain
    pod never does, whatever the caller's level; USER on the Jupyter pod is not enough."""
    from openpods.domain.pods import jupyter_pod_id

    env = proxy_env
    admin = env.srv.client("admin")
    r = admin.post("/v3/pods/templates", json={"template_id": "jupyterlab"})
    assert r.status_code in (200, 409), r.text
    r = admin.post("/v3/pods/templates/jupyterlab/tags", json={
        "tag": "latest", "commit_message": "busybox stands in for JupyterLab",
        "pod_definition": {"image": HTTP_IMAGE, "resources": dict(SMALL),
                           "networking": {"default": {"protocol": "http", "port": 5000}}}})
    assert r.status_code == 200, r.text
    r = admin.post("/v3/pods/templates/jupyterlab/permissions", json={"user": USER, "level": "READ"})
    assert r.status_code == 200, r.text

    ensured = env.http.get("/v3/pods/jupyter/ensure")
    assert ensured.status_code == 200, ensured.text
    jpod = jupyter_pod_id(USER)
    env.created.append(jpod)
    plain = start(env, {"default": http_stanza()})
    env.wait_available(jpod)
    for pod_id in (jpod, plain):
        r = env.http.post(f"/v3/pods/{pod_id}/permissions", json={"user": "bob", "level": "USER"})
        assert r.status_code == 200, r.text
    bob = env.srv.client("bob")

    def upload(client: httpx.Client, pod_id: str, name: str) -> httpx.Response:
        return client.post(f"/v3/pods/jupyter/{pod_id}/upload", files={"file": (name, b"payload\n")},
                           data={"path": f"notes/{name}"})

    def exists(pod_id: str, name: str) -> bool:
        r = env.http.post(f"/v3/pods/{pod_id}/exec", json={"commands": [["ls", f"/home/jovyan/notes/{name}"]]})
        assert r.status_code == 200, r.text
        return r.json()["result"]["execution_results"][0]["exit_code"] == 0

    assert upload(bob, plain, "bob-plain.txt").status_code == 403
    assert upload(bob, jpod, "bob-jupyter.txt").status_code == 403
    refused = upload(env.http, plain, "owner-plain.txt")
    assert refused.status_code == 400, refused.text
    assert not exists(plain, "owner-plain.txt")
    assert not exists(jpod, "bob-jupyter.txt")
    done = upload(env.http, jpod, "owner-jupyter.txt")
    assert done.status_code == 200, done.text
    assert exists(jpod, "owner-jupyter.txt")
