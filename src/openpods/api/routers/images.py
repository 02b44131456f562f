"""The image allowlist: anyone authenticated reads it; only site admins change it."""

from __future__ import annotations

import asyncio

from fastapi import Request
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from starlette.responses import JSONResponse

from openpods.api.deps import Caller, Ctx, require_site_admin
from openpods.api.envelope import BadRequest, Conflict, NotFound, cap_messages, ok, validation_messages
from openpods.api.routing import api_router
from openpods.domain.models import NewImage
from openpods.store import repo
from openpods.store.db import transaction
from openpods.store.tables import Image

router = api_router(prefix="/v3/pods/images", tags=["images"])


def image_view(row: Image) -> dict:
    return {"image": row.image, "tenants": row.tenants, "description": row.description,
            "creation_ts": row.creation_ts, "added_by": row.added_by}


@router.get("", operation_id="get_images", summary="get_images")
def get_images(ctx: Ctx, caller: Caller) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        return ok([image_view(r) for r in s.scalars(select(Image).order_by(Image.image))],
                  "Images retrieved successfully.")


@router.post("", operation_id="add_image", summary="add_image")
def add_image(ctx: Ctx, caller: Caller, body: NewImage) -> JSONResponse:
    require_site_admin(caller)
    with transaction(ctx.sessions) as s:
        if s.get(Image, body.image) is not None:
            raise Conflict(f"Image '{body.image}' is already in the allowlist.")
        row = Image(image=body.image, tenants=body.tenants, description=body.description,
                    creation_ts=repo.utcnow(), added_by=caller.username)
        s.add(row)
        return ok(image_view(row), "Images added successfully.")  # sic: the original's text


_IMAGE_LIST = TypeAdapter(list[NewImage])


# The body schema as FastAPI would publish it (NewImage is in the components: add_image uses it).
_BULK_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "array", "items": {"$ref": "#/components/schemas/NewImage"}}}}}


@router.post("/bulk", operation_id="add_images", summary="add_images", openapi_extra={"requestBody": _BULK_BODY})
async def add_images(ctx: Ctx, caller: Caller, request: Request, skip_duplicates: bool = False) -> JSONResponse:
    # Authorize first: only a site admin's body is read and validated (it is capped by max_request_body_bytes,
    # and its error list by cap_messages).
    require_site_admin(caller)
    raw = await request.body()
    try:
        body = _IMAGE_LIST.validate_json(raw or b"null")
    except ValidationError as exc:
        raise BadRequest(cap_messages(validation_messages(list(exc.errors(include_url=False))))) from None
    return await asyncio.to_thread(_add_images, ctx, caller, body, skip_duplicates)


def _add_images(ctx: Ctx, caller: Caller, body: list[NewImage], skip_duplicates: bool) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        added = []
        seen: set[str] = set()
        for item in body:
            if item.image in seen or s.get(Image, item.image) is not None:
                if skip_duplicates:
                    continue
                raise Conflict(f"Image '{item.image}' is already in the allowlist; nothing was added.")
            seen.add(item.image)
            row = Image(image=item.image, tenants=item.tenants, description=item.description,
                        creation_ts=repo.utcnow(), added_by=caller.username)
            s.add(row)
            added.append(image_view(row))
        if not added:
            message = "No images added - all images were duplicates."
        else:
            message = "Image added successfully." if len(added) == 1 else "Images added successfully."
        return ok(added, message)


@router.get("/{image_id:path}", operation_id="get_image", summary="get_image")
def get_image(ctx: Ctx, caller: Caller, image_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        row = s.get(Image, image_id)
        if row is None:
            raise NotFound(f"Image with id {image_id} not found.")
        return ok(image_view(row), "Image retrieved successfully.")


@router.delete("/{image_id:path}", operation_id="delete_image", summary="delete_image")
def delete_image(ctx: Ctx, caller: Caller, image_id: str) -> JSONResponse:
    require_site_admin(caller)
    with transaction(ctx.sessions) as s:
        row = s.get(Image, image_id)
        if row is None:
            raise NotFound(f"Image with id {image_id} not found - not deleted.")
        s.delete(row)
    return ok(image_id, "Image successfully deleted.")
