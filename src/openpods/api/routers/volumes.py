"""Volumes: persistent per-tenant storage, its files API (list, download, upload) and permissions."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse

from openpods.api import permissions_common as perms
from openpods.api.deps import Caller, Ctx, check_level
from openpods.api.envelope import BadRequest, Conflict, TapisError, no_change, ok
from openpods.api.files import file_response, storage_errors
from openpods.api.multipart import file_part_chunks
from openpods.api.routing import api_router
from openpods.auth.tokens import Identity
from openpods.domain import status as st
from openpods.domain.models import NewVolume, SetPermission, UpdateVolume
from openpods.domain.permissions import Level
from openpods.services.mounts import effective_mounts
from openpods.store import repo
from openpods.store.db import retry_on_stale_data, transaction
from openpods.store.tables import Pod, Snapshot, Volume

router = api_router(prefix="/v3/pods/volumes", tags=["volumes"])
MB = 1024 * 1024


def volume_view(row: Volume) -> dict[str, Any]:
    return {"volume_id": row.volume_id, "description": row.description, "size_limit": row.size_limit,
            "size": row.size, "status": row.status, "creation_ts": row.creation_ts, "update_ts": row.update_ts}


def load_volume(s: Session, caller: Identity, volume_id: str, needed: Level) -> Volume:
    row = s.get(Volume, (caller.tenant_id, volume_id))
    check_level(s, caller, "volume", volume_id, needed, exists=row is not None)
    assert row is not None
    return row


def _exists(volume_id: str, tenant_id: str):
    return lambda s: s.get(Volume, (tenant_id, volume_id)) is not None


def _refresh_size(ctx: Any, row: Volume) -> None:
    """``size`` is current in every answer: measured now (MB, rounded up)."""
    try:
        used = ctx.storage.usage_bytes("volume", row.tenant_id, row.volume_id)
    except Exception:  # a missing directory is reported by the storage check, not here
        return
    row.size = -(-used // MB)


def mounting_pods(ctx: Any, s: Session, tenant_id: str, kind: str, object_id: str) -> list[str]:
    """Pods that are not stopped and mount the object, through their own definition or a template."""
    out = []
    for pod in s.scalars(select(Pod).where(Pod.tenant_id == tenant_id, Pod.status != st.STOPPED)):
        mount = effective_mounts(s, pod, ctx.settings).get(object_id)
        if mount and mount.get("type") == kind:
            out.append(pod.pod_id)
    return out


@router.get("", operation_id="list_volumes", summary="list_volumes")
@retry_on_stale_data
def list_volumes(ctx: Ctx, caller: Caller) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        query = select(Volume).where(Volume.tenant_id == caller.tenant_id).order_by(Volume.volume_id)
        if not caller.is_admin:
            query = query.where(Volume.volume_id.in_(repo.readable_ids(s, "volume", caller.tenant_id,
                                                                       [caller.username])))
        rows = list(s.scalars(query))
        for row in rows:
            _refresh_size(ctx, row)
        return ok([volume_view(r) for r in rows], "Volumes retrieved successfully.")


@router.post("", operation_id="create_volume", summary="create_volume")
def create_volume(ctx: Ctx, caller: Caller, body: NewVolume) -> JSONResponse:
    try:
        return _create_volume(ctx, caller, body)
    except IntegrityError:  # a concurrent create of the same id won the race
        raise Conflict(f"Volume with identifier '{body.volume_id}' already exists.") from None


def _create_volume(ctx: Any, caller: Identity, body: NewVolume) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        if s.get(Volume, (caller.tenant_id, body.volume_id)) is not None:
            raise Conflict(f"Volume with identifier '{body.volume_id}' already exists.")
        now = repo.utcnow()
        row = Volume(tenant_id=caller.tenant_id, volume_id=body.volume_id, description=body.description,
                     size_limit=body.size_limit, size=0, status="CREATING", creation_ts=now, update_ts=now)
        s.add(row)
        repo.set_grant(s, "volume", caller.tenant_id, body.volume_id, caller.username, "ADMIN")
        s.flush()
        with storage_errors():
            # A directory left by an object whose row was lost is never reused silently.
            if ctx.storage.exists("volume", caller.tenant_id, body.volume_id):
                raise Conflict(f"Storage for volume '{body.volume_id}' already exists on disk (left from an "
                               "earlier volume); an operator must remove or rename it first.")
            ctx.storage.create_volume(caller.tenant_id, body.volume_id, size_limit_bytes=body.size_limit * MB)
        row.status = "AVAILABLE"
        return ok(volume_view(row), "Volume created successfully.")


@router.get("/{volume_id}", operation_id="get_volume", summary="get_volume")
@retry_on_stale_data
def get_volume(ctx: Ctx, caller: Caller, volume_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        row = load_volume(s, caller, volume_id, Level.READ)
        _refresh_size(ctx, row)
        return ok(volume_view(row), "Volume retrieved successfully.")


@router.put("/{volume_id}", operation_id="update_volume", summary="update_volume")
@retry_on_stale_data
def update_volume(ctx: Ctx, caller: Caller, volume_id: str, body: UpdateVolume) -> JSONResponse:
    sent = body.model_dump(include=body.model_fields_set)
    with transaction(ctx.sessions) as s:
        row = load_volume(s, caller, volume_id, Level.USER)
        changed = {k: v for k, v in sent.items() if getattr(row, k) != v}
        if not changed:
            return no_change(volume_view(row), "volume")
        if "size_limit" in changed:
            _apply_size_limit(ctx, s, row, changed["size_limit"])
        for key, value in changed.items():
            setattr(row, key, value)
        row.update_ts = repo.utcnow()
        _refresh_size(ctx, row)
        return ok(volume_view(row), "Volume updated successfully.")


def _apply_size_limit(ctx: Any, s: Session, row: Volume, new_limit: int) -> None:
    """A volume with its own filesystem is resized with its limit: a shrink needs the content to fit and, as it
    is done unmounted, no pod that mounts the volume."""
    if not ctx.storage.volume_limit_enforced(row.tenant_id, row.volume_id):
        return
    users = mounting_pods(ctx, s, row.tenant_id, "tapisvolume", row.volume_id)
    if new_limit < row.size_limit:
        used = ctx.storage.usage_bytes("volume", row.tenant_id, row.volume_id)
        if used > new_limit * MB:
            raise BadRequest([f"size_limit: the volume holds {-(-used // MB)} MB, more than {new_limit} MB."])
        if users:
            raise Conflict(f"Volume '{row.volume_id}' is mounted by pods that are not stopped: {users}; stop them "
                           "to lower its size_limit.")
    try:
        with storage_errors():
            ctx.storage.resize_volume(row.tenant_id, row.volume_id, new_limit * MB, offline_ok=not users)
    except TapisError as exc:
        if not users or exc.status_code != 503:
            raise
        raise Conflict(f"Volume '{row.volume_id}' cannot grow while pods mount it on this machine ({exc.message}); "
                       f"stop {users} and try again.") from None


@router.delete("/{volume_id}", operation_id="delete_volume", summary="delete_volume")
@retry_on_stale_data
def delete_volume(ctx: Ctx, caller: Caller, volume_id: str, force: bool = False) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        row = load_volume(s, caller, volume_id, Level.ADMIN)
        users = mounting_pods(ctx, s, caller.tenant_id, "tapisvolume", volume_id)
        if users and not force:
            raise Conflict(f"Volume '{volume_id}' is mounted by pods that are not stopped: {users}. Stop them, "
                           "or delete with force=true.")
        sources = [r.snapshot_id for r in s.scalars(select(Snapshot).where(
            Snapshot.tenant_id == caller.tenant_id, Snapshot.source_volume_id == volume_id, Snapshot.cron != ""))]
        if sources and not force:
            raise Conflict(f"Volume '{volume_id}' is the source of scheduled snapshots {sources}; delete them or "
                           "use force=true.")
        s.delete(row)
        repo.delete_object_grants(s, "volume", caller.tenant_id, volume_id)
    # The files go after the row is committed: a long removal must not hold the database.
    with storage_errors():
        ctx.storage.delete_volume(caller.tenant_id, volume_id)
    return ok("", "Volume successfully deleted.")


@router.get("/{volume_id}/list", operation_id="list_volume_files", summary="list_volume_files")
def list_volume_files(ctx: Ctx, caller: Caller, volume_id: str, path: str = "") -> JSONResponse:
    with transaction(ctx.sessions) as s:
        load_volume(s, caller, volume_id, Level.READ)
    with storage_errors():
        files = ctx.storage.list_files("volume", caller.tenant_id, volume_id, path)
    return ok([f.to_dict() for f in files], "Volume file listing retrieved successfully.")


@router.get("/{volume_id}/contents/{path:path}", operation_id="get_volume_contents", summary="get_volume_contents")
def get_volume_contents(ctx: Ctx, caller: Caller, volume_id: str, path: str, zip: bool = False):
    with transaction(ctx.sessions) as s:
        load_volume(s, caller, volume_id, Level.USER)
    return file_response(ctx.storage, "volume", caller.tenant_id, volume_id, path, zip)


@router.post("/{volume_id}/upload/{path:path}", operation_id="upload_to_volume", summary="upload_to_volume")
async def upload_to_volume(ctx: Ctx, caller: Caller, volume_id: str, path: str, request: Request,
                           overwrite: bool = False) -> JSONResponse:
    def check() -> int:
        with transaction(ctx.sessions) as s:
            return load_volume(s, caller, volume_id, Level.USER).size_limit

    size_limit = await asyncio.to_thread(check)
    if not path.strip("/"):
        raise BadRequest(["path: the destination file path inside the volume is required."])
    # Streamed from the request body straight into the volume: the size limit is enforced as bytes arrive,
    # and nothing is left behind when the upload is refused or the client goes away.
    with storage_errors():
        info = await ctx.storage.awrite_file(caller.tenant_id, volume_id, path, file_part_chunks(request),
                                             size_limit_bytes=size_limit * MB, overwrite=overwrite)
    # The spec types the result as a string (the path written); the file's details go in metadata.
    return ok(info.path, "Volume file upload successful.", metadata={"file": info.to_dict()})


@router.get("/{volume_id}/permissions", operation_id="get_volume_permissions", summary="get_volume_permissions")
def get_volume_permissions(ctx: Ctx, caller: Caller, volume_id: str) -> JSONResponse:
    return perms.get_permissions(ctx, caller, "volume", volume_id, _exists(volume_id, caller.tenant_id))


@router.post("/{volume_id}/permissions", operation_id="set_volume_permission", summary="set_volume_permission")
def set_volume_permission(ctx: Ctx, caller: Caller, volume_id: str, body: SetPermission) -> JSONResponse:
    return perms.set_permission(ctx, caller, "volume", volume_id, _exists(volume_id, caller.tenant_id), body)


@router.delete("/{volume_id}/permissions/{user}", operation_id="delete_volume_permission",
               summary="delete_volume_permission")
def delete_volume_permission(ctx: Ctx, caller: Caller, volume_id: str, user: str) -> JSONResponse:
    return perms.delete_permission(ctx, caller, "volume", volume_id, _exists(volume_id, caller.tenant_id), user)
