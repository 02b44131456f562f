"""The proxy's side of the API: Traefik's dynamic config, and tapis_auth (forward-auth + browser login flow).

Login flow for a browser without a token at ``https://<pod host>/x``:
1. Traefik's forwardAuth calls ``/v3/pods/<pod_id_net>/auth`` → 302 to the embedded authenticator's login page
   on the API (``/v3/oauth2/login?pod=…&tenant=…&return_to=…``).
2. The user signs in; the API redirects to ``https://<pod host>/v3/pods/<pod_id_net>/auth/callback?code=…`` — a
   path Traefik routes to the API on the pod's own host, so the cookie is set for that host.
3. The callback exchanges the one-time code (a 2-minute signed JWT bound to that stanza) for an access token,
   sets the ``X-Tapis-Token`` cookie (HttpOnly, Secure) and redirects to ``tapis_auth_return_path``.
An API client (no ``text/html`` in Accept) without a token gets 401 in the envelope, never a login page.
"""

from __future__ import annotations

import html
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import jwt
from fastapi import APIRouter, Form, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from openpods.api.context import AppContext
from openpods.api.deps import Caller, Ctx, identity_from_token, require_site_admin
from openpods.api.envelope import BadRequest, Forbidden, NotFound, Unauthorized, error_response
from openpods.auth.tokens import verify_password
from openpods.domain.pods import split_pod_id_net
from openpods.store import repo
from openpods.store.tables import Pod

router = APIRouter()
SECRET_HEADER = "X-OpenPods-Proxy-Secret"
COOKIE = "X-Tapis-Token"
CODE_TTL_SEC = 120
_used_codes: dict[str, float] = {}
_used_lock = threading.Lock()


def _config_response(ctx: AppContext, request: Request) -> Response:
    """The routes as the background route table last published them: no rendering, no database work on
    Traefik's poll (per-pod problems are reported when the table renders). A matching If-None-Match gets 304."""
    published = ctx.proxy_config.response()
    if published is None:  # Traefik keeps its last good config on an error
        return error_response(503, "The proxy routes are not rendered yet; try again shortly.")
    body, etag = published
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        gz = ctx.proxy_config.gzipped(etag)  # made in the background; until then the plain body
        if gz is not None:
            return Response(gz, media_type="application/json", headers=headers | {"Content-Encoding": "gzip"})
    return Response(body, media_type="application/json", headers=headers)


@router.get("/traefik-config", operation_id="traefik_config", summary="traefik_config")
def traefik_config(ctx: Ctx, request: Request) -> Response:
    """Traefik's HTTP provider endpoint (not enveloped), guarded by the shared secret header."""
    if request.headers.get(SECRET_HEADER) != ctx.proxy_secret:
        raise Unauthorized(f"The {SECRET_HEADER} header is missing or wrong.")
    return _config_response(ctx, request)


@router.get("/v3/pods/traefik-config", include_in_schema=False)
def traefik_config_admin(ctx: Ctx, caller: Caller, request: Request) -> Response:
    require_site_admin(caller)
    return _config_response(ctx, request)


def _stanza(ctx: AppContext, tenant_id: str, pod_id_net: str) -> dict[str, Any]:
    pod_id, key = split_pod_id_net(pod_id_net)
    with ctx.sessions() as s:
        pod = s.get(Pod, (tenant_id, pod_id))
    if pod is None:
        raise NotFound(f"Pod with identifier '{pod_id}' not found.")
    stanza = (pod.routes or {}).get(key) or (pod.networking or {}).get(key)
    if not isinstance(stanza, dict):
        raise NotFound(f"Pod '{pod_id}' has no networking stanza '{key}'.")
    return stanza


def _allowed(stanza: dict[str, Any], username: str) -> bool:
    allowed = [u.lower() for u in stanza.get("tapis_auth_allowed_users") or ["*"]]
    return "*" in allowed or username.lower() in allowed


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


@router.get("/v3/pods/{pod_id_net}/auth", operation_id="pod_auth", summary="pod_auth")
def pod_auth(ctx: Ctx, request: Request, pod_id_net: str, tenant: str = "") -> Response:
    """Traefik forwardAuth: 200 (+ headers for the pod), 401 (API client), 302 (browser login), 403."""
    tenant_id = tenant or ctx.settings.default_tenant
    stanza = _stanza(ctx, tenant_id, pod_id_net)
    if not stanza.get("tapis_auth"):
        raise Forbidden("tapis_auth is not enabled for this networking stanza.")
    token = request.headers.get("X-Tapis-Token") or request.cookies.get(COOKIE)
    if not token:
        if _wants_html(request):
            return RedirectResponse(_login_url(ctx, request, tenant_id, pod_id_net), status_code=302)
        raise Unauthorized("This pod requires a Tapis token: send X-Tapis-Token.")
    try:
        caller = identity_from_token(ctx, token)
    except Unauthorized:
        if _wants_html(request):
            return RedirectResponse(_login_url(ctx, request, tenant_id, pod_id_net), status_code=302)
        raise
    if caller.tenant_id != tenant_id:
        raise Forbidden("The token belongs to another tenant.")
    if not _allowed(stanza, caller.username):
        return error_response(403, f"User '{caller.username}' is not allowed to use this pod.")
    values = {"<<tapisusername>>": caller.username, "<<tapistenantid>>": tenant_id,
              "<<tapissiteid>>": ctx.settings.site_id}
    headers = {"X-Tapis-Username": caller.username}
    for name, value in (stanza.get("tapis_auth_response_headers") or {}).items():
        for placeholder, real in values.items():
            value = value.replace(placeholder, real)
        headers[name] = value
    return Response(status_code=200, headers=headers)


def _login_url(ctx: AppContext, request: Request, tenant_id: str, pod_id_net: str) -> str:
    tenant = ctx.settings.tenant(tenant_id)
    base = ctx.settings.tenant_base_url(tenant) if tenant else ctx.settings.effective_base_url
    return_to = request.headers.get("X-Forwarded-Uri", "/")
    query = urlencode({"tenant": tenant_id, "pod": pod_id_net, "return_to": return_to})
    return f"{base}/v3/oauth2/login?{query}"


def _callback_url(ctx: AppContext, stanza: dict[str, Any], pod_id_net: str) -> str:
    host = stanza.get("url", "")
    port = ctx.settings.proxy_public_https_port or ctx.settings.proxy_https_port
    suffix = "" if port == 443 else f":{port}"
    return f"https://{host}{suffix}/v3/pods/{pod_id_net}/auth/callback"


_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Sign in — OpenPods</title>
<style>body{{font-family:sans-serif;max-width:24rem;margin:4rem auto}}input{{display:block;width:100%;
margin:.4rem 0 1rem;padding:.4rem}}.err{{color:#b00}}</style></head><body>
<h2>Sign in to {pod}</h2><p>Tenant <b>{tenant}</b></p>{error}
<form method="post"><input type="hidden" name="tenant" value="{tenant}"><input type="hidden" name="pod"
value="{pod}"><input type="hidden" name="return_to" value="{return_to}">
<label>Username<input name="username" autocomplete="username" required></label>
<label>Password<input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></body></html>"""


def _login_page(tenant: str, pod: str, return_to: str, error: str = "", status: int = 200) -> HTMLResponse:
    body = _LOGIN_PAGE.format(tenant=html.escape(tenant), pod=html.escape(pod), return_to=html.escape(return_to),
                              error=f'<p class="err">{html.escape(error)}</p>' if error else "")
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store",
                                                             "X-Frame-Options": "DENY"})


def _safe_return(path: str) -> str:
    # Only a path on the pod's own host: never an absolute URL (no open redirect).
    if not path.startswith("/") or path.startswith("//") or "\\" in path or any(ord(c) < 32 for c in path):
        return "/"
    return path


@router.get("/v3/oauth2/login", include_in_schema=False)
def login_page(ctx: Ctx, tenant: str, pod: str, return_to: str = "/") -> HTMLResponse:
    _stanza(ctx, tenant, pod)
    return _login_page(tenant, pod, _safe_return(return_to))


@router.post("/v3/oauth2/login", include_in_schema=False)
def login_submit(ctx: Ctx, tenant: str = Form(), pod: str = Form(), return_to: str = Form("/"),
                 username: str = Form(), password: str = Form()) -> Response:
    stanza = _stanza(ctx, tenant, pod)
    if not stanza.get("tapis_auth"):
        raise Forbidden("tapis_auth is not enabled for this networking stanza.")
    with ctx.sessions() as s:
        user = repo.get_user(s, tenant, username)
        good = verify_password(user.password_hash if user else None, password)
    if not good:
        return _login_page(tenant, pod, _safe_return(return_to), "Invalid username or password.", 401)
    if not _allowed(stanza, username):
        return _login_page(tenant, pod, _safe_return(return_to), f"User '{username}' may not use this pod.", 403)
    now = int(time.time())
    code = ctx.tokens.sign({"iss": "openpods-login", "aud": f"{tenant}/{pod}", "sub": username, "iat": now,
                       "exp": now + CODE_TTL_SEC, "jti": uuid.uuid4().hex,
                       "ret": _safe_return(return_to)})
    target = _callback_url(ctx, stanza, pod) + "?" + urlencode({"code": code, "tenant": tenant})
    return RedirectResponse(target, status_code=303)


@router.get("/v3/pods/{pod_id_net}/auth/callback", operation_id="pod_auth_callback", summary="pod_auth_callback")
def pod_auth_callback(ctx: Ctx, request: Request, pod_id_net: str, code: str = "", tenant: str = "") -> Response:
    tenant_id = tenant or ctx.settings.default_tenant
    stanza = _stanza(ctx, tenant_id, pod_id_net)
    if not code:
        raise BadRequest(["code: the one-time login code is required."])
    try:
        claims = jwt.decode(code, ctx.tokens.public_key_pem, algorithms=["RS256"], audience=f"{tenant_id}/{pod_id_net}",
                            issuer="openpods-login", options={"require": ["exp", "jti", "sub"]})
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"Invalid login code: {exc}") from None
    with _used_lock:
        now = time.time()
        for jti, expiry in list(_used_codes.items()):
            if expiry < now:
                del _used_codes[jti]
        if claims["jti"] in _used_codes:
            raise Unauthorized("This login code was already used.")
        _used_codes[claims["jti"]] = claims["exp"]
    if not _allowed(stanza, claims["sub"]):
        raise Forbidden(f"User '{claims['sub']}' is not allowed to use this pod.")
    access = ctx.tokens.issue(tenant_id, claims["sub"])
    # The stanza's configured return path wins; otherwise back to where the browser first wanted to go.
    configured = stanza.get("tapis_auth_return_path") or "/"
    target = _safe_return(configured if configured != "/" else claims.get("ret", "/"))
    response = RedirectResponse(target, status_code=302)
    # Host-only cookie (no Domain): it is sent to this pod's host alone.
    response.set_cookie(COOKIE, access["access_token"], max_age=access["expires_in"], httponly=True, secure=True,
                        samesite="lax", path="/")
    return response

