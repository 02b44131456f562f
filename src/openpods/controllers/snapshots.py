"""The snapshot scheduler: takes scheduled snapshots on their cron slots and prunes the runs by retention.

Each run is a snapshot of its own (``<id>r<YYYYMMDDHHMMSS>``, parent = the scheduled snapshot, same
permissions), so it can be listed, downloaded and mounted like any snapshot. Progress is recorded so a killed
process neither misses nor doubles a run: (1) the run's row (CREATING) and the parent's ``last_run_slot`` are
committed together; (2) the files are copied; (3) the run becomes AVAILABLE. A CREATING run found later (the
process died during the copy) is copied again from scratch.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Histogram
from sqlalchemy import select

from openpods.bus.base import SNAPSHOTS
from openpods.context import AppContext
from openpods.domain.snapshot_policy import due_runs, select_to_prune
from openpods.services.mounts import effective_mounts
from openpods.services.snapshots import MB, run_id, take_snapshot
from openpods.store import repo
from openpods.store.db import transaction
from openpods.store.tables import Pod, Snapshot

log = logging.getLogger(__name__)
RUNS = Counter("openpods_snapshot_runs_total", "Scheduled snapshot runs, by outcome.", ["outcome"])
CLAIM_GRACE_SEC = 10.0
INTERRUPTED = ("the copy was interrupted (the server stopped while copying) and has been discarded; delete this "
               "snapshot and create it again")
PASS_SECONDS = Histogram("openpods_snapshot_pass_seconds", "Duration of one snapshot scheduler pass.")


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class SnapshotScheduler:
    def __init__(self, ctx: AppContext, *, interval_sec: float = 20.0) -> None:
        self.ctx = ctx
        self.interval_sec = interval_sec

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.pass_once)
            except Exception:
                log.exception("snapshot scheduler pass failed; retrying")
            await self.ctx.bus.wait(SNAPSHOTS, self.interval_sec)

    def pass_once(self) -> None:
        with PASS_SECONDS.time():
            self._resume_interrupted()
            now = self.ctx.clock()
            with self.ctx.sessions() as s:
                scheduled = [(r.tenant_id, r.snapshot_id) for r in s.scalars(
                    select(Snapshot).where(Snapshot.cron != "", Snapshot.parent_snapshot_id == ""))]
            for tenant_id, snapshot_id in scheduled:
                try:
                    self._run_if_due(tenant_id, snapshot_id, now)
                    self._prune(tenant_id, snapshot_id, now)
                except Exception:
                    RUNS.labels("error").inc()
                    log.exception("scheduled snapshot %s/%s failed", tenant_id, snapshot_id)

    def _run_if_due(self, tenant_id: str, snapshot_id: str, now: datetime) -> None:
        with transaction(self.ctx.sessions) as s:
            parent = s.get(Snapshot, (tenant_id, snapshot_id))
            if parent is None or not parent.cron:
                return
            slot = due_runs(parent.cron, parent.last_run_slot, parent.creation_ts, _aware(now))
            if slot is None:
                return
            slot_naive = slot.astimezone(UTC).replace(tzinfo=None)
            child_id = run_id(snapshot_id, slot_naive)
            parent.last_run_slot = slot_naive
            if s.get(Snapshot, (tenant_id, child_id)) is None:
                stamp = repo.utcnow()
                s.add(Snapshot(
                    tenant_id=tenant_id, snapshot_id=child_id, source_volume_id=parent.source_volume_id,
                    source_volume_path=parent.source_volume_path, destination_path=parent.destination_path,
                    description=f"Scheduled run of {snapshot_id} for {slot_naive:%Y-%m-%d %H:%M} UTC",
                    size_limit=parent.size_limit, size=0, status="CREATING", cron="", retention_policy="",
                    parent_snapshot_id=snapshot_id, last_run_slot=None, creation_ts=slot_naive, update_ts=stamp))
                for user, level in repo.grants(s, "snapshot", tenant_id, snapshot_id).items():
                    repo.set_grant(s, "snapshot", tenant_id, child_id, user, level)
        self._copy(tenant_id, child_id)

    def _copy(self, tenant_id: str, child_id: str) -> None:
        with self.ctx.sessions() as s:
            row = s.get(Snapshot, (tenant_id, child_id))
            if row is None or row.status != "CREATING":
                return
            s.expunge(row)
        # The copy runs outside any transaction: it may take long and must not hold the database.
        self.ctx.storage.delete_snapshot(tenant_id, child_id)  # a partial copy of a killed run, if any
        error = ""
        try:
            take_snapshot(self.ctx.storage, row)
            RUNS.labels("taken").inc()
        except Exception as exc:
            error = str(exc)
            RUNS.labels("failed").inc()
        with transaction(self.ctx.sessions) as s:
            saved = s.get(Snapshot, (tenant_id, child_id))
            if saved is None:
                return
            if error:
                saved.status = "ERROR"
                saved.description = f"{saved.description} — failed: {error}"[:255]
            else:
                saved.status, saved.size = row.status, row.size
            saved.update_ts = repo.utcnow()

    def _resume_interrupted(self) -> None:
        """Snapshots left CREATING by a process that died mid-copy (on start and on every pass). A copy that
        another process is still making is left alone (its lock is held); a complete copy whose row was not
        updated becomes AVAILABLE; otherwise a scheduled run is copied again, and a snapshot taken on request
        becomes ERROR with the reason (a copy made now would not be what was asked for then)."""
        # A row younger than the grace may belong to a request that has not started its copy yet.
        settled = self.ctx.clock() - timedelta(seconds=CLAIM_GRACE_SEC)
        with self.ctx.sessions() as s:
            pending = [(r.tenant_id, r.snapshot_id, bool(r.parent_snapshot_id)) for r in s.scalars(
                select(Snapshot).where(Snapshot.status == "CREATING"))
                if r.parent_snapshot_id or r.update_ts <= settled]
        for tenant_id, snapshot_id, is_run in pending:
            try:
                state = self.ctx.storage.snapshot_copy_state(tenant_id, snapshot_id)
            except Exception:
                log.exception("cannot tell the copy state of snapshot %s/%s", tenant_id, snapshot_id)
                continue
            if state == "copying":
                continue
            if state == "complete":
                self._finish_complete(tenant_id, snapshot_id)
            elif is_run:
                self._copy(tenant_id, snapshot_id)
            else:
                self._fail_interrupted(tenant_id, snapshot_id)

    def _finish_complete(self, tenant_id: str, snapshot_id: str) -> None:
        size = self.ctx.storage.usage_bytes("snapshot", tenant_id, snapshot_id)
        with transaction(self.ctx.sessions) as s:
            row = s.get(Snapshot, (tenant_id, snapshot_id))
            if row is not None and row.status == "CREATING":
                row.status, row.size, row.update_ts = "AVAILABLE", -(-size // MB), repo.utcnow()
                log.info("snapshot %s/%s: the copy was complete; now AVAILABLE", tenant_id, snapshot_id)

    def _fail_interrupted(self, tenant_id: str, snapshot_id: str) -> None:
        reason = INTERRUPTED
        with transaction(self.ctx.sessions) as s:
            row = s.get(Snapshot, (tenant_id, snapshot_id))
            if row is None or row.status != "CREATING":
                return
            # The copy may have finished between the check and now (a slow API process): then it stands.
            if self.ctx.storage.snapshot_copy_state(tenant_id, snapshot_id) != "absent":
                return
            row.status = "ERROR"
            row.description = f"{row.description} — failed: {reason}"[:255] if row.description else reason
            row.update_ts = repo.utcnow()
        RUNS.labels("interrupted").inc()
        log.warning("snapshot %s/%s: %s", tenant_id, snapshot_id, reason)

    def _prune(self, tenant_id: str, snapshot_id: str, now: datetime) -> None:
        with transaction(self.ctx.sessions) as s:
            parent = s.get(Snapshot, (tenant_id, snapshot_id))
            if parent is None or not parent.retention_policy:
                return
            runs = list(s.scalars(select(Snapshot).where(Snapshot.tenant_id == tenant_id,
                                                         Snapshot.parent_snapshot_id == snapshot_id,
                                                         Snapshot.status == "AVAILABLE")))
            doomed = set(select_to_prune([(r.snapshot_id, _aware(r.creation_ts)) for r in runs],
                                         parent.retention_policy, _aware(now)))
            if not doomed:
                return
            mounted = {key for pod in s.scalars(select(Pod).where(Pod.tenant_id == tenant_id))
                       for key, m in effective_mounts(s, pod, self.ctx.settings).items()
                       if m.get("type") == "tapissnapshot"}
            for run in runs:
                if run.snapshot_id in doomed and run.snapshot_id not in mounted:
                    s.delete(run)
                    repo.delete_object_grants(s, "snapshot", tenant_id, run.snapshot_id)
                    s.flush()
                    self.ctx.storage.delete_snapshot(tenant_id, run.snapshot_id)
                    RUNS.labels("pruned").inc()
