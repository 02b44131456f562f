"""Scheduled snapshots: cron runs with an injected clock, retention pruning, and restarts that neither miss nor
double a run.

The scheduler (``SnapshotScheduler.pass_once``) reads "now" from ``ctx.clock`` (naive UTC). These servers run
only the ``api`` role, so no scheduler runs on its own; each test sets ``srv.ctx.clock`` and calls
``SnapshotScheduler(srv.ctx).pass_once()`` itself. Snapshots are created with the real time as their
``creation_ts``, so the fake clock starts a day ahead of the real one, on a whole hour.

Each run is a snapshot of its own, ``<id>r<YYYYMMDDHHMMSS>`` (the slot, UTC), with ``parent_snapshot_id`` set
and the parent's permissions; retention (``keep_last=N``, ``max_age=<n><s|m|h|d|w>``; a run is kept if any
rule keeps it, the newest is always kept) prunes runs, never the parent.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from openpods.controllers.snapshots import SnapshotScheduler
from openpods.store.tables import Permission, Snapshot

OWNER = "scheduser"
READER = "schedreader"
IMAGE = "localhost/openpods-test/busybox"


class FakeClock:
    """``ctx.clock``: naive UTC, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now


def next_whole_hour_tomorrow() -> datetime:
    now = datetime.now(UTC).replace(tzinfo=None)
    return (now + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)


@dataclass
class Env:
    srv: Any
    c: httpx.Client
    clock: FakeClock
    t0: datetime  # a whole hour, a day from now

    def pass_once(self, at: datetime | None = None) -> None:
        if at is not None:
            self.clock.set(at)
        SnapshotScheduler(self.srv.ctx).pass_once()

    def sdir(self, snapshot_id: str) -> Path:
        return self.srv.settings.data_dir / "storage" / "default" / "snapshots" / snapshot_id

    def runs(self, parent: str) -> list[dict[str, Any]]:
        return [r for r in self.srv.rows(Snapshot, tenant_id="default") if r["parent_snapshot_id"] == parent]

    def run_ids(self, parent: str) -> list[str]:
        return sorted(r["snapshot_id"] for r in self.runs(parent))


def run_id(parent: str, slot: datetime) -> str:
    return f"{parent}r{slot:%Y%m%d%H%M%S}"


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    handle = make_module_server(import_starter_catalog=False)
    handle.add_user(OWNER)
    handle.add_user(READER)
    handle.allow_image(IMAGE)
    return handle


@pytest.fixture
def env(srv: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    t0 = next_whole_hour_tomorrow()
    clock = FakeClock(t0)
    monkeypatch.setattr(srv.ctx, "clock", clock)
    e = Env(srv=srv, c=srv.client(OWNER), clock=clock, t0=t0)
    yield e
    # Keep tests independent (and fast): schedules of this test do not run in the next one.
    for row in srv.rows(Snapshot, tenant_id="default"):
        if row["cron"]:
            assert e.c.put(f"/v3/pods/snapshots/{row['snapshot_id']}", json={"cron": ""}).status_code == 200


def make_source(env: Env, volume_id: str, content: bytes = b"v1") -> None:
    assert env.c.post("/v3/pods/volumes", json={"volume_id": volume_id}).status_code == 200
    write(env, volume_id, content)


def write(env: Env, volume_id: str, content: bytes) -> None:
    r = env.c.post(
        f"/v3/pods/volumes/{volume_id}/upload/data/a.txt",
        files={"file": ("a", content)},
        params={"overwrite": "true"},
    )
    assert r.status_code == 200, r.text


def schedule(env: Env, snapshot_id: str, volume_id: str, cron: str = "@hourly", retention: str = "") -> None:
    r = env.c.post(
        "/v3/pods/snapshots",
        json={
            "snapshot_id": snapshot_id,
            "source_volume_id": volume_id,
            "source_volume_path": "/data",
            "cron": cron,
            "retention_policy": retention,
        },
    )
    assert r.status_code == 200, r.text


def content_of(env: Env, snapshot_id: str) -> bytes:
    r = env.c.get(f"/v3/pods/snapshots/{snapshot_id}/contents/data/a.txt")
    assert r.status_code == 200, r.text
    return r.content


# ------------------------------------------------------------------------------------------------ runs


def test_cron_takes_one_run_per_slot(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol, b"v1")
    schedule(env, snap, vol, "@hourly")
    r = env.c.post(f"/v3/pods/snapshots/{snap}/permissions", json={"user": READER, "level": "READ"})
    assert r.status_code == 200
    # Creating a scheduled snapshot takes its first copy at once, like any snapshot.
    assert content_of(env, snap) == b"v1"

    # t0 is a day ahead: at t0-1m the latest slot is t0-1h (after the creation), taken once.
    env.pass_once(env.t0 - timedelta(minutes=1))
    assert env.run_ids(snap) == [run_id(snap, env.t0 - timedelta(hours=1))]

    env.pass_once(env.t0 + timedelta(minutes=5))
    run1 = run_id(snap, env.t0)
    assert run1 in env.run_ids(snap)
    runs_now = env.run_ids(snap)
    # The same slot again, and later within it: nothing new.
    for minutes in (5, 6, 30, 59):
        env.pass_once(env.t0 + timedelta(minutes=minutes))
        assert env.run_ids(snap) == runs_now

    # The run is a snapshot of its own.
    got = env.c.get(f"/v3/pods/snapshots/{run1}")
    assert got.status_code == 200, got.text
    view = got.json()["result"]
    assert view["status"] == "AVAILABLE"
    assert view["source_volume_id"] == vol and view["source_volume_path"] == "/data"
    assert view["cron"] == "" and view["retention_policy"] == ""
    assert view["size"] == 1
    row = env.srv.rows(Snapshot, tenant_id="default", snapshot_id=run1)[0]
    assert row["parent_snapshot_id"] == snap
    assert row["creation_ts"] == env.t0
    assert content_of(env, run1) == b"v1"
    assert run1 in [s["snapshot_id"] for s in env.c.get("/v3/pods/snapshots").json()["result"]]
    # ... with the parent's permissions.
    perms = env.c.get(f"/v3/pods/snapshots/{run1}/permissions").json()["result"]["permissions"]
    assert sorted(perms) == sorted([f"{OWNER}:ADMIN", f"{READER}:READ"])
    assert env.srv.client(READER).get(f"/v3/pods/snapshots/{run1}").status_code == 200
    # ... on disk, read-only.
    assert (env.sdir(run1) / "data" / "a.txt").read_bytes() == b"v1"
    assert (env.sdir(run1) / "data" / "a.txt").stat().st_mode & 0o222 == 0
    # The parent remembers its last slot.
    parent = env.srv.rows(Snapshot, tenant_id="default", snapshot_id=snap)[0]
    assert parent["last_run_slot"] == env.t0

    # Next slot: a new run of the current content; the earlier run keeps what it had.
    write(env, vol, b"v2")
    env.pass_once(env.t0 + timedelta(hours=1, seconds=1))
    run2 = run_id(snap, env.t0 + timedelta(hours=1))
    assert env.run_ids(snap) == sorted({*runs_now, run2})
    assert content_of(env, run2) == b"v2"
    assert content_of(env, run1) == b"v1"
    assert content_of(env, snap) == b"v1"  # the parent is the copy taken at creation


def test_a_long_outage_gives_one_catch_up_run(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol)
    schedule(env, snap, vol, "*/15 * * * *")
    env.pass_once(env.t0 + timedelta(minutes=1))
    assert run_id(snap, env.t0) in env.run_ids(snap)
    before = set(env.run_ids(snap))
    # Ten hours later: only the latest missed slot runs (not 40 runs).
    env.pass_once(env.t0 + timedelta(hours=10, minutes=7))
    assert set(env.run_ids(snap)) - before == {run_id(snap, env.t0 + timedelta(hours=10))}
    # A clock that steps back takes nothing.
    before = set(env.run_ids(snap))
    env.pass_once(env.t0 + timedelta(hours=3))
    assert set(env.run_ids(snap)) == before


def test_clearing_the_cron_stops_runs_and_changing_it_takes_effect(
    env: Env, new_id: Callable[[str], str]
) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol)
    schedule(env, snap, vol, "@hourly")
    env.pass_once(env.t0 + timedelta(minutes=1))
    before = set(env.run_ids(snap))
    assert env.c.put(f"/v3/pods/snapshots/{snap}", json={"cron": ""}).status_code == 200
    env.pass_once(env.t0 + timedelta(hours=5, minutes=1))
    assert set(env.run_ids(snap)) == before
    # Daily at 00:00 UTC from now on.
    assert env.c.put(f"/v3/pods/snapshots/{snap}", json={"cron": "0 0 * * *"}).status_code == 200
    midnight = (env.t0 + timedelta(days=1)).replace(hour=0)
    env.pass_once(midnight + timedelta(minutes=1))
    assert set(env.run_ids(snap)) - before == {run_id(snap, midnight)}
    env.pass_once(midnight + timedelta(hours=23))
    assert len(set(env.run_ids(snap)) - before) == 1


def test_runs_are_not_scheduled_themselves(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol)
    schedule(env, snap, vol, "@hourly", "keep_last=5")
    for hours in range(3):
        env.pass_once(env.t0 + timedelta(hours=hours, minutes=1))
    # Runs of runs would have ids like <run>r<slot>.
    assert all(r["parent_snapshot_id"] == snap for r in env.runs(snap))
    assert not any(
        r["parent_snapshot_id"].startswith(f"{snap}r") for r in env.srv.rows(Snapshot, tenant_id="default")
    )
    assert len([i for i in env.run_ids(snap) if i.startswith(f"{snap}r")]) >= 3


def test_a_failing_schedule_does_not_stop_the_others(env: Env, new_id: Callable[[str], str]) -> None:
    gone_vol, gone_snap = new_id("vol"), new_id("snap")
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, gone_vol)
    make_source(env, vol)
    schedule(env, gone_snap, gone_vol, "@hourly")
    schedule(env, snap, vol, "@hourly")
    # The source of the first goes away (its ADMIN forces the delete).
    assert env.c.delete(f"/v3/pods/volumes/{gone_vol}", params={"force": "true"}).status_code == 200
    env.pass_once(env.t0 + timedelta(minutes=1))
    assert run_id(snap, env.t0) in env.run_ids(snap)
    assert env.c.get(f"/v3/pods/snapshots/{run_id(snap, env.t0)}").json()["result"]["status"] == "AVAILABLE"
    failed = [r for r in env.runs(gone_snap) if r["snapshot_id"] == run_id(gone_snap, env.t0)]
    for row in failed:  # a failed run, if recorded, says so and leaves no files
        assert row["status"] == "ERROR", row
        assert not any(env.sdir(row["snapshot_id"]).rglob("*"))
    # ... and is not retried for the same slot.
    env.pass_once(env.t0 + timedelta(minutes=2))
    assert len(env.runs(gone_snap)) == len(failed)


def test_longest_scheduled_snapshot_id_still_runs(env: Env, new_id: Callable[[str], str]) -> None:
    """Run ids are the parent's id plus 15 characters: a parent with the longest allowed id (128) must still get
    its runs (or be refused up front with a clear message)."""
    vol = new_id("vol")
    make_source(env, vol)
    snap = "s" + new_id("x")[1:] + "l" * (128 - 1 - 10 - 1) + "z"
    assert len(snap) == 128
    r = env.c.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/data", "cron": "@hourly"},
    )
    if r.status_code == 400:
        assert "snapshot_id" in str(r.json()["message"])
        return
    assert r.status_code == 200, r.text
    env.pass_once(env.t0 + timedelta(minutes=1))
    runs = env.runs(snap)
    assert [x["snapshot_id"] for x in runs if x["creation_ts"] == env.t0] == [run_id(snap, env.t0)], runs
    assert [x["status"] for x in runs if x["creation_ts"] == env.t0] == ["AVAILABLE"]


# ------------------------------------------------------------------------------------------------ retention


def test_keep_last_prunes_old_runs(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol)
    schedule(env, snap, vol, "@hourly", "keep_last=2")
    slots = [env.t0 + timedelta(hours=h) for h in range(5)]
    for i, slot in enumerate(slots):
        write(env, vol, f"v{i}".encode())
        env.pass_once(slot + timedelta(minutes=1))
        kept = env.run_ids(snap)
        assert len(kept) <= 2, kept
        assert run_id(snap, slot) in kept
    assert env.run_ids(snap) == [run_id(snap, slots[3]), run_id(snap, slots[4])]
    assert content_of(env, run_id(snap, slots[4])) == b"v4"
    for slot in slots[:3]:
        pruned = run_id(snap, slot)
        assert not env.sdir(pruned).exists()
        assert env.srv.rows(Permission, object_type="snapshot", object_id=pruned) == []
        assert env.c.get(f"/v3/pods/snapshots/{pruned}").status_code == 404
    # The parent is never pruned.
    assert env.c.get(f"/v3/pods/snapshots/{snap}").status_code == 200
    assert env.sdir(snap).is_dir()


def test_max_age_prunes_by_age_and_keeps_the_newest(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol)
    schedule(env, snap, vol, "@hourly", "max_age=2h")
    slots = [env.t0 + timedelta(hours=h) for h in range(4)]
    for slot in slots:
        env.pass_once(slot + timedelta(minutes=5))
    # At t0+3h05: t0 (3h05 old) and t0+1h (2h05 old) are older than 2h.
    assert env.run_ids(snap) == [run_id(snap, slots[2]), run_id(snap, slots[3])]
    # Much later, with no new run (the cron now fires once a year, at the last slot): the newest run is kept
    # even though it is older than max_age.
    last = slots[3]
    yearly = f"0 {last.hour} {last.day} {last.month} *"
    assert env.c.put(f"/v3/pods/snapshots/{snap}", json={"cron": yearly}).status_code == 200
    env.pass_once(last + timedelta(hours=10))
    assert env.run_ids(snap) == [run_id(snap, last)]


def test_keep_last_and_max_age_keep_the_union(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol)
    schedule(env, snap, vol, "*/10 * * * *", "keep_last=2,max_age=30m")
    slots = [env.t0 + timedelta(minutes=10 * i) for i in range(7)]  # t0 .. t0+60m
    for slot in slots:
        env.pass_once(slot + timedelta(seconds=30))
    # At t0+60m30s: the last 2 (t0+50, t0+60) plus everything within 30 minutes (t0+40, t0+30 is 30m30s old).
    assert env.run_ids(snap) == [run_id(snap, s) for s in slots[4:]]


def test_a_mounted_run_is_not_pruned(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap, pod = new_id("vol"), new_id("snap"), new_id("pod")
    make_source(env, vol)
    schedule(env, snap, vol, "@hourly", "keep_last=1")
    env.pass_once(env.t0 + timedelta(minutes=1))
    first = run_id(snap, env.t0)
    r = env.c.post(
        "/v3/pods",
        json={
            "pod_id": pod,
            "image": IMAGE,
            "status_requested": "OFF",
            "volume_mounts": {first: {"type": "tapissnapshot", "mount_path": "/snap"}},
        },
    )
    assert r.status_code == 200, r.text
    env.pass_once(env.t0 + timedelta(hours=1, minutes=1))
    assert env.run_ids(snap) == sorted([first, run_id(snap, env.t0 + timedelta(hours=1))])
    assert env.sdir(first).is_dir()
    # Once the pod is gone, the next pass prunes it.
    assert env.c.delete(f"/v3/pods/{pod}").status_code == 200
    env.pass_once(env.t0 + timedelta(hours=1, minutes=2))
    assert env.run_ids(snap) == [run_id(snap, env.t0 + timedelta(hours=1))]
    assert not env.sdir(first).exists()


def test_runs_of_other_snapshots_are_never_pruned(env: Env, new_id: Callable[[str], str]) -> None:
    vol, a, b = new_id("vol"), new_id("snap"), new_id("snap")
    make_source(env, vol)
    schedule(env, a, vol, "@hourly", "keep_last=1")
    schedule(env, b, vol, "@hourly")
    for h in range(3):
        env.pass_once(env.t0 + timedelta(hours=h, minutes=1))
    assert len(env.run_ids(a)) == 1
    assert len(env.run_ids(b)) == 3
    # A snapshot someone made by hand with a run-like id is not a run.
    manual = run_id(a, env.t0 - timedelta(days=30))
    assert (
        env.c.post(
            "/v3/pods/snapshots",
            json={"snapshot_id": manual, "source_volume_id": vol, "source_volume_path": "/data"},
        ).status_code
        == 200
    )
    env.pass_once(env.t0 + timedelta(hours=3, minutes=1))
    assert env.c.get(f"/v3/pods/snapshots/{manual}").status_code == 200


# ------------------------------------------------------------------------------------------------ restarts


class SimulatedCrash(BaseException):
    """The process dies (not an ordinary error: nothing catches it)."""


def test_a_crash_during_a_run_is_finished_once_after_restart(
    env: Env, new_id: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol, b"before crash")
    schedule(env, snap, vol, "@hourly")
    storage = env.srv.ctx.storage
    real = storage.create_snapshot

    def crash_after_copying(*args: Any, **kwargs: Any) -> int:
        real(*args, **kwargs)  # the copy is on disk...
        raise SimulatedCrash  # ...but the process dies before it is recorded

    monkeypatch.setattr(storage, "create_snapshot", crash_after_copying)
    env.clock.set(env.t0 + timedelta(minutes=1))
    with pytest.raises(SimulatedCrash):
        SnapshotScheduler(env.srv.ctx).pass_once()
    monkeypatch.setattr(storage, "create_snapshot", real)
    run = run_id(snap, env.t0)
    rows = env.runs(snap)
    assert [r["snapshot_id"] for r in rows] == [run]
    assert rows[0]["status"] == "CREATING"  # claimed, not finished

    # A new scheduler (a restarted process) finishes that run -- and takes no second one for the slot.
    write(env, vol, b"after crash")
    env.pass_once(env.t0 + timedelta(minutes=2))
    rows = env.runs(snap)
    assert [(r["snapshot_id"], r["status"]) for r in rows] == [(run, "AVAILABLE")]
    assert content_of(env, run) in (b"before crash", b"after crash")
    assert sorted(p.name for p in (env.sdir(run) / "data").iterdir()) == ["a.txt"]
    env.pass_once(env.t0 + timedelta(minutes=30))
    assert env.run_ids(snap) == [run]
    env.pass_once(env.t0 + timedelta(hours=1, minutes=1))
    assert env.run_ids(snap) == [run, run_id(snap, env.t0 + timedelta(hours=1))]


def test_a_new_scheduler_neither_misses_nor_doubles(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol)
    schedule(env, snap, vol, "@hourly")
    SnapshotScheduler(env.srv.ctx).pass_once()  # at t0 exactly: the t0 slot is due
    assert env.run_ids(snap) == [run_id(snap, env.t0)]
    # Restart within the slot: the new scheduler does not take it again.
    env.clock.set(env.t0 + timedelta(minutes=20))
    SnapshotScheduler(env.srv.ctx).pass_once()
    assert env.run_ids(snap) == [run_id(snap, env.t0)]
    # Down across the next slot, back 10 minutes late: the missed slot is taken, once.
    env.clock.set(env.t0 + timedelta(hours=1, minutes=10))
    SnapshotScheduler(env.srv.ctx).pass_once()
    SnapshotScheduler(env.srv.ctx).pass_once()
    assert env.run_ids(snap) == [run_id(snap, env.t0), run_id(snap, env.t0 + timedelta(hours=1))]


def test_server_restart_on_the_same_database_and_data_dir(
    make_server: Any, new_id: Callable[[str], str]
) -> None:
    t0 = next_whole_hour_tomorrow()
    clock = FakeClock(t0 + timedelta(minutes=1))
    first = make_server(import_starter_catalog=False)
    first.add_user(OWNER)
    c = first.client(OWNER)
    vol, snap = new_id("vol"), new_id("snap")
    assert c.post("/v3/pods/volumes", json={"volume_id": vol}).status_code == 200
    assert (
        c.post(f"/v3/pods/volumes/{vol}/upload/data/a.txt", files={"file": ("a", b"one")}).status_code == 200
    )
    assert (
        c.post(
            "/v3/pods/snapshots",
            json={
                "snapshot_id": snap,
                "source_volume_id": vol,
                "source_volume_path": "/data",
                "cron": "@hourly",
                "retention_policy": "keep_last=2",
            },
        ).status_code
        == 200
    )
    first.ctx.clock = clock
    SnapshotScheduler(first.ctx).pass_once()
    run1 = run_id(snap, t0)
    first.stop()

    second = make_server(
        import_starter_catalog=False,
        database_url=first.settings.database_url,
        data_dir=first.settings.data_dir,
    )
    second.ctx.clock = clock
    c2 = second.client(OWNER)

    def run_ids() -> list[str]:
        return sorted(
            r["snapshot_id"]
            for r in second.rows(Snapshot, tenant_id="default")
            if r["parent_snapshot_id"] == snap
        )

    # Same slot after the restart: nothing new; the earlier run is intact and served.
    clock.set(t0 + timedelta(minutes=30))
    SnapshotScheduler(second.ctx).pass_once()
    assert run_ids() == [run1]
    assert c2.get(f"/v3/pods/snapshots/{run1}/contents/data/a.txt").content == b"one"
    # The next slots run once each, and retention still applies across the restart.
    assert (
        c2.post(
            f"/v3/pods/volumes/{vol}/upload/data/a.txt",
            files={"file": ("a", b"two")},
            params={"overwrite": "true"},
        ).status_code
        == 200
    )
    for hours in (1, 2):
        clock.set(t0 + timedelta(hours=hours, minutes=1))
        SnapshotScheduler(second.ctx).pass_once()
        SnapshotScheduler(second.ctx).pass_once()
    assert run_ids() == [run_id(snap, t0 + timedelta(hours=1)), run_id(snap, t0 + timedelta(hours=2))]
    assert (
        c2.get(f"/v3/pods/snapshots/{run_id(snap, t0 + timedelta(hours=2))}/contents/data/a.txt").content
        == b"two"
    )
    storage = second.settings.data_dir / "storage" / "default" / "snapshots"
    assert not (storage / run1).exists()


def test_download_of_a_run_as_zip(env: Env, new_id: Callable[[str], str]) -> None:
    vol, snap = new_id("vol"), new_id("snap")
    make_source(env, vol, b"zipped")
    schedule(env, snap, vol, "@hourly")
    env.pass_once(env.t0 + timedelta(minutes=1))
    r = env.c.get(f"/v3/pods/snapshots/{run_id(snap, env.t0)}/contents/data")
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.read("data/a.txt") == b"zipped"
