"""Templated pods on a REAL container engine: a pod created from a template reaches AVAILABLE on the local test
image and serves, and ``restart_pod?grab_latest_template_tag=true`` moves it to the newest version of its tag
(the pod's ``template`` changes and the new container runs with the new environment).

Uses the fixtures of ``tests/integration/conftest.py``: ``pod_server()`` starts a server with roles api + spawner
+ health on the session's private Podman engine (``docker_host``), a 0.5 s health loop, no starter catalog and the
test images (``localhost/openpods-test/http`` …) allowlisted, seen by user ``alice``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from openpods.domain.container_spec import LABEL_INSTANCE

IMAGE = "localhost/openpods-test/http:latest"
SMALL = {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128}


def ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, (r.request.method, str(r.request.url), r.status_code, r.text)
    assert r.json()["status"] == "success", r.text
    return r.json()["result"]


def add_template(http: httpx.Client, template_id: str) -> None:
    ok(http.post("/v3/pods/templates", json={"template_id": template_id}))


def add_tag(http: httpx.Client, template_id: str, definition: dict[str, Any], tag: str = "latest") -> dict:
    return ok(
        http.post(
            f"/v3/pods/templates/{template_id}/tags",
            json={"pod_definition": definition, "tag": tag, "commit_message": f"{tag} of {template_id}"},
        )
    )


def running_container(pods: Any, pod_id: str) -> dict[str, Any]:
    """``inspect`` of the pod's one running container."""
    found = [c for c in pods.containers(pod_id) if c.status == "running"]
    assert len(found) == 1, pods.containers(pod_id)
    return pods.engine.inspect(found[0].id)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container["Config"]["Env"] or [])


def exec_env(pods: Any, pod_id: str) -> dict[str, str]:
    """The environment as the container's processes see it, through the API's exec."""
    result = pods.exec_ok(pod_id, ["env"])
    assert result["success"] is True, result
    return dict(line.split("=", 1) for line in result["stdout"].splitlines() if "=" in line)


def test_templated_pod_runs_and_grab_latest_picks_up_a_newer_tag(
    pod_server: Callable[..., Any], new_id: Callable[[str], str]
) -> None:
    pods = pod_server()
    http = pods.http
    base, app, pod_id = new_id("runbase"), new_id("runapp"), new_id("tplpod")
    # A two-level chain: the base sets the image, port and resources; the app sets the environment.
    add_template(http, base)
    add_tag(
        http,
        base,
        {
            "image": IMAGE,
            "networking": {"default": {"protocol": "http", "port": 5000}},
            "environment_variables": {"LAYER": "base"},
            "resources": SMALL,
        },
    )
    add_template(http, app)
    v1 = add_tag(
        http,
        app,
        {
            "template": base,
            "environment_variables": {"GREETING": "v1", "POD_USER": "<<tapissecret_user_username>>"},
        },
        tag="stable",
    )

    pod = ok(
        http.post(
            "/v3/pods",
            json={"pod_id": pod_id, "template": f"{app}:stable", "environment_variables": {"MINE": "yes"}},
        )
    )
    assert pod["template"] == f"{app}:{v1['tag_timestamp']}"
    first = pods.wait_status(pod_id, "AVAILABLE")
    assert "hello from openpods" in pods.fetch(pod_id)
    container = running_container(pods, pod_id)
    assert container["Config"]["Image"].startswith("localhost/openpods-test/http")
    env = env_of(container)
    assert (env["GREETING"], env["LAYER"], env["MINE"]) == ("v1", "base", "yes")
    assert env["POD_USER"] == pod_id  # substituted at spawn time, never in /derived
    assert ok(http.get(f"/v3/pods/{pod_id}/derived"))["environment_variables"]["POD_USER"] == (
        "<<tapissecret_user_username>>"
    )
    assert exec_env(pods, pod_id)["GREETING"] == "v1"
    first_instance = container["Config"]["Labels"][LABEL_INSTANCE]

    # A newer version of the tag, and a newer version of another tag that must not be picked.
    v2 = add_tag(http, app, {"template": base, "environment_variables": {"GREETING": "v2"}}, tag="stable")
    add_tag(http, app, {"template": base, "environment_variables": {"GREETING": "edge"}}, tag="edge")
    assert pods.get(pod_id)["template"] == f"{app}:{v1['tag_timestamp']}"  # pinned until asked

    restarted = ok(http.get(f"/v3/pods/{pod_id}/restart", params={"grab_latest_template_tag": "true"}))
    assert restarted["template"] == f"{app}:{v2['tag_timestamp']}"
    deadline = time.monotonic() + 90
    while True:
        second = pods.get(pod_id)
        if second["status"] == "AVAILABLE" and second["start_instance_ts"] != first["start_instance_ts"]:
            break
        assert second["status"] != "ERROR", second
        assert time.monotonic() < deadline, f"not AVAILABLE again after the restart: {second}"
        time.sleep(0.2)
    assert second["template"] == f"{app}:{v2['tag_timestamp']}"
    container = running_container(pods, pod_id)
    assert container["Config"]["Labels"][LABEL_INSTANCE] != first_instance
    env = env_of(container)
    assert (env["GREETING"], env["LAYER"], env["MINE"]) == ("v2", "base", "yes")
    assert "POD_USER" not in env
    assert exec_env(pods, pod_id)["GREETING"] == "v2"
    assert ok(http.get(f"/v3/pods/{pod_id}/derived"))["environment_variables"]["GREETING"] == "v2"
    assert "hello from openpods" in pods.fetch(pod_id)

    ok(http.delete(f"/v3/pods/{pod_id}"))
    deadline = time.monotonic() + 90
    while pods.containers(pod_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pods.containers(pod_id) == []


def test_a_second_installation_on_the_engine_leaves_our_pod_alone(
    pod_server: Callable[..., Any], new_id: Callable[[str], str]
) -> None:
    """Two OpenPods installations (each with its own database) on one container engine: the health loop of the
    second must not remove the first one's running templated pod as an "orphan" (it is not in ITS database)."""
    pods = pod_server()
    http = pods.http
    template_id, pod_id = new_id("shared"), new_id("tplpod")
    add_template(http, template_id)
    add_tag(http, template_id, {"image": IMAGE, "resources": SMALL})
    ok(http.post("/v3/pods", json={"pod_id": pod_id, "template": template_id}))
    first = pods.wait_status(pod_id, "AVAILABLE")
    instance = running_container(pods, pod_id)["Config"]["Labels"][LABEL_INSTANCE]

    second = pod_server(site_id="second")
    try:
        deadline = time.monotonic() + 5  # about ten health passes of the second installation
        while time.monotonic() < deadline:
            pod = pods.get(pod_id)
            assert pod["status"] == "AVAILABLE", (pod["status"], pod["status_container"])
            time.sleep(0.25)
    finally:
        second.srv.stop()
    pod = pods.get(pod_id)
    assert pod["status"] == "AVAILABLE" and pod["start_instance_ts"] == first["start_instance_ts"]
    assert running_container(pods, pod_id)["Config"]["Labels"][LABEL_INSTANCE] == instance
