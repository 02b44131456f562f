"""get / set / delete permissions, the same for pods, volumes, snapshots and templates."""

from __future__ import annotations

import functools
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse

from openpods.api.deps import LABELS, check_level
from openpods.api.envelope import BadRequest, Conflict, NotFound, ok
from openpods.auth.tokens import Identity
from openpods.context import AppContext
from openpods.domain.models import SetPermission
from openpods.domain.permissions import WILDCARD_USER, Level, render, would_leave_no_admin
from openpods.store import repo
from openpods.store.db import retry_on_stale_data, transaction

Exists = Callable[[Session], bool]


def get_permissions(ctx: AppContext, caller: Identity, object_type: str, object_id: str, exists: Exists, *,
                    allow_wildcard: bool = False) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        check_level(s, caller, object_type, object_id, Level.USER, exists=exists(s), allow_wildcard=allow_wildcard)
        grants = repo.grants(s, object_type, caller.tenant_id, object_id)
    return ok({"permissions": render(grants)}, f"{LABELS[object_type]} permissions retrieved successfully.")


# Two grants to one user at once: the loser of the insert race (IntegrityError), or of a concurrent change or
# removal of the row (StaleDataError), runs again on a fresh read.
@functools.partial(retry_on_stale_data, also=(IntegrityError,))
def set_permission(ctx: AppContext, caller: Identity, object_type: str, object_id: str, exists: Exists,
                   body: SetPermission, *, allow_wildcard: bool = False) -> JSONResponse:
    if body.user == WILDCARD_USER and (not allow_wildcard or body.level != "READ"):
        raise BadRequest(
            "user: '*' may only hold READ, and only on templates." if object_type != "template"
            else "user: '*' may only hold READ."
        )
    with transaction(ctx.sessions) as s:
        check_level(s, caller, object_type, object_id, Level.ADMIN, exists=exists(s), allow_wildcard=allow_wildcard)
        grants = repo.grants(s, object_type, caller.tenant_id, object_id)
        if would_leave_no_admin(grants, body.user, body.level):
            raise Conflict(f"Operation would result in {object_type} with no users in ADMIN role. Rolling back.")
        repo.set_grant(s, object_type, caller.tenant_id, object_id, body.user, body.level)
        if object_type == "pod":
            repo.add_action_log(s, "pod", caller.tenant_id, object_id, caller.username,
                                f"'{caller.username}' set permission {body.user}:{body.level}")
        grants[body.user] = body.level
    return ok({"permissions": render(grants)}, f"{LABELS[object_type]} permissions updated successfully.")


@retry_on_stale_data
def delete_permission(ctx: AppContext, caller: Identity, object_type: str, object_id: str, exists: Exists,
                      user: str, *, allow_wildcard: bool = False) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        check_level(s, caller, object_type, object_id, Level.ADMIN, exists=exists(s), allow_wildcard=allow_wildcard)
        grants = repo.grants(s, object_type, caller.tenant_id, object_id)
        if user not in grants:
            raise NotFound(f"Could not find permission for {object_type} with username {user} when deleting "
                           "permission")
        if would_leave_no_admin(grants, user, None):
            raise Conflict(f"Operation would result in {object_type} with no users in ADMIN role. Rolling back.")
        repo.delete_grant(s, object_type, caller.tenant_id, object_id, user)
        if object_type == "pod":
            repo.add_action_log(s, "pod", caller.tenant_id, object_id, caller.username,
                                f"'{caller.username}' deleted permission of {user}")
        grants.pop(user)
    return ok({"permissions": render(grants)}, f"{LABELS[object_type]} permission deleted successfully.")
