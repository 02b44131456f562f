"""Traefik dynamic configuration, rendered as plain data from pods' networking stanzas.

This module is pure: no I/O, no clock, no globals that change. :func:`render_dynamic_config` turns the stored
networking stanzas of every pod into one Traefik dynamic configuration (a JSON-serialisable ``dict`` for
Traefik's HTTP provider) and a per-pod list of problems. It is made of three steps that a cache can use on
their own: :func:`render_pod_fragments` renders each pod alone (a :class:`PodFragment`, valid until that pod
changes), :func:`select_routes` puts fragments together (hostname conflicts between pods) and
:func:`shared_objects` adds what many stanzas refer to (the HTTPS redirect, the API service, the PostgreSQL TLS
option).

Contract:

- Input stanzas are the raw dicts as stored and may be malformed in any way. Each stanza is validated on its
  own; a bad stanza is skipped (gets no route) and reported under ``(tenant_id, pod_id)`` in
  :attr:`RenderResult.errors`. A pod whose identity is malformed is skipped as a whole. Nothing a pod stores
  can make the returned config invalid for Traefik, so one pod can never break routing for the others.
- A stanza gets a route only when it has a backend in :attr:`PodRoutes.backends` (a stopped pod has none; that
  is not an error) and a hostname in :attr:`PodRoutes.hostnames`.
- A hostname can be routed only once. When two stanzas claim the same hostname, the one met first wins and the
  other is reported; callers should pass pods in a stable order (e.g. by creation time).
- Names of routers, services and middlewares are deterministic and collision-free:
  ``<tenant>-<pod>-<key>`` (each part escaped to ``[a-z0-9_]``, so every per-stanza name contains exactly two
  ``-`` before its optional ``-<suffix>``). Shared objects have names without ``-``.
- Empty sections are omitted (``{}`` means "no routes"); there are no ``None`` values anywhere.

Per stanza (``protocol``):

- ``http``: HTTPS router ``Host(`host`)`` on the TLS entrypoint, and on the plain-HTTP entrypoint either a
  router that redirects to HTTPS (``redirect_http_to_https``) or one that serves the pod the same way.
  Middlewares, in this order: ``ipAllowList`` → CORS ``headers`` → ``forwardAuth`` →
  :data:`STRIP_TOKEN_MIDDLEWARE`. OpenPods' credentials never reach the pod: the shared
  :data:`STRIP_TOKEN_MIDDLEWARE` deletes ``X-Tapis-Token`` (after forward-auth has read it), and OpenPods'
  cookies are removed from ``Cookie`` by a forward-auth answer that Traefik copies over the request's header
  (``authResponseHeaders: [Cookie]``; an answer without it deletes the header). With tapis_auth that is the
  auth call itself; without it, a second router ``<name>-cookies`` (same host, plus ``HeaderRegexp`` on an
  OpenPods cookie, so a longer rule and a higher priority) sends only requests that carry such a cookie
  through the shared :data:`COOKIE_FILTER_MIDDLEWARE` (forward-auth to ``cookie_filter_url``).
- ``tcp``: TCP router ``HostSNI(`host`)`` on the TLS entrypoint, TLS terminated by Traefik; optional TCP
  ``ipAllowList``.
- ``postgres``: like ``tcp``, with the shared TLS option :data:`POSTGRES_TLS_OPTION` whose ``alpnProtocols``
  contain ``postgresql`` (Traefik answers the PostgreSQL SSLRequest itself, terminates TLS and forwards plain
  TCP, so the server must accept plain ``host`` connections).
- ``local_only``: no route.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import ipaddress
import re
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = [
    "COOKIE_FILTER_MIDDLEWARE",
    "POSTGRES_TLS_OPTION",
    "PROTOCOLS",
    "REDIRECT_MIDDLEWARE",
    "SECTIONS",
    "STRIP_TOKEN_MIDDLEWARE",
    "USERNAME_HEADER",
    "PodFragment",
    "PodRoutes",
    "ProxyRenderSettings",
    "RenderResult",
    "Selection",
    "StanzaRoutes",
    "build_config",
    "pod_id_net",
    "render_dynamic_config",
    "render_pod_fragments",
    "resource_name",
    "select_routes",
    "shared_objects",
    "stanza_problems",
    "valid_hostname",
]

PROTOCOLS = frozenset({"http", "tcp", "postgres", "local_only"})
#: Header set by the forward-auth endpoint with the authenticated user; always copied to the pod.
USERNAME_HEADER = "X-Tapis-Username"
#: Name of the shared TLS option used by ``postgres`` routers (defined in the same dynamic config).
POSTGRES_TLS_OPTION = "openpodspostgres"
#: Name of the shared middleware that redirects plain HTTP to HTTPS.
REDIRECT_MIDDLEWARE = "openpodsredirecthttps"
#: Shared middleware that deletes X-Tapis-Token (last in every http chain).
STRIP_TOKEN_MIDDLEWARE = "openpodsstriptoken"
#: Shared forwardAuth middleware that removes OpenPods' cookies (routers of stanzas without tapis_auth).
COOKIE_FILTER_MIDDLEWARE = "openpodscookiefilter"
API_SERVICE = "openpods-api"
#: Header deleted from every request before it reaches a pod (an API token of the visitor).
TOKEN_HEADER = "X-Tapis-Token"
#: Go regexp matching every Cookie header that carries an OpenPods cookie (``__Host-openpods-*``,
#: ``openpods*``) or the legacy ``X-Tapis-Token`` cookie (see ``openpods.auth.pod_access.is_openpods_cookie``).
#: Kept short (it is in one router per stanza); a false match only costs the filter's round trip.
OPENPODS_COOKIE_REGEXP = "(?i)openpods|x-tapis-token"

MAX_IP_ALLOW_ENTRIES = 256
MAX_RESPONSE_HEADERS = 32
MAX_CORS_ENTRIES = 64
MAX_CORS_MAX_AGE = 86400
MAX_HEADER_VALUE_LENGTH = 4096

# --- validation primitives ---------------------------------------------------------------------------------

_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_POD_ID_RE = re.compile(r"[a-z][a-z0-9]{0,63}\Z")
_KEY_RE = re.compile(r"[a-z0-9]{1,64}\Z")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")
# RFC 7230 token: 1*tchar
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_NO_TAB_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ORIGIN_RE = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]{0,31})://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})"
    r"(?::(?P<port>[0-9]{1,5}))?\Z"
)
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_BACKEND_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}:([1-9][0-9]{{0,4}})\Z")

# Headers that must never be copied from the forward-auth response into the request to the pod: framing and
# hop-by-hop headers (request smuggling), the proxy's own forwarding headers, and credentials.
_FORBIDDEN_AUTH_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host",
        "Content-Length",
        "Content-Type",
        "Content-Encoding",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Upgrade",
        "TE",
        "Trailer",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Cookie",
        "Set-Cookie",
        "Forwarded",
        "X-Real-Ip",
        "X-Tapis-Token",
        "Location",
    )
)

_USERNAME_HEADER_LOWER = USERNAME_HEADER.lower()
DEFAULT_CORS_MAX_AGE = 100


class _Invalid(ValueError):
    """A value failed validation; the message is reported on the pod."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _safe_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def valid_hostname(host: Any) -> bool:
    """True for a lowercase DNS hostname (LDH labels of 1-63 characters, at most 253 characters)."""
    return isinstance(host, str) and _HOSTNAME_RE.match(host) is not None


@lru_cache(maxsize=8192)
def _ip_entry(value: str) -> str:
    """Validate one ``ip_allow_list`` entry (IPv4/IPv6 address or CIDR) and return Traefik's form of it."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise _Invalid(f"not an IP address or CIDR: {_safe_repr(value)}")
    if "%" in value or _CONTROL_RE.search(value) or value.strip() != value:
        raise _Invalid(f"not an IP address or CIDR: {_safe_repr(value)}")
    try:
        if "/" in value:
            addr, _, prefix = value.partition("/")
            if not prefix.isdigit() or (len(prefix) > 1 and prefix[0] == "0"):
                raise ValueError(value)
            # Validate the address part on its own: ip_network(strict=False) would accept odd forms.
            ipaddress.ip_address(addr)
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _Invalid(f"not an IP address or CIDR: {_safe_repr(value)}") from None


def _string_list(value: Any, name: str, limit: int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise _Invalid(f"{name} must be a list of strings")
    if len(value) > limit:
        raise _Invalid(f"{name} has more than {limit} entries")
    for item in value:
        if not isinstance(item, str):
            raise _Invalid(f"{name} must be a list of strings, got {_safe_repr(item)}")
    return list(value)


def _origin(value: str) -> str:
    if value == "*":
        return value
    m = _ORIGIN_RE.match(value)
    if m is None:
        raise _Invalid(f"cors_allow_origins: not an origin (scheme://host[:port]): {_safe_repr(value)}")
    host = m.group("host")
    port = m.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise _Invalid(f"cors_allow_origins: bad port in {_safe_repr(value)}")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _Invalid(f"cors_allow_origins: bad IPv6 host in {_safe_repr(value)}") from None
    elif not _HOSTNAME_RE.match(host.lower()):
        raise _Invalid(f"cors_allow_origins: bad host in {_safe_repr(value)}")
    # Browsers send the origin lowercased and Traefik compares strings exactly.
    return value.lower()


def _backend(value: Any) -> str:
    """Validate a backend ``host:port`` (IPv4, ``[IPv6]`` or DNS name) and return it."""
    if type(value) is str:
        m = _IPV4_BACKEND_RE.match(value)
        if m is not None and int(m.group(1)) <= 65535:
            return value
    if not isinstance(value, str) or len(value) > 300:
        raise _Invalid(f"backend is not host:port: {_safe_repr(value)}")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise _Invalid(f"backend is not host:port: {_safe_repr(value)}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"backend has a bad IPv6 address: {_safe_repr(value)}") from None
        if "%" in host:
            raise _Invalid(f"backend has a bad IPv6 address: {_safe_repr(value)}")
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise _Invalid(f"backend is not host:port: {_safe_repr(value)}")
        if not _HOSTNAME_RE.match(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise _Invalid(f"backend has a bad host: {_safe_repr(value)}") from None
    if not _PORT_RE.match(port) or not 1 <= int(port) <= 65535 or (len(port) > 1 and port[0] == "0"):
        raise _Invalid(f"backend has a bad port: {_safe_repr(value)}")
    return value


def pod_id_net(pod_id: str, key: str) -> str:
    """The id the forward-auth endpoint receives: ``pod_id`` for ``default``, else ``<pod_id>-<key>``."""
    return pod_id if key == "default" else f"{pod_id}-{key}"


_SAFE_NAME_CHARS = frozenset(string.ascii_lowercase + string.digits)


def _escape(part: str) -> str:
    """Injective escape of a name part to ``[a-z0-9_]`` (every other byte becomes ``_xx``)."""
    if part and all(c in _SAFE_NAME_CHARS for c in part):
        return part
    out = []
    for byte in part.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if ch in _SAFE_NAME_CHARS else f"_{byte:02x}")
    return "".join(out) or "_"


def resource_name(tenant_id: str, pod_id: str, key: str) -> str:
    """Deterministic, collision-free Traefik name for one stanza: ``<tenant>-<pod>-<key>`` (parts escaped)."""
    return f"{_escape(tenant_id)}-{_escape(pod_id)}-{_escape(key)}"


# --- public types ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodRoutes:
    """What the renderer needs to know about one pod.

    ``stanzas``: the raw ``networking`` dict as stored (stanza key → stanza dict), possibly malformed.
    ``hostnames``: stanza key → public hostname (``mypod.pods.localhost``, ``mypod-bolt.pods.localhost``).
    ``backends``: stanza key → ``host:port`` the proxy forwards to; a stanza without one gets no route.
    """

    tenant_id: str
    pod_id: str
    stanzas: Mapping[str, Mapping[str, Any]]
    hostnames: Mapping[str, str] = field(default_factory=dict)
    backends: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProxyRenderSettings:
    """Site-wide settings of the rendered config.

    ``forward_auth_url``: template of the forward-auth address; placeholders ``{pod_id_net}`` (``pod_id``
    for the ``default`` stanza, else ``<pod_id>-<key>``), ``{pod_id}``, ``{key}`` and ``{tenant_id}``.
    ``https_redirect_port``: public HTTPS port written into redirects (``None`` or 443: no port in the URL).
    ``http_entrypoint``: ``None`` disables plain-HTTP routers altogether.
    ``forward_auth_max_response_body``: bytes of the auth response body Traefik reads (401/302 bodies).
    ``forward_auth_tls_ca``: CA file Traefik uses to verify an ``https`` forward-auth address.
    """

    forward_auth_url: str
    http_entrypoint: str | None = "web"
    https_entrypoint: str = "websecure"
    redirect_http_to_https: bool = True
    https_redirect_port: int | None = None
    cert_resolver: str | None = None
    forward_auth_max_response_body: int = 1 << 20
    forward_auth_tls_ca: str | None = None
    postgres_alpn_protocols: tuple[str, ...] = ("postgresql",)
    min_tls_version: str = "VersionTLS12"
    # Where the OpenPods API is reachable from Traefik; with it, each tapis_auth stanza's host also routes
    # ``/v3/pods/<pod_id_net>/auth/callback`` to the API, so the login cookie is set on the pod's own host.
    api_url: str | None = None
    # With a secret, each forward-auth address gets ``sig=<HMAC of tenant/pod_id_net>`` (the endpoint answers
    # 404 alike for every pod without it: no pod-id enumeration).
    forward_auth_secret: str = ""
    # forwardAuth address that answers 200 with the request's Cookie header minus OpenPods' cookies (for
    # stanzas without tapis_auth); None: ``<api_url>/traefik-cookie-filter`` when api_url is set.
    cookie_filter_url: str | None = None

    def __post_init__(self) -> None:
        url = self.forward_auth_url
        if not url.startswith(("http://", "https://")) or _CONTROL_RE.search(url) or " " in url:
            raise ValueError("forward_auth_url must be an http(s) URL")
        try:
            url.format(pod_id_net="p", pod_id="p", key="k", tenant_id="t")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"forward_auth_url has an unknown placeholder: {exc}") from None
        for name in (self.http_entrypoint, self.https_entrypoint, self.cert_resolver):
            if name is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"bad Traefik name: {name!r}")
        if self.https_redirect_port is not None and not 1 <= self.https_redirect_port <= 65535:
            raise ValueError("https_redirect_port must be 1-65535")
        if self.forward_auth_max_response_body < 1:
            raise ValueError("forward_auth_max_response_body must be positive")
        for extra in (self.cookie_filter_url, self.api_url):
            if extra is not None and (not extra.startswith(("http://", "https://")) or _CONTROL_RE.search(extra)):
                raise ValueError("cookie_filter_url and api_url must be http(s) URLs")

    @property
    def effective_cookie_filter_url(self) -> str | None:
        if self.cookie_filter_url:
            return self.cookie_filter_url
        return self.api_url.rstrip("/") + "/traefik-cookie-filter" if self.api_url else None


#: The places of the dynamic config that hold named objects, as ``<top>.<kind>``.
SECTIONS = (
    "http.routers",
    "http.services",
    "http.middlewares",
    "tcp.routers",
    "tcp.services",
    "tcp.middlewares",
    "tls.options",
)
#: Shared objects a stanza may need (see :func:`shared_objects`).
NEEDS_API, NEEDS_REDIRECT, NEEDS_POSTGRES = "api", "redirect", "postgres"
NEEDS_STRIP, NEEDS_COOKIE_FILTER = "strip-token", "cookie-filter"


@dataclass(frozen=True, slots=True)
class StanzaRoutes:
    """The Traefik objects of one routable stanza, rendered on their own.

    ``objects``: section (one of :data:`SECTIONS`) → ``{name: object}``; only non-empty sections.
    ``needs``: the shared objects (:data:`NEEDS_API` …) these objects refer to.
    """

    key: str
    host: str
    objects: dict[str, dict[str, Any]]
    needs: frozenset[str]


@dataclass(frozen=True, slots=True)
class PodFragment:
    """One pod rendered on its own: its routable stanzas (in stanza order) and its problems. It depends only
    on the pod and the settings, so a cache can keep it until the pod changes; conflicts *between* pods
    (a hostname claimed twice) are resolved when fragments are put together (:func:`select_routes`)."""

    tenant_id: str
    pod_id: str
    stanzas: tuple[StanzaRoutes, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """What :func:`select_routes` keeps: ``accepted`` as (fragment position, stanza position) pairs in input
    order, the problems per (tenant, pod) including hostname conflicts, and the shared objects needed."""

    accepted: list[tuple[int, int]]
    errors: dict[tuple[str, str], list[str]]
    needs: frozenset[str]


@dataclass(frozen=True, slots=True)
class RenderResult:
    """``config``: the Traefik dynamic config (JSON-serialisable); ``errors``: problems per (tenant, pod)."""

    config: dict[str, Any]
    errors: dict[tuple[str, str], list[str]]


# --- stanza validation -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stanza:
    protocol: str
    ip_allow_list: list[str]
    tapis_auth: bool
    auth_headers: list[str]
    cors_origins: list[str]
    cors_methods: list[str]
    cors_headers: list[str]
    cors_credentials: bool
    cors_max_age: int


def _validate_stanza(raw: Any, problems: list[str]) -> _Stanza | None:
    """Validate one stanza; append every problem to ``problems`` and return ``None`` if there are any.

    Missing or ``null`` fields take the API defaults. Written for speed: the common case (a plain ``dict``
    with empty lists) takes no regex or ``ipaddress`` work.
    """
    if type(raw) is not dict and not isinstance(raw, Mapping):
        problems.append("stanza is not an object")
        return None
    start = len(problems)
    get = raw.get

    protocol = get("protocol")
    if protocol is None:
        protocol = "http"
    elif type(protocol) is not str or protocol not in PROTOCOLS:
        if isinstance(protocol, str) and protocol.lower() in PROTOCOLS:
            protocol = protocol.lower()
        else:
            problems.append(
                f"protocol must be one of {', '.join(sorted(PROTOCOLS))}, got {_safe_repr(protocol)}"
            )
            protocol = "invalid"

    port = get("port")
    if port is not None and (type(port) is not int or not 1 <= port <= 65535):
        problems.append(f"port must be an integer 1-65535, got {_safe_repr(port)}")

    ip_allow: list[str] = []
    value = get("ip_allow_list")
    if value:
        try:
            for entry in _string_list(value, "ip_allow_list", MAX_IP_ALLOW_ENTRIES):  # str only, hashable
                try:
                    normal = _ip_entry(entry)
                except _Invalid as exc:
                    problems.append(f"ip_allow_list: {exc}")
                else:
                    if normal not in ip_allow:
                        ip_allow.append(normal)
        except _Invalid as exc:
            problems.append(str(exc))
    elif value is not None and not isinstance(value, list | tuple):
        problems.append("ip_allow_list must be a list of strings")

    tapis_auth = get("tapis_auth")
    if tapis_auth is None:
        tapis_auth = False
    elif type(tapis_auth) is not bool:
        problems.append(f"tapis_auth must be a boolean, got {_safe_repr(tapis_auth)}")
        tapis_auth = False
    elif tapis_auth and protocol != "http" and protocol != "invalid":
        # Fail closed: a stanza meant to be protected must not be exposed unprotected.
        problems.append(f"tapis_auth is only supported for http, not {protocol}")

    auth_headers: list[str] = []
    response_headers = get("tapis_auth_response_headers")
    if not response_headers:
        if response_headers is not None and not isinstance(response_headers, Mapping):
            problems.append("tapis_auth_response_headers must be an object of header name to string")
    elif not isinstance(response_headers, Mapping):
        problems.append("tapis_auth_response_headers must be an object of header name to string")
    elif len(response_headers) > MAX_RESPONSE_HEADERS:
        problems.append(f"tapis_auth_response_headers has more than {MAX_RESPONSE_HEADERS} headers")
    else:
        seen: set[str] = set()
        for name, header_value in response_headers.items():
            if type(name) is not str or not _TOKEN_RE.match(name):
                problems.append(f"tapis_auth_response_headers: bad header name {_safe_repr(name)}")
                continue
            lower = name.lower()
            if lower in _FORBIDDEN_AUTH_HEADERS or lower.startswith(("x-forwarded-", "proxy-")):
                problems.append(f"tapis_auth_response_headers: header {name!r} is not allowed")
                continue
            if (
                type(header_value) is not str
                or len(header_value) > MAX_HEADER_VALUE_LENGTH
                or _CONTROL_NO_TAB_RE.search(header_value)
            ):
                problems.append(f"tapis_auth_response_headers: bad value for {name!r}")
                continue
            if lower not in seen and lower != _USERNAME_HEADER_LOWER:
                seen.add(lower)
                auth_headers.append(name)

    cors_origins: list[str] = []
    cors_methods: list[str] = []
    cors_headers: list[str] = []
    value = get("cors_allow_origins")
    if value or (value is not None and not isinstance(value, list | tuple)):
        try:
            for origin in _string_list(value, "cors_allow_origins", MAX_CORS_ENTRIES):
                try:
                    cors_origins.append(_origin(origin))
                except _Invalid as exc:
                    problems.append(str(exc))
        except _Invalid as exc:
            problems.append(str(exc))
    for name, target in (("cors_allow_methods", cors_methods), ("cors_allow_headers", cors_headers)):
        value = get(name)
        if not value and (value is None or isinstance(value, list | tuple)):
            continue
        try:
            for token in _string_list(value, name, MAX_CORS_ENTRIES):
                if _TOKEN_RE.match(token):
                    target.append(token)
                else:
                    problems.append(f"{name}: not a valid token: {_safe_repr(token)}")
        except _Invalid as exc:
            problems.append(str(exc))
    cors_credentials = get("cors_allow_credentials")
    if cors_credentials is None:
        cors_credentials = False
    elif type(cors_credentials) is not bool:
        problems.append(f"cors_allow_credentials must be a boolean, got {_safe_repr(cors_credentials)}")
        cors_credentials = False
    cors_max_age = get("cors_max_age")
    if cors_max_age is None:
        cors_max_age = DEFAULT_CORS_MAX_AGE
    elif type(cors_max_age) is not int or not 0 <= cors_max_age <= MAX_CORS_MAX_AGE:
        problems.append(
            f"cors_max_age must be an integer 0-{MAX_CORS_MAX_AGE}, got {_safe_repr(cors_max_age)}"
        )
        cors_max_age = 0

    if len(problems) != start:
        return None
    return _Stanza(
        protocol,
        ip_allow,
        tapis_auth,
        auth_headers,
        cors_origins,
        cors_methods,
        cors_headers,
        cors_credentials,
        cors_max_age,
    )


def stanza_problems(raw: Any) -> list[str]:
    """Every reason the renderer would skip this stanza; ``[]``: it gets its route. The API's networking model
    refuses exactly these, so a stanza the API accepts is never dropped here."""
    problems: list[str] = []
    _validate_stanza(raw, problems)
    return problems


# --- rendering ---------------------------------------------------------------------------------------------


def render_dynamic_config(routes: Iterable[PodRoutes], settings: ProxyRenderSettings) -> RenderResult:
    """Render the Traefik dynamic config for ``routes`` (see the module docstring for the full contract).

    The cyclic garbage collector is paused while rendering: the render allocates a few hundred thousand small,
    acyclic containers, and the collector's full passes over them would otherwise double its time for 10,000
    pods. Nothing here creates reference cycles, so pausing it frees nothing late.
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        fragments = list(render_pod_fragments(routes, settings))
        selection = select_routes(fragments)
        sections: dict[str, dict[str, Any]] = {}
        for pod_index, stanza_index in selection.accepted:
            for section, objects in fragments[pod_index].stanzas[stanza_index].objects.items():
                sections.setdefault(section, {}).update(objects)
        for section, objects in shared_objects(selection.needs, settings).items():
            sections.setdefault(section, {}).update(objects)
        return RenderResult(config=build_config(sections), errors=selection.errors)
    finally:
        if was_enabled:
            gc.enable()


def render_pod_fragments(routes: Iterable[PodRoutes], settings: ProxyRenderSettings) -> Iterator[PodFragment]:
    """Render each pod on its own (one :class:`PodFragment` per input, in order; see the module docstring
    for the per-stanza contract). Nothing here looks at other pods."""

    https_ep = settings.https_entrypoint
    http_ep = settings.http_entrypoint or None
    tls_plain: dict[str, Any] = {"certResolver": settings.cert_resolver} if settings.cert_resolver else {}
    auth_template = settings.forward_auth_url
    auth_body = settings.forward_auth_max_response_body
    auth_tls = {"ca": settings.forward_auth_tls_ca} if settings.forward_auth_tls_ca else None
    auth_key = (
        hashlib.sha256(b"openpods-forward-auth:" + settings.forward_auth_secret.encode()).digest()
        if settings.forward_auth_secret
        else None
    )
    cookie_filter = settings.effective_cookie_filter_url
    escaped_tenants: dict[str, str] = {}

    for pod in routes:
        tenant_id, pod_id = pod.tenant_id, pod.pod_id
        problems: list[str] = []
        if not isinstance(tenant_id, str) or not _TENANT_RE.match(tenant_id):
            problems.append(f"tenant id is not valid: {_safe_repr(tenant_id)}")
        if not isinstance(pod_id, str) or not _POD_ID_RE.match(pod_id):
            problems.append(f"pod id is not valid: {_safe_repr(pod_id)}")
        stanzas = pod.stanzas
        if type(stanzas) is not dict and not isinstance(stanzas, Mapping):
            problems.append("networking is not an object")
        hostnames = pod.hostnames
        if type(hostnames) is not dict and not isinstance(hostnames, Mapping):
            hostnames = {}
        backends = pod.backends
        if type(backends) is not dict and not isinstance(backends, Mapping):
            backends = {}
        if problems:
            yield PodFragment(
                tenant_id if isinstance(tenant_id, str) else repr(tenant_id),
                pod_id if isinstance(pod_id, str) else repr(pod_id),
                (),
                tuple(problems),
            )
            continue
        routed: list[StanzaRoutes] = []

        tenant_part = escaped_tenants.get(tenant_id)
        if tenant_part is None:
            tenant_part = escaped_tenants[tenant_id] = _escape(tenant_id)

        for key, raw in stanzas.items():
            if not isinstance(key, str) or not _KEY_RE.match(key):
                problems.append(f"networking: bad stanza key {_safe_repr(key)}")
                continue
            stanza_problems: list[str] = []
            try:
                stanza = _validate_stanza(raw, stanza_problems)
            except Exception as exc:  # odd Mapping/str subclasses must not stop the render
                stanza_problems.append(f"could not be validated ({type(exc).__name__})")
                stanza = None
            if stanza is None:
                problems.extend(f"networking.{key}: {p}" for p in stanza_problems)
                continue
            if stanza.protocol == "local_only":
                continue
            backend = backends.get(key)
            if backend is None or backend == "":
                continue  # not running: no route, not an error
            host = hostnames.get(key)
            if not valid_hostname(host):
                problems.append(f"networking.{key}: no valid public hostname: {_safe_repr(host)}")
                continue
            try:
                backend = _backend(backend)
            except _Invalid as exc:
                problems.append(f"networking.{key}: {exc}")
                continue
            http_routers: dict[str, Any] = {}
            http_services: dict[str, Any] = {}
            http_middlewares: dict[str, Any] = {}
            tcp_routers: dict[str, Any] = {}
            tcp_services: dict[str, Any] = {}
            tcp_middlewares: dict[str, Any] = {}
            uses_postgres = uses_redirect = uses_api = uses_strip = uses_cookie_filter = False

            name = f"{tenant_part}-{pod_id}-{key}"
            if stanza.protocol == "http":
                middlewares: list[str] = []
                if stanza.ip_allow_list:
                    mw = f"{name}-ipallow"
                    http_middlewares[mw] = {"ipAllowList": {"sourceRange": stanza.ip_allow_list}}
                    middlewares.append(mw)
                if stanza.cors_origins:
                    cors: dict[str, Any] = {"accessControlAllowOriginList": stanza.cors_origins}
                    if stanza.cors_methods:
                        cors["accessControlAllowMethods"] = stanza.cors_methods
                    if stanza.cors_headers:
                        cors["accessControlAllowHeaders"] = stanza.cors_headers
                    if stanza.cors_credentials:
                        cors["accessControlAllowCredentials"] = True
                    cors["accessControlMaxAge"] = stanza.cors_max_age
                    cors["addVaryHeader"] = True
                    mw = f"{name}-cors"
                    http_middlewares[mw] = {"headers": cors}
                    middlewares.append(mw)
                uses_strip = True
                strip = STRIP_TOKEN_MIDDLEWARE
                cookie_chain: list[str] | None = None
                if stanza.tapis_auth:
                    address = auth_template.format(
                        pod_id_net=pod_id_net(pod_id, key), pod_id=pod_id, key=key, tenant_id=tenant_id
                    )
                    if auth_key is not None:
                        signature = hmac.new(
                            auth_key, f"{tenant_id}/{pod_id_net(pod_id, key)}".encode(), hashlib.sha256
                        ).hexdigest()[:32]
                        address += ("&" if "?" in address else "?") + "sig=" + signature
                    auth: dict[str, Any] = {
                        "address": address,
                        "trustForwardHeader": True,
                        # Cookie: the visitor's cookies minus OpenPods' (the answer replaces the header).
                        "authResponseHeaders": [*stanza.auth_headers, USERNAME_HEADER, "Cookie"],
                        "maxResponseBodySize": auth_body,
                        # keep a relative Location (login redirect) as is; Traefik would otherwise resolve
                        # it against the (internal) auth address
                        "preserveLocationHeader": True,
                    }
                    if auth_tls is not None:
                        auth["tls"] = dict(auth_tls)
                    mw = f"{name}-auth"
                    http_middlewares[mw] = {"forwardAuth": auth}
                    middlewares.append(mw)
                    if settings.api_url:
                        uses_api = True
                        callback = f"/v3/pods/{pod_id_net(pod_id, key)}/auth/callback"
                        http_routers[f"{name}-authcb"] = {
                            "entryPoints": [https_ep],
                            "rule": f"Host(`{host}`) && Path(`{callback}`)",
                            "service": API_SERVICE,
                            "tls": dict(tls_plain),
                        }
                elif cookie_filter is not None:
                    uses_cookie_filter = True
                    cookie_chain = [*middlewares, COOKIE_FILTER_MIDDLEWARE, strip]
                middlewares.append(strip)
                rule = f"Host(`{host}`)"
                cookie_rule = f"{rule} && HeaderRegexp(`Cookie`, `{OPENPODS_COOKIE_REGEXP}`)"
                router: dict[str, Any] = {
                    "entryPoints": [https_ep],
                    "rule": rule,
                    "service": name,
                    "tls": dict(tls_plain),
                    "middlewares": middlewares,
                }
                http_routers[name] = router
                if cookie_chain is not None:
                    http_routers[f"{name}-cookies"] = {
                        "entryPoints": [https_ep],
                        "rule": cookie_rule,
                        "service": name,
                        "tls": dict(tls_plain),
                        "middlewares": cookie_chain,
                    }
                if http_ep is not None:
                    if settings.redirect_http_to_https:
                        uses_redirect = True
                        http_routers[f"{name}-web"] = {
                            "entryPoints": [http_ep],
                            "rule": rule,
                            "service": name,
                            "middlewares": [REDIRECT_MIDDLEWARE],
                        }
                    else:
                        http_routers[f"{name}-web"] = {
                            "entryPoints": [http_ep],
                            "rule": rule,
                            "service": name,
                            "middlewares": list(middlewares),
                        }
                        if cookie_chain is not None:
                            http_routers[f"{name}-webcookies"] = {
                                "entryPoints": [http_ep],
                                "rule": cookie_rule,
                                "service": name,
                                "middlewares": list(cookie_chain),
                            }
                http_services[name] = {"loadBalancer": {"servers": [{"url": f"http://{backend}"}]}}
            else:  # tcp, postgres
                tls: dict[str, Any] = dict(tls_plain)
                if stanza.protocol == "postgres":
                    uses_postgres = True
                    tls["options"] = POSTGRES_TLS_OPTION
                tcp_router: dict[str, Any] = {
                    "entryPoints": [https_ep],
                    "rule": f"HostSNI(`{host}`)",
                    "service": name,
                    "tls": tls,
                }
                if stanza.ip_allow_list:
                    mw = f"{name}-ipallow"
                    tcp_middlewares[mw] = {"ipAllowList": {"sourceRange": stanza.ip_allow_list}}
                    tcp_router["middlewares"] = [mw]
                tcp_routers[name] = tcp_router
                tcp_services[name] = {"loadBalancer": {"servers": [{"address": backend}]}}
            objects = {
                section: found
                for section, found in (
                    ("http.routers", http_routers),
                    ("http.services", http_services),
                    ("http.middlewares", http_middlewares),
                    ("tcp.routers", tcp_routers),
                    ("tcp.services", tcp_services),
                    ("tcp.middlewares", tcp_middlewares),
                )
                if found
            }
            needs = frozenset(
                need
                for need, used in (
                    (NEEDS_API, uses_api),
                    (NEEDS_REDIRECT, uses_redirect),
                    (NEEDS_POSTGRES, uses_postgres),
                    (NEEDS_STRIP, uses_strip),
                    (NEEDS_COOKIE_FILTER, uses_cookie_filter),
                )
                if used
            )
            routed.append(StanzaRoutes(key, host, objects, needs))

        yield PodFragment(tenant_id, pod_id, tuple(routed), tuple(problems))


def select_routes(fragments: Iterable[PodFragment]) -> Selection:
    """Put fragments together in order: a hostname is routed once, for the first stanza that claims it; a
    later claim is skipped and reported on its pod."""
    accepted: list[tuple[int, int]] = []
    errors: dict[tuple[str, str], list[str]] = {}
    host_owner: dict[str, tuple[str, str, str]] = {}
    needs: set[str] = set()
    for pod_index, fragment in enumerate(fragments):
        problems = list(fragment.problems)
        for stanza_index, stanza in enumerate(fragment.stanzas):
            owner = host_owner.get(stanza.host)
            if owner is not None:
                problems.append(
                    f"networking.{stanza.key}: hostname {stanza.host} is already routed for "
                    f"{owner[0]}/{owner[1]} stanza {owner[2]}"
                )
                continue
            host_owner[stanza.host] = (fragment.tenant_id, fragment.pod_id, stanza.key)
            accepted.append((pod_index, stanza_index))
            needs |= stanza.needs
        if problems:
            errors.setdefault((fragment.tenant_id, fragment.pod_id), []).extend(problems)
    return Selection(accepted, errors, frozenset(needs))


def shared_objects(needs: Iterable[str], settings: ProxyRenderSettings) -> dict[str, dict[str, Any]]:
    """The objects shared by many stanzas (the API service, the token-strip and cookie-filter middlewares, the
    HTTPS redirect, the PostgreSQL TLS option), by section, for the given needs."""
    needs = frozenset(needs)
    out: dict[str, dict[str, Any]] = {}
    if NEEDS_API in needs and settings.api_url:
        out["http.services"] = {API_SERVICE: {"loadBalancer": {"servers": [{"url": settings.api_url}]}}}
    middlewares: dict[str, Any] = {}
    if NEEDS_STRIP in needs:
        # Deletes the visitor's API token before the request reaches the pod (an empty value deletes).
        middlewares[STRIP_TOKEN_MIDDLEWARE] = {"headers": {"customRequestHeaders": {TOKEN_HEADER: ""}}}
    cookie_filter = settings.effective_cookie_filter_url
    if NEEDS_COOKIE_FILTER in needs and cookie_filter is not None:
        cookie_auth: dict[str, Any] = {
            "address": cookie_filter,
            "authResponseHeaders": ["Cookie"],
            "maxResponseBodySize": settings.forward_auth_max_response_body,
        }
        if settings.forward_auth_tls_ca:
            cookie_auth["tls"] = {"ca": settings.forward_auth_tls_ca}
        middlewares[COOKIE_FILTER_MIDDLEWARE] = {"forwardAuth": cookie_auth}
    if NEEDS_REDIRECT in needs:
        redirect: dict[str, Any] = {"scheme": "https", "permanent": True}
        if settings.https_redirect_port is not None and settings.https_redirect_port != 443:
            redirect["port"] = str(settings.https_redirect_port)
        middlewares[REDIRECT_MIDDLEWARE] = {"redirectScheme": redirect}
    if middlewares:
        out["http.middlewares"] = middlewares
    if NEEDS_POSTGRES in needs:
        out["tls.options"] = {
            POSTGRES_TLS_OPTION: {
                "minVersion": settings.min_tls_version,
                "alpnProtocols": list(settings.postgres_alpn_protocols),
            }
        }
    return out


def build_config(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The dynamic config from merged sections: ``http``/``tcp`` only when they have routers (with their
    services, and middlewares when any), ``tls`` when it has options; ``{}`` means "no routes"."""
    config: dict[str, Any] = {}
    for top in ("http", "tcp"):
        routers = sections.get(f"{top}.routers")
        if routers:
            part: dict[str, Any] = {"routers": routers, "services": sections.get(f"{top}.services") or {}}
            middlewares = sections.get(f"{top}.middlewares")
            if middlewares:
                part["middlewares"] = middlewares
            config[top] = part
    options = sections.get("tls.options")
    if options:
        config["tls"] = {"options": options}
    return config
