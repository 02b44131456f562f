"""The original Pods service's template tests, in their request shapes, against a real OpenPods server with real
containers: templates, permissions, six tags on one template — including the recursive tag that chains to another
tag of the SAME template (``X:recursive`` → ``X:fastapi``), which the original keys on ``name:tag@timestamp`` and
allows — and pods from each tag, started for real.

Source (tapis-project/pods_service): ``tests/test_templates.py`` @ 10490c6ff7ae1ac0e1e869ece3cb8b1ec7759658
(bodies as ``data=json.dumps(...)`` with no Content-Type header; helpers of ``tests/test_utils.py`` @
06905037723deb26b77e9c462823d53bad14ec88).

Images: ``tiangolo/uvicorn-gunicorn-fastapi`` and ``notchristiangarcia/neo4j:4.4`` are the local ``http`` test
image, ``postgres:14`` the ``echo`` test image; the postgres and neo4j tags keep their networking and environment
(with the ``<<tapissecret_…>>`` placeholders) but not their commands, which need binaries those images lack.
Skipped message assertions: "Template permission deleted successfully.", the ``description`` 400 texts, and
"Template and associated Template Tags successfully deleted." (here a template still used by pods cannot be
deleted: 409; it is deleted once the pods are gone). The original's ``test_stop_for_debug`` (a 150 s sleep) and
its two archive tests (skipped there too) are left out.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .conftest import basic_response_checks, image, original_client, response_format

DB_BACKENDS = "one"

HTTP_IMAGE = image("http")
TAG = uuid.uuid4().hex[:6]
T1 = f"testtemplatecatchall{TAG}"
TAGS = ["latest", "fastapi", "postgres", "recursive", "neo4j", "fastapi.withperiod"]
PODS = {
    "fastapi": f"testtemplatefastapi{TAG}",
    "postgres": f"testtemplatepostgres{TAG}",
    "recursive": f"testtemplaterecursive{TAG}",
    "neo4j": f"testtemplateneo4j{TAG}",
    "fastapi.withperiod": f"testtemplateneo4jafterperiod{TAG}",
}


@pytest.fixture(scope="module")
def client(module_pod_server: Any) -> Any:
    return original_client(module_pod_server.srv, module_pod_server.user)


def add_tag(client: Any, tag_def: dict[str, Any]) -> dict[str, Any]:
    return basic_response_checks(client.post(f"/pods/templates/{T1}/tags", data=json.dumps(tag_def)))


def test_list_templates(client: Any) -> None:
    assert basic_response_checks(client.get("/pods/templates")) == []


def test_create_template(client: Any) -> None:
    template_def = {
        "template_id": T1,
        "description": "Test template to store all tags for testing purposes",
        "metatags": ["test", "neo4j", "fastapi", "postgres", "recursive"],
    }
    assert basic_response_checks(client.post("/pods/templates", data=json.dumps(template_def)))["template_id"] == T1
    assert any(t["template_id"] == T1 for t in basic_response_checks(client.get("/pods/templates")))
    assert basic_response_checks(client.get(f"/pods/templates/{T1}"))["template_id"] == T1


def test_template_permissions(client: Any) -> None:
    assert basic_response_checks(client.get(f"/pods/templates/{T1}/permissions"))["permissions"]
    result = basic_response_checks(
        client.post(f"/pods/templates/{T1}/permissions", data=json.dumps({"user": "testuser", "level": "READ"}))
    )
    assert "testuser:READ" in result["permissions"]
    result = basic_response_checks(client.delete(f"/pods/templates/{T1}/permissions/testuser"))
    assert "testuser:READ" not in result["permissions"]


def test_update_template(client: Any) -> None:
    template_def = {
        "description": "Test template to store all tags for testing purposes - updated",
        "metatags": ["test", "neo4j", "fastapi", "postgres", "recursive", "updated"],
    }
    result = basic_response_checks(client.put(f"/pods/templates/{T1}", data=json.dumps(template_def)))
    assert result["description"] == "Test template to store all tags for testing purposes - updated"


def test_add_tags(client: Any) -> None:
    # helloworld, no tag: "latest"
    result = add_tag(client, {
        "pod_definition": {"image": HTTP_IMAGE, "command": ["echo", "Hello, World!"],
                           "resources": {"cpu_request": 500}},
        "commit_message": "pod should echo Hello, World! to stdout",
    })
    assert "latest" in result["tag_timestamp"]
    tags = basic_response_checks(client.get(f"/pods/templates/{T1}/tags"))
    assert len(tags) == 1 and tags[0]["tag"] == "latest" and "latest" in tags[0]["tag_timestamp"]

    assert "fastapi" in add_tag(client, {
        "pod_definition": {"image": HTTP_IMAGE}, "tag": "fastapi",
        "commit_message": "fastapi test server which returns a fastapi startup message",
    })["tag_timestamp"]
    tags = basic_response_checks(client.get(f"/pods/templates/{T1}/tags"))
    assert len(tags) == 2 and {t["tag"] for t in tags} == {"latest", "fastapi"}

    assert "postgres" in add_tag(client, {
        "pod_definition": {
            "description": "Postgres template",
            "image": image("echo"),
            "environment_variables": {"POSTGRES_USER": "<<tapissecret_user_username>>",
                                      "POSTGRES_PASSWORD": "<<tapissecret_user_password>>"},
            "networking": {"default": {"port": 5432, "protocol": "postgres"}},
        },
        "tag": "postgres", "commit_message": "postgres main template!",
    })["tag_timestamp"]

    # The chain to another tag of the same template (issue 10, item 3).
    assert "recursive" in add_tag(client, {
        "pod_definition": {"command": ["echo", "Hello! Recursive was here!"], "template": f"{T1}:fastapi",
                           "resources": {"cpu_request": 400}},
        "tag": "recursive", "commit_message": "fastapi test server which returns a fastapi startup message",
    })["tag_timestamp"]

    assert "neo4j" in add_tag(client, {
        "pod_definition": {
            "image": HTTP_IMAGE,
            "networking": {"default": {"port": 7687, "protocol": "tcp"}, "browser": {"port": 7474, "protocol": "http"}},
            "environment_variables": {
                "NEO4J_dbms_ssl_policy_bolt_enabled": "true",
                "NEO4J_dbms_security_auth__enabled": "true",
                "NEO4J_dbms_mode": "SINGLE",
                "apoc.initializer.system.1": "CREATE USER <<tapissecret_admin_username>> IF NOT EXISTS SET PLAINTEXT "
                                             "PASSWORD '<<tapissecret_admin_password>>' SET PASSWORD CHANGE NOT REQUIRED",
                "apoc.initializer.system.2": "CREATE USER <<tapissecret_user_username>> IF NOT EXISTS SET PLAINTEXT "
                                             "PASSWORD '<<tapissecret_user_password>>' SET PASSWORD CHANGE NOT REQUIRED",
            },
        },
        "tag": "neo4j", "commit_message": "neo4j main template!",
    })["tag_timestamp"]
    assert len(basic_response_checks(client.get(f"/pods/templates/{T1}/tags"))) == 5

    assert "fastapi.withperiod" in add_tag(client, {
        "pod_definition": {"image": HTTP_IMAGE}, "tag": "fastapi.withperiod",
        "commit_message": "fastapi test server which returns a fastapi startup message",
    })["tag_timestamp"]
    tags = basic_response_checks(client.get(f"/pods/templates/{T1}/tags"))
    assert len(tags) == 6 and {t["tag"] for t in tags} == set(TAGS)


@pytest.mark.parametrize("tag", list(PODS))
def test_create_pod_from_template(client: Any, tag: str) -> None:
    pod_def = {"pod_id": PODS[tag], "template": f"{T1}:{tag}"}
    result = basic_response_checks(client.post("/pods", data=json.dumps(pod_def)))
    assert result["pod_id"] == PODS[tag]
    assert T1 in result["template"]


def test_recursive_pod_derives_through_the_chain(client: Any) -> None:
    derived = basic_response_checks(client.get(f"/pods/{PODS['recursive']}/derived"))
    assert derived["image"] == HTTP_IMAGE  # from X:fastapi
    assert derived["command"] == ["echo", "Hello! Recursive was here!"]  # from X:recursive
    assert derived["resources"]["cpu_request"] == 400


@pytest.mark.parametrize("tag", list(PODS))
def test_startup_pod_from_template(module_pod_server: Any, tag: str) -> None:
    # The recursive tag's command only echoes: the original expects COMPLETE for it.
    want = "COMPLETE" if tag == "recursive" else "AVAILABLE"
    result = module_pod_server.wait_status(PODS[tag], want)
    assert result["pod_id"] == PODS[tag] and T1 in result["template"]


def test_recursive_pod_ran_its_command(module_pod_server: Any) -> None:
    assert "Hello! Recursive was here!" in module_pod_server.logs(PODS["recursive"])["logs"]


@pytest.mark.parametrize("description", ["Test" * 200, "cafè"])
def test_description_errors_400(client: Any, description: str) -> None:
    template_def = {"template_id": T1, "description": description, "metatags": ["test", "neo4j-template"]}
    rsp = client.post("/pods/templates", data=json.dumps(template_def))
    data = response_format(rsp)
    assert rsp.status_code == 400
    assert any("description" in m for m in data["message"])


def test_delete_template(client: Any) -> None:
    # Deliberate difference: the original deletes a template its pods still use; here that is a 409.
    assert client.delete(f"/pods/templates/{T1}").status_code == 409
    for pod_id in PODS.values():
        basic_response_checks(client.delete(f"/pods/{pod_id}"))
    basic_response_checks(client.delete(f"/pods/templates/{T1}"))
    assert client.get(f"/pods/templates/{T1}").status_code == 404
