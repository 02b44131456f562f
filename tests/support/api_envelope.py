"""Assertions on the Tapis answer envelope (``{"status", "message", "result", "version", "metadata"}``) and the
URL probes that the volume and snapshot validation suites share.

Import with ``sys.path`` pointing at this folder (the suite runs with ``--import-mode=importlib``, where test
folders are not packages)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx


def _where(r: httpx.Response) -> tuple[str, str, int, str]:
    return (r.request.method, str(r.request.url), r.status_code, r.text[:300])


def ok(r: httpx.Response) -> Any:
    """A 200 success envelope; returns its ``result``."""
    assert r.status_code == 200, _where(r)
    assert r.json()["status"] == "success", r.text
    return r.json()["result"]


def error_text(r: httpx.Response) -> str:
    """An error envelope (JSON, status ``error``); returns its message, a list joined with `` | ``."""
    assert r.headers["content-type"] == "application/json", (r.headers, _where(r))
    body = r.json()
    assert body["status"] == "error", r.text
    message = body["message"]
    return " | ".join(message) if isinstance(message, list) else message


def refused(r: httpx.Response, *statuses: int) -> str:
    """An error envelope with one of ``statuses`` and a message; returns the message text."""
    assert r.status_code in statuses, (statuses, *_where(r))
    text = error_text(r)
    assert text, _where(r)
    return text


def names_on_disk(server: Any, kind_dir: str, tenant: str = "default") -> list[str]:
    """The object folders of one storage kind (``volumes``, ``snapshots``) of a tenant."""
    top: Path = server.settings.data_dir / "storage" / tenant / kind_dir
    return sorted(p.name for p in top.iterdir()) if top.exists() else []


def probe_kwargs(method: str, suffix: str) -> dict[str, Any]:
    """A well-formed request for ``method`` on ``<object url><suffix>``: the body is never why it fails."""
    if method == "PUT":
        return {"json": {"description": "x"}}
    if suffix.startswith("/upload"):
        return {"files": {"file": ("a", b"a")}}
    if method == "POST" and suffix == "/permissions":
        return {"json": {"user": "x", "level": "READ"}}
    return {}


def assert_unknown_ids_are_404(
    client: httpx.Client, collection: str, object_ids: Iterable[str], calls: Iterable[tuple[str, str]]
) -> None:
    """Every ``(method, suffix)`` call on ``<collection>/<id><suffix>`` is a 404 error naming the id (or saying
    "not found") for every id that names no object."""
    calls = list(calls)
    for object_id in object_ids:
        for method, suffix in calls:
            r = client.request(method, f"{collection}/{object_id}{suffix}", **probe_kwargs(method, suffix))
            text = refused(r, 404)
            assert object_id[:50] in text or "not found" in text.lower(), (object_id, method, suffix, text)


def assert_control_characters_are_4xx(
    server: Any, user: str, collection: str, bad: str, calls: Iterable[tuple[str, str]], object_id: str
) -> None:
    """An id with a NUL byte or another control character (``bad``, URL-encoded) names nothing: 400 or 404 on
    every call, never a 500 (PostgreSQL refuses NUL bytes in query parameters); likewise as the user of a
    permission of the existing ``object_id``."""
    for method, suffix in calls:
        with server.client(user) as fresh:  # a 500 may close the connection: one client per call
            r = fresh.request(method, f"{collection}/{bad}{suffix}", **probe_kwargs(method, suffix))
        assert r.status_code in (400, 404), (method, suffix, r.status_code, r.text[:200])
    with server.client(user) as fresh:
        r = fresh.delete(f"{collection}/{object_id}/permissions/{bad}")
    assert r.status_code in (400, 404), (r.status_code, r.text[:200])
