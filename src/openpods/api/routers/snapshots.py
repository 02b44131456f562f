"""Snapshots: read-only copies of a volume path, optionally taken on a cron schedule with a retention policy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse

from openpods.api import permissions_common as perms
from openpods.api.deps import Caller, Ctx, check_level
from openpods.api.envelope import BadRequest, Conflict, Forbidden, NotFound, no_change, ok
from openpods.api.files import file_response, storage_errors
from openpods.api.routers.volumes import MB, mounting_pods
from openpods.api.routing import api_router
from openpods.auth.tokens import Identity
from openpods.bus.base import SNAPSHOTS, Wakeup
from openpods.context import AppContext
from openpods.domain.models import NewSnapshot, SetPermission, UpdateSnapshot
from openpods.domain.permissions import Level, effective_level
from openpods.domain.snapshot_policy import validate_cron, validate_retention_policy
from openpods.services.snapshots import take_snapshot
from openpods.store import repo
from openpods.store.db import retry_on_stale_data, transaction
from openpods.store.tables import Snapshot, Volume

router = api_router(prefix="/v3/pods/snapshots", tags=["snapshots"])
MAX_SCHEDULED_ID = 128 - len("r20260101000000")


def snapshot_view(row: Snapshot) -> dict[str, Any]:
    return {"snapshot_id": row.snapshot_id, "source_volume_id": row.source_volume_id,
            "source_volume_path": row.source_volume_path, "destination_path": row.destination_path,
            "description": row.description, "size_limit": row.size_limit, "size": row.size, "status": row.status,
            "cron": row.cron, "retention_policy": row.retention_policy, "creation_ts": row.creation_ts,
            "update_ts": row.update_ts}


def load_snapshot(s: Session, caller: Identity, snapshot_id: str, needed: Level) -> Snapshot:
    row = s.get(Snapshot, (caller.tenant_id, snapshot_id))
    check_level(s, caller, "snapshot", snapshot_id, needed, exists=row is not None)
    assert row is not None
    return row


def _exists(snapshot_id: str, tenant_id: str):
    return lambda s: s.get(Snapshot, (tenant_id, snapshot_id)) is not None


def _schedule_fields(cron: str, retention_policy: str, snapshot_id: str = "") -> tuple[str, str]:
    errors = []
    if cron.strip() and len(snapshot_id) > MAX_SCHEDULED_ID:
        errors.append(f"snapshot_id: a scheduled snapshot's id may have at most {MAX_SCHEDULED_ID} characters "
                      "(its runs are named <id>r<YYYYMMDDHHMMSS>).")
    try:
        cron = validate_cron(cron)
    except ValueError as exc:
        errors.append(str(exc))
    try:
        retention_policy = validate_retention_policy(retention_policy)
    except ValueError as exc:
        errors.append(str(exc))
    if errors:
        raise BadRequest(errors)
    return cron, retention_policy


@router.get("", operation_id="list_snapshots", summary="list_snapshots")
def list_snapshots(ctx: Ctx, caller: Caller) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        query = select(Snapshot).where(Snapshot.tenant_id == caller.tenant_id).order_by(Snapshot.snapshot_id)
        if not caller.is_admin:
            query = query.where(Snapshot.snapshot_id.in_(repo.readable_ids(s, "snapshot", caller.tenant_id,
                                                                           [caller.username])))
        return ok([snapshot_view(r) for r in s.scalars(query)], "Snapshots retrieved successfully.")


def _claim_snapshot(ctx: AppContext, caller: Identity, body: NewSnapshot, cron: str, retention: str) -> Snapshot:
    """Validates and commits the snapshot's row (CREATING) with its owner's grant."""
    with transaction(ctx.sessions) as s:
        volume = s.get(Volume, (caller.tenant_id, body.source_volume_id))
        level = effective_level(repo.grants(s, "volume", caller.tenant_id, body.source_volume_id), caller.username,
                                site_admin=caller.is_admin)
        if volume is None or level == Level.NONE:
            raise NotFound(f"Volume with identifier volume_id: '{body.source_volume_id}' not found")
        if level < Level.USER:
            raise Forbidden(f"source_volume_id: snapshots need USER on volume '{body.source_volume_id}'.")
        if s.get(Snapshot, (caller.tenant_id, body.snapshot_id)) is not None:
            raise Conflict(f"Snapshot with identifier '{body.snapshot_id}' already exists.")
        now = repo.utcnow()
        row = Snapshot(tenant_id=caller.tenant_id, snapshot_id=body.snapshot_id,
                       source_volume_id=body.source_volume_id, source_volume_path=body.source_volume_path,
                       destination_path=body.destination_path, description=body.description,
                       size_limit=body.size_limit, size=0, status="CREATING", cron=cron, retention_policy=retention,
                       parent_snapshot_id="", last_run_slot=None, creation_ts=now, update_ts=now)
        s.add(row)
        repo.set_grant(s, "snapshot", caller.tenant_id, body.snapshot_id, caller.username, "ADMIN")
        s.flush()
        if ctx.storage.exists("snapshot", caller.tenant_id, body.snapshot_id):
            raise Conflict(f"Storage for snapshot '{body.snapshot_id}' already exists on disk (left from an "
                           "earlier snapshot); an operator must remove or rename it first.")
        return row


@router.post("", operation_id="create_snapshot", summary="create_snapshot")
def create_snapshot(ctx: Ctx, caller: Caller, body: NewSnapshot) -> JSONResponse:
    cron, retention = _schedule_fields(body.cron, body.retention_policy, body.snapshot_id)
    try:
        row = _claim_snapshot(ctx, caller, body, cron, retention)
    except IntegrityError:  # a concurrent create of the same id won the race
        raise Conflict(f"Snapshot with identifier '{body.snapshot_id}' already exists.") from None
    # The copy runs outside any transaction (it may take long); the row says CREATING meanwhile.
    try:
        with storage_errors():
            take_snapshot(ctx.storage, row)
    except Exception:
        with transaction(ctx.sessions) as s:
            stale = s.get(Snapshot, (caller.tenant_id, body.snapshot_id))
            if stale is not None:
                s.delete(stale)
            repo.delete_object_grants(s, "snapshot", caller.tenant_id, body.snapshot_id)
        raise
    with transaction(ctx.sessions) as s:
        saved = s.get(Snapshot, (caller.tenant_id, body.snapshot_id))
        if saved is not None:
            saved.size, saved.status, saved.update_ts = row.size, row.status, repo.utcnow()
            row = saved
        view = snapshot_view(row)
    if cron:
        ctx.bus.publish(Wakeup(SNAPSHOTS, caller.tenant_id, body.snapshot_id))
    return ok(view, "Snapshot created successfully.")


@router.get("/{snapshot_id}", operation_id="get_snapshot", summary="get_snapshot")
def get_snapshot(ctx: Ctx, caller: Caller, snapshot_id: str) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        return ok(snapshot_view(load_snapshot(s, caller, snapshot_id, Level.READ)), "Snapshot retrieved successfully.")


@router.put("/{snapshot_id}", operation_id="update_snapshot", summary="update_snapshot")
@retry_on_stale_data
def update_snapshot(ctx: Ctx, caller: Caller, snapshot_id: str, body: UpdateSnapshot) -> JSONResponse:
    sent = body.model_dump(include=body.model_fields_set)
    if "cron" in sent or "retention_policy" in sent:
        cron, retention = _schedule_fields(sent.get("cron", ""), sent.get("retention_policy", ""), snapshot_id)
        sent.update({k: v for k, v in (("cron", cron), ("retention_policy", retention)) if k in sent})
    with transaction(ctx.sessions) as s:
        row = load_snapshot(s, caller, snapshot_id, Level.USER)
        changed = {k: v for k, v in sent.items() if getattr(row, k) != v}
        if not changed:
            return no_change(snapshot_view(row), "snapshot")
        for key, value in changed.items():
            setattr(row, key, value)
        row.update_ts = repo.utcnow()
        view = snapshot_view(row)
    ctx.bus.publish(Wakeup(SNAPSHOTS, caller.tenant_id, snapshot_id))
    return ok(view, "Snapshot updated successfully.")


@router.delete("/{snapshot_id}", operation_id="delete_snapshot", summary="delete_snapshot")
@retry_on_stale_data
def delete_snapshot(ctx: Ctx, caller: Caller, snapshot_id: str, force: bool = False) -> JSONResponse:
    with transaction(ctx.sessions) as s:
        row = load_snapshot(s, caller, snapshot_id, Level.ADMIN)
        users = mounting_pods(ctx, s, caller.tenant_id, "tapissnapshot", snapshot_id)
        if users and not force:
            raise Conflict(f"Snapshot '{snapshot_id}' is mounted by pods that are not stopped: {users}. Stop them, "
                           "or delete with force=true.")
        s.delete(row)
        repo.delete_object_grants(s, "snapshot", caller.tenant_id, snapshot_id)
    with storage_errors():
        ctx.storage.delete_snapshot(caller.tenant_id, snapshot_id)
    return ok("", "Snapshot successfully deleted.")


@router.get("/{snapshot_id}/list", operation_id="list_snapshot_files", summary="list_snapshot_files")
def list_snapshot_files(ctx: Ctx, caller: Caller, snapshot_id: str, path: str = "") -> JSONResponse:
    with transaction(ctx.sessions) as s:
        load_snapshot(s, caller, snapshot_id, Level.READ)
    with storage_errors():
        files = ctx.storage.list_files("snapshot", caller.tenant_id, snapshot_id, path)
    return ok([f.to_dict() for f in files], "Snapshot file listing retrieved successfully.")


@router.get("/{snapshot_id}/contents/{path:path}", operation_id="get_snapshot_contents",
            summary="get_snapshot_contents")
def get_snapshot_contents(ctx: Ctx, caller: Caller, snapshot_id: str, path: str, zip: bool = False):
    with transaction(ctx.sessions) as s:
        load_snapshot(s, caller, snapshot_id, Level.USER)
    return file_response(ctx.storage, "snapshot", caller.tenant_id, snapshot_id, path, zip)


@router.get("/{snapshot_id}/permissions", operation_id="get_snapshot_permissions",
            summary="get_snapshot_permissions")
def get_snapshot_permissions(ctx: Ctx, caller: Caller, snapshot_id: str) -> JSONResponse:
    return perms.get_permissions(ctx, caller, "snapshot", snapshot_id, _exists(snapshot_id, caller.tenant_id))


@router.post("/{snapshot_id}/permissions", operation_id="set_snapshot_permission",
             summary="set_snapshot_permission")
def set_snapshot_permission(ctx: Ctx, caller: Caller, snapshot_id: str, body: SetPermission) -> JSONResponse:
    return perms.set_permission(ctx, caller, "snapshot", snapshot_id, _exists(snapshot_id, caller.tenant_id), body)


@router.delete("/{snapshot_id}/permissions/{user}", operation_id="delete_snapshot_permission",
               summary="delete_snapshot_permission")
def delete_snapshot_permission(ctx: Ctx, caller: Caller, snapshot_id: str, user: str) -> JSONResponse:
    return perms.delete_permission(ctx, caller, "snapshot", snapshot_id, _exists(snapshot_id, caller.tenant_id),
                                   user)


__all__ = ["MB", "router"]
