"""The proxy's side of the API: Traefik's dynamic config, and tapis_auth (forward-auth + browser login flow).

Login flow for a browser without a credential at ``https://<pod host>/x`` (credentials in
:mod:`openpods.auth.pod_access`):
1. Traefik's forwardAuth calls ``/v3/pods/<pod_id_net>/auth?tenant=…&sig=…`` (``sig`` proves the call comes
   from the proxy config; without it every pod answers the same 404) → 302 to the login page on the API
   (``/v3/oauth2/login?flow=<signed flow>``), and a state cookie for that flow on the pod's host.
2. The user signs in (throttled per user and address); the API answers a page that POSTs the one-time code to
   ``https://<pod host>/v3/pods/<pod_id_net>/auth/callback`` — a path Traefik routes to the API on the pod's
   own host. The code travels in the body, never in a URL (so never in an access log).
3. The callback accepts the code once, only together with the matching state cookie (login CSRF), sets the
   pod session cookie (HttpOnly, Secure, host-only, valid for this pod stanza only) and redirects to
   ``tapis_auth_return_path``.
An API client (no ``text/html`` in Accept) without a token gets 401 in the envelope, never a login page.
Neither ``X-Tapis-Token`` nor any OpenPods cookie reaches the pod: forward-auth answers the visitor's Cookie
header without them (Traefik replaces the header with that answer), and the rendered config deletes
``X-Tapis-Token`` after forward-auth (see ``domain/traefik_config.py``).
"""

from __future__ import annotations

import hmac
import html
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Form, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from openpods.api.deps import Caller, Ctx, identity_from_token, require_site_admin
from openpods.api.envelope import BadRequest, Forbidden, NotFound, Unauthorized, error_response
from openpods.api.routing import api_router
from openpods.auth import pod_access as pa
from openpods.auth.revocation import consume_once, is_revoked
from openpods.auth.throttle import LoginThrottler, Throttled, ThrottlePolicy
from openpods.auth.tokens import AuthError, Identity, verify_password
from openpods.context import AppContext
from openpods.domain.pods import split_pod_id_net
from openpods.store import repo
from openpods.store.db import transaction
from openpods.store.tables import Pod

router = api_router()
SECRET_HEADER = "X-OpenPods-Proxy-Secret"
MAX_WAIT_SEC = 300.0
COOKIE = pa.SESSION_COOKIE


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
async def traefik_config(
    ctx: Ctx, request: Request,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SEC, description="Long-poll: with If-None-Match, hold the "
                                 "request up to this many seconds until the config changes (then 200 with the "
                                 "new one), else 304.")] = 0,
) -> Response:
    """Traefik's HTTP provider endpoint (not enveloped), guarded by the shared secret header. ``openpods
    routes-sync`` long-polls it (``wait``) to hand each change to Traefik's file provider at once."""
    if not hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(), ctx.proxy_secret.encode()):
        raise Unauthorized(f"The {SECRET_HEADER} header is missing or wrong.")
    etag = request.headers.get("if-none-match")
    if wait and etag and ctx.proxy_config.running:
        await ctx.proxy_config.wait_for_change(etag, wait)
    # Ready (published) after the first sync; before it, response() may block for a while: not on the loop.
    return await run_in_threadpool(_config_response, ctx, request)


@router.get("/v3/pods/traefik-config", include_in_schema=False)
def traefik_config_admin(ctx: Ctx, caller: Caller, request: Request) -> Response:
    require_site_admin(caller)
    return _config_response(ctx, request)


def _not_found(pod_id_net: str) -> NotFound:
    return NotFound(f"Pod with identifier pod_id: '{split_pod_id_net(pod_id_net)[0]}' not found")


def _stanza(ctx: AppContext, tenant_id: str, pod_id_net: str) -> dict[str, Any]:
    pod_id, key = split_pod_id_net(pod_id_net)
    with ctx.sessions() as s:
        pod = s.get(Pod, (tenant_id, pod_id))
    stanza = None if pod is None else (pod.routes or {}).get(key) or (pod.networking or {}).get(key)
    if not isinstance(stanza, dict):
        raise _not_found(pod_id_net)
    return stanza


def _allowed(stanza: dict[str, Any], username: str) -> bool:
    allowed = [u.lower() for u in stanza.get("tapis_auth_allowed_users") or ["*"]]
    return "*" in allowed or username.lower() in allowed


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _filtered_cookies(request: Request) -> dict[str, str]:
    """The visitor's Cookie header without OpenPods' cookies, as a forward-auth answer header: Traefik copies
    it over the request's (``authResponseHeaders``), and deletes the request's when the answer has none."""
    kept = pa.filter_cookie_header(request.headers.getlist("cookie"))
    return {"Cookie": kept} if kept else {}


@router.get("/traefik-cookie-filter", include_in_schema=False)
def cookie_filter(request: Request) -> Response:
    """forwardAuth of stanzas without tapis_auth, used only for requests that carry an OpenPods cookie:
    always 200, with the Cookie header minus OpenPods' cookies."""
    return Response(status_code=200, headers=_filtered_cookies(request))


def _pod_identity(ctx: AppContext, request: Request, tenant_id: str, pod_id_net: str,
                  host: str) -> Identity | None:
    """The visitor: an API token in X-Tapis-Token, else the pod session cookie of this stanza; None if
    neither is there. Raises Unauthorized for a bad, expired or revoked one."""
    token = request.headers.get("X-Tapis-Token")
    if token:
        return identity_from_token(ctx, token)
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    try:
        identity = pa.verify_session(ctx.tokens, cookie, tenant_id, pod_id_net, host)
    except AuthError as exc:
        raise Unauthorized(f"Invalid pod session cookie: {exc}") from None
    with ctx.sessions() as s:
        if is_revoked(s, identity):
            raise Unauthorized("The pod session was revoked; sign in again.")
    return identity


@router.get("/v3/pods/{pod_id_net}/auth", operation_id="pod_auth", summary="pod_auth")
def pod_auth(ctx: Ctx, request: Request, pod_id_net: str, tenant: str = "", sig: str = "") -> Response:
    """Traefik forwardAuth: 200 (+ headers for the pod), 401 (API client), 302 (browser login), 403."""
    tenant_id = tenant or ctx.settings.default_tenant
    if not hmac.compare_digest(sig.encode(), pa.stanza_signature(ctx.proxy_secret, tenant_id, pod_id_net).encode()):
        # Not the proxy: the same answer for every pod, existing or not.
        raise _not_found(pod_id_net)
    stanza = _stanza(ctx, tenant_id, pod_id_net)
    if not stanza.get("tapis_auth"):
        raise Forbidden("tapis_auth is not enabled for this networking stanza.")
    host = str(stanza.get("url", ""))
    try:
        caller = _pod_identity(ctx, request, tenant_id, pod_id_net, host)
    except Unauthorized:
        if _wants_html(request):
            return _start_login(ctx, request, tenant_id, pod_id_net)
        raise
    if caller is None:
        if _wants_html(request):
            return _start_login(ctx, request, tenant_id, pod_id_net)
        raise Unauthorized("This pod requires a Tapis token: send X-Tapis-Token.")
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
    headers.update(_filtered_cookies(request))
    return Response(status_code=200, headers=headers)


def _start_login(ctx: AppContext, request: Request, tenant_id: str, pod_id_net: str) -> Response:
    """302 to the login page, with a fresh state cookie for this flow on the pod's host (the forward-auth
    answer's Set-Cookie reaches the browser through Traefik)."""
    tenant = ctx.settings.tenant(tenant_id)
    base = ctx.settings.tenant_base_url(tenant) if tenant else ctx.settings.effective_base_url
    return_to = _safe_return(request.headers.get("X-Forwarded-Uri", "/"))
    flow_id, state = pa.new_state()
    flow = pa.issue_flow(ctx.tokens, tenant_id, pod_id_net, return_to, flow_id, state)
    response = RedirectResponse(f"{base}/v3/oauth2/login?{urlencode({'flow': flow})}", status_code=302)
    # SameSite=None: the code arrives by a cross-site POST from the login page, which must carry it.
    response.set_cookie(pa.STATE_COOKIE_PREFIX + flow_id, state, max_age=pa.FLOW_TTL_SEC, path="/",
                        secure=True, httponly=True, samesite="none")
    response.headers["Cache-Control"] = "no-store"
    return response


def _callback_url(ctx: AppContext, stanza: dict[str, Any], pod_id_net: str) -> str:
    host = stanza.get("url", "")
    port = ctx.settings.proxy_public_https_port or ctx.settings.proxy_https_port
    suffix = "" if port == 443 else f":{port}"
    return f"https://{host}{suffix}/v3/pods/{pod_id_net}/auth/callback"


_HTML_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
_STYLE = """<style>body{font-family:sans-serif;max-width:24rem;margin:4rem auto}input{display:block;width:100%;
margin:.4rem 0 1rem;padding:.4rem}.err{color:#b00}</style>"""

_LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Sign in — OpenPods</title>{style}</head>
<body><h2>Sign in to {pod}</h2><p>Tenant <b>{tenant}</b></p>{error}
<form method="post"><input type="hidden" name="flow" value="{flow}">
<label>Username<input name="username" autocomplete="username" required></label>
<label>Password<input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></body></html>"""

# The one-time code goes to the pod's host in a POST body (form_post), never in a URL.
_CODE_POST_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Signing in — OpenPods</title></head>
<body onload="document.forms[0].submit()"><form method="post" action="{action}">
<input type="hidden" name="code" value="{code}"><input type="hidden" name="tenant" value="{tenant}">
<noscript><button type="submit">Continue to {pod}</button></noscript></form></body></html>"""

_MESSAGE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>OpenPods</title>{style}</head>
<body><p class="err">{message}</p></body></html>"""


def _message_page(message: str, status: int, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(_MESSAGE_PAGE.format(style=_STYLE, message=html.escape(message)), status_code=status,
                        headers={**_HTML_HEADERS, **(headers or {})})


def _login_page(flow: str, claims: dict[str, Any], error: str = "", status: int = 200,
                headers: dict[str, str] | None = None) -> HTMLResponse:
    body = _LOGIN_PAGE.format(style=_STYLE, tenant=html.escape(claims["tid"]), pod=html.escape(claims["pod"]),
                              flow=html.escape(flow),
                              error=f'<p class="err">{html.escape(error)}</p>' if error else "")
    return HTMLResponse(body, status_code=status, headers={**_HTML_HEADERS, **(headers or {})})


def _safe_return(path: str) -> str:
    # Only a path on the pod's own host: never an absolute URL (no open redirect).
    if not path.startswith("/") or path.startswith("//") or "\\" in path or any(ord(c) < 32 for c in path):
        return "/"
    return path


_BAD_FLOW = "This sign-in link is invalid or has expired; open the pod's URL again."


def _flow_claims(ctx: AppContext, flow: str) -> dict[str, Any] | None:
    try:
        return pa.verify_flow(ctx.tokens, flow)
    except AuthError:
        return None


@router.get("/v3/oauth2/login", include_in_schema=False)
def login_page(ctx: Ctx, flow: str = "") -> HTMLResponse:
    # Only a flow signed by forward-auth opens the form: the page reveals nothing about which pods exist.
    claims = _flow_claims(ctx, flow)
    if claims is None:
        return _message_page(_BAD_FLOW, 400)
    return _login_page(flow, claims)


def throttler(ctx: AppContext) -> LoginThrottler:
    return LoginThrottler(ctx.sessions, ThrottlePolicy.from_settings(ctx.settings))


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/v3/oauth2/login", include_in_schema=False)
def login_submit(ctx: Ctx, request: Request, flow: str = Form(""), username: str = Form(),
                 password: str = Form()) -> Response:
    claims = _flow_claims(ctx, flow)
    if claims is None:
        return _message_page(_BAD_FLOW, 400)
    tenant, pod = claims["tid"], claims["pod"]
    guard = throttler(ctx)
    try:
        guard.attempt(tenant, username, client_address(request))
    except Throttled as exc:
        return _login_page(flow, claims, str(exc), 429, {"Retry-After": str(exc.retry_after)})
    stanza = _stanza(ctx, tenant, pod)
    if not stanza.get("tapis_auth"):
        raise Forbidden("tapis_auth is not enabled for this networking stanza.")
    with ctx.sessions() as s:
        user = repo.get_user(s, tenant, username)
        good = verify_password(user.password_hash if user else None, password)
    if not good:
        return _login_page(flow, claims, "Invalid username or password.", 401)
    guard.succeeded(tenant, username, client_address(request))
    if not _allowed(stanza, username):
        return _login_page(flow, claims, f"User '{username}' may not use this pod.", 403)
    code = pa.issue_code(ctx.tokens, claims, username)
    page = _CODE_POST_PAGE.format(action=html.escape(_callback_url(ctx, stanza, pod)), code=html.escape(code),
                                  tenant=html.escape(tenant), pod=html.escape(pod))
    return HTMLResponse(page, headers=_HTML_HEADERS)


@router.get("/v3/pods/{pod_id_net}/auth/callback", operation_id="pod_auth_callback", summary="pod_auth_callback")
def pod_auth_callback_get(pod_id_net: str) -> Response:
    """The spec's GET: OpenPods never takes a one-time code from a URL (URLs end up in access logs)."""
    raise BadRequest(["code: send the one-time login code by POST (form field 'code'), never in the URL."])


@router.post("/v3/pods/{pod_id_net}/auth/callback", include_in_schema=False)
def pod_auth_callback(ctx: Ctx, request: Request, pod_id_net: str, code: str = Form(""),
                      tenant: str = Form("")) -> Response:
    tenant_id = tenant or ctx.settings.default_tenant
    if not code:
        raise BadRequest(["code: the one-time login code is required."])
    try:
        claims = pa.verify_code(ctx.tokens, code, tenant_id, pod_id_net)
    except AuthError as exc:
        raise Unauthorized(f"Invalid login code: {exc}") from None
    state_cookie = pa.STATE_COOKIE_PREFIX + claims["fid"]
    state = request.cookies.get(state_cookie, "")
    if not state or not hmac.compare_digest(pa.state_hash(state), claims["st"]):
        # The code was not obtained by a login this browser started (login CSRF), or the state expired.
        raise Unauthorized("This login was not started in this browser (or took too long); open the pod's URL "
                           "again.")
    with transaction(ctx.sessions) as s:
        fresh = consume_once(s, claims["jti"], claims["exp"])
    if not fresh:
        raise Unauthorized("This login code was already used.")
    stanza = _stanza(ctx, tenant_id, pod_id_net)
    if not _allowed(stanza, claims["sub"]):
        raise Forbidden(f"User '{claims['sub']}' is not allowed to use this pod.")
    ttl = ctx.settings.pod_session_ttl_sec
    session = pa.issue_session(ctx.tokens, tenant_id, pod_id_net, str(stanza.get("url", "")), claims["sub"], ttl)
    # The stanza's configured return path wins; otherwise back to where the browser first wanted to go.
    configured = stanza.get("tapis_auth_return_path") or "/"
    target = _safe_return(configured if configured != "/" else claims.get("ret", "/"))
    response = RedirectResponse(target, status_code=303)
    # Host-only (no Domain) and __Host- prefixed: sent to this pod's host alone, and no sibling host can set it.
    response.set_cookie(COOKIE, session, max_age=ttl, httponly=True, secure=True, samesite="lax", path="/")
    response.delete_cookie(state_cookie, path="/", secure=True, httponly=True, samesite="none")
    response.headers["Cache-Control"] = "no-store"
    return response
