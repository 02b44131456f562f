"""Checks on volume_mounts: the caller needs USER on each volume and READ on each snapshot it mounts."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from openpods.auth.tokens import Identity
from openpods.domain.errors import InvalidInput, PermissionDenied
from openpods.domain.permissions import Level, effective_level
from openpods.store import repo
from openpods.store.tables import Snapshot, Volume


def check_mount_access(s: Session, caller: Identity, mounts: dict[str, Any]) -> None:
    for key, mount in mounts.items():
        kind = mount["type"] if isinstance(mount, dict) else mount.type
        if kind == "tapisvolume":
            object_type, row, needed = "volume", s.get(Volume, (caller.tenant_id, key)), Level.USER
        elif kind == "tapissnapshot":
            object_type, row, needed = "snapshot", s.get(Snapshot, (caller.tenant_id, key)), Level.READ
        else:
            continue
        if row is None:
            raise InvalidInput([f"volume_mounts, {key}: no {object_type} '{key}' exists."])
        level = effective_level(repo.grants(s, object_type, caller.tenant_id, key), caller.username,
                                site_admin=caller.is_admin)
        if level < needed:
            raise PermissionDenied(f"volume_mounts, {key}: mounting needs {needed.name} on {object_type} '{key}'.")


def effective_mounts(s: Session, pod: Any, settings: Any) -> dict[str, Any]:
    """The mounts a pod really has: its own merged with its templates' (a template's mounts count too)."""
    if not pod.template:
        return dict(pod.volume_mounts or {})
    from openpods.services.templates import derive

    try:
        return dict(derive(s, pod, settings).get("volume_mounts") or {})
    except Exception:  # a broken template chain cannot run; its own mounts are what is known
        return dict(pod.volume_mounts or {})
