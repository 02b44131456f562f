"""Unit tests of the pure Traefik dynamic-config renderer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from openpods.domain.traefik_config import (
    COOKIE_FILTER_MIDDLEWARE,
    POSTGRES_TLS_OPTION,
    REDIRECT_MIDDLEWARE,
    STRIP_TOKEN_MIDDLEWARE,
    PodRoutes,
    ProxyRenderSettings,
    RenderResult,
    pod_id_net,
    render_dynamic_config,
    resource_name,
)

AUTH_URL = "http://127.0.0.1:8000/v3/pods/{pod_id_net}/auth?tenant={tenant_id}"
SETTINGS = ProxyRenderSettings(forward_auth_url=AUTH_URL, https_redirect_port=8443)


def pod(
    pod_id: str = "mypod",
    stanzas: dict[str, Any] | None = None,
    *,
    tenant: str = "tacc",
    running: bool = True,
    domain: str = "pods.localhost",
) -> PodRoutes:
    stanzas = {"default": {"protocol": "http", "port": 5000}} if stanzas is None else stanzas
    hostnames = {k: (f"{pod_id}.{domain}" if k == "default" else f"{pod_id}-{k}.{domain}") for k in stanzas}
    backends = {k: f"127.0.0.1:{20000 + i}" for i, k in enumerate(stanzas)} if running else {}
    return PodRoutes(tenant, pod_id, stanzas, hostnames, backends)


def render(*pods: PodRoutes, settings: ProxyRenderSettings = SETTINGS) -> RenderResult:
    result = render_dynamic_config(pods, settings)
    assert_traefik_safe(result.config)
    return result


def assert_traefik_safe(config: dict[str, Any]) -> None:
    """JSON-serialisable, no None, no empty sections except the intentional ``tls: {}`` on routers."""
    json.dumps(config)

    def walk(node: Any, path: str) -> None:
        assert node is not None, path
        if isinstance(node, dict):
            if not path.endswith(".tls"):
                assert node, f"empty map at {path}"
            for k, v in node.items():
                assert isinstance(k, str)
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            assert node, f"empty list at {path}"
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        else:
            assert isinstance(node, str | int | bool), path

    if config:
        walk(config, "")
    # Every router points at a defined service and defined (or shared) middlewares.
    for section in ("http", "tcp"):
        sec = config.get(section, {})
        for name, router in sec.get("routers", {}).items():
            assert router["service"] in sec["services"], name
            for mw in router.get("middlewares", []):
                assert mw in sec.get("middlewares", {}), (name, mw)
            opt = router.get("tls", {}).get("options")
            if opt:
                assert opt in config["tls"]["options"]


# --- protocols ------------------------------------------------------------------------------------------


def test_empty_input_renders_empty_config() -> None:
    result = render()
    assert result.config == {}
    assert result.errors == {}


def test_http_stanza_gets_https_router_and_redirect() -> None:
    result = render(pod())
    http = result.config["http"]
    name = "tacc-mypod-default"
    assert http["routers"][name] == {
        "entryPoints": ["websecure"],
        "rule": "Host(`mypod.pods.localhost`)",
        "service": name,
        "tls": {},
        "middlewares": [STRIP_TOKEN_MIDDLEWARE],
    }
    assert http["middlewares"][STRIP_TOKEN_MIDDLEWARE] == {
        "headers": {"customRequestHeaders": {"X-Tapis-Token": ""}}
    }
    assert http["routers"][f"{name}-web"] == {
        "entryPoints": ["web"],
        "rule": "Host(`mypod.pods.localhost`)",
        "service": name,
        "middlewares": [REDIRECT_MIDDLEWARE],
    }
    assert http["services"][name] == {"loadBalancer": {"servers": [{"url": "http://127.0.0.1:20000"}]}}
    assert http["middlewares"][REDIRECT_MIDDLEWARE] == {
        "redirectScheme": {"scheme": "https", "permanent": True, "port": "8443"}
    }
    assert "tcp" not in result.config and "tls" not in result.config


def test_redirect_port_omitted_for_443_and_plain_http_served_when_redirect_off() -> None:
    s443 = ProxyRenderSettings(forward_auth_url=AUTH_URL, https_redirect_port=443)
    mw = render(pod(), settings=s443).config["http"]["middlewares"][REDIRECT_MIDDLEWARE]
    assert "port" not in mw["redirectScheme"]

    plain = ProxyRenderSettings(forward_auth_url=AUTH_URL, redirect_http_to_https=False)
    config = render(
        pod(stanzas={"default": {"protocol": "http", "ip_allow_list": ["10.0.0.0/8"]}}), settings=plain
    ).config
    web = config["http"]["routers"]["tacc-mypod-default-web"]
    assert web["middlewares"] == ["tacc-mypod-default-ipallow", STRIP_TOKEN_MIDDLEWARE]
    assert REDIRECT_MIDDLEWARE not in config["http"]["middlewares"]

    no_web = ProxyRenderSettings(forward_auth_url=AUTH_URL, http_entrypoint=None)
    assert list(render(pod(), settings=no_web).config["http"]["routers"]) == ["tacc-mypod-default"]


def test_cert_resolver_is_used_for_every_tls_router() -> None:
    settings = ProxyRenderSettings(forward_auth_url=AUTH_URL, cert_resolver="le")
    config = render(
        pod(
            stanzas={
                "default": {"protocol": "http"},
                "bolt": {"protocol": "tcp"},
                "db": {"protocol": "postgres"},
            }
        ),
        settings=settings,
    ).config
    assert config["http"]["routers"]["tacc-mypod-default"]["tls"] == {"certResolver": "le"}
    assert config["tcp"]["routers"]["tacc-mypod-bolt"]["tls"] == {"certResolver": "le"}
    assert config["tcp"]["routers"]["tacc-mypod-db"]["tls"] == {
        "certResolver": "le",
        "options": POSTGRES_TLS_OPTION,
    }


def test_tcp_stanza_gets_sni_router_with_tls_termination() -> None:
    config = render(pod(stanzas={"bolt": {"protocol": "tcp", "port": 7687}})).config
    assert "http" not in config
    assert config["tcp"]["routers"]["tacc-mypod-bolt"] == {
        "entryPoints": ["websecure"],
        "rule": "HostSNI(`mypod-bolt.pods.localhost`)",
        "service": "tacc-mypod-bolt",
        "tls": {},
    }
    assert config["tcp"]["services"]["tacc-mypod-bolt"] == {
        "loadBalancer": {"servers": [{"address": "127.0.0.1:20000"}]}
    }


def test_postgres_stanza_uses_alpn_tls_option() -> None:
    config = render(pod(stanzas={"default": {"protocol": "postgres", "port": 5432}})).config
    router = config["tcp"]["routers"]["tacc-mypod-default"]
    assert router["rule"] == "HostSNI(`mypod.pods.localhost`)"
    assert router["tls"] == {"options": POSTGRES_TLS_OPTION}
    assert "passthrough" not in router["tls"]
    option = config["tls"]["options"][POSTGRES_TLS_OPTION]
    assert "postgresql" in option["alpnProtocols"]
    assert option["minVersion"] == "VersionTLS12"


def test_local_only_and_stopped_pods_get_no_route_and_no_error() -> None:
    result = render(
        pod("aaa", stanzas={"default": {"protocol": "local_only"}}),
        pod("bbb", running=False),
    )
    assert result.config == {}
    assert result.errors == {}


def test_protocol_is_case_insensitive_and_defaults_apply() -> None:
    result = render(pod(stanzas={"default": {"protocol": "HTTP"}, "other": {}}))
    assert result.errors == {}
    assert set(result.config["http"]["services"]) == {"tacc-mypod-default", "tacc-mypod-other"}


# --- middlewares ----------------------------------------------------------------------------------------


FULL_HTTP = {
    "protocol": "http",
    "port": 8888,
    "ip_allow_list": ["127.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32", "192.168.1.7/24"],
    "cors_allow_origins": ["https://ui.example.org", "http://localhost:3000"],
    "cors_allow_methods": ["GET", "POST"],
    "cors_allow_headers": ["X-Tapis-Token", "Content-Type"],
    "cors_allow_credentials": True,
    "cors_max_age": 60,
    "tapis_auth": True,
    "tapis_auth_response_headers": {"X-Username": "<<tapisusername>>", "X-Tenant": "<<tapistenantid>>"},
}


def test_http_middlewares_in_order_with_values() -> None:
    config = render(pod(stanzas={"default": FULL_HTTP, "api": FULL_HTTP})).config
    http = config["http"]
    router = http["routers"]["tacc-mypod-default"]
    assert router["middlewares"] == [
        "tacc-mypod-default-ipallow",
        "tacc-mypod-default-cors",
        "tacc-mypod-default-auth",
        STRIP_TOKEN_MIDDLEWARE,
    ]
    assert http["middlewares"]["tacc-mypod-default-ipallow"] == {
        "ipAllowList": {"sourceRange": ["127.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32", "192.168.1.0/24"]}
    }
    assert http["middlewares"]["tacc-mypod-default-cors"] == {
        "headers": {
            "accessControlAllowOriginList": ["https://ui.example.org", "http://localhost:3000"],
            "accessControlAllowMethods": ["GET", "POST"],
            "accessControlAllowHeaders": ["X-Tapis-Token", "Content-Type"],
            "accessControlAllowCredentials": True,
            "accessControlMaxAge": 60,
            "addVaryHeader": True,
        }
    }
    auth = http["middlewares"]["tacc-mypod-default-auth"]["forwardAuth"]
    assert auth["address"] == "http://127.0.0.1:8000/v3/pods/mypod/auth?tenant=tacc"
    assert auth["authResponseHeaders"] == ["X-Username", "X-Tenant", "X-Tapis-Username", "Cookie"]
    assert auth["trustForwardHeader"] is True
    assert auth["maxResponseBodySize"] > 0
    assert auth["preserveLocationHeader"] is True
    # The second stanza is authorized against its own config.
    auth_api = http["middlewares"]["tacc-mypod-api-auth"]["forwardAuth"]
    assert auth_api["address"] == "http://127.0.0.1:8000/v3/pods/mypod-api/auth?tenant=tacc"
    # The redirect router carries no middlewares but the redirect.
    assert http["routers"]["tacc-mypod-default-web"]["middlewares"] == [REDIRECT_MIDDLEWARE]


def test_no_middlewares_when_lists_empty() -> None:
    stanza = {
        "protocol": "http",
        "ip_allow_list": [],
        "cors_allow_origins": [],
        "cors_allow_methods": ["GET"],
        "tapis_auth": False,
        "tapis_auth_response_headers": {"X-A": "b"},
    }
    http = render(pod(stanzas={"default": stanza})).config["http"]
    assert http["routers"]["tacc-mypod-default"]["middlewares"] == [STRIP_TOKEN_MIDDLEWARE]
    assert set(http["middlewares"]) == {REDIRECT_MIDDLEWARE, STRIP_TOKEN_MIDDLEWARE}


def test_null_fields_take_defaults() -> None:
    stanza = {key: None for key in FULL_HTTP}
    result = render(pod(stanzas={"default": stanza}))
    assert result.errors == {}
    assert result.config["http"]["routers"]["tacc-mypod-default"]["middlewares"] == [STRIP_TOKEN_MIDDLEWARE]


def test_username_header_not_duplicated_and_auth_tls_ca() -> None:
    settings = ProxyRenderSettings(
        forward_auth_url="https://api.example.org/v3/pods/{pod_id_net}/auth", forward_auth_tls_ca="/ca.crt"
    )
    stanza = {"tapis_auth": True, "tapis_auth_response_headers": {"x-tapis-username": "<<tapisusername>>"}}
    config = render(pod(stanzas={"default": stanza}), settings=settings).config
    auth = config["http"]["middlewares"]["tacc-mypod-default-auth"]["forwardAuth"]
    assert auth["authResponseHeaders"] == ["X-Tapis-Username", "Cookie"]
    assert auth["tls"] == {"ca": "/ca.crt"}
    assert auth["address"] == "https://api.example.org/v3/pods/mypod/auth"


def test_credentials_never_reach_the_pod_on_any_http_stanza() -> None:
    """Every http stanza deletes X-Tapis-Token after forward-auth; OpenPods' cookies are filtered by the auth
    call (tapis_auth) or, without tapis_auth, by a cookie-filter forward-auth on a router that only matches
    requests carrying such a cookie. The auth address carries the per-stanza signature."""
    settings = ProxyRenderSettings(
        forward_auth_url=AUTH_URL, api_url="http://127.0.0.1:8000", forward_auth_secret="s3cret",
        redirect_http_to_https=False,
    )
    stanzas = {"default": {"protocol": "http"}, "priv": {"protocol": "http", "tapis_auth": True}}
    http = render(pod(stanzas=stanzas), settings=settings).config["http"]
    routers, mws = http["routers"], http["middlewares"]
    for key in ("default", "priv"):
        name = f"tacc-mypod-{key}"
        assert routers[name]["middlewares"][-1] == STRIP_TOKEN_MIDDLEWARE
        assert routers[f"{name}-web"]["middlewares"][-1] == STRIP_TOKEN_MIDDLEWARE
    assert mws[STRIP_TOKEN_MIDDLEWARE] == {"headers": {"customRequestHeaders": {"X-Tapis-Token": ""}}}
    # without tapis_auth: the cookie router
    cookies = routers["tacc-mypod-default-cookies"]
    assert cookies["rule"].startswith("Host(`mypod.pods.localhost`) && HeaderRegexp(`Cookie`, ")
    assert cookies["middlewares"] == [COOKIE_FILTER_MIDDLEWARE, STRIP_TOKEN_MIDDLEWARE]
    assert cookies["service"] == "tacc-mypod-default"
    assert routers["tacc-mypod-default-webcookies"]["middlewares"] == cookies["middlewares"]
    cookie_filter = mws[COOKIE_FILTER_MIDDLEWARE]["forwardAuth"]
    assert cookie_filter["address"] == "http://127.0.0.1:8000/traefik-cookie-filter"
    assert cookie_filter["authResponseHeaders"] == ["Cookie"]
    # with tapis_auth: the auth call filters cookies, the address is signed
    assert "tacc-mypod-priv-cookies" not in routers
    auth = mws["tacc-mypod-priv-auth"]["forwardAuth"]
    assert "Cookie" in auth["authResponseHeaders"]
    from openpods.auth.pod_access import stanza_signature

    assert auth["address"] == (
        "http://127.0.0.1:8000/v3/pods/mypod-priv/auth?tenant=tacc&sig=" + stanza_signature("s3cret", "tacc", "mypod-priv")
    )


def test_cookie_regexp_matches_only_openpods_cookies() -> None:
    import re

    from openpods.domain.traefik_config import OPENPODS_COOKIE_REGEXP

    pattern = re.compile(OPENPODS_COOKIE_REGEXP)
    for header in ("__Host-openpods-session=x", "a=1; __Host-openpods-state-0123456789abcdef=y",
                   "a=1;X-Tapis-Token=t", "openpods_x=1", "A=1;  x-tapis-token=t"):
        assert pattern.search(header), header
    for header in ("_xsrf=1; jupyterhub-session=2", "username-localhost-8888=2|1:0|10:17"):
        assert not pattern.search(header), header


def test_tcp_and_postgres_ip_allow_list() -> None:
    stanzas = {
        "bolt": {"protocol": "tcp", "ip_allow_list": ["fd00::/8"]},
        "db": {"protocol": "postgres", "ip_allow_list": ["127.0.0.1/32"], "cors_allow_origins": ["*"]},
    }
    tcp = render(pod(stanzas=stanzas)).config["tcp"]
    assert tcp["routers"]["tacc-mypod-bolt"]["middlewares"] == ["tacc-mypod-bolt-ipallow"]
    assert tcp["middlewares"]["tacc-mypod-bolt-ipallow"] == {"ipAllowList": {"sourceRange": ["fd00::/8"]}}
    assert tcp["middlewares"]["tacc-mypod-db-ipallow"] == {"ipAllowList": {"sourceRange": ["127.0.0.1/32"]}}


@pytest.mark.parametrize(
    ("entry", "normal"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("::/0", "::/0"),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:db8:0:0::/64", "2001:db8::/64"),
        ("::ffff:1.2.3.4", "::ffff:102:304"),
    ],
)
def test_ip_allow_list_accepts_and_normalises(entry: str, normal: str) -> None:
    result = render(pod(stanzas={"default": {"ip_allow_list": [entry]}}))
    assert result.errors == {}
    assert result.config["http"]["middlewares"]["tacc-mypod-default-ipallow"]["ipAllowList"][
        "sourceRange"
    ] == [normal]


# --- malformed data ---------------------------------------------------------------------------------------

BAD_STANZAS: list[tuple[str, Any]] = [
    ("not a dict", "http"),
    ("list", ["http"]),
    ("unknown protocol", {"protocol": "udp"}),
    ("protocol not str", {"protocol": 1}),
    ("port str", {"port": "80"}),
    ("port bool", {"port": True}),
    ("port zero", {"port": 0}),
    ("port too big", {"port": 99999}),
    ("ip star", {"ip_allow_list": ["*"]}),
    ("ip garbage", {"ip_allow_list": ["1.2.3.4; rm"]}),
    ("ip leading zero", {"ip_allow_list": ["010.1.1.1"]}),
    ("ip bad prefix", {"ip_allow_list": ["10.0.0.0/33"]}),
    ("ip v6 bad prefix", {"ip_allow_list": ["::/129"]}),
    ("ip zone", {"ip_allow_list": ["fe80::1%eth0"]}),
    ("ip whitespace", {"ip_allow_list": [" 1.2.3.4"]}),
    ("ip newline", {"ip_allow_list": ["1.2.3.4\n"]}),
    ("ip not list", {"ip_allow_list": "1.2.3.4"}),
    ("ip int", {"ip_allow_list": [16909060]}),
    ("ip too many", {"ip_allow_list": ["1.2.3.4"] * 1000}),
    ("tapis_auth str", {"tapis_auth": "yes"}),
    ("tapis_auth on tcp", {"protocol": "tcp", "tapis_auth": True}),
    ("header name space", {"tapis_auth": True, "tapis_auth_response_headers": {"X User": "a"}}),
    ("header name crlf", {"tapis_auth": True, "tapis_auth_response_headers": {"X-A\r\nEvil": "a"}}),
    ("header value crlf", {"tapis_auth": True, "tapis_auth_response_headers": {"X-A": "a\r\nX-B: c"}}),
    ("header value nul", {"tapis_auth": True, "tapis_auth_response_headers": {"X-A": "a\x00"}}),
    ("header value int", {"tapis_auth": True, "tapis_auth_response_headers": {"X-A": 1}}),
    ("header content-length", {"tapis_auth": True, "tapis_auth_response_headers": {"Content-Length": "0"}}),
    ("header cookie", {"tapis_auth": True, "tapis_auth_response_headers": {"cookie": "a"}}),
    ("header x-forwarded", {"tapis_auth": True, "tapis_auth_response_headers": {"X-Forwarded-For": "a"}}),
    ("headers not map", {"tapis_auth": True, "tapis_auth_response_headers": ["X-A"]}),
    ("headers too many", {"tapis_auth_response_headers": {f"X-H{i}": "v" for i in range(40)}}),
    ("cors origin quote", {"cors_allow_origins": ["https://a.org`) || Host(`evil"]}),
    ("cors origin path", {"cors_allow_origins": ["https://a.org/path"]}),
    ("cors origin no scheme", {"cors_allow_origins": ["a.org"]}),
    ("cors origin bad port", {"cors_allow_origins": ["https://a.org:99999"]}),
    ("cors origins str", {"cors_allow_origins": "https://a.org"}),
    ("cors method bad", {"cors_allow_origins": ["*"], "cors_allow_methods": ["GET POST"]}),
    ("cors header crlf", {"cors_allow_origins": ["*"], "cors_allow_headers": ["X-A\n"]}),
    ("cors credentials str", {"cors_allow_credentials": "true"}),
    ("cors max age negative", {"cors_max_age": -1}),
    ("cors max age float", {"cors_max_age": 1.5}),
]


@pytest.mark.parametrize(("label", "bad"), BAD_STANZAS, ids=[b[0] for b in BAD_STANZAS])
def test_bad_stanza_is_skipped_and_reported_without_touching_others(label: str, bad: Any) -> None:
    bad_pod = pod("badpod", stanzas={"default": bad, "good": {"protocol": "http"}})
    other = pod("otherpod", tenant="dev")
    result = render(bad_pod, other)
    assert list(result.errors) == [("tacc", "badpod")], label
    assert all(msg.startswith("networking.default: ") for msg in result.errors[("tacc", "badpod")])
    routers = result.config["http"]["routers"]
    # the bad stanza has no route, its sibling and the other pod do
    assert "tacc-badpod-default" not in routers
    assert "tacc-badpod-good" in routers
    assert "dev-otherpod-default" in routers
    assert not any(
        name.startswith("tacc-badpod-default") for name in result.config["http"].get("middlewares", {})
    )


@pytest.mark.parametrize(
    ("label", "routes"),
    [
        ("bad pod id", PodRoutes("tacc", "Bad-Pod", {"default": {}}, {"default": "x.pods.localhost"}, {})),
        ("pod id with dot", PodRoutes("tacc", "a.b", {"default": {}}, {}, {})),
        ("bad tenant", PodRoutes("ta cc", "mypod", {"default": {}}, {}, {})),
        ("tenant with slash", PodRoutes("a/b", "mypod", {"default": {}}, {}, {})),
        ("stanzas not a map", PodRoutes("tacc", "mypod", [{"protocol": "http"}], {}, {})),  # type: ignore[arg-type]
    ],
)
def test_bad_pod_identity_is_skipped(label: str, routes: PodRoutes) -> None:
    result = render(routes, pod("otherpod"))
    assert len(result.errors) == 1, label
    assert list(result.config["http"]["services"]) == ["tacc-otherpod-default"]


def test_unhashable_pod_id_is_reported_not_raised() -> None:
    routes = PodRoutes("tacc", ["x"], {}, {}, {})  # type: ignore[arg-type]
    result = render(routes)
    assert result.errors == {("tacc", "['x']"): ["pod id is not valid: ['x']"]}


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "UPPER.pods.localhost",
        "a..b",
        "-a.pods.localhost",
        "a.pods.localhost`) || Host(`evil",
        "a b.pods.localhost",
        "é.pods.localhost",
        "a" * 64 + ".pods.localhost",
        "*.pods.localhost",
    ],
)
def test_bad_hostname_is_reported(host: str | None) -> None:
    routes = PodRoutes(
        "tacc",
        "mypod",
        {"default": {}},
        {"default": host} if host is not None else {},
        {"default": "127.0.0.1:1"},
    )  # type: ignore[dict-item]
    result = render(routes, pod("otherpod"))
    assert list(result.errors) == [("tacc", "mypod")]
    assert "hostname" in result.errors[("tacc", "mypod")][0]


@pytest.mark.parametrize(
    "backend",
    [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:01",
        ":80",
        "a b:80",
        "[::1]",
        "[zz::1]:80",
        "1.2.3.4:8x",
        8080,
    ],
)
def test_bad_backend_is_reported(backend: Any) -> None:
    routes = PodRoutes(
        "tacc", "mypod", {"default": {}}, {"default": "mypod.pods.localhost"}, {"default": backend}
    )
    result = render(routes)
    assert result.config == {}
    assert "backend" in result.errors[("tacc", "mypod")][0]


@pytest.mark.parametrize("backend", ["10.0.0.7:8080", "[::1]:5000", "mypod-svc.ns.svc:5000", "localhost:1"])
def test_good_backends(backend: str) -> None:
    routes = PodRoutes(
        "tacc", "mypod", {"default": {}}, {"default": "mypod.pods.localhost"}, {"default": backend}
    )
    result = render(routes)
    assert result.errors == {}
    assert result.config["http"]["services"]["tacc-mypod-default"]["loadBalancer"]["servers"] == [
        {"url": f"http://{backend}"}
    ]


def test_bad_stanza_key_is_reported() -> None:
    result = render(pod(stanzas={"Bad Key": {}, "ok": {}}))
    assert result.errors == {("tacc", "mypod"): ["networking: bad stanza key 'Bad Key'"]}
    assert list(result.config["http"]["services"]) == ["tacc-mypod-ok"]


def test_several_problems_are_all_reported() -> None:
    result = render(pod(stanzas={"default": {"protocol": "udp", "port": -1, "ip_allow_list": ["x", "y"]}}))
    assert len(result.errors[("tacc", "mypod")]) == 4


def test_weird_mapping_does_not_break_render() -> None:
    class Exploding(dict):  # type: ignore[type-arg]
        def get(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

    result = render(pod(stanzas={"default": Exploding(protocol="http")}), pod("otherpod"))
    assert result.errors == {("tacc", "mypod"): ["networking.default: could not be validated (RuntimeError)"]}
    assert list(result.config["http"]["services"]) == ["tacc-otherpod-default"]


# --- names and collisions ------------------------------------------------------------------------------


def test_names_do_not_collide_across_tenants_and_stanzas() -> None:
    pods = [
        pod("mypod", tenant="tacc"),
        pod("mypod", tenant="dev", domain="pods.dev.localhost"),
        pod("mypod", tenant="t-a", domain="pods.ta.localhost"),
        pod("amypod", tenant="t", domain="pods.t.localhost"),
        pod(
            "x",
            tenant="tacc",
            stanzas={"default": {}, "web": {}, "a": {"protocol": "tcp"}, "b": {"protocol": "postgres"}},
        ),
    ]
    result = render(*pods)
    assert result.errors == {}
    http = result.config["http"]
    assert len(http["services"]) == 6
    assert len(http["routers"]) == 12  # https + redirect router each
    assert "t_2da-mypod-default" in http["services"]
    # `x` has a stanza called `web`: its router must not clash with the redirect router of `default`.
    assert "tacc-x-default-web" in http["routers"] and "tacc-x-web" in http["routers"]
    assert "tacc-x-web-web" in http["routers"]
    # dict keys cannot repeat: a collision would show as a missing entry
    assert len(result.config["tcp"]["routers"]) == len(result.config["tcp"]["services"]) == 2


def test_resource_name_escaping_is_injective() -> None:
    assert resource_name("a-b", "c", "d") != resource_name("a", "b-c", "d")
    assert resource_name("a_2d", "c", "d") != resource_name("a-b", "c", "d")
    assert resource_name("A", "b", "c") != resource_name("a", "b", "c")
    assert resource_name("tacc", "mypod", "default") == "tacc-mypod-default"
    for name in (resource_name("Ä.x", "p", "k"), resource_name("a_b", "p", "k")):
        assert name.count("-") == 2
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
        assert name == name.lower()


def test_duplicate_hostname_first_wins_second_reported() -> None:
    first = pod("mypod", tenant="tacc")
    second = pod("mypod", tenant="dev")  # same public hostname mypod.pods.localhost
    result = render(first, second)
    assert list(result.config["http"]["services"]) == ["tacc-mypod-default"]
    assert "already routed for tacc/mypod" in result.errors[("dev", "mypod")][0]


def test_pod_id_net() -> None:
    assert pod_id_net("mypod", "default") == "mypod"
    assert pod_id_net("mypod", "bolt") == "mypod-bolt"


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        ProxyRenderSettings(forward_auth_url="ftp://x/{pod_id_net}")
    with pytest.raises(ValueError):
        ProxyRenderSettings(forward_auth_url="http://x/{unknown}")
    with pytest.raises(ValueError):
        ProxyRenderSettings(forward_auth_url="http://x/", https_entrypoint="a b")


def test_output_is_deterministic_and_unshared() -> None:
    pods = [pod(f"p{i}", stanzas={"default": FULL_HTTP, "t": {"protocol": "tcp"}}) for i in range(20)]
    a = render(*pods).config
    b = render(*pods).config
    assert json.dumps(a) == json.dumps(b)
    # no object is shared between routers (a YAML dump would otherwise emit anchors)
    r1, r2 = a["http"]["routers"]["tacc-p0-default"], a["http"]["routers"]["tacc-p1-default"]
    assert r1["entryPoints"] is not r2["entryPoints"]
    assert r1["tls"] is not r2["tls"]


def test_input_is_not_mutated() -> None:
    stanzas = {"default": dict(FULL_HTTP)}
    snapshot = json.dumps(stanzas, sort_keys=True)
    render(pod(stanzas=stanzas))
    assert json.dumps(stanzas, sort_keys=True) == snapshot


def test_ten_thousand_pods_render() -> None:
    pods = []
    for i in range(10_000):
        stanzas: dict[str, Any] = {"default": {"protocol": "http", "port": 5000}}
        if i % 3 == 0:
            stanzas["default"] = FULL_HTTP
        if i % 4 == 0:
            stanzas["db"] = {"protocol": "postgres", "port": 5432}
        if i % 97 == 0:
            stanzas["bad"] = {"protocol": "http", "port": "x"}
        pods.append(pod(f"pod{i}", stanzas=stanzas, tenant=("tacc", "dev")[i % 2]))
    result = render_dynamic_config(pods, SETTINGS)
    assert len(result.errors) == len(range(0, 10_000, 97))
    assert len(result.config["http"]["services"]) == 10_000
    assert len(result.config["tcp"]["services"]) == 2_500
    json.dumps(result.config)


def test_a_pod_renders_the_same_alone_and_among_others() -> None:
    """What the route table caches per pod must not depend on the other pods."""
    from openpods.domain.traefik_config import render_pod_fragments

    pods = [
        pod("a", stanzas={"default": FULL_HTTP, "db": {"protocol": "postgres"}}),
        pod("b", tenant="dev", stanzas={"default": {"protocol": "http", "port": "x"}}),
        pod(
            "c",
            stanzas={
                "default": {"protocol": "http"},
                "t": {"protocol": "tcp", "ip_allow_list": ["10.0.0.0/8"]},
            },
        ),
    ]
    together = list(render_pod_fragments(pods, SETTINGS))
    assert [list(render_pod_fragments([p], SETTINGS)) for p in pods] == [[f] for f in together]
    assert together[1].problems and not together[1].stanzas  # the bad one: reported, nothing routed
