"""Templates and template tags (immutable, versioned pod definitions), and their permissions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse

from openpods.api import permissions_common as perms
from openpods.api.deps import Caller, Ctx, check_level
from openpods.api.envelope import BadRequest, Conflict, NotFound, no_change, ok
from openpods.api.routing import api_router
from openpods.auth.tokens import Identity
from openpods.context import AppContext
from openpods.domain import templates as tpl
from openpods.domain.models import NewTemplate, NewTemplateTag, SetPermission, UpdateTemplate
from openpods.domain.permissions import WILDCARD_USER, Level
from openpods.services import templates as svc
from openpods.store import repo
from openpods.store.db import retry_on_integrity_error, retry_on_stale_data, transaction
from openpods.store.tables import Pod, Template, TemplateTag

router = api_router(prefix="/v3/pods/templates", tags=["templates"])


def load_template(s: Session, caller: Identity, template_id: str, needed: Level) -> Template:
    row = s.get(Template, (caller.tenant_id, template_id))
    check_level(s, caller, "template", template_id, needed, exists=row is not None, allow_wildcard=True)
    assert row is not None
    return row


def _exists(template_id: str, tenant_id: str):
    return lambda s: s.get(Template, (tenant_id, template_id)) is not None


def _visible_templates(s: Session, caller: Identity) -> list[Template]:
    query = select(Template).where(Template.tenant_id == caller.tenant_id).order_by(Template.template_id)
    if not caller.is_admin:
        ids = repo.readable_ids(s, "template", caller.tenant_id, [caller.username, WILDCARD_USER])
        query = query.where(Template.template_id.in_(ids))
    return list(s.scalars(query))


def _tags(s: Session, tenant_id: str, template_id: str) -> list[TemplateTag]:
    return list(s.scalars(select(TemplateTag).where(
        TemplateTag.tenant_id == tenant_id, TemplateTag.template_id == template_id).order_by(TemplateTag.seq.desc())))


@router.get("", operation_id="list_templates", summary="list_templates")
def list_templates(ctx: Ctx, caller: Caller) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        return ok([svc.template_view(t) for t in _visible_templates(s, caller)], "Templates retrieved successfully.")


@router.post("", operation_id="add_template", summary="add_template")
def add_template(ctx: Ctx, caller: Caller, body: NewTemplate) -> JSONResponse:
    try:
        return _add_template(ctx, caller, body)
    except IntegrityError:  # a concurrent create of the same id won the race
        raise Conflict(f"Template with identifier '{body.template_id}' already exists.") from None


def _add_template(ctx: AppContext, caller: Identity, body: NewTemplate) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        if s.get(Template, (caller.tenant_id, body.template_id)) is not None:
            raise Conflict(f"Template with identifier '{body.template_id}' already exists.")
        row = svc.create_template(s, caller.tenant_id, body.template_id, caller.username,
                                  description=body.description, metatags=body.metatags,
                                  archive_message=body.archive_message)
        return ok(svc.template_view(row), "Template added successfully.")


@router.get("/tags", operation_id="list_templates_and_tags", summary="list_templates_and_tags")
def list_templates_and_tags(ctx: Ctx, caller: Caller, full: bool = True) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        out: dict[str, Any] = {}
        for template in _visible_templates(s, caller):
            out[template.template_id] = {
                **svc.template_view(template),
                "tags": [svc.tag_view(t, full=full) for t in _tags(s, caller.tenant_id, template.template_id)],
            }
        return ok(out, "Templates and tags retrieved successfully.")


@router.get("/{template_id}", operation_id="get_template", summary="get_template")
def get_template(ctx: Ctx, caller: Caller, template_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        return ok(svc.template_view(load_template(s, caller, template_id, Level.READ)), "Template retrieved successfully.")


@router.put("/{template_id}", operation_id="update_template", summary="update_template")
@retry_on_stale_data
def update_template(ctx: Ctx, caller: Caller, template_id: str, body: UpdateTemplate) -> JSONResponse:
    sent = body.model_dump(include=body.model_fields_set)
    with transaction(ctx.sessions) as s:
        row = load_template(s, caller, template_id, Level.USER)
        changed = {k: v for k, v in sent.items() if getattr(row, k) != v}
        if not changed:
            return no_change(svc.template_view(row), "template")
        for key, value in changed.items():
            setattr(row, key, value)
        row.update_ts = repo.utcnow()
        return ok(svc.template_view(row), "Template updated successfully.")


@router.delete("/{template_id}", operation_id="delete_template", summary="delete_template")
@retry_on_stale_data
def delete_template(ctx: Ctx, caller: Caller, template_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        row = load_template(s, caller, template_id, Level.ADMIN)
        prefix = f"{template_id}:"
        users = [p.pod_id for p in s.scalars(select(Pod).where(Pod.tenant_id == caller.tenant_id))
                 if p.template == template_id or p.template.startswith(prefix)]
        chained = sorted({t.template_id for t in s.scalars(select(TemplateTag).where(
            TemplateTag.tenant_id == caller.tenant_id, TemplateTag.template_id != template_id))
            if (t.pod_definition or {}).get("template", "").split(":")[0].split("@")[0] == template_id})
        if users or chained:
            raise Conflict(f"Template '{template_id}' is still used by pods {users} and templates {chained}; "
                           "delete or move them first.")
        for tag in _tags(s, caller.tenant_id, template_id):
            s.delete(tag)
        s.delete(row)
        repo.delete_object_grants(s, "template", caller.tenant_id, template_id)
    return ok("", "Template and associated Template Tags successfully deleted.")


@router.get("/{template_id}/tags", operation_id="list_template_tags", summary="list_template_tags")
def list_template_tags(ctx: Ctx, caller: Caller, template_id: str, full: bool = True) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        load_template(s, caller, template_id, Level.READ)
        return ok([svc.tag_view(t, full=full) for t in _tags(s, caller.tenant_id, template_id)],
                  "Template tags retrieved successfully.")


@router.post("/{template_id}/tags", operation_id="add_template_tag", summary="add_template_tag")
def add_template_tag(ctx: Ctx, caller: Caller, template_id: str, body: NewTemplateTag) -> JSONResponse:
    return retry_on_integrity_error(lambda: _add_template_tag(ctx, caller, template_id, body))


@retry_on_stale_data
def _add_template_tag(ctx: AppContext, caller: Identity, template_id: str, body: NewTemplateTag) -> JSONResponse:
    definition = body.pod_definition.as_definition()
    with transaction(ctx.sessions) as s:
        load_template(s, caller, template_id, Level.USER)
        if definition.get("template"):
            try:
                parent = tpl.parse_template_ref(definition["template"]).template_id
            except tpl.TemplateRefError as exc:
                raise BadRequest([f"pod_definition, template: {exc}"]) from None
            svc.check_template_readable(s, caller, parent)
        row = svc.create_tag(s, caller.tenant_id, template_id, body.tag, definition, body.commit_message,
                             caller.username)
        return ok(svc.tag_view(row), "Template tag added successfully.")


@router.get("/{template_id}/tags/{tag_id}", operation_id="get_template_tag", summary="get_template_tag")
def get_template_tag(ctx: Ctx, caller: Caller, template_id: str, tag_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        load_template(s, caller, template_id, Level.READ)
        tags = _tags(s, caller.tenant_id, template_id)
        found = [t for t in tags if (t.tag_timestamp == tag_id if "@" in tag_id else t.tag == tag_id)]
        if not found:
            raise NotFound(f"Template tag '{tag_id}' not found for template '{template_id}'.")
        return ok([svc.tag_view(t) for t in found], "Template tags retrieved and filtered successfully.")


@router.get("/{template_id}/permissions", operation_id="get_template_permissions",
            summary="get_template_permissions")
def get_template_permissions(ctx: Ctx, caller: Caller, template_id: str) -> JSONResponse:
    return perms.get_permissions(ctx, caller, "template", template_id, _exists(template_id, caller.tenant_id),
                                 allow_wildcard=True)


@router.post("/{template_id}/permissions", operation_id="set_template_permission",
             summary="set_template_permission")
def set_template_permission(ctx: Ctx, caller: Caller, template_id: str, body: SetPermission) -> JSONResponse:
    return perms.set_permission(ctx, caller, "template", template_id, _exists(template_id, caller.tenant_id), body,
                                allow_wildcard=True)


@router.delete("/{template_id}/permissions/{user}", operation_id="delete_template_permission",
               summary="delete_template_permission")
def delete_template_permission(ctx: Ctx, caller: Caller, template_id: str, user: str) -> JSONResponse:
    return perms.delete_permission(ctx, caller, "template", template_id, _exists(template_id, caller.tenant_id),
                                   user, allow_wildcard=True)
