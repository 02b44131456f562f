"""The original Pods service's own pod tests, in their request shapes, against a real OpenPods server with real
containers: create / list / get / logs / credentials / permissions / update / no-change update / errors / delete,
plus the suite's exec helper, images, and uploads through unmodified tapipy.

Sources (tapis-project/pods_service):
- ``tests/test_pods.py`` @ 0d0dfe085f5aceeff1f477c77db7a8091b6c827f — every pod request below; bodies are
  ``client.post("/pods", data=json.dumps(pod_def), headers=headers)``: JSON text with NO Content-Type header.
- ``tests/test_utils.py`` @ 06905037723deb26b77e9c462823d53bad14ec88 — ``headers`` (only X-Tapis-Token),
  ``response_format``, ``basic_response_checks``, and ``exec_command`` (``{"commands": [command_list]}``).
- ``tests/test_images.py`` @ 020f9380e3cfb7ae2bfa94bdd965406418fd3a01 — image create/get and a pod from it.
- tapipy's ``upload_to_pod(file=..., dest_path=...)`` as in the user guide (tapipy sends every form parameter
  as a file part).

Images: the original's ``notchristiangarcia/testserver:fastapi`` is the local ``http`` test image (an HTTP server
on port 5000); ``postgres:14`` is the ``echo`` test image. Message texts the original asserts are not asserted
here (another change switches them to the original's wording): "Pod permission deleted successfully" and the
``description`` 400 texts. The original's ephemeral-storage tests (``resources.ephemeral_storage_*``) are not
part of API v1.9.0 and are left out (a 400 here: unknown field).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import SMALL, basic_response_checks, image, no_content_type, original_client, response_format

# Container-bound; the database behaviour of these endpoints runs on both backends in tests/api.
DB_BACKENDS = "one"

HTTP_IMAGE = image("http")  # stands in for notchristiangarcia/testserver:fastapi


@pytest.fixture(scope="module")
def ids() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"pod": f"testspodsfastapi{tag}", "error": f"testspodserror{tag}", "img": f"testnewimages{tag}"}


@pytest.fixture(scope="module")
def client(module_pod_server: Any) -> Any:
    c = original_client(module_pod_server.srv, module_pod_server.user)
    no_content_type(c)
    return c


def test_list_pods(client: Any) -> None:
    assert basic_response_checks(client.get("/pods")) is not None


def test_create_pod(client: Any, ids: dict[str, str]) -> None:
    pod_def = {
        "pod_id": ids["pod"],
        "image": HTTP_IMAGE,
        "description": "Test fastapi server pod",
        "networking": {"default": {"port": 5000, "protocol": "http"}},
    }
    result = basic_response_checks(client.post("/pods", data=json.dumps(pod_def)))
    assert result["status"] == "REQUESTED"
    assert result["pod_id"] == ids["pod"]
    assert result["image"] == HTTP_IMAGE


def test_check_list_pods(client: Any, ids: dict[str, str]) -> None:
    assert any(p["pod_id"] == ids["pod"] for p in basic_response_checks(client.get("/pods")))


def test_pod_startup(client: Any, ids: dict[str, str], module_pod_server: Any) -> None:
    result = module_pod_server.wait_status(ids["pod"], "AVAILABLE")
    assert result["pod_id"] == ids["pod"] and result["image"] == HTTP_IMAGE
    assert module_pod_server.fetch(ids["pod"]).strip() == "hello from openpods"


def test_get_pod(client: Any, ids: dict[str, str]) -> None:
    result = basic_response_checks(client.get(f"/pods/{ids['pod']}"))
    assert result["pod_id"] == ids["pod"] and result["image"] == HTTP_IMAGE


def test_get_pod_logs(client: Any, ids: dict[str, str]) -> None:
    result = basic_response_checks(client.get(f"/pods/{ids['pod']}/logs"))
    assert result["logs"] or result["logs"] == ""
    assert isinstance(result["action_logs"], list)


def test_get_pod_credentials(client: Any, ids: dict[str, str]) -> None:
    result = basic_response_checks(client.get(f"/pods/{ids['pod']}/credentials"))
    assert result["user_username"] and result["user_password"]


def test_permissions(client: Any, ids: dict[str, str]) -> None:
    assert basic_response_checks(client.get(f"/pods/{ids['pod']}/permissions"))["permissions"]
    result = basic_response_checks(
        client.post(f"/pods/{ids['pod']}/permissions", data=json.dumps({"user": "testuser", "level": "READ"}))
    )
    assert "testuser:READ" in result["permissions"]
    result = basic_response_checks(client.delete(f"/pods/{ids['pod']}/permissions/testuser"))
    assert "testuser:READ" not in result["permissions"]


def test_update_pod_and_no_change(client: Any, ids: dict[str, str]) -> None:
    pod_def = {"description": "Test Neo4j pod updated"}
    result = basic_response_checks(client.put(f"/pods/{ids['pod']}", data=json.dumps(pod_def)))
    assert result["description"] == "Test Neo4j pod updated"
    rsp = client.put(f"/pods/{ids['pod']}", data=json.dumps(pod_def))
    basic_response_checks(rsp)
    # Already the original's wording (unchanged by the message work).
    assert rsp.json()["message"] == "Incoming data made no changes to pod. Is incoming data equal to current data?"


@pytest.mark.parametrize("description", ["Test" * 200, "cafè"])
def test_description_errors_400(client: Any, ids: dict[str, str], description: str) -> None:
    pod_def = {"pod_id": ids["error"], "image": HTTP_IMAGE, "description": description}
    rsp = client.post("/pods", data=json.dumps(pod_def))
    data = response_format(rsp)
    assert rsp.status_code == 400
    assert isinstance(data["message"], list) and any("description" in m for m in data["message"])
    assert client.get(f"/pods/{ids['error']}").status_code == 404


def test_exec_command_helper_shape(client: Any, ids: dict[str, str]) -> None:
    # test_utils.exec_command: {"commands": [command_list]}, then execution_results[0].success/stdout.
    rsp = client.post(f"/pods/{ids['pod']}/exec", data=json.dumps({"commands": [["cat", "/www/index.html"]]}))
    first = basic_response_checks(rsp)["execution_results"][0]
    assert first["success"] is True and first["stdout"].strip() == "hello from openpods"


def test_upload_to_pod_with_tapipy(module_pod_server: Any, ids: dict[str, str], tmp_path: Path) -> None:
    # The user guide: t.pods.upload_to_pod(pod_id=..., file=open(...), dest_path=...). tapipy hands every form
    # parameter to requests' files=, so dest_path arrives as a file part.
    t = module_pod_server.srv.tapis(module_pod_server.user)
    src = tmp_path / "config.json"
    src.write_text('{"uploaded": true}')
    with open(src, "rb") as fh:
        result = t.pods.upload_to_pod(pod_id=ids["pod"], file=fh, dest_path="/tmp/compat/config.json")
    assert result.dest_path == "/tmp/compat/config.json"
    out = module_pod_server.exec_ok(ids["pod"], ["cat", "/tmp/compat/config.json"])
    assert out["stdout"] == '{"uploaded": true}'
    # The plain form field keeps working.
    r = module_pod_server.upload(ids["pod"], "/tmp/compat/plain.txt", b"plain")
    assert r.status_code == 200, r.text
    assert module_pod_server.exec_ok(ids["pod"], ["cat", "/tmp/compat/plain.txt"])["stdout"] == "plain"


def test_upload_to_jupyter_with_tapipy(module_pod_server: Any, ids: dict[str, str], tmp_path: Path) -> None:
    """tapipy sends `path` as a file part. upload_to_jupyter writes only into pods made from the `jupyterlab`
    template (issue 9), so this module makes one, with the busybox test image standing in for JupyterLab."""
    srv, user = module_pod_server.srv, module_pod_server.user
    admin = srv.client("admin")
    r = admin.post("/v3/pods/templates", json={"template_id": "jupyterlab"})
    assert r.status_code in (200, 409), r.text
    r = admin.post("/v3/pods/templates/jupyterlab/tags", json={
        "tag": f"compat{ids['pod'][-8:]}", "commit_message": "busybox stands in for JupyterLab",
        "pod_definition": {"image": HTTP_IMAGE, "resources": dict(SMALL),
                           "networking": {"default": {"protocol": "http", "port": 5000}}}})
    assert r.status_code == 200, r.text
    r = admin.post("/v3/pods/templates/jupyterlab/permissions", json={"user": user, "level": "READ"})
    assert r.status_code == 200, r.text
    jpod = f"{ids['pod']}nb"
    t = srv.tapis(user)
    t.pods.create_pod(pod_id=jpod, template=f"jupyterlab:compat{ids['pod'][-8:]}")
    module_pod_server.wait_status(jpod, "AVAILABLE")
    src = tmp_path / "notebook.ipynb"
    src.write_text("{}")
    with open(src, "rb") as fh:
        t.pods.upload_to_jupyter(pod_id=jpod, file=fh, path="work/notebook.ipynb")
    out = module_pod_server.exec_ok(jpod, ["cat", "/home/jovyan/work/notebook.ipynb"])
    assert out["stdout"] == "{}"
    # A plain pod is never written to through the Jupyter endpoint.
    with open(src, "rb") as fh, pytest.raises(Exception) as info:
        t.pods.upload_to_jupyter(pod_id=ids["pod"], file=fh, path="work/notebook.ipynb")
    assert info.value.response.status_code == 400
    t.pods.delete_pod(pod_id=jpod)


def test_upload_by_a_stranger_is_refused(module_pod_server: Any, ids: dict[str, str], tmp_path: Path) -> None:
    srv = module_pod_server.srv
    srv.add_user("podstranger")
    t = srv.tapis("podstranger")
    src = tmp_path / "evil.txt"
    src.write_text("evil")
    for call, kwargs in ((t.pods.upload_to_pod, {"dest_path": "/tmp/evil.txt"}),
                         (t.pods.upload_to_jupyter, {"path": "evil.txt"})):
        with open(src, "rb") as fh, pytest.raises(Exception) as info:
            call(pod_id=ids["pod"], file=fh, **kwargs)
        assert getattr(info.value, "response", None) is not None
        assert info.value.response.status_code in (403, 404)
    out = module_pod_server.exec_ok(ids["pod"], ["sh", "-c", "ls /tmp/evil.txt /home/jovyan/evil.txt 2>&1; true"])
    assert "No such file" in out["stdout"] and out["stdout"].count("No such file") == 2


def test_upload_form_text_part_limits(module_pod_server: Any, ids: dict[str, str]) -> None:
    http = module_pod_server.http
    # dest_path as a file part that is too long or not UTF-8: 400, not a crash.
    for part in (b"/" + b"a" * 5000, b"/tmp/\xff\xfe"):
        r = http.post(f"/v3/pods/{ids['pod']}/upload_to_pod",
                      files={"file": ("f.txt", b"x"), "dest_path": ("dest_path", part)})
        assert r.status_code == 400, r.text
        assert r.json()["message"][0].startswith("dest_path")


@pytest.mark.parametrize("path", ["upload_to_pod", "jupyter"])
def test_malformed_multipart_to_a_pod_is_400(module_pod_server: Any, ids: dict[str, str], path: str) -> None:
    url = f"/v3/pods/{ids['pod']}/upload_to_pod" if path == "upload_to_pod" else f"/v3/pods/jupyter/{ids['pod']}/upload"
    headers = {"Content-Type": "multipart/form-data; boundary=xx"}
    for body in (b"garbage\r\n" * 3, b"--xx\r\nContent-Disposition form-data\r\n\r\nx\r\n--xx--\r\n", b""):
        r = module_pod_server.http.post(url, content=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["status"] == "error"


def test_create_image_and_pod_from_it(module_pod_server: Any, ids: dict[str, str]) -> None:
    srv = module_pod_server.srv
    admin = original_client(srv, "admin")  # image writes are site-admin only here
    # With its tag (the original strips tags: a deliberate difference, tags are enforced here).
    image_def = {"image": image("echo"), "tenants": ["*"], "description": "Postgres 14 image"}
    result = basic_response_checks(admin.post("/pods/images", data=json.dumps(image_def)))
    assert result["image"] == image("echo")
    assert any(i["image"] == image("echo") for i in basic_response_checks(admin.get("/pods/images")))
    assert basic_response_checks(admin.get(f"/pods/images/{image('echo')}"))["image"] == image("echo")
    # A regular user may not add images.
    user = original_client(srv, module_pod_server.user)
    rsp = user.post("/pods/images", data=json.dumps({"image": "attacker/evil:latest", "tenants": ["**"]}))
    assert rsp.status_code == 403
    pod_def = {"pod_id": ids["img"], "image": image("echo"), "description": "Postgres 14 pod",
               "networking": {"default": {"port": 7000, "protocol": "tcp"}}}
    result = basic_response_checks(user.post("/pods", data=json.dumps(pod_def)))
    assert result["pod_id"] == ids["img"] and result["image"] == image("echo")
    module_pod_server.wait_status(ids["img"], "AVAILABLE")
    basic_response_checks(admin.delete(f"/pods/images/{image('echo')}"))


def test_delete_pods(client: Any, ids: dict[str, str]) -> None:
    for pod_id in (ids["pod"], ids["img"]):
        basic_response_checks(client.delete(f"/pods/{pod_id}"))
        assert client.get(f"/pods/{pod_id}").status_code == 404
