"""Bad input to the snapshot endpoints: 4xx with a message that names the field, and nothing stored -- no row,
no permission, no directory, no change to an existing snapshot.

Cron syntax: 5 fields (UTC) or @hourly/@daily/@midnight/@weekly/@monthly/@yearly/@annually; ``@reboot``,
6-7 fields, ``H`` and expressions that never fire are refused. Retention: ``keep_last=N`` (N >= 1) and/or
``max_age=<int><s|m|h|d|w>``, comma separated, each at most once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from api_envelope import (
    assert_control_characters_are_4xx,
    assert_unknown_ids_are_404,
    error_text,
    names_on_disk,
)

from openpods.store.tables import Permission, Snapshot

OWNER = "snapvalid"
SOURCE = "snapsource"


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    handle = make_module_server(import_starter_catalog=False)
    handle.add_user(OWNER)
    c = handle.client(OWNER)
    assert c.post("/v3/pods/volumes", json={"volume_id": SOURCE}).status_code == 200
    r = c.post(f"/v3/pods/volumes/{SOURCE}/upload/data/f.txt", files={"file": ("f", b"f")})
    assert r.status_code == 200, r.text
    return handle


@pytest.fixture(scope="module")
def c(srv: Any) -> httpx.Client:
    return srv.client(OWNER)


def create(c: httpx.Client, snapshot_id: Any, **fields: Any) -> httpx.Response:
    body = {"snapshot_id": snapshot_id, "source_volume_id": SOURCE, "source_volume_path": "/data", **fields}
    return c.post("/v3/pods/snapshots", json=body)


def refused(
    srv: Any, r: httpx.Response, snapshot_id: Any, before: list[str], *words: str, status: int = 400
) -> None:
    assert r.status_code == status, r.text
    text = error_text(r)
    for word in words:
        assert word in text, (word, text)
    if isinstance(snapshot_id, str):
        assert srv.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id) == []
        assert srv.rows(Permission, object_type="snapshot", object_id=snapshot_id) == []
    assert names_on_disk(srv, "snapshots") == before


BAD_IDS = {
    "empty": "",
    "too-short": "ab",
    "uppercase": "Snap",
    "digit-first": "1snap",
    "hyphen": "my-snap",
    "dotdot": "..",
    "slash": "a/b",
    "too-long": "s" * 129,
    "int": 7,
    "null": None,
}


@pytest.mark.parametrize("snapshot_id", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_bad_snapshot_id(srv: Any, c: httpx.Client, snapshot_id: Any) -> None:
    before = names_on_disk(srv, "snapshots")
    refused(srv, create(c, snapshot_id), snapshot_id, before, "snapshot_id")


@pytest.mark.parametrize("source", ["", "Bad-Volume", "..", "a/b", None, 3], ids=str)
def test_bad_source_volume_id(srv: Any, c: httpx.Client, new_id: Callable, source: Any) -> None:
    snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
    refused(srv, create(c, snapshot_id, source_volume_id=source), snapshot_id, before, "source_volume_id")


def test_missing_required_fields(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    for missing in ("snapshot_id", "source_volume_id", "source_volume_path"):
        snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
        body = {"snapshot_id": snapshot_id, "source_volume_id": SOURCE, "source_volume_path": "/data"}
        del body[missing]
        r = c.post("/v3/pods/snapshots", json=body)
        refused(srv, r, snapshot_id, before, missing)


def test_missing_source_volume(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
    r = create(c, snapshot_id, source_volume_id="nosuchvolume")
    refused(srv, r, snapshot_id, before, "nosuchvolume", status=404)


@pytest.mark.parametrize("path", ["/nope", "/data/nope.txt", "/data/f.txt/below"], ids=str)
def test_missing_source_path(srv: Any, c: httpx.Client, new_id: Callable, path: str) -> None:
    snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
    r = create(c, snapshot_id, source_volume_path=path, destination_path="copy")
    assert r.status_code in (400, 404), r.text
    refused(srv, r, snapshot_id, before, status=r.status_code)
    assert "nope" in error_text(r) or "f.txt" in error_text(r) or "directory" in error_text(r)


@pytest.mark.parametrize("path", ["data", "", "relative/path", None, 5], ids=str)
def test_source_path_must_be_absolute(srv: Any, c: httpx.Client, new_id: Callable, path: Any) -> None:
    snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
    refused(srv, create(c, snapshot_id, source_volume_path=path), snapshot_id, before, "source_volume_path")


BAD_SIZE_LIMITS = {"zero": 0, "negative": -1, "too-big": 1024 * 1024 + 1, "text": "ten", "float": 2.5}


@pytest.mark.parametrize("size_limit", list(BAD_SIZE_LIMITS.values()), ids=list(BAD_SIZE_LIMITS))
def test_bad_size_limit(srv: Any, c: httpx.Client, new_id: Callable, size_limit: Any) -> None:
    snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
    refused(srv, create(c, snapshot_id, size_limit=size_limit), snapshot_id, before, "size_limit")


BAD_CRONS = {
    "minute-61": "61 * * * *",
    "reboot": "@reboot",
    "unknown-alias": "@sometimes",
    "four-fields": "* * * *",
    "six-fields": "0 * * * * *",
    "seven-fields": "0 0 * * * * 2030",
    "hour-24": "0 24 * * *",
    "day-32": "0 0 32 * *",
    "month-13": "0 0 1 13 *",
    "weekday-8": "0 0 * * 8",
    "never-fires": "0 0 30 2 *",
    "hashed": "H * * * *",
    "words": "every day",
    "negative": "-1 * * * *",
    "step-zero": "*/0 * * * *",
    "newline": "0 0 * * *\n0 1 * * *",
    "shell": "* * * * *; rm -rf /",
}


@pytest.mark.parametrize("cron", list(BAD_CRONS.values()), ids=list(BAD_CRONS))
def test_bad_cron(srv: Any, c: httpx.Client, new_id: Callable, cron: str) -> None:
    snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
    refused(srv, create(c, snapshot_id, cron=cron), snapshot_id, before, "cron")


BAD_RETENTION = {
    "keep-last-0": "keep_last=0",
    "keep-last-negative": "keep_last=-1",
    "keep-last-word": "keep_last=many",
    "keep-last-float": "keep_last=1.5",
    "max-age-bad-unit": "max_age=5x",
    "max-age-no-unit": "max_age=5",
    "max-age-0": "max_age=0d",
    "max-age-huge": "max_age=99999999w",
    "unknown-rule": "keep_first=3",
    "twice": "keep_last=1,keep_last=2",
    "empty-rule": "keep_last=1,,max_age=1d",
    "trailing-comma": "keep_last=1,",
    "no-equals": "keep_last 3",
    "free-text": "keep a few",
}


@pytest.mark.parametrize("policy", list(BAD_RETENTION.values()), ids=list(BAD_RETENTION))
def test_bad_retention_policy(srv: Any, c: httpx.Client, new_id: Callable, policy: str) -> None:
    snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
    refused(
        srv,
        create(c, snapshot_id, cron="@daily", retention_policy=policy),
        snapshot_id,
        before,
        "retention_policy",
    )


def test_bad_cron_and_retention_are_both_reported(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    snapshot_id, before = new_id("snap"), names_on_disk(srv, "snapshots")
    r = create(c, snapshot_id, cron="61 * * * *", retention_policy="max_age=5x")
    refused(srv, r, snapshot_id, before, "cron", "retention_policy")
    assert isinstance(r.json()["message"], list) and len(r.json()["message"]) == 2


@pytest.mark.parametrize(
    ("cron", "policy", "stored_policy"),
    [
        ("@hourly", "keep_last=7", "keep_last=7"),
        ("*/15 * * * *", "max_age=30d", "max_age=30d"),
        ("0 3 * * MON-FRI", " keep_last = 2 , max_age=48h ", "keep_last=2,max_age=2d"),
        ("  @daily  ", "", ""),
        ("", "keep_last=3", "keep_last=3"),
    ],
    ids=["hourly", "every-15", "weekdays-canonical", "trimmed-alias", "policy-without-cron"],
)
def test_good_schedules_are_stored(
    srv: Any, c: httpx.Client, new_id: Callable, cron: str, policy: str, stored_policy: str
) -> None:
    snapshot_id = new_id("snap")
    r = create(c, snapshot_id, cron=cron, retention_policy=policy)
    assert r.status_code == 200, r.text
    got = c.get(f"/v3/pods/snapshots/{snapshot_id}").json()["result"]
    assert got["cron"] == cron.strip()
    assert got["retention_policy"] == stored_policy


@pytest.mark.parametrize(
    "body",
    [
        {"cron": "61 * * * *"},
        {"cron": "@reboot"},
        {"retention_policy": "keep_last=0"},
        {"retention_policy": "max_age=5x"},
        {"size_limit": 0},
        {"size_limit": -3},
        {"description": "é"},
        {"source_volume_id": SOURCE},
        {"destination_path": "/x"},
        {"snapshot_id": "other"},
        {"bogus": 1},
    ],
    ids=[
        "cron-61",
        "cron-reboot",
        "keep-last-0",
        "max-age-5x",
        "size-limit-0",
        "size-limit-negative",
        "description",
        "source-volume-id",
        "destination-path",
        "snapshot-id",
        "unknown",
    ],
)
def test_bad_update_changes_nothing(
    srv: Any, c: httpx.Client, new_id: Callable, body: dict[str, Any]
) -> None:
    snapshot_id = new_id("snap")
    assert create(c, snapshot_id, cron="@daily", retention_policy="keep_last=2").status_code == 200
    row = srv.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id)
    r = c.put(f"/v3/pods/snapshots/{snapshot_id}", json=body)
    assert r.status_code == 400, r.text
    assert next(iter(body)) in error_text(r)
    assert srv.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id) == row


def test_update_can_clear_the_schedule(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    snapshot_id = new_id("snap")
    assert create(c, snapshot_id, cron="@daily", retention_policy="keep_last=2").status_code == 200
    r = c.put(f"/v3/pods/snapshots/{snapshot_id}", json={"cron": "", "retention_policy": ""})
    assert r.status_code == 200, r.text
    got = c.get(f"/v3/pods/snapshots/{snapshot_id}").json()["result"]
    assert (got["cron"], got["retention_policy"]) == ("", "")


def test_update_of_only_the_cron_keeps_the_retention_policy(
    srv: Any, c: httpx.Client, new_id: Callable
) -> None:
    snapshot_id = new_id("snap")
    assert create(c, snapshot_id, cron="@daily", retention_policy="keep_last=2").status_code == 200
    r = c.put(f"/v3/pods/snapshots/{snapshot_id}", json={"cron": "@hourly"})
    assert r.status_code == 200, r.text
    got = c.get(f"/v3/pods/snapshots/{snapshot_id}").json()["result"]
    assert (got["cron"], got["retention_policy"]) == ("@hourly", "keep_last=2")
    r = c.put(f"/v3/pods/snapshots/{snapshot_id}", json={"retention_policy": "max_age=1w"})
    assert r.status_code == 200, r.text
    got = c.get(f"/v3/pods/snapshots/{snapshot_id}").json()["result"]
    assert (got["cron"], got["retention_policy"]) == ("@hourly", "max_age=1w")


URL_CALLS = [  # every call on one snapshot's URL
    ("GET", ""),
    ("PUT", ""),
    ("DELETE", ""),
    ("GET", "/list"),
    ("GET", "/contents/a.txt"),
    ("GET", "/permissions"),
    ("POST", "/permissions"),
    ("DELETE", "/permissions/someone"),
]


def test_unknown_snapshot_ids_in_urls_are_404(srv: Any, c: httpx.Client) -> None:
    assert_unknown_ids_are_404(c, "/v3/pods/snapshots", ("nosuchsnapshot", "BAD-ID", "x"), URL_CALLS)


def test_snapshots_cannot_be_uploaded_to(srv: Any, c: httpx.Client, new_id: Callable) -> None:
    snapshot_id = new_id("snap")
    assert create(c, snapshot_id).status_code == 200
    r = c.post(f"/v3/pods/snapshots/{snapshot_id}/upload/data/new.txt", files={"file": ("f", b"x")})
    assert r.status_code in (404, 405), r.text
    assert not (
        srv.settings.data_dir / "storage" / "default" / "snapshots" / snapshot_id / "data" / "new.txt"
    ).exists()


@pytest.mark.parametrize("bad", ["a%00b", "%00", "a%0ab"], ids=["nul", "only-nul", "newline"])
def test_control_characters_in_url_ids_are_4xx(srv: Any, new_id: Callable, bad: str) -> None:
    """An id with a NUL byte or another control character names nothing: 404 or 400 on every snapshot
    endpoint, and as the user of a permission; never a 500 (PostgreSQL refuses NUL bytes in query
    parameters)."""
    snapshot_id = new_id("snap")
    assert create(srv.client(OWNER), snapshot_id).status_code == 200
    assert_control_characters_are_4xx(srv, OWNER, "/v3/pods/snapshots", bad, URL_CALLS, snapshot_id)
