"""The embedded authenticator and tenants service, as far as tapipy needs them (not part of the pods spec)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse

from openpods.api.deps import Caller, Ctx
from openpods.api.envelope import BadRequest, NotFound, TapisError, Unauthorized, ok
from openpods.api.routing import api_router
from openpods.auth.revocation import revoke_token, revoke_user_tokens
from openpods.auth.throttle import LoginThrottler, Throttled, ThrottlePolicy
from openpods.auth.tokens import hash_password, verify_password
from openpods.config import TenantSettings
from openpods.context import AppContext
from openpods.domain.models import TokenRequest
from openpods.store import repo
from openpods.store.db import transaction

router = api_router(prefix="/v3", include_in_schema=False)


def resolve_tenant(ctx: AppContext, request: Request, explicit: str | None = None) -> TenantSettings:
    """X-Tapis-Tenant header, then an explicit tenant_id, then the tenant whose base_url host the request was
    sent to, then the default tenant."""
    wanted = request.headers.get("X-Tapis-Tenant") or explicit
    if wanted:
        tenant = ctx.settings.tenant(wanted)
        if tenant is None:
            raise BadRequest([f"tenant_id: unknown tenant {wanted!r}."])
        return tenant
    host = request.headers.get("host", "")
    for tenant in ctx.settings.all_tenants():
        if tenant.base_url and urlsplit(tenant.base_url).netloc == host:
            return tenant
    return ctx.settings.all_tenants()[0]


def check_password(ctx: AppContext, request: Request, tenant_id: str, username: str, password: str) -> None:
    """Verify a password with throttling (429 + Retry-After while delayed; 401 when wrong)."""
    guard = LoginThrottler(ctx.sessions, ThrottlePolicy.from_settings(ctx.settings))
    address = request.client.host if request.client else None
    try:
        guard.attempt(tenant_id, username, address)
    except Throttled as exc:
        raise TapisError(str(exc), 429, headers={"Retry-After": str(exc.retry_after)}) from None
    with transaction(ctx.sessions) as s:
        user = repo.get_user(s, tenant_id, username)
        good = verify_password(user.password_hash if user else None, password)
    if not good:
        raise Unauthorized("Invalid username/password combination.")
    guard.succeeded(tenant_id, username, address)


@router.post("/oauth2/tokens")
def create_token(ctx: Ctx, request: Request, body: TokenRequest) -> JSONResponse:
    tenant = resolve_tenant(ctx, request, body.tenant_id)
    check_password(ctx, request, tenant.tenant_id, body.username, body.password)
    access = ctx.tokens.issue(tenant.tenant_id, body.username)
    return ok({"access_token": access}, "Token created successfully.", status_code=201)


@router.post("/oauth2/logout")
def logout(ctx: Ctx, caller: Caller, all_tokens: Annotated[bool, Query(alias="all")] = False) -> JSONResponse:
    """Revoke the presented token; with ``?all=true`` every token and pod session of the caller issued so far."""
    with transaction(ctx.sessions) as s:
        if all_tokens:
            revoke_user_tokens(s, caller.tenant_id, caller.username)
        elif caller.jti:
            revoke_token(s, caller.jti, caller.expires_at)
        else:
            raise BadRequest(["all: this token has no id (jti) to revoke alone; use ?all=true."])
    # This process forgets the user's verified tokens now; other processes within token_cache_sec.
    ctx.token_cache.forget(caller.tenant_id, caller.username)
    return ok(None, "All tokens of the user revoked." if all_tokens else "Token revoked.")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    old_password: Annotated[str, Field(min_length=1, max_length=1024)]
    new_password: Annotated[str, Field(min_length=8, max_length=1024)]

    @field_validator("old_password", "new_password")
    @classmethod
    def _printable(cls, v: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must not contain control characters.")
        return v


@router.post("/oauth2/password")
def change_password(ctx: Ctx, request: Request, caller: Caller, body: PasswordChange) -> JSONResponse:
    """Change the caller's password (embedded authenticator); every earlier token and pod session stops
    working. Answer a fresh token."""
    with ctx.sessions() as s:
        if repo.get_user(s, caller.tenant_id, caller.username) is None:
            raise BadRequest(["This user is not managed by the embedded authenticator of this service."])
    check_password(ctx, request, caller.tenant_id, caller.username, body.old_password)
    with transaction(ctx.sessions) as s:
        user = repo.get_user(s, caller.tenant_id, caller.username)
        assert user is not None
        user.password_hash = hash_password(body.new_password)
        revoke_user_tokens(s, caller.tenant_id, caller.username)
    ctx.token_cache.forget(caller.tenant_id, caller.username)
    access = ctx.tokens.issue(caller.tenant_id, caller.username)
    return ok({"access_token": access}, "Password changed; all earlier tokens are revoked.")


@router.get("/oauth2/userinfo")
def userinfo(caller: Caller) -> JSONResponse:
    return ok({"username": caller.username, "tenant_id": caller.tenant_id, "is_admin": caller.is_admin})


def tenant_view(ctx: AppContext, tenant: TenantSettings) -> dict:
    is_default = tenant.tenant_id == ctx.settings.default_tenant
    base_url = tenant.base_url or (ctx.settings.effective_base_url if is_default else "")
    return {
        "tenant_id": tenant.tenant_id, "base_url": base_url, "site_id": ctx.settings.site_id,
        "public_key": ctx.tokens.public_key_pem, "token_service": f"{base_url}/v3/tokens",
        "security_kernel": "", "authenticator": f"{base_url}/v3/oauth2", "status": "active",
        "description": f"OpenPods tenant {tenant.tenant_id}", "admin_user": "admin",
        "token_gen_services": [], "is_owned_by_associate_site": False, "allowable_x_tenant_ids": [],
    }


@router.get("/tenants")
def list_tenants(ctx: Ctx) -> JSONResponse:
    return ok([tenant_view(ctx, t) for t in ctx.settings.all_tenants()])


@router.get("/tenants/{tenant_id}")
def get_tenant(ctx: Ctx, tenant_id: str) -> JSONResponse:
    tenant = ctx.settings.tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"Tenant '{tenant_id}' not found.")
    return ok(tenant_view(ctx, tenant))


@router.get("/sites")
def list_sites(ctx: Ctx) -> JSONResponse:
    base = ctx.settings.effective_base_url
    return ok([{
        "site_id": ctx.settings.site_id, "base_url": base, "primary": True, "services": ["pods"],
        "tenant_base_url_template": base, "site_admin_tenant_id": ctx.settings.default_tenant,
    }])
