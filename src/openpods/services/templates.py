"""Template resolution against the store, and the derived (merged) view of a pod."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from openpods.auth.tokens import Identity
from openpods.config import Settings
from openpods.domain import templates as tpl
from openpods.domain.errors import InvalidInput, NotFoundError
from openpods.domain.models import Networking
from openpods.domain.permissions import Level, effective_level
from openpods.domain.pods import with_urls
from openpods.store import repo
from openpods.store.tables import Pod, Template, TemplateTag

user_set_fields = tpl.user_set_fields
update_user_set = tpl.update_user_set
unpin = tpl.unpin


def record(row: TemplateTag) -> tpl.TagRecord:
    return tpl.TagRecord(template_id=row.template_id, tag=row.tag, tag_timestamp=row.tag_timestamp,
                         creation_ts=row.creation_ts, pod_definition=dict(row.pod_definition or {}))


def make_lookup(s: Session, tenant_id: str) -> tpl.Lookup:
    """Tag versions of one template only (never another template's tag of the same name)."""

    def lookup(template_id: str, tag: str | None, timestamp: str | None) -> tpl.TagRecord | None:
        tag = tag or tpl.DEFAULT_TAG
        query = select(TemplateTag).where(TemplateTag.tenant_id == tenant_id, TemplateTag.template_id == template_id,
                                          TemplateTag.tag == tag)
        if timestamp:
            query = query.where(TemplateTag.tag_timestamp == f"{tag}@{timestamp}")
        row = s.scalars(query.order_by(TemplateTag.seq.desc()).limit(1)).first()
        return record(row) if row else None

    return lookup


def _template_exists(s: Session, tenant_id: str):
    return lambda template_id: s.get(Template, (tenant_id, template_id)) is not None


def resolve(s: Session, tenant_id: str, ref: str, *, outer: tuple[str, ...] = ()) -> list[tpl.TagRecord]:
    """The chain for a reference, nearest first; template errors become 400/404 in the envelope."""
    try:
        parsed = tpl.parse_template_ref(ref)
        return tpl.resolve_chain(parsed, make_lookup(s, tenant_id),
                                 template_exists=_template_exists(s, tenant_id), outer=outer)
    except tpl.TemplateNotFound as exc:
        raise NotFoundError(str(exc)) from None
    except (tpl.TemplateRefError, tpl.TemplateLoop, tpl.TemplateChainTooDeep) as exc:
        raise InvalidInput([f"template: {exc}"]) from None


def check_template_readable(s: Session, caller: Identity, template_id: str) -> None:
    exists = s.get(Template, (caller.tenant_id, template_id)) is not None
    level = effective_level(repo.grants(s, "template", caller.tenant_id, template_id), caller.username,
                            site_admin=caller.is_admin, allow_wildcard=True)
    if not exists or level < Level.READ:
        raise NotFoundError(f"Template with identifier template_id: '{template_id}' not found")


def pin_for_pod(s: Session, caller: Identity, ref: str) -> str:
    """Resolve what a user wrote in ``template`` to the pinned ``name:tag@timestamp`` (needs READ on the
    named template; deeper templates were checked when their tags were created)."""
    try:
        template_id = tpl.parse_template_ref(ref).template_id
    except tpl.TemplateRefError as exc:
        raise InvalidInput([f"template: {exc}"]) from None
    check_template_readable(s, caller, template_id)
    return tpl.pin(resolve(s, caller.tenant_id, ref)[0])


def site_defaults(settings: Settings) -> dict[str, Any]:
    defaults = dict(tpl.POD_DEFAULTS)
    defaults["time_to_stop_default"] = settings.default_time_to_stop_sec
    defaults["resources"] = {
        "cpu_request": settings.cpu_request_default, "cpu_limit": settings.cpu_limit_default,
        "mem_request": settings.mem_request_default, "mem_limit": settings.mem_limit_default, "gpus": 0,
    }
    return defaults


def derive(s: Session, pod: Pod, settings: Settings) -> dict[str, Any]:
    """The pod as it will run: its own user-set fields over its template chain over the site defaults, with
    URLs recomputed. Secrets are NOT substituted."""
    from openpods.services.pods import POD_VIEW_FIELDS

    fields = {name: getattr(pod, name) for name in POD_VIEW_FIELDS}
    chain = [r.pod_definition for r in resolve(s, pod.tenant_id, pod.template)] if pod.template else []
    merged = tpl.merge_pod(fields, set(pod.modified_fields or []), chain, site_defaults(settings))
    networking = {k: Networking.model_validate(v, strict=False).model_dump()
                  for k, v in (merged.get("networking") or {}).items()}
    merged["networking"] = with_urls(networking, pod.pod_id, settings.pods_domain(pod.tenant_id))
    return merged


def template_view(row: Template) -> dict[str, Any]:
    return {"template_id": row.template_id, "description": row.description, "metatags": row.metatags,
            "archive_message": row.archive_message, "creation_ts": row.creation_ts, "update_ts": row.update_ts}


def tag_view(row: TemplateTag, *, full: bool = True) -> dict[str, Any]:
    view = {"template_id": row.template_id, "commit_message": row.commit_message, "tag": row.tag,
            "tag_timestamp": row.tag_timestamp, "added_by": row.added_by, "creation_ts": row.creation_ts}
    if full:
        view["pod_definition"] = row.pod_definition
    return view


def create_template(s: Session, tenant_id: str, template_id: str, owner: str, *, description: str = "",
                    metatags: list[str] | None = None, archive_message: str = "") -> Template:
    now = repo.utcnow()
    row = Template(tenant_id=tenant_id, template_id=template_id, description=description,
                   metatags=list(metatags or []), archive_message=archive_message, creation_ts=now, update_ts=now)
    s.add(row)
    repo.set_grant(s, "template", tenant_id, template_id, owner, "ADMIN")
    return row


def create_tag(s: Session, tenant_id: str, template_id: str, tag: str, definition: dict[str, Any],
               commit_message: str, added_by: str) -> TemplateTag:
    """Adds an immutable version of ``tag``. A definition that chains to another template must resolve now
    and must not lead back to this template."""
    if definition.get("template"):
        # Keyed on name:tag@timestamp: chaining to another tag of this template is fine, chaining (unpinned) to
        # the tag this version is added to would resolve to itself.
        resolve(s, tenant_id, definition["template"], outer=(f"{template_id}:{tag}",))
    # Taggers of one template take turns (PostgreSQL row lock); SQLite writers are serialised anyway, and a
    # lost race on the computed key is retried by the caller.
    s.get(Template, (tenant_id, template_id), with_for_update=True)
    rows = list(s.scalars(select(TemplateTag).where(TemplateTag.tenant_id == tenant_id,
                                                    TemplateTag.template_id == template_id)))
    now = repo.utcnow()
    tag_timestamp = tpl.format_tag_timestamp(tag, now, {r.tag_timestamp for r in rows})
    row = TemplateTag(tenant_id=tenant_id, template_id=template_id, tag_timestamp=tag_timestamp, tag=tag,
                      pod_definition=definition, commit_message=commit_message, added_by=added_by,
                      creation_ts=now, seq=max((r.seq for r in rows), default=0) + 1)
    s.add(row)
    template = s.get(Template, (tenant_id, template_id))
    if template is not None:
        template.update_ts = now
    return row
