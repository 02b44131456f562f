"""Crash safety of files: ``openpods serve`` runs in a subprocess and is SIGKILLed in the middle of copying a
snapshot, and (separately) in the middle of an upload. Restarted on the same data dir and database, no snapshot
stays CREATING, half a copy is never listed as a snapshot, and the upload's temporary file is neither listed,
counted nor left on disk.

No container engine is needed (``runtime = none``): what is killed is the API's own file work."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from process_control import ProcessControl

DB_BACKENDS = "one"  # the database plays no part beyond what tests/api cover
ADMIN_PASSWORD = "crash-storage-pw"
OPENPODS = Path(sys.executable).with_name("openpods")
TENANT = "default"
MB = 1024 * 1024
TIMEOUT = 120.0  # only so that a broken server fails the test instead of hanging it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Any, what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(0.01)


@dataclass
class Serve(ProcessControl):
    """One `openpods serve` subprocess (no engine, no proxy) on a fixed data dir, database and port."""

    data_dir: Path
    database_url: str
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage" / TENANT

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENPODS_")}
        env.update({
            "OPENPODS_DATA_DIR": str(self.data_dir),
            "OPENPODS_DATABASE_URL": self.database_url,
            "OPENPODS_HOST": "127.0.0.1",
            "OPENPODS_PORT": str(self.port),
            "OPENPODS_RUNTIME": "none",
            "OPENPODS_START_PODMAN_SERVICE": "false",
            "OPENPODS_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "OPENPODS_IMPORT_STARTER_CATALOG": "false",
            "OPENPODS_VOLUME_SIZE_ENFORCEMENT": "api",  # plain directories (few loop devices per machine)
        })
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [str(OPENPODS), "serve", "--no-proxy", "--log-level", "info"],
                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )

        def healthy() -> bool:
            assert self.popen is not None
            if self.popen.poll() is not None:
                pytest.fail(f"openpods serve exited with {self.popen.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{self.base}/healthcheck", timeout=2).status_code == 200
            return False

        wait_until(healthy, "openpods serve to answer /healthcheck")

    def client(self) -> httpx.Client:
        r = httpx.post(f"{self.base}/v3/oauth2/tokens",
                       json={"username": "admin", "password": ADMIN_PASSWORD, "grant_type": "password"}, timeout=30)
        assert r.status_code == 201, r.text
        token = r.json()["result"]["access_token"]["access_token"]
        return httpx.Client(base_url=self.base, headers={"X-Tapis-Token": token}, timeout=TIMEOUT)


@pytest.fixture
def serve(database_url: str, tmp_path: Path) -> Iterator[Serve]:
    s = Serve(data_dir=tmp_path / "data", database_url=database_url, port=_free_port(),
              log_path=tmp_path / "openpods.log")
    try:
        yield s
    finally:
        s.stop()


def _fill(directory: Path, files: int, size: int) -> None:
    """Content a pod could have written into the volume."""
    for i in range(files):
        sub = directory / f"d{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(bytes([i % 251]) * size)


def _partial_copies(storage: Path, snapshot_id: str) -> list[Path]:
    """Directories under the tenant's snapshots that hold files of ``snapshot_id`` (final or in progress)."""
    base = storage / "snapshots"
    if not base.is_dir():
        return []
    return [p for p in base.iterdir() if snapshot_id in p.name and p.is_dir() and any(p.rglob("*.bin"))]


def test_sigkill_during_snapshot_copy_never_leaves_it_creating_or_half_listed(serve: Serve) -> None:
    serve.start()
    c = serve.client()
    assert c.post("/v3/pods/volumes", json={"volume_id": "data", "size_limit": 4096}).status_code == 200
    files = 6000
    _fill(serve.storage / "volumes" / "data", files, 16 * 1024)

    answer: dict[str, Any] = {}

    def take() -> None:
        with contextlib.suppress(httpx.TransportError):
            answer["r"] = c.post("/v3/pods/snapshots", json={"snapshot_id": "snap", "source_volume_id": "data",
                                                              "source_volume_path": "/", "size_limit": 4096})

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    wait_until(lambda: _partial_copies(serve.storage, "snap") or ("r" in answer and answer["r"].text),
               "the snapshot copy to begin")
    assert "r" not in answer, answer["r"].text
    serve.sigkill()
    thread.join(30)
    copied = sum(1 for p in _partial_copies(serve.storage, "snap") for _ in p.rglob("*.bin"))
    assert 0 < copied < files, f"the kill must land mid-copy ({copied} of {files} files copied)"

    serve.start()
    c = serve.client()
    snap = wait_until(lambda: (r := c.get("/v3/pods/snapshots/snap").json()["result"])["status"] != "CREATING"
                      and r, "the interrupted snapshot to leave CREATING")
    assert snap["status"] == "ERROR", snap
    assert "interrupted" in snap["description"], snap
    # Half a copy is never shown as the snapshot's content, and nothing of it stays on disk.
    r = c.get("/v3/pods/snapshots/snap/list")
    assert r.status_code in (404, 409), r.text
    wait_until(lambda: not _partial_copies(serve.storage, "snap"), "the partial copy to be removed")
    # The user can delete it and take it again.
    assert c.delete("/v3/pods/snapshots/snap").status_code == 200
    r = c.post("/v3/pods/snapshots", json={"snapshot_id": "snap", "source_volume_id": "data",
                                           "source_volume_path": "/d000", "size_limit": 4096})
    assert r.status_code == 200 and r.json()["result"]["status"] == "AVAILABLE", r.text
    listed = c.get("/v3/pods/snapshots/snap/list", params={"path": "d000"}).json()["result"]
    assert len(listed) == 500


def test_sigkill_during_upload_leaves_no_visible_or_counted_part_file(serve: Serve) -> None:
    serve.start()
    c = serve.client()
    assert c.post("/v3/pods/volumes", json={"volume_id": "upvol", "size_limit": 1024}).status_code == 200
    volume = serve.storage / "volumes" / "upvol"
    (volume / "keep.txt").write_bytes(b"k" * 1000)
    boundary = "openpodsboundary"
    stop = threading.Event()

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(512):  # up to 256 MB; the server is killed long before
            if stop.is_set():
                return
            yield b"u" * (512 * 1024)
            time.sleep(0.005)

    def upload() -> None:
        with contextlib.suppress(httpx.TransportError):
            c.post("/v3/pods/volumes/upvol/upload/big.bin", content=body(),
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()

    def parts() -> list[Path]:
        return [p for p in volume.iterdir() if p.name.startswith(".openpods-upload-")]

    wait_until(lambda: [p for p in parts() if p.stat().st_size > 2 * MB], "the upload to stream to disk")
    serve.sigkill()
    stop.set()
    thread.join(30)
    left = parts()
    assert left and left[0].stat().st_size > 2 * MB  # what the killed process left

    serve.start()
    c = serve.client()
    names = [f["name"] for f in c.get("/v3/pods/volumes/upvol/list").json()["result"]]
    assert names == ["keep.txt"], names
    assert c.get("/v3/pods/volumes/upvol").json()["result"]["size"] == 1  # 1000 bytes, in MB rounded up
    wait_until(lambda: not parts(), "the leftover upload file to be removed")
    # An upload after the restart works and is counted.
    r = c.post("/v3/pods/volumes/upvol/upload/small.bin", files={"file": ("small.bin", b"s" * (2 * MB))})
    assert r.status_code == 200, r.text
    assert c.get("/v3/pods/volumes/upvol").json()["result"]["size"] == 3
    assert json.loads(json.dumps(sorted(f["name"] for f in c.get("/v3/pods/volumes/upvol/list").json()["result"]))) \
        == ["keep.txt", "small.bin"]
