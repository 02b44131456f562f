"""The image allowlist check used wherever a pod's effective image is set (API and spawn time)."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from openpods.config import Settings
from openpods.context import AppContext
from openpods.domain.errors import InvalidInput
from openpods.domain.pods import digest_needs_engine, image_allowed, parse_image_ref
from openpods.store.tables import Image

log = logging.getLogger(__name__)
NOT_ALLOWED = ("Custom pod.image images must be in allowlist. View available images at /pods/images or contact "
               "admin.")
ENGINE_TIMEOUT_SEC = 30.0


def engine_tags(ctx: AppContext | None, image: str) -> list[str]:
    """What the container engine says about the digest in ``image``: the tags of the local image with that
    digest ([] without an engine, or when it has no such image)."""
    ref = parse_image_ref(image)
    if ref.digest is None or ctx is None or ctx.runtime is None or ctx.loop is None:
        return []
    try:
        return list(ctx.run_async(ctx.runtime.image_tags_for_digest(image, ref.digest), ENGINE_TIMEOUT_SEC))
    except Exception as exc:  # an engine that cannot answer confirms nothing
        log.info("cannot confirm the digest of %s with the engine: %s", image, exc)
        return []


def check_image_allowed(s: Session, settings: Settings, tenant_id: str, image: str, *, ctx: AppContext | None = None) -> None:
    """InvalidInput unless ``image`` is allowed for the tenant. With ``ctx`` (its runtime), a digest that no
    entry names is admitted when the engine shows it belongs to an allowed tag."""
    if not image:
        raise InvalidInput(["image: image is required if template is not provided (and the template sets none)."])
    entries = [(row.image, row.tenants) for row in s.scalars(select(Image))]
    if image_allowed(image, tenant_id, entries, settings.image_allow_list):
        return
    if digest_needs_engine(image, tenant_id, entries, settings.image_allow_list):
        tags = engine_tags(ctx, image)
        if image_allowed(image, tenant_id, entries, settings.image_allow_list, engine_tags=tags):
            return
        raise InvalidInput([f"image: {image!r} is not allowed: no allowlist entry names this digest, and the "
                          "container engine has no local image with this digest under an allowed name:tag "
                          f"(it reports {', '.join(tags) or 'none'}). Use an allowed tag, or ask an admin to add "
                          f"'<name>@<digest>' to the allowlist. {NOT_ALLOWED}"])
    raise InvalidInput([f"image: {image!r} is not allowed. {NOT_ALLOWED}"])
