"""Credentials of the browser login flow of tapis_auth pods, and the cookies that must never reach a pod.

- The **pod session cookie** (:data:`SESSION_COOKIE`) is a JWT signed by the embedded issuer, with its own
  issuer (:data:`SESSION_ISSUER`), audience ``<tenant>/<pod_id_net>`` and the pod's hostname, a short lifetime
  (``pod_session_ttl_sec``) and no Tapis claims: the API refuses it as ``X-Tapis-Token``, and every other pod
  refuses it (other audience and host). It is host-only and ``__Host-``-prefixed, so a sibling pod host cannot
  set it.
- The **login flow** (signed, 10 minutes) carries tenant, pod and return path from the forward-auth redirect to
  the login form, plus the hash of a random **state** that the forward-auth answer also stores in a cookie on
  the pod's host (:data:`STATE_COOKIE_PREFIX` + flow id). The **one-time code** (2 minutes) repeats that hash,
  and the callback accepts it only from the browser holding the matching state cookie (no login CSRF).
- :func:`filter_cookie_header` removes every OpenPods cookie (and the old ``X-Tapis-Token`` cookie, which held
  a full API token) from a ``Cookie`` header before the request goes on to the pod.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from typing import Any

import jwt

from openpods.auth.tokens import IAT_MS_CLAIM, AuthError, Identity, TokenService, _identity

SESSION_COOKIE = "__Host-openpods-session"
STATE_COOKIE_PREFIX = "__Host-openpods-state-"
LEGACY_COOKIE = "X-Tapis-Token"
SESSION_ISSUER = "openpods-pod-session"
FLOW_ISSUER = "openpods-login-flow"
CODE_ISSUER = "openpods-login"
FLOW_TTL_SEC = 600
CODE_TTL_SEC = 120
_FLOW_ID_RE = re.compile(r"[a-f0-9]{16}\Z")
#: Cookie names (lowercased) that belong to OpenPods: prefixes, and the legacy name.
_OURS = ("__host-openpods", "openpods")
# domain/traefik_config.py's OPENPODS_COOKIE_REGEXP routes requests with these cookies to the filter.


def is_openpods_cookie(name: str) -> bool:
    lower = name.strip().lower()
    return lower.startswith(_OURS) or lower == LEGACY_COOKIE.lower()


def filter_cookie_header(values: Iterable[str]) -> str:
    """The pairs of ``Cookie`` header values that are not OpenPods', joined with ``"; "`` (``""`` if none)."""
    kept = []
    for value in values:
        for part in value.split(";"):
            pair = part.strip()
            if pair and not is_openpods_cookie(pair.split("=", 1)[0]):
                kept.append(pair)
    return "; ".join(kept)


def audience(tenant_id: str, pod_id_net: str) -> str:
    return f"{tenant_id}/{pod_id_net}"


def state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def stanza_signature(secret: str, tenant_id: str, pod_id_net: str) -> str:
    """Proof that a forward-auth call comes from the proxy config (which only Traefik gets): without it the
    endpoint answers 404 for every pod alike, so it cannot be used to find out which pods exist."""
    key = hashlib.sha256(b"openpods-forward-auth:" + secret.encode()).digest()
    return hmac.new(key, audience(tenant_id, pod_id_net).encode(), hashlib.sha256).hexdigest()[:32]


def new_state() -> tuple[str, str]:
    """(flow id, state value) for a new login flow."""
    return secrets.token_hex(8), secrets.token_urlsafe(32)


def valid_flow_id(value: Any) -> bool:
    return isinstance(value, str) and _FLOW_ID_RE.match(value) is not None


def _decode(tokens: TokenService, token: str, issuer: str, aud: str | None, require: list[str]) -> dict[str, Any]:
    try:
        return jwt.decode(token, tokens.public_key_pem, algorithms=["RS256"], issuer=issuer, audience=aud,
                          options={"require": require, "verify_aud": aud is not None})
    except jwt.ExpiredSignatureError:
        raise AuthError("expired") from None
    except jwt.PyJWTError as exc:
        raise AuthError(str(exc)) from None


def issue_flow(tokens: TokenService, tenant_id: str, pod_id_net: str, return_to: str, flow_id: str,
               state: str) -> str:
    now = int(time.time())
    return tokens.sign({"iss": FLOW_ISSUER, "aud": "openpods-login-form", "tid": tenant_id, "pod": pod_id_net,
                        "ret": return_to, "fid": flow_id, "st": state_hash(state), "iat": now,
                        "exp": now + FLOW_TTL_SEC})


def verify_flow(tokens: TokenService, flow: str) -> dict[str, Any]:
    claims = _decode(tokens, flow, FLOW_ISSUER, "openpods-login-form", ["exp", "tid", "pod", "fid", "st"])
    if not all(isinstance(claims.get(k), str) for k in ("tid", "pod", "fid", "st", "ret")):
        raise AuthError("malformed login flow")
    return claims


def issue_code(tokens: TokenService, flow: dict[str, Any], username: str) -> str:
    now = int(time.time())
    return tokens.sign({"iss": CODE_ISSUER, "aud": audience(flow["tid"], flow["pod"]), "sub": username,
                        "tid": flow["tid"], "fid": flow["fid"], "st": flow["st"], "ret": flow["ret"],
                        "iat": now, "exp": now + CODE_TTL_SEC, "jti": uuid.uuid4().hex})


def verify_code(tokens: TokenService, code: str, tenant_id: str, pod_id_net: str) -> dict[str, Any]:
    claims = _decode(tokens, code, CODE_ISSUER, audience(tenant_id, pod_id_net), ["exp", "jti", "sub", "fid", "st"])
    if not valid_flow_id(claims.get("fid")) or not isinstance(claims.get("st"), str):
        raise AuthError("malformed login code")
    return claims


def issue_session(tokens: TokenService, tenant_id: str, pod_id_net: str, host: str, username: str,
                  ttl: int) -> str:
    now_ms = int(time.time() * 1000)
    return tokens.sign({"iss": SESSION_ISSUER, "aud": audience(tenant_id, pod_id_net), "host": host,
                        "sub": username, "tid": tenant_id, "iat": now_ms // 1000, IAT_MS_CLAIM: now_ms,
                        "exp": now_ms // 1000 + ttl, "jti": uuid.uuid4().hex})


def verify_session(tokens: TokenService, value: str, tenant_id: str, pod_id_net: str, host: str) -> Identity:
    """The user of a pod session cookie valid for exactly this pod stanza and host (raises AuthError)."""
    claims = _decode(tokens, value, SESSION_ISSUER, audience(tenant_id, pod_id_net), ["exp", "iat", "jti", "sub"])
    if claims.get("host") != host or claims.get("tid") != tenant_id or not isinstance(claims.get("sub"), str):
        raise AuthError("session cookie is for another pod")
    return _identity(tenant_id, claims["sub"], False, claims)
