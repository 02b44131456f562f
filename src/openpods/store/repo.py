"""Small query helpers shared by the API and the controllers (no business rules here)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from openpods.store.tables import ActionLog, Permission, User


def utcnow() -> datetime:
    """Naive UTC, as stored and returned (Tapis returns naive ISO timestamps)."""
    return datetime.now(UTC).replace(tzinfo=None)


def grants(s: Session, object_type: str, tenant_id: str, object_id: str) -> dict[str, str]:
    rows = s.scalars(
        select(Permission).where(
            Permission.object_type == object_type,
            Permission.tenant_id == tenant_id,
            Permission.object_id == object_id,
        )
    )
    return {row.username: row.level for row in rows}


def set_grant(s: Session, object_type: str, tenant_id: str, object_id: str, username: str, level: str) -> None:
    row = s.get(Permission, (object_type, tenant_id, object_id, username))
    if row is None:
        s.add(Permission(object_type=object_type, tenant_id=tenant_id, object_id=object_id, username=username,
                         level=level))
    else:
        row.level = level


def delete_grant(s: Session, object_type: str, tenant_id: str, object_id: str, username: str) -> bool:
    row = s.get(Permission, (object_type, tenant_id, object_id, username))
    if row is None:
        return False
    s.delete(row)
    return True


def delete_object_grants(s: Session, object_type: str, tenant_id: str, object_id: str) -> None:
    s.execute(delete(Permission).where(Permission.object_type == object_type, Permission.tenant_id == tenant_id,
                                       Permission.object_id == object_id))


def readable_ids(s: Session, object_type: str, tenant_id: str, usernames: Iterable[str]) -> set[str]:
    """Ids of objects where any of ``usernames`` holds at least READ (every level is >= READ)."""
    rows = s.scalars(
        select(Permission.object_id).where(
            Permission.object_type == object_type,
            Permission.tenant_id == tenant_id,
            Permission.username.in_(list(usernames)),
        )
    )
    return set(rows)


def add_action_log(s: Session, object_type: str, tenant_id: str, object_id: str, actor: str, message: str,
                   ts: datetime | None = None) -> None:
    """Appends an entry, unless it repeats the object's last entry (retries must not flood the log)."""
    last = s.scalars(
        select(ActionLog.message)
        .where(ActionLog.object_type == object_type, ActionLog.tenant_id == tenant_id,
               ActionLog.object_id == object_id)
        .order_by(ActionLog.id.desc())
        .limit(1)
    ).first()
    if last == message:
        return
    s.add(ActionLog(object_type=object_type, tenant_id=tenant_id, object_id=object_id, ts=ts or utcnow(),
                    actor=actor, message=message))


def action_logs(s: Session, object_type: str, tenant_id: str, object_id: str, limit: int = 1000) -> list[str]:
    """Oldest first, formatted as Tapis does (``yy/mm/dd HH:MM:SS: message``), newest ``limit`` kept."""
    rows = list(
        s.scalars(
            select(ActionLog)
            .where(ActionLog.object_type == object_type, ActionLog.tenant_id == tenant_id,
                   ActionLog.object_id == object_id)
            .order_by(ActionLog.id.desc())
            .limit(limit)
        )
    )
    return [f"{r.ts:%y/%m/%d %H:%M:%S}: {r.message}" for r in reversed(rows)]


def delete_action_logs(s: Session, object_type: str, tenant_id: str, object_id: str) -> None:
    s.execute(delete(ActionLog).where(ActionLog.object_type == object_type, ActionLog.tenant_id == tenant_id,
                                      ActionLog.object_id == object_id))


def get_user(s: Session, tenant_id: str, username: str) -> User | None:
    return s.get(User, (tenant_id, username))


def is_site_admin(s: Session, tenant_id: str, username: str) -> bool:
    user = s.get(User, (tenant_id, username))
    return bool(user and user.is_admin)
