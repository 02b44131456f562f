"""Request dependencies: the app context, the caller's identity, and object-level authorization."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from openpods.api.envelope import Forbidden, NotFound, Unauthorized
from openpods.auth.revocation import is_revoked
from openpods.auth.tokens import AuthError, Identity
from openpods.context import AppContext
from openpods.domain.permissions import Level, effective_level
from openpods.store import repo
from openpods.store.db import transaction


async def get_ctx(request: Request) -> AppContext:
    # async: a plain attribute read must not cost a hop to the thread pool.
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def _verify(ctx: AppContext, token: str) -> Identity:
    def admin_lookup(tenant_id: str, username: str) -> bool:
        with ctx.sessions() as s:
            return repo.is_site_admin(s, tenant_id, username)

    try:
        identity = ctx.tokens.verify(token, admin_lookup=admin_lookup)
    except AuthError as exc:
        raise Unauthorized(str(exc)) from None
    with ctx.sessions() as s:
        if is_revoked(s, identity):
            raise Unauthorized("Token revoked (logout or password change); get a new token.")
    return identity


def identity_from_token(ctx: AppContext, token: str | None) -> Identity:
    """The caller of a token: verified (signature, expiry, tenant, site-admin flag) at most every
    ``token_cache_sec`` seconds per token; see :mod:`openpods.auth.token_cache`."""
    if not token:
        raise Unauthorized("No Tapis token provided in the X-Tapis-Token header.")
    return ctx.token_cache.lookup(token, lambda t: _verify(ctx, t))


async def get_identity(request: Request) -> Identity:
    """Once per request (FastAPI caches a dependency's value within a request; kept in ``request.state`` for
    code outside the dependency graph). A cached token answers on the event loop; a miss verifies in the thread
    pool, since the site-admin lookup reads the database."""
    cached = getattr(request.state, "identity", None)
    if cached is not None:
        return cached
    ctx: AppContext = request.app.state.ctx
    token = request.headers.get("X-Tapis-Token")
    identity = ctx.token_cache.get(token) if token else None
    if identity is None:
        identity = await run_in_threadpool(identity_from_token, ctx, token)
    request.state.identity = identity
    return identity


Caller = Annotated[Identity, Depends(get_identity)]


def require_site_admin(caller: Identity) -> None:
    if not caller.is_admin:
        raise Forbidden("Only site admins may do this.")


LABELS = {"pod": "Pod", "volume": "Volume", "snapshot": "Snapshot", "template": "Template"}


def _not_found(object_type: str, object_id: str) -> str:
    return f"{LABELS[object_type]} with identifier {object_type}_id: '{object_id}' not found"  # the original's


def check_level(s: Session, caller: Identity, object_type: str, object_id: str, needed: Level, *,
                exists: bool, allow_wildcard: bool = False) -> Level:
    """Raises 404 if the object does not exist in the caller's tenant or the caller has no permission at all
    (its existence is not revealed), 403 if the caller's level is below ``needed``."""
    if not exists:
        raise NotFound(_not_found(object_type, object_id))
    level = effective_level(repo.grants(s, object_type, caller.tenant_id, object_id), caller.username,
                            site_admin=caller.is_admin, allow_wildcard=allow_wildcard)
    return _require(object_type, object_id, level, needed)


def check_own_grant(caller: Identity, object_type: str, object_id: str, needed: Level, *, exists: bool,
                    grant: str | None) -> Level:
    """:func:`check_level` for a caller whose own grant (``grant``: a level or None) was read in the same query
    as the object. Same answers; only for object types without a wildcard user (everything but templates)."""
    if not exists:
        raise NotFound(_not_found(object_type, object_id))
    level = effective_level({caller.username: grant} if grant else {}, caller.username,
                            site_admin=caller.is_admin)
    return _require(object_type, object_id, level, needed)


def _require(object_type: str, object_id: str, level: Level, needed: Level) -> Level:
    if level == Level.NONE:
        raise NotFound(_not_found(object_type, object_id))
    if level < needed:
        raise Forbidden(
            f"Not authorized -- you do not have access to this endpoint. You have {level.name} on "
            f"{object_type} '{object_id}'; it needs {needed.name}."
        )
    return level


__all__ = ["Caller", "Ctx", "check_level", "check_own_grant", "get_ctx", "identity_from_token", "require_site_admin", "transaction"]
