"""A 1 GB upload and download through HTTP with flat memory.

The server runs in this test process (a thread of ``make_server``), so its memory is this process's:
``VmRSS`` is sampled from ``/proc/self/status`` while the transfer runs (and the kernel's peak, ``VmHWM``, is
reset before and read after, so a spike between samples is seen too). The upload body -- a multipart form
with one 1 GiB file -- is generated on the fly by an httpx streaming request; the download is streamed and
discarded; both sides hash what passes so the bytes are checked end to end.

The transfer does not depend on the database, so this module runs on one backend only (the first one of
``OPENPODS_TEST_DATABASES``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

MB = 1024 * 1024
TOTAL = 1024 * MB
CHUNK = MB
MAX_GROWTH = 150 * MB  # RSS growth allowed while moving 1024 MB


@pytest.fixture(scope="module")
def db_backend() -> str:
    """One backend: the first selected one (see tests/conftest.py)."""
    raw = os.environ.get("OPENPODS_TEST_DATABASES", "")
    wanted = [b.strip().lower() for b in raw.split(",") if b.strip()]
    return wanted[0] if wanted else "sqlite"


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakRss:
    """Samples VmRSS every 10 ms in a thread; ``peak`` is the largest value seen (and VmHWM, when resettable)."""

    def __init__(self) -> None:
        self.baseline = status_bytes("VmRSS")
        self.hwm_reset = reset_peak()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, status_bytes("VmRSS"))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_bytes("VmRSS"))
        if self.hwm_reset:
            self.peak = max(self.peak, status_bytes("VmHWM"))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def test_one_gigabyte_upload_and_download_with_flat_memory(make_server: Any) -> None:
    srv = make_server(import_starter_catalog=False)
    srv.add_user("bigdata")
    c = srv.client("bigdata", timeout=600.0)
    r = c.post("/v3/pods/volumes", json={"volume_id": "bigvolume", "size_limit": 2048})
    assert r.status_code == 200, r.text

    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="one.gb"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = bytearray(os.urandom(CHUNK))
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        yield head
        for i in range(TOTAL // CHUNK):
            block[:8] = i.to_bytes(8, "little")  # every chunk different, made on the fly
            data = bytes(block)
            sent.update(data)
            yield data
        yield tail

    started = time.monotonic()
    with PeakRss() as up:
        r = c.post(
            "/v3/pods/volumes/bigvolume/upload/data/one.gb",
            content=body(),
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + TOTAL + len(tail)),
            },
        )
    upload_sec = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["file"]["size"] == TOTAL
    target = srv.settings.data_dir / "storage" / "default" / "volumes" / "bigvolume" / "data" / "one.gb"
    assert target.stat().st_size == TOTAL
    assert c.get("/v3/pods/volumes/bigvolume").json()["result"]["size"] == 1024

    received = hashlib.sha256()
    count = 0
    started = time.monotonic()
    with PeakRss() as down, c.stream("GET", "/v3/pods/volumes/bigvolume/contents/data/one.gb") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-length"] == str(TOTAL)
        for chunk in resp.iter_raw(CHUNK):
            received.update(chunk)
            count += len(chunk)
    download_sec = time.monotonic() - started

    print(
        f"\n1 GiB upload {upload_sec:.1f}s (RSS +{up.growth / MB:.0f} MB), "
        f"download {download_sec:.1f}s (RSS +{down.growth / MB:.0f} MB)"
    )
    assert count == TOTAL
    assert received.hexdigest() == sent.hexdigest()
    assert up.growth < MAX_GROWTH, f"RSS grew by {up.growth / MB:.0f} MB during the 1 GiB upload"
    assert down.growth < MAX_GROWTH, f"RSS grew by {down.growth / MB:.0f} MB during the 1 GiB download"


def spooled_bytes() -> int:
    """Bytes held by this process in deleted (anonymous) temporary files: where a multipart parser spools an
    upload before the endpoint sees it."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith("(deleted)"):
                total += os.fstat(int(fd)).st_size
        except OSError:
            continue
    return total


def test_an_upload_over_the_limit_is_refused_without_buffering_it_all(make_server: Any) -> None:
    """A 256 MB upload to a volume with size_limit 1 (MB) is refused with a 413 -- and the server stops taking
    in the body soon after the limit: it never holds (in memory or in a temporary file) much more than the
    limit. Otherwise a huge upload to a tiny volume fills the server's temporary disk before it is refused."""
    srv = make_server(import_starter_catalog=False)
    srv.add_user("bigdata")
    c = srv.client("bigdata", timeout=600.0)
    assert c.post("/v3/pods/volumes", json={"volume_id": "tiny", "size_limit": 1}).status_code == 200
    total = 256 * MB
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = os.urandom(CHUNK)
    peak = {"spooled": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak["spooled"] = max(peak["spooled"], spooled_bytes())

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(total // CHUNK):
            yield block
        yield tail

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        r = c.post(
            "/v3/pods/volumes/tiny/upload/big.bin",
            content=body(),
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + total + len(tail)),
            },
        )
        status = r.status_code
    except Exception as exc:  # the server may close the connection once it refused: fine
        status = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        sampler.join()
    volume = srv.settings.data_dir / "storage" / "default" / "volumes" / "tiny"
    assert list(volume.iterdir()) == []
    assert status in (413, "413") or not isinstance(status, int), status
    assert peak["spooled"] < 32 * MB, (
        f"the server buffered {peak['spooled'] / MB:.0f} MB of a 256 MB upload to a 1 MB volume in a temporary "
        "file before refusing it"
    )
