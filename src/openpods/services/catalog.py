"""Importing template catalogs (the shipped starter catalog, or a directory of YAML/JSON definitions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from openpods.catalog import load_catalog
from openpods.domain.permissions import WILDCARD_USER
from openpods.services import templates as svc
from openpods.store import repo
from openpods.store.tables import Image, Template, TemplateTag


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    tags_added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def import_catalog(
    s: Session,
    tenant_id: str,
    owner: str,
    directory: Path | None = None,
    *,
    public: bool = True,
    allow_images: bool = False,
) -> ImportReport:
    """Creates missing templates (owned by ``owner``; ``*`` READ when public) and adds each catalog tag whose
    definition differs from the newest version of that tag. Re-running it changes nothing. With
    ``allow_images`` the images the tags name are added to the allowlist for this tenant."""
    report = ImportReport()
    for item in load_catalog(directory):
        if allow_images:
            for tag in item.tags:
                image = tag.pod_definition.get("image")
                if image and s.get(Image, image) is None:
                    s.add(
                        Image(
                            image=image,
                            tenants=[tenant_id],
                            description=f"image of the {item.template_id} template",
                            creation_ts=repo.utcnow(),
                            added_by=owner,
                        )
                    )
                    s.flush()
        template = s.get(Template, (tenant_id, item.template_id))
        if template is None:
            svc.create_template(
                s,
                tenant_id,
                item.template_id,
                owner,
                description=item.description,
                metatags=item.metatags,
                archive_message=item.archive_message,
            )
            if public:
                repo.set_grant(s, "template", tenant_id, item.template_id, WILDCARD_USER, "READ")
            report.created.append(item.template_id)
            s.flush()
        for tag in item.tags:
            newest = s.scalars(
                select(TemplateTag)
                .where(
                    TemplateTag.tenant_id == tenant_id,
                    TemplateTag.template_id == item.template_id,
                    TemplateTag.tag == tag.tag,
                )
                .order_by(TemplateTag.seq.desc())
                .limit(1)
            ).first()
            if newest is not None and newest.pod_definition == tag.pod_definition:
                report.unchanged.append(f"{item.template_id}:{tag.tag}")
                continue
            row = svc.create_tag(
                s, tenant_id, item.template_id, tag.tag, tag.pod_definition, tag.commit_message, owner
            )
            s.flush()
            report.tags_added.append(f"{item.template_id}:{row.tag_timestamp}")
    return report
