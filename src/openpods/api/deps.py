"""Request dependencies: the app context, the caller's identity, and object-level authorization."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from openpods.api.envelope import Forbidden, NotFound, Unauthorized
from openpods.auth.revocation import is_revoked
from openpods.auth.tokens import AuthError, Identity
from openpods.context import AppContext
from openpods.domain.permissions import Level, effective_level
from openpods.store import repo
from openpods.store.db import transaction


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def identity_from_token(ctx: AppContext, token: str | None) -> Identity:
    if not token:
        raise Unauthorized("No Tapis token provided in the X-Tapis-Token header.")

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


def get_identity(request: Request) -> Identity:
    return identity_from_token(get_ctx(request), request.headers.get("X-Tapis-Token"))


Caller = Annotated[Identity, Depends(get_identity)]


def require_site_admin(caller: Identity) -> None:
    if not caller.is_admin:
        raise Forbidden("Only site admins may do this.")


LABELS = {"pod": "Pod", "volume": "Volume", "snapshot": "Snapshot", "template": "Template"}


def check_level(s: Session, caller: Identity, object_type: str, object_id: str, needed: Level, *,
                exists: bool, allow_wildcard: bool = False) -> Level:
    """Raises 404 if the object does not exist in the caller's tenant or the caller has no permission at all
    (its existence is not revealed), 403 if the caller's level is below ``needed``."""
    label = LABELS[object_type]
    not_found = f"{label} with identifier {object_type}_id: '{object_id}' not found"  # the original's text
    if not exists:
        raise NotFound(not_found)
    level = effective_level(repo.grants(s, object_type, caller.tenant_id, object_id), caller.username,
                            site_admin=caller.is_admin, allow_wildcard=allow_wildcard)
    if level == Level.NONE:
        raise NotFound(not_found)
    if level < needed:
        raise Forbidden(
            f"Not authorized -- you do not have access to this endpoint. You have {level.name} on "
            f"{object_type} '{object_id}'; it needs {needed.name}."
        )
    return level


__all__ = ["Caller", "Ctx", "check_level", "get_ctx", "identity_from_token", "require_site_admin", "transaction"]
