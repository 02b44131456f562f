"""One validator for networking stanzas: whatever the API's model accepts, the Traefik renderer routes (it used to
accept ``cors_allow_origins: ["example.org"]`` and then drop the stanza, leaving an AVAILABLE pod with no route)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from pydantic import ValidationError

from openpods.domain.models import Networking
from openpods.domain.traefik_config import (
    PodRoutes,
    ProxyRenderSettings,
    render_dynamic_config,
    resource_name,
    stanza_problems,
)

SETTINGS = ProxyRenderSettings(forward_auth_url="http://127.0.0.1:8000/v3/pods/{pod_id_net}/auth")


def render_one(stanza: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    routes = PodRoutes("tacc", "mypod", {"default": stanza}, {"default": "mypod.pods.localhost"},
                       {"default": "127.0.0.1:20000"})
    result = render_dynamic_config([routes], SETTINGS)
    return result.config, result.errors.get(("tacc", "mypod"), [])


def routed(config: dict[str, Any], protocol: str) -> bool:
    name = resource_name("tacc", "mypod", "default")
    section = "tcp" if protocol in ("tcp", "postgres") else "http"
    return name in config.get(section, {}).get("routers", {})


def test_origin_without_scheme_is_refused_by_the_model() -> None:
    with pytest.raises(ValidationError) as err:
        Networking.model_validate({"cors_allow_origins": ["example.org"]})
    assert "cors_allow_origins: not an origin (scheme://host[:port]): 'example.org'" in str(err.value)


@pytest.mark.parametrize("origin", ["https://ui.example.org", "http://localhost:3000", "https://Example.ORG",
                                    "https://[::1]:8443", "*"])
def test_origins_browsers_send_are_accepted_and_rendered(origin: str) -> None:
    stanza = Networking.model_validate({"cors_allow_origins": [origin]}).model_dump()
    config, problems = render_one(stanza)
    assert problems == []
    cors = config["http"]["middlewares"][resource_name("tacc", "mypod", "default") + "-cors"]["headers"]
    assert cors["accessControlAllowOriginList"] == [origin.lower()]


def test_stanza_problems_is_what_the_renderer_reports() -> None:
    stanza = {"protocol": "http", "cors_allow_origins": ["example.org"]}
    _, problems = render_one(stanza)
    assert problems == [f"networking.default: {p}" for p in stanza_problems(stanza)] != []


# Values near the edges of every rule: valid forms, and forms one of the two validators used to let through.
ORIGINS = hs.sampled_from(["https://a.org", "http://localhost:3000", "*", "example.org", "https://a.org/",
                           "https://a.org:99999", "ftp://a.org", "https://[::1]", "https://[zz]", "null",
                           "https://a_b.org", "HTTPS://A.ORG"])
TOKENS = hs.sampled_from(["GET", "POST", "X-Tapis-Token", "*", "GET,POST", "Content-Type", "a(b)", "é"])
IPS = hs.sampled_from(["10.0.0.1", "10.0.0.0/8", "::1", "fe80::1%eth0", "10.0.0.1/024", " 10.0.0.1",
                       "2001:db8::/32", "10.0.0.0/33", "1.2.3"])
HEADERS = hs.sampled_from(["X-Custom", "Host", "Cookie", "X-Forwarded-For", "Proxy-Foo", "X-Tapis-Username",
                           "Location", "X A"])
HEADER_VALUES = hs.sampled_from(["x", "", "a\tb", "a\x01b", "v" * 5000])

STANZAS = hs.fixed_dictionaries(
    {},
    optional={
        "protocol": hs.sampled_from(["http", "HTTP", "tcp", "postgres", "local_only"]),
        "port": hs.sampled_from([10, 5000, 65535]),
        "ip_allow_list": hs.lists(IPS, max_size=3),
        "tapis_auth": hs.booleans(),
        "tapis_auth_response_headers": hs.dictionaries(HEADERS, HEADER_VALUES, max_size=2),
        "cors_allow_origins": hs.lists(ORIGINS, max_size=3),
        "cors_allow_methods": hs.lists(TOKENS, max_size=3),
        "cors_allow_headers": hs.lists(TOKENS, max_size=3),
        "cors_allow_credentials": hs.booleans(),
        "cors_max_age": hs.sampled_from([0, 100, 86400]),
    },
)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(STANZAS)
def test_accepted_by_the_api_means_routed(raw: dict[str, Any]) -> None:
    try:
        model = Networking.model_validate(raw)
    except ValidationError:
        return
    stanza = model.model_dump()  # what the API stores
    config, problems = render_one(stanza)
    assert problems == [], (raw, problems)
    if model.protocol != "local_only":
        assert routed(config, model.protocol), raw


def test_the_generator_reaches_both_outcomes() -> None:
    """The property above is not vacuous: the generated stanzas include accepted and refused ones."""
    outcomes: set[bool] = set()

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(STANZAS)
    def collect(raw: dict[str, Any]) -> None:
        try:
            Networking.model_validate(raw)
            outcomes.add(True)
        except ValidationError:
            outcomes.add(False)

    collect()
    assert outcomes == {True, False}
