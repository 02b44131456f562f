"""TapisUI's pod, volume and snapshot forms, in the payloads they send, against a real OpenPods server (API role,
SQLite and PostgreSQL), and the edges of the lenient parsing that makes them work: numbers as strings are read as
numbers (as the original's pydantic models read them), garbage stays a 400 that changes nothing, and JSON bodies
without a Content-Type header are JSON.

Sources (tapis-project/tapis-ui):
- ``src/app/Pods/_components/Wizards/PodWizard.tsx`` @ 802f305baba73b32ca0602c6df840968caab6133 — create pod:
  Formik text fields, so ``time_to_stop_*`` and every ``resources.*`` are strings; empty ones are pruned
  (``Common/AutoPruneEmptyFields.tsx`` @ 15cec40427ac796da2ea9f8f7307086d90c55537).
- ``src/app/Pods/_components/Wizards/PodWizardUtils.tsx`` @ 26e8628fea3d6e8a3e6cbcb6c4bb0206dad03aba — a new
  networking stanza is ``{port: '5000', protocol: 'http'}``; volume mounts ``{type, mount_path, sub_path}``.
- ``src/app/Pods/_components/Wizards/PodWizardEdit.tsx`` @ 0842bb368cd1c1027b68fbe72add37e02a70a077 — update pod:
  the same strings, networking ``{id: {protocol, port: '<text>'}}``, ``command`` JSON.parse'd from text.
- ``src/app/Pods/_components/Wizards/VolumeWizard.tsx`` @ 6e37876e2ee352e097eb5fc52dde7393ed1aaa93 and
  ``SnapshotWizard.tsx`` @ 1a2a3590d7092d6a8127ace3a5944b1602956d5d — ``size_limit`` from a text field.
TapisUI sends these through tapis-typescript's fetch client with ``Content-Type: application/json`` (httpx
``json=`` here); tapipy is used where it can express the call (it passes bodies through unchanged).

The numeric fields of the original's models (``service/models_pods.py`` @ 06905037…, ``models_volumes.py``,
``models_snapshots.py``): ``networking.*.port``, ``networking.*.cors_max_age``, ``resources.*``,
``time_to_stop_default``, ``time_to_stop_instance``, ``size_limit`` — and the exec timeouts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from openpods.store.tables import Pod, Snapshot, Volume

IMAGE = "localhost/openpods-test/http:latest"
USER = "uiuser"


@pytest.fixture(scope="module")
def srv(make_module_server: Any) -> Any:
    server = make_module_server(mem_min=16, cpu_min=10)
    server.allow_image("localhost/openpods-test/http")
    server.add_user(USER)
    return server


@pytest.fixture(scope="module")
def ui(srv: Any) -> Any:
    return srv.client(USER)


def test_create_pod_form_with_numbers_as_strings(ui: Any, srv: Any, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("uipod")
    # PodWizard after AutoPruneEmptyFields: filled text fields are strings, empty ones are gone.
    new_pod = {
        "pod_id": pod_id,
        "description": "made in TapisUI",
        "image": IMAGE,
        "time_to_stop_default": "43200",
        "time_to_stop_instance": "3600",
        "command": ["sh", "-c", "httpd -f -p 5000 -h /www"],
        "environment_variables": {"Key1": "Value1"},
        "networking": {"default": {"port": "5000", "protocol": "http"}, "custom01": {"port": "8080",
                                                                                   "protocol": "http"}},
        "resources": {"cpu_request": "250", "cpu_limit": "2000", "mem_request": "256", "mem_limit": "3072",
                      "gpus": "0"},
    }
    r = ui.post("/v3/pods", json=new_pod)
    assert r.status_code == 200, r.text
    pod = r.json()["result"]
    assert pod["networking"]["default"]["port"] == 5000 and pod["networking"]["custom01"]["port"] == 8080
    assert pod["time_to_stop_default"] == 43200 and pod["time_to_stop_instance"] == 3600
    assert pod["resources"] == {"cpu_request": 250, "cpu_limit": 2000, "mem_request": 256, "mem_limit": 3072,
                                "gpus": 0}
    row = srv.rows(Pod, tenant_id="default", pod_id=pod_id)[0]
    assert row["networking"]["default"]["port"] == 5000  # stored as a number
    assert row["resources"]["cpu_limit"] == 2000 and row["time_to_stop_instance"] == 3600

    # PodWizardEdit: the same fields as text, networking from its rows, command JSON.parse'd.
    update = {
        "description": "edited in TapisUI",
        "command": json.loads('["sh", "-c", "httpd -f -p 6000 -h /www"]'),
        "time_to_stop_default": "-1",
        "time_to_stop_instance": "7200",
        "networking": {"default": {"protocol": "http", "port": "6000"}},
        "resources": {"cpu_request": "100", "cpu_limit": "1000", "mem_request": "128", "mem_limit": "512",
                      "gpus": "0"},
    }
    r = ui.put(f"/v3/pods/{pod_id}", json=update)
    assert r.status_code == 200, r.text
    pod = r.json()["result"]
    assert pod["networking"]["default"]["port"] == 6000 and pod["time_to_stop_default"] == -1
    assert pod["resources"]["mem_limit"] == 512
    # Sending the same text again is "no change" (strings compare as the numbers they are).
    r = ui.put(f"/v3/pods/{pod_id}", json=update)
    assert r.status_code == 200 and r.json()["status"] == "error"


def test_create_pod_through_tapipy_with_strings(srv: Any, new_id: Callable[[str], str]) -> None:
    t = srv.tapis(USER)
    pod_id = new_id("uitapipy")
    pod = t.pods.create_pod(pod_id=pod_id, image=IMAGE, networking={"default": {"protocol": "http", "port": "5000"}},
                            resources={"cpu_limit": "1500"}, time_to_stop_default="600")
    assert pod.networking.default.port == 5000 and pod.resources.cpu_limit == 1500
    assert pod.time_to_stop_default == 600


def test_volume_and_snapshot_forms_send_size_limit_as_text(ui: Any, srv: Any, new_id: Callable[[str], str]) -> None:
    volume_id, snapshot_id = new_id("uivol"), new_id("uisnap")
    r = ui.post("/v3/pods/volumes", json={"volume_id": volume_id, "description": "from the form", "size_limit": "20"})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["size_limit"] == 20
    r = ui.put(f"/v3/pods/volumes/{volume_id}", json={"size_limit": "30"})
    assert r.status_code == 200, r.text
    assert srv.rows(Volume, tenant_id="default", volume_id=volume_id)[0]["size_limit"] == 30
    r = ui.post("/v3/pods/snapshots", json={"snapshot_id": snapshot_id, "description": "from the form",
                                             "size_limit": "20", "source_volume_id": volume_id,
                                             "source_volume_path": "/"})
    assert r.status_code == 200, r.text
    assert srv.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id)[0]["size_limit"] == 20


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("port", "abc"), ("port", ""), ("port", "1.5"), ("port", "1e999"), ("port", "0x10"), ("port", True),
        ("port", "true"), ("port", "99999"), ("port", "5"), ("port", [5000]),
        ("cpu_limit", "lots"), ("cpu_limit", "1e3"), ("cpu_limit", False), ("cpu_limit", "-5"),
        ("time_to_stop_default", "soon"), ("time_to_stop_default", ""), ("time_to_stop_instance", "1.5"),
        ("time_to_stop_instance", "-2"), ("cors_max_age", "1e999"), ("cors_max_age", "forever"),
    ],
)
def test_garbage_numbers_are_400_and_change_nothing(ui: Any, srv: Any, new_id: Callable[[str], str],
                                                    where: str, value: Any) -> None:
    pod_id = new_id("uibad")
    body: dict[str, Any] = {"pod_id": pod_id, "image": IMAGE}
    if where in ("port", "cors_max_age"):
        body["networking"] = {"default": {"protocol": "http", "port": 5000, where: value}}
    elif where == "cpu_limit":
        body["resources"] = {"cpu_limit": value}
    else:
        body[where] = value
    r = ui.post("/v3/pods", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["status"] == "error" and r.json()["message"]
    assert srv.count(Pod, tenant_id="default", pod_id=pod_id) == 0


@pytest.mark.parametrize("value", ["abc", "", "2.5", "1e999", True, "0", "-3"])
def test_garbage_size_limit_is_400(ui: Any, srv: Any, new_id: Callable[[str], str], value: Any) -> None:
    volume_id = new_id("uibadvol")
    r = ui.post("/v3/pods/volumes", json={"volume_id": volume_id, "size_limit": value})
    assert r.status_code == 400, r.text
    assert srv.count(Volume, tenant_id="default", volume_id=volume_id) == 0


@pytest.mark.parametrize(("field", "value"), [("pod_id", 12345), ("description", 42), ("image", ["x"]),
                                              ("environment_variables", {"A": 1}), ("command", "sleep 5")])
def test_non_numeric_fields_stay_strict(ui: Any, new_id: Callable[[str], str], field: str, value: Any) -> None:
    body: dict[str, Any] = {"pod_id": new_id("uistrict"), "image": IMAGE, field: value}
    assert ui.post("/v3/pods", json=body).status_code == 400


def test_json_without_content_type(srv: Any, new_id: Callable[[str], str]) -> None:
    """The original suite's ``client.post(url, data=json.dumps(body))``: no Content-Type header."""
    http = srv.client(USER)
    pod_id = new_id("nohdr")
    raw = json.dumps({"pod_id": pod_id, "image": IMAGE, "networking": {"default": {"port": 5000}}})
    request = http.build_request("POST", "/v3/pods", content=raw)
    assert "content-type" not in request.headers
    r = http.send(request)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["pod_id"] == pod_id
    # Updates, permissions, volumes and templates likewise.
    assert http.put(f"/v3/pods/{pod_id}", content=json.dumps({"description": "x"})).status_code == 200
    r = http.post(f"/v3/pods/{pod_id}/permissions", content=json.dumps({"user": "other", "level": "READ"}))
    assert r.status_code == 200 and "other:READ" in r.json()["result"]["permissions"]
    volume_id, template_id = new_id("nohdrvol"), new_id("nohdrtpl")
    assert http.post("/v3/pods/volumes", content=json.dumps({"volume_id": volume_id})).status_code == 200
    assert http.post("/v3/pods/templates", content=json.dumps({"template_id": template_id})).status_code == 200
    # Malformed JSON without a header is a 400, as with one.
    r = http.post("/v3/pods", content='{"pod_id": ')
    assert r.status_code == 400 and r.json()["status"] == "error"
    # Another declared type is not taken for JSON.
    r = http.post("/v3/pods", content=raw.replace(pod_id, new_id("plain")), headers={"Content-Type": "text/plain"})
    assert r.status_code == 400


def test_json_without_content_type_needs_auth_and_permission(srv: Any, new_id: Callable[[str], str]) -> None:
    owner = srv.client(USER)
    pod_id = new_id("nohdrperm")
    assert owner.post("/v3/pods", content=json.dumps({"pod_id": pod_id, "image": IMAGE})).status_code == 200
    srv.add_user("stranger")
    stranger = srv.client("stranger")
    r = stranger.put(f"/v3/pods/{pod_id}", content=json.dumps({"description": "mine now"}))
    assert r.status_code == 404  # no permission: the pod is invisible
    r = srv.client().put(f"/v3/pods/{pod_id}", content=json.dumps({"description": "anon"}))
    assert r.status_code == 401
    assert srv.rows(Pod, tenant_id="default", pod_id=pod_id)[0]["description"] == ""
