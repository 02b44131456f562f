"""Taking a snapshot copies files, and deleting a volume removes them: for a big volume that takes minutes.
Meanwhile the rest of the API must keep working: other users' writes may not wait for the copy (on SQLite, the
default database, a write transaction held open during the copy locks the whole database; after
``busy_timeout`` = 30 s the waiting writes fail with a 500).

The file operation is made slow on purpose: the storage backend's method (the server runs in this process)
waits until the concurrent request has been answered -- or gives up after a while. The test asserts on the
order of events, not on durations: the concurrent write must be answered while the file operation is still
running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

PATIENCE_SEC = 8.0  # how long the slowed-down copy waits for the concurrent request before it goes on


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    handle = make_module_server(import_starter_catalog=False)
    for name in ("snapper", "bystander"):
        handle.add_user(name)
    return handle


class SlowCopy:
    """Wraps ``storage.<method>`` so it blocks until ``release()`` (or PATIENCE_SEC)."""

    def __init__(self, storage: Any, method: str) -> None:
        self.real = getattr(storage, method)
        self.entered = threading.Event()
        self.released = threading.Event()
        self.gave_up = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        if not self.released.wait(PATIENCE_SEC):
            self.gave_up = True
        return self.real(*args, **kwargs)

    def release(self) -> None:
        self.released.set()


def in_thread(fn: Callable[[], httpx.Response]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["response"] = fn()
        except Exception as exc:  # reported by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


CASES = [
    ("create_snapshot", "create_volume"),
    ("create_snapshot", "upload"),
    ("create_snapshot", "set_permission"),
    ("delete_volume", "create_volume"),
]


@pytest.mark.parametrize(("slow_op", "concurrent"), CASES, ids=[f"{a}-vs-{b}" for a, b in CASES])
def test_other_writes_do_not_wait_for_file_operations(
    srv: Any, new_id: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, slow_op: str, concurrent: str
) -> None:
    snapper, bystander = srv.client("snapper", timeout=120), srv.client("bystander", timeout=120)
    vol, snap, other = new_id("vol"), new_id("snap"), new_id("vol")
    assert snapper.post("/v3/pods/volumes", json={"volume_id": vol}).status_code == 200
    assert (
        snapper.post(f"/v3/pods/volumes/{vol}/upload/data/a.txt", files={"file": ("a", b"a")}).status_code
        == 200
    )
    assert bystander.post("/v3/pods/volumes", json={"volume_id": other}).status_code == 200

    slow = SlowCopy(srv.ctx.storage, slow_op)
    monkeypatch.setattr(srv.ctx.storage, slow_op, slow)
    if slow_op == "create_snapshot":
        thread, result = in_thread(
            lambda: snapper.post(
                "/v3/pods/snapshots",
                json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/data"},
            )
        )
    else:
        thread, result = in_thread(lambda: snapper.delete(f"/v3/pods/volumes/{vol}"))
    assert slow.entered.wait(60), f"{slow_op} never reached the storage"

    if concurrent == "create_volume":
        r = bystander.post("/v3/pods/volumes", json={"volume_id": new_id("vol")})
    elif concurrent == "upload":
        r = bystander.post(f"/v3/pods/volumes/{other}/upload/b.txt", files={"file": ("b", b"b")})
    else:
        r = bystander.post(f"/v3/pods/volumes/{other}/permissions", json={"user": "snapper", "level": "READ"})
    answered_during_copy = not slow.gave_up
    slow.release()
    thread.join(120)
    assert "error" not in result, result
    assert result["response"].status_code == 200, result["response"].text
    assert r.status_code == 200, (concurrent, r.status_code, r.text)
    assert answered_during_copy, (
        f"{concurrent} by another user was answered only after {slow_op}'s file work went on (it holds a "
        "database write lock meanwhile)"
    )
