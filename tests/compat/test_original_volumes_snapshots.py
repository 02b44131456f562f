"""The original Pods service's volume and snapshot tests, in their request shapes, against a real OpenPods server
with real containers: create / list / get / permissions / list files / upload / update / no-change update /
errors, and pods mounting the volume and the snapshot, started for real.

Sources (tapis-project/pods_service):
- ``tests/test_volumes.py`` @ 6d1ddaecb1dd10fa8989693795adf82684fc9897 (the upload is
  ``client.post(".../upload/config.json", files={"file": open("config.json", "rb")})``);
- ``tests/test_snapshots.py`` @ 2071dd0667c74d8beb0727c1b7ecf7d506f4571b;
- helpers of ``tests/test_utils.py`` @ 06905037723deb26b77e9c462823d53bad14ec88.
Bodies are ``data=json.dumps(...)`` with no Content-Type header.

The original's pods-with-mounts also send ``"pod_template": "template/neo4j"``, a field its own model forbids
(``extra = "forbid"``); here they name the ``http`` test image instead. Skipped message assertions: "Volume /
Snapshot permission deleted successfully" and the ``description`` 400 texts.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import basic_response_checks, image, original_client, response_format

DB_BACKENDS = "one"

TAG = uuid.uuid4().hex[:6]
VOL = f"testvolumesvolume{TAG}"
SNAP = f"testsnapshotssnapshot{TAG}"
POD_VOL = f"testsvolumesneo4j{TAG}"
POD_SNAP = f"testssnapshotsneo4j{TAG}"
ERR = f"testvolumessnapshoterror{TAG}"


@pytest.fixture(scope="module")
def client(module_pod_server: Any) -> Any:
    return original_client(module_pod_server.srv, module_pod_server.user)


def wait_available(module_pod_server: Any, path: str) -> dict[str, Any]:
    from .conftest import wait_until

    c = original_client(module_pod_server.srv, module_pod_server.user)
    return wait_until(lambda: (r := basic_response_checks(c.get(path)))["status"] == "AVAILABLE" and r,
                      what=f"{path} AVAILABLE")


def test_volume(client: Any, module_pod_server: Any, tmp_path: Path) -> None:
    assert basic_response_checks(client.get("/pods/volumes")) is not None
    result = basic_response_checks(
        client.post("/pods/volumes", data=json.dumps({"volume_id": VOL, "description": "Test volume"}))
    )
    assert result["volume_id"] == VOL
    assert any(v["volume_id"] == VOL for v in basic_response_checks(client.get("/pods/volumes")))
    assert wait_available(module_pod_server, f"/pods/volumes/{VOL}")["volume_id"] == VOL

    assert basic_response_checks(client.get(f"/pods/volumes/{VOL}/permissions"))["permissions"]
    result = basic_response_checks(
        client.post(f"/pods/volumes/{VOL}/permissions", data=json.dumps({"user": "testuser", "level": "READ"}))
    )
    assert "testuser:READ" in result["permissions"]
    basic_response_checks(client.delete(f"/pods/volumes/{VOL}/permissions/testuser"))

    assert isinstance(basic_response_checks(client.get(f"/pods/volumes/{VOL}/list")), list)
    config = tmp_path / "config.json"
    config.write_text('{"config": 1}')
    with open(config, "rb") as fh:
        basic_response_checks(client.post(f"/pods/volumes/{VOL}/upload/config.json", files={"file": fh}))
    listed = basic_response_checks(client.get(f"/pods/volumes/{VOL}/list"))
    assert any("config.json" in json.dumps(entry) for entry in listed)

    vol_def = {"description": "Test volume updated"}
    result = basic_response_checks(client.put(f"/pods/volumes/{VOL}", data=json.dumps(vol_def)))
    assert result["volume_id"] == VOL and result["description"] == "Test volume updated"
    rsp = client.put(f"/pods/volumes/{VOL}", data=json.dumps(vol_def))
    basic_response_checks(rsp)
    assert rsp.json()["message"] == "Incoming data made no changes to volume. Is incoming data equal to current data?"


def test_snapshot(client: Any, module_pod_server: Any) -> None:
    assert basic_response_checks(client.get("/pods/snapshots")) is not None
    snap_def = {"snapshot_id": SNAP, "description": "Test snapshot", "source_volume_path": "/",
                "source_volume_id": VOL, "destination_path": "/"}
    assert basic_response_checks(client.post("/pods/snapshots", data=json.dumps(snap_def)))["snapshot_id"] == SNAP
    assert any(s["snapshot_id"] == SNAP for s in basic_response_checks(client.get("/pods/snapshots")))
    assert wait_available(module_pod_server, f"/pods/snapshots/{SNAP}")["snapshot_id"] == SNAP

    assert basic_response_checks(client.get(f"/pods/snapshots/{SNAP}/permissions"))["permissions"]
    result = basic_response_checks(
        client.post(f"/pods/snapshots/{SNAP}/permissions", data=json.dumps({"user": "testuser", "level": "READ"}))
    )
    assert "testuser:READ" in result["permissions"]
    basic_response_checks(client.delete(f"/pods/snapshots/{SNAP}/permissions/testuser"))
    files = basic_response_checks(client.get(f"/pods/snapshots/{SNAP}/list"))
    assert isinstance(files, list) and any("config.json" in json.dumps(f) for f in files)

    snap_upd = {"description": "Test snapshot updated"}
    result = basic_response_checks(client.put(f"/pods/snapshots/{SNAP}", data=json.dumps(snap_upd)))
    assert result["snapshot_id"] == SNAP and result["description"] == "Test snapshot updated"
    rsp = client.put(f"/pods/snapshots/{SNAP}", data=json.dumps(snap_upd))
    basic_response_checks(rsp)
    assert rsp.json()["message"] == (
        "Incoming data made no changes to snapshot. Is incoming data equal to current data?"
    )


@pytest.mark.parametrize(("pod_id", "source", "kind"), [(POD_VOL, VOL, "tapisvolume"),
                                                        (POD_SNAP, SNAP, "tapissnapshot")],
                         ids=["volume", "snapshot"])  # stable ids: xdist workers must collect the same names
def test_pod_with_mount(client: Any, module_pod_server: Any, pod_id: str, source: str, kind: str) -> None:
    pod_def = {
        "pod_id": pod_id,
        "image": image("http"),
        "description": f"Test neo4j pod with mounted {kind}",
        "volume_mounts": {source: {"type": kind, "mount_path": "/var/lib/neo4j/import"}},
    }
    result = basic_response_checks(client.post("/pods", data=json.dumps(pod_def)))
    assert result["pod_id"] == pod_id and source in result["volume_mounts"]
    result = module_pod_server.wait_status(pod_id, "AVAILABLE")
    assert source in result["volume_mounts"]
    out = module_pod_server.exec_ok(pod_id, ["cat", "/var/lib/neo4j/import/config.json"])
    assert out["stdout"] == '{"config": 1}'


@pytest.mark.parametrize("description", ["Test" * 200, "cafè"])
@pytest.mark.parametrize("kind", ["volumes", "snapshots"])
def test_description_errors_400(client: Any, kind: str, description: str) -> None:
    body: dict[str, Any] = {"description": description}
    if kind == "volumes":
        body["volume_id"] = ERR
    else:
        body.update(snapshot_id=ERR, source_volume_path="/", source_volume_id=VOL, destination_path="/")
    rsp = client.post(f"/pods/{kind}", data=json.dumps(body))
    data = response_format(rsp)
    assert rsp.status_code == 400
    assert any("description" in m for m in data["message"])
    assert client.get(f"/pods/{kind}/{ERR}").status_code == 404


def test_teardown_order(client: Any) -> None:
    for pod_id in (POD_VOL, POD_SNAP):
        basic_response_checks(client.delete(f"/pods/{pod_id}"))
    basic_response_checks(client.delete(f"/pods/snapshots/{SNAP}"))
    basic_response_checks(client.delete(f"/pods/volumes/{VOL}"))
