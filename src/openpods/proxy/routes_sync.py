"""``openpods routes-sync``: hand the API's routes to a Traefik file provider as soon as they change.

The cluster shape runs Traefik apart from the API. Traefik's HTTP provider polls (``pollInterval``, 1 s) and
sends no ``If-None-Match``, so a new route waited up to a second and every poll moved the whole config. This
loop runs next to Traefik (a sidecar sharing a directory with it) and long-polls ``/traefik-config?wait=…`` with
the ETag it holds: the API answers the moment it publishes a new config (or 304 when ``wait`` runs out), the
loop writes it atomically into the directory, and Traefik's file provider applies it within milliseconds.

Contract: after :func:`fetch_once` returned, ``out`` holds a complete config (never a partial write: a
temporary file with an extension Traefik ignores, renamed into place). On an error the last good file stays
(Traefik keeps serving it) and the loop retries with backoff.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)
SECRET_HEADER = "X-OpenPods-Proxy-Secret"
CONFIG_SUFFIXES = (".yml", ".yaml", ".toml", ".json")  # what Traefik's file provider reads


@dataclass
class SyncState:
    etag: str | None = None
    writes: int = 0  # configs written (tests, logs)


def staging_dir(directory: Path) -> Path:
    """Where temporary files are written before being renamed into ``directory``: next to it, on the same
    filesystem, but outside it. Traefik's file provider reloads on any event in its directory and throttles
    reloads (``providersThrottleDuration``): a temporary file created inside would cost the real change one
    throttle period. Falls back to ``directory`` itself where its parent is not writable."""
    staging = directory.parent / f".{directory.name}.staging"
    try:
        staging.mkdir(mode=0o700, exist_ok=True)
        return staging
    except OSError:
        return directory


def write_atomically(out: Path, body: bytes, staging: Path | None = None) -> None:
    staging = staging or out.parent
    tmp = staging / f".{out.name}.{os.getpid()}.tmp"  # Traefik reads .yml/.yaml/.toml/.json only
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)


def fetch_once(client: httpx.Client, url: str, secret: str, out: Path, state: SyncState, wait_sec: float,
               staging: Path | None = None) -> bool:
    """One long-poll; True when a new config was written. Raises httpx errors and on an unexpected status."""
    headers = {SECRET_HEADER: secret}
    if state.etag and out.exists():
        headers["If-None-Match"] = state.etag
    response = client.get(url, params={"wait": wait_sec} if "If-None-Match" in headers else None,
                          headers=headers, timeout=httpx.Timeout(10.0, read=wait_sec + 30.0))
    if response.status_code == 304:
        return False
    if response.status_code != 200:
        raise httpx.HTTPStatusError(f"{url} answered {response.status_code}: {response.text[:200]}",
                                    request=response.request, response=response)
    write_atomically(out, response.content, staging)
    state.etag = response.headers.get("etag")
    state.writes += 1
    return True


def copy_static(include: Path, directory: Path, staging: Path | None = None) -> list[str]:
    """Copy the config files of ``include`` (e.g. a mounted ConfigMap: the API's own router) next to the routes
    file, each atomically, so that one directory, and so one file provider, holds the whole dynamic config."""
    copied = []
    for source in sorted(include.iterdir()):
        if source.name.startswith(".") or source.suffix not in CONFIG_SUFFIXES or not source.is_file():
            continue  # a ConfigMap mount's ..data and timestamped directories; other files
        write_atomically(directory / source.name, source.read_bytes(), staging)
        copied.append(source.name)
    return copied


def run(api_url: str, secret: str, out: Path, *, wait_sec: float = 30.0, retry_sec: tuple[float, float] = (0.5, 10.0),
        include: Path | None = None, stop: threading.Event | None = None) -> None:
    """Keep ``out`` equal to the API's published routes until ``stop`` is set (forever without one); first copy
    the files of ``include`` into ``out``'s directory."""
    stop = stop or threading.Event()
    url = api_url.rstrip("/") + "/traefik-config"
    state = SyncState()
    pause = retry_sec[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out.parent)
    if include is not None:
        log.info("copied %s from %s", ", ".join(copy_static(include, out.parent, staging)) or "nothing", include)
    with httpx.Client() as client:
        while not stop.is_set():
            try:
                started = time.monotonic()
                if fetch_once(client, url, secret, out, state, wait_sec, staging):
                    log.info("routes updated (%s, %d bytes) in %.0f ms", state.etag, out.stat().st_size,
                             (time.monotonic() - started) * 1000)
                pause = retry_sec[0]
            except (httpx.HTTPError, OSError) as exc:
                log.warning("could not fetch the routes from %s (%s); retrying in %.1f s", url, exc, pause)
                stop.wait(pause)
                pause = min(pause * 2, retry_sec[1])
