"""Every 2xx response of every operation validates against the official spec's response schema (issue 10,
item 8): ``*_ts`` fields are RFC 3339 date-times with a zone, no ``null`` where the spec's type has none,
``upload_to_volume``'s result is a string, and no field the spec forbids (``additionalProperties: false``).

Validation is schemathesis' own (``APIOperation.validate_response``, JSON Schema with formats), against
/work/shared/reference/openapi_v3-pods.yml. A real server (SQLite and PostgreSQL), no container runtime:
operations that need a running container (exec, upload_to_pod, upload_to_jupyter) are covered by their
integration suites and only listed here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dateutil.parser
import httpx
import pytest
import schemathesis
import tapipy

# The official spec: the project's reference copy, else the identical one tapipy ships.
SPEC = Path("/work/shared/reference/openapi_v3-pods.yml")
if not SPEC.exists():
    SPEC = Path(tapipy.__file__).parent / "resources" / "openapi_v3-pods.yml"

# Operations this module cannot reach without a running container or a browser login.
NEEDS_CONTAINER = {"exec_pod_commands", "upload_to_pod", "upload_to_jupyter", "pod_auth", "pod_auth_callback"}
# Answers with the HTTP status it is given (Traefik's error pages), never 200: checked for its envelope below.
NOT_2XX = {"error_handler", "traefik_config"}
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
IMAGE = "localhost/openpods-test/http"
JUPYTER = "jupyterlab"


@pytest.fixture(scope="module")
def schema() -> Any:
    return schemathesis.openapi.from_path(str(SPEC))


class Checker:
    """Sends requests and validates each 2xx response against the spec operation it belongs to."""

    def __init__(self, schema: Any, client: httpx.Client) -> None:
        self.schema, self.client = schema, client
        self.validated: set[str] = set()

    def __call__(self, method: str, template: str, path: str | None = None, **kwargs: Any) -> httpx.Response:
        url = ("" if template.startswith(("/traefik-config", "/healthcheck", "/error-handler")) else "/v3") + (
            path or template
        )
        response = self.client.request(method, url, **kwargs)
        operation = self.schema[template][method]
        if 200 <= response.status_code < 300:
            response.request.read()  # multipart bodies are streams; schemathesis reads the request too
            operation.validate_response(response)
            if response.headers.get("content-type") == "application/json":
                _no_nulls_or_naive_times(response.json())
            self.validated.add(operation.definition.raw["operationId"])
        return response


def _no_nulls_or_naive_times(value: Any, where: str = "") -> None:
    """Beyond the schema: every ``*_ts`` anywhere is RFC 3339 with a ``Z`` zone."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("_ts") and item is not None:
                assert isinstance(item, str) and RFC3339_Z.match(item), f"{where}{key}: {item!r}"
            _no_nulls_or_naive_times(item, f"{where}{key}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_nulls_or_naive_times(item, f"{where}{i}.")


@pytest.fixture(scope="module")
def check(make_module_server: Any, schema: Any) -> Iterator[Checker]:
    srv = make_module_server()
    srv.allow_image(IMAGE)
    srv.add_user("bob")
    yield Checker(schema, srv.client("admin"))


def test_every_operation_conforms(check: Checker, schema: Any) -> None:
    ok = check
    # --- misc (app-root paths)
    ok("GET", "/healthcheck")
    err = ok("GET", "/error-handler/{status}", "/error-handler/502")
    assert err.status_code == 502 and set(err.json()) == {"result", "status", "message", "version", "metadata"}
    # --- images
    ok("GET", "/pods/images")
    assert ok("POST", "/pods/images", json={"image": "localhost/schema/one", "tenants": ["**"]}).status_code == 200
    ok("POST", "/pods/images/bulk", json=[{"image": "localhost/schema/two", "tenants": ["default"]}])
    ok("GET", "/pods/images/{image_id}", "/pods/images/localhost/schema/one")
    ok("DELETE", "/pods/images/{image_id}", "/pods/images/localhost/schema/two")
    # --- volumes
    vol = "schemavol"
    assert ok("POST", "/pods/volumes", json={"volume_id": vol, "description": "d"}).status_code == 200
    ok("GET", "/pods/volumes")
    ok("GET", "/pods/volumes/{volume_id}", f"/pods/volumes/{vol}")
    ok("PUT", "/pods/volumes/{volume_id}", f"/pods/volumes/{vol}", json={"description": "changed"})
    ok("PUT", "/pods/volumes/{volume_id}", f"/pods/volumes/{vol}", json={"description": "changed"})  # no change
    up = ok("POST", "/pods/volumes/{volume_id}/upload/{path}", f"/pods/volumes/{vol}/upload/dir/a.txt",
            files={"file": ("a.txt", b"hello", "text/plain")})
    assert up.status_code == 200 and isinstance(up.json()["result"], str)
    ok("GET", "/pods/volumes/{volume_id}/list", f"/pods/volumes/{vol}/list")
    ok("GET", "/pods/volumes/{volume_id}/contents/{path}", f"/pods/volumes/{vol}/contents/dir/a.txt")
    ok("GET", "/pods/volumes/{volume_id}/permissions", f"/pods/volumes/{vol}/permissions")
    ok("POST", "/pods/volumes/{volume_id}/permissions", f"/pods/volumes/{vol}/permissions",
       json={"user": "bob", "level": "READ"})
    ok("DELETE", "/pods/volumes/{volume_id}/permissions/{user}", f"/pods/volumes/{vol}/permissions/bob")
    # --- snapshots
    snap = "schemasnap"
    assert ok("POST", "/pods/snapshots", json={"snapshot_id": snap, "source_volume_id": vol,
                                               "source_volume_path": "/dir"}).status_code == 200
    ok("GET", "/pods/snapshots")
    ok("GET", "/pods/snapshots/{snapshot_id}", f"/pods/snapshots/{snap}")
    ok("PUT", "/pods/snapshots/{snapshot_id}", f"/pods/snapshots/{snap}", json={"description": "x"})
    ok("GET", "/pods/snapshots/{snapshot_id}/list", f"/pods/snapshots/{snap}/list")
    for _ in range(600):  # the copy runs in the background
        if check.client.get(f"/v3/pods/snapshots/{snap}").json()["result"]["status"] != "CREATING":
            break
        time.sleep(0.05)
    r = ok("GET", "/pods/snapshots/{snapshot_id}/contents/{path}", f"/pods/snapshots/{snap}/contents/dir/a.txt")
    assert r.status_code == 200, (r.text, check.client.get(f"/v3/pods/snapshots/{snap}/list").text)
    ok("GET", "/pods/snapshots/{snapshot_id}/permissions", f"/pods/snapshots/{snap}/permissions")
    ok("POST", "/pods/snapshots/{snapshot_id}/permissions", f"/pods/snapshots/{snap}/permissions",
       json={"user": "bob", "level": "USER"})
    ok("DELETE", "/pods/snapshots/{snapshot_id}/permissions/{user}", f"/pods/snapshots/{snap}/permissions/bob")
    # --- templates
    tpl = "schematpl"
    assert ok("POST", "/pods/templates", json={"template_id": tpl, "description": "t"}).status_code == 200
    ok("GET", "/pods/templates")
    ok("GET", "/pods/templates/{template_id}", f"/pods/templates/{tpl}")
    ok("PUT", "/pods/templates/{template_id}", f"/pods/templates/{tpl}", json={"description": "t2"})
    tag = ok("POST", "/pods/templates/{template_id}/tags", f"/pods/templates/{tpl}/tags",
             json={"pod_definition": {"image": IMAGE, "networking": {"default": {"protocol": "http", "port": 5000}}},
                   "commit_message": "first", "tag": "v1"})
    assert tag.status_code == 200, tag.text
    ok("GET", "/pods/templates/tags")
    ok("GET", "/pods/templates/{template_id}/tags", f"/pods/templates/{tpl}/tags")
    ok("GET", "/pods/templates/{template_id}/tags/{tag_id}", f"/pods/templates/{tpl}/tags/v1")
    ok("GET", "/pods/templates/{template_id}/permissions", f"/pods/templates/{tpl}/permissions")
    ok("POST", "/pods/templates/{template_id}/permissions", f"/pods/templates/{tpl}/permissions",
       json={"user": "bob", "level": "READ"})
    ok("DELETE", "/pods/templates/{template_id}/permissions/{user}", f"/pods/templates/{tpl}/permissions/bob")
    # --- pods: one with nothing optional set (nulls in the database), one from the template
    pod = "schemapod"
    created = ok("POST", "/pods", json={"pod_id": pod, "image": IMAGE, "status_requested": "OFF"})
    assert created.status_code == 200, created.text
    view = created.json()["result"]
    assert view["command"] == [] and view["arguments"] == []
    assert "time_to_stop_ts" not in view and "start_instance_ts" not in view
    assert "time_to_stop_instance" not in view
    assert ok("POST", "/pods", json={"pod_id": "schemapodt", "template": f"{tpl}:v1"}).status_code == 200
    ok("GET", "/pods")
    ok("GET", "/pods/{pod_id}", f"/pods/{pod}")
    ok("PUT", "/pods/{pod_id}", f"/pods/{pod}", json={"description": "new", "time_to_stop_instance": 600})
    ok("GET", "/pods/{pod_id}/derived", "/pods/schemapodt/derived")
    ok("GET", "/pods/{pod_id}/credentials", f"/pods/{pod}/credentials")
    ok("GET", "/pods/{pod_id}/logs", f"/pods/{pod}/logs")
    ok("GET", "/pods/{pod_id}/permissions", f"/pods/{pod}/permissions")
    ok("POST", "/pods/{pod_id}/permissions", f"/pods/{pod}/permissions", json={"user": "bob", "level": "READ"})
    ok("DELETE", "/pods/{pod_id}/permissions/{user}", f"/pods/{pod}/permissions/bob")
    ok("GET", "/pods/{pod_id}/start", f"/pods/{pod}/start")
    ok("GET", "/pods/{pod_id}/restart", f"/pods/{pod}/restart")
    ok("GET", "/pods/{pod_id}/stop", f"/pods/{pod}/stop")
    ok("POST", "/pods/{pod_id_net}/save_pod_as_template_tag", f"/pods/{pod}/save_pod_as_template_tag",
       json={"template_id": tpl, "commit_message": "saved", "tag": "saved"})
    jupyter = {"pod_definition": {"image": IMAGE}, "commit_message": "j"}
    assert check.client.post("/v3/pods/templates", json={"template_id": JUPYTER}).status_code == 200
    assert check.client.post(f"/v3/pods/templates/{JUPYTER}/tags", json=jupyter).status_code == 200
    assert ok("GET", "/pods/jupyter/ensure").status_code == 200
    # --- deletes last
    ok("DELETE", "/pods/{pod_id}", "/pods/schemapodt")
    ok("DELETE", "/pods/{pod_id}", f"/pods/{pod}")
    ok("DELETE", "/pods/snapshots/{snapshot_id}", f"/pods/snapshots/{snap}")
    ok("DELETE", "/pods/volumes/{volume_id}", f"/pods/volumes/{vol}")
    ok("DELETE", "/pods/templates/{template_id}", f"/pods/templates/{tpl}")

    every = {
        op.definition.raw["operationId"]
        for op in (result.ok() for result in schema.get_all_operations())
    }
    missing = every - check.validated - NEEDS_CONTAINER - NOT_2XX
    assert not missing, f"operations never answered 2xx here: {sorted(missing)}"


def test_timestamps_are_utc_with_zone(check: Checker) -> None:
    before = datetime.now(UTC)
    created = check("POST", "/pods/volumes", json={"volume_id": "schematime"}).json()["result"]
    stamp = datetime.fromisoformat(created["creation_ts"])
    assert stamp.tzinfo is not None and stamp.utcoffset().total_seconds() == 0
    assert abs((stamp - before).total_seconds()) < 3600  # UTC, not local time read as UTC


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_tapisui_date_parsing_reads_our_timestamps(check: Checker) -> None:
    """TapisUI's generated client (tapis-typescript, 1.9-era models) does ``new Date(json['creation_ts'])``; a
    naive ISO string would be read as the browser's local time, ours must give the exact UTC instant."""
    stamp = check("POST", "/pods/volumes", json={"volume_id": "schemajs"}).json()["result"]["creation_ts"]
    script = f"const d = new Date({stamp!r}); if (isNaN(d)) process.exit(3); console.log(d.toISOString());"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, env={"TZ": "America/Chicago"},
                         check=True).stdout.strip()
    expected = datetime.fromisoformat(stamp).astimezone(UTC)
    assert out == expected.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expected.microsecond // 1000:03d}Z"


def test_tapipy_reads_our_responses(check: Checker, make_module_server: Any) -> None:
    """The unmodified tapipy client still turns our responses into results (it keeps timestamps as strings
    and maps a string result to a string)."""
    srv = make_module_server()
    srv.allow_image(IMAGE)
    t = srv.tapis("admin")
    pod = t.pods.create_pod(pod_id="tapipyschema", image=IMAGE, status_requested="OFF")
    assert pod.command == [] and RFC3339_Z.match(pod.creation_ts)
    assert datetime.fromisoformat(pod.update_ts).tzinfo is not None
    # python-dateutil (a tapipy dependency, what Tapis client code uses to parse dates) reads it as UTC too.
    assert dateutil.parser.isoparse(pod.creation_ts) == datetime.fromisoformat(pod.creation_ts)
    assert pod.get("time_to_stop_ts") is None
    t.pods.create_volume(volume_id="tapipyvol")
    result = t.pods.upload_to_volume(volume_id="tapipyvol", path="x.txt", file=b"abc")
    assert isinstance(result, str)
