"""The embedded authenticator and tenants service, as far as tapipy needs them (not part of the pods spec)."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from openpods.api.context import AppContext
from openpods.api.deps import Caller, Ctx
from openpods.api.envelope import BadRequest, NotFound, Unauthorized, ok
from openpods.auth.tokens import verify_password
from openpods.config import TenantSettings
from openpods.domain.models import TokenRequest
from openpods.store import repo
from openpods.store.db import transaction

router = APIRouter(prefix="/v3", include_in_schema=False)


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


@router.post("/oauth2/tokens")
def create_token(ctx: Ctx, request: Request, body: TokenRequest) -> JSONResponse:
    tenant = resolve_tenant(ctx, request, body.tenant_id)
    with transaction(ctx.sessions) as s:
        user = repo.get_user(s, tenant.tenant_id, body.username)
        good = verify_password(user.password_hash if user else None, body.password)
    if not good:
        raise Unauthorized("Invalid username/password combination.")
    access = ctx.tokens.issue(tenant.tenant_id, body.username)
    return ok({"access_token": access}, "Token created successfully.", status_code=201)


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
