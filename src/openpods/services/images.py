"""The image allowlist check used wherever a pod's effective image is set."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from openpods.api.envelope import BadRequest
from openpods.config import Settings
from openpods.domain.pods import image_allowed
from openpods.store.tables import Image

NOT_ALLOWED = ("Custom pod.image images must be in allowlist. View available images at /pods/images or contact "
               "admin.")


def check_image_allowed(s: Session, settings: Settings, tenant_id: str, image: str) -> None:
    if not image:
        raise BadRequest(["image: image is required if template is not provided (and the template sets none)."])
    entries = [(row.image, row.tenants) for row in s.scalars(select(Image))]
    if not image_allowed(image, tenant_id, entries, settings.image_allow_list):
        raise BadRequest([f"image: {image!r} is not allowed. {NOT_ALLOWED}"])
