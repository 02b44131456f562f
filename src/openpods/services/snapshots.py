"""Taking snapshots (on request and on schedule) and pruning scheduled runs by their retention policy."""

from __future__ import annotations

from typing import Any

from openpods.store.tables import Snapshot

MB = 1024 * 1024


def destination(row: Snapshot) -> str:
    """Where the copy goes inside the snapshot: ``destination_path``, or by default the same path it had in
    the volume (so a snapshot of ``/data`` holds ``/data/...``, as the user guide's examples read it)."""
    return row.destination_path or row.source_volume_path


def take_snapshot(storage: Any, row: Snapshot) -> None:
    """Copy the source into the snapshot's directory, mark it read-only and AVAILABLE (storage errors
    propagate; the storage backend leaves nothing partial behind)."""
    size = storage.create_snapshot(row.tenant_id, row.snapshot_id, row.source_volume_id, row.source_volume_path,
                                   destination(row), size_limit_bytes=row.size_limit * MB)
    row.size = -(-size // MB)
    row.status = "AVAILABLE"


def run_id(parent_id: str, slot: Any) -> str:
    """Deterministic id of a scheduled run: a crashed scheduler that retries a slot reuses the same id."""
    return f"{parent_id}r{slot:%Y%m%d%H%M%S}"
