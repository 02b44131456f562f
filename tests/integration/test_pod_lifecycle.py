"""A pod's life with real containers, driven through the HTTP API (tapipy where it fits): create → AVAILABLE and
really serving, logs, exec and upload, stop / start / restart, containers that finish or fail, a missing image,
a container removed behind OpenPods' back, an orphan container, and time_to_stop_instance."""

from __future__ import annotations

import time
from typing import Any

import httpx

from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
)

HELLO = "hello from openpods"
# Only one server may use the engine at a time (each health loop removes containers it does not know), so every
# test of this module shares the module's server; time_to_stop minimum lowered for the time_to_stop test, and
# a small log cap for the chatty pod.
MODULE_SETTINGS = {"min_time_to_stop_sec": 2, "logs_max_bytes": 64 * 1024}


def _gone(env: Any, pod_id: str) -> bool:
    return not env.containers(pod_id)


def _wait(check: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, (
            f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})"
        )
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------ the main flow


def test_create_serve_logs_exec_upload_stop_start_restart(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    t = env.srv.tapis(env.user)
    pod_id = new_id("life")

    created = t.pods.create_pod(
        pod_id=pod_id,
        image="localhost/openpods-test/http:latest",
        resources={"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128},
    )
    assert created.status == "REQUESTED"
    pod = env.wait_status(pod_id, "AVAILABLE")
    assert pod["status_requested"] == "ON"
    assert pod["start_instance_ts"]
    assert pod["status_container"]["phase"] == "Running"
    # time_to_stop_ts = start + time_to_stop_default (43200 s)
    assert pod["time_to_stop_ts"]

    # The container really serves on its published port (127.0.0.1, engine-chosen).
    first_port = env.host_port(pod_id)
    assert env.fetch(pod_id).strip() == HELLO
    [container] = env.containers(pod_id)
    first_instance = container.labels[LABEL_INSTANCE]
    assert container.labels[LABEL_TENANT] == env.tenant
    assert container.labels[LABEL_POD_ID] == pod_id
    assert first_instance == env.row(pod_id)["instance_id"]
    assert container.name == f"openpods-{env.srv.ctx.installation_id}-{env.tenant}-{pod_id}"
    host_config = env.engine.inspect(container.id)["HostConfig"]
    assert host_config["PortBindings"]["5000/tcp"][0]["HostIp"] == "127.0.0.1"
    assert host_config["RestartPolicy"]["Name"] in ("no", "")

    # Logs hold the container's output (httpd -vv logs the request made above) — with tapipy.
    logs = _wait(
        lambda: (lambda r: r if "url:/" in r.logs else None)(t.pods.get_pod_logs(pod_id=pod_id)),
        what="the request in the pod's logs",
    )
    assert "http: serving /www on port 5000" in logs.logs
    assert any("set status to AVAILABLE" in line for line in logs.action_logs)

    # exec and upload work.
    result = env.exec_ok(pod_id, ["cat", "/www/index.html"])
    assert result["exit_code"] == 0 and result["stdout"].strip() == HELLO
    r = env.upload(pod_id, "/www/uploaded/page.html", b"uploaded page\n")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["size"] == len(b"uploaded page\n")
    assert httpx.get(f"http://127.0.0.1:{first_port}/uploaded/page.html", timeout=5).text == "uploaded page\n"

    # stop → STOPPED and the container is gone.
    stopped = t.pods.stop_pod(pod_id=pod_id)
    assert stopped.status_requested == "OFF"
    pod = env.wait_status(pod_id, "STOPPED")
    assert pod["status_container"] == {}
    assert pod.get("start_instance_ts") is None and pod.get("time_to_stop_ts") is None
    _wait(lambda: _gone(env, pod_id), what="the container to be removed")
    assert env.container_by_name(pod_id) is None
    # The last logs are kept after the stop (until the next start).
    assert "http: serving /www on port 5000" in env.logs(pod_id)["logs"]

    # start again: a new instance, a new container, serving again.
    started = t.pods.start_pod(pod_id=pod_id)
    assert started.status == "REQUESTED"
    env.wait_status(pod_id, "AVAILABLE")
    assert env.fetch(pod_id).strip() == HELLO
    [container] = env.containers(pod_id)
    second_instance = container.labels[LABEL_INSTANCE]
    assert second_instance != first_instance
    second_id = container.id

    # restart: the running pod goes down and comes back as a new container instance.
    t.pods.restart_pod(pod_id=pod_id)
    _wait(
        lambda: (lambda cs: cs and cs[0].id != second_id and cs[0].status == "running")(
            env.containers(pod_id)
        ),
        what="a new container after restart",
    )
    pod = env.wait_status(pod_id, "AVAILABLE")
    assert pod["status_requested"] == "ON"
    [container] = env.containers(pod_id)
    assert container.labels[LABEL_INSTANCE] not in (first_instance, second_instance)
    assert container.labels[LABEL_INSTANCE] == env.row(pod_id)["instance_id"]
    assert env.fetch(pod_id).strip() == HELLO
    actions = "\n".join(env.logs(pod_id)["action_logs"])
    for expected in (
        "ran stop_pod",
        "set status to STOPPED",
        "ran start_pod",
        "ran restart_pod",
        "spawner set status to CREATING",
    ):
        assert expected in actions

    # delete → the container goes too.
    assert env.http.delete(f"/v3/pods/{pod_id}").status_code == 200
    _wait(lambda: _gone(env, pod_id), what="the container of the deleted pod to be removed")


def test_logs_keep_the_latest_output_within_the_cap(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    cap = env.srv.settings.logs_max_bytes
    pod_id = new_id("chatty")
    env.create(pod_id, "chatty")  # ~5 MB of output, then idles
    env.wait_status(pod_id, "AVAILABLE")
    logs = _wait(
        lambda: (lambda text: text if "chatty: end of output" in text else None)(env.logs(pod_id)["logs"]),
        what="the end of the chatty output in the logs",
    )
    assert len(logs.encode()) <= cap
    assert len(logs.encode()) > cap // 2  # the latest output, not a fragment
    assert "chatty: start" not in logs  # the head was dropped
    assert logs.rstrip().endswith("chatty: end of output")
    assert "the quick brown fox" in logs


# ------------------------------------------------------------------------------------------------ outcomes


def test_exit0_becomes_complete(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("done")
    env.create(pod_id, "exit0")
    pod = env.wait_status(pod_id, "COMPLETE", "ERROR")
    assert pod["status"] == "COMPLETE", pod
    assert pod["status_container"]["phase"] == "Succeeded"
    assert "exit0: done" in env.logs(pod_id)["logs"]
    # COMPLETE is final for the instance: it is not restarted, the container stays for inspection.
    time.sleep(1.5)
    assert env.get(pod_id)["status"] == "COMPLETE"
    [container] = env.containers(pod_id)
    assert container.status == "exited"


def test_exit1_becomes_error_with_logs_kept(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("fail")
    env.create(pod_id, "exit1")
    pod = env.wait_status(pod_id, "ERROR", "COMPLETE")
    assert pod["status"] == "ERROR", pod
    assert pod["status_container"]["phase"] == "Failed"
    assert "code 1" in pod["status_container"]["message"]
    logs = env.logs(pod_id)
    assert "exit1: failing" in logs["logs"]
    assert "exit1: error on stderr" in logs["logs"]
    assert any("ERROR" in line for line in logs["action_logs"])
    # Not restarted automatically (no restart policy: a failed pod is ERROR, as in Tapis).
    time.sleep(1.5)
    assert env.get(pod_id)["status"] == "ERROR"
    # Logs are still there after a stop (kept until the next start).
    assert env.action(pod_id, "stop").status_code == 200
    env.wait_status(pod_id, "STOPPED")
    _wait(lambda: _gone(env, pod_id), what="the failed container to be removed")
    assert "exit1: failing" in env.logs(pod_id)["logs"]


def test_missing_image_becomes_error_with_reason(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("noimg")
    missing = "localhost/openpods-test/nope:latest"
    env.create(pod_id, missing)  # allowlisted, but not present on the engine
    pod = env.wait_status(pod_id, "ERROR")
    message = pod["status_container"]["message"]
    assert "nope" in message and ("not available" in message or "not found" in message.lower()), message
    assert any("ERROR" in line and "nope" in line for line in env.logs(pod_id)["action_logs"])
    assert env.containers(pod_id) == []
    time.sleep(1.5)
    assert env.get(pod_id)["status"] == "ERROR"  # no retry loop on a permanent failure


def test_container_removed_behind_our_back_is_replaced(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("gone")
    env.create(pod_id)
    env.wait_status(pod_id, "AVAILABLE")
    [old] = env.containers(pod_id)
    env.engine.remove(old.id)  # docker rm -f, behind OpenPods' back

    def replaced() -> Any:
        cs = env.containers(pod_id)
        return cs if cs and cs[0].id != old.id and cs[0].status == "running" else None

    [new] = _wait(replaced, timeout=90, what="a replacement container")
    pod = env.wait_status(pod_id, "AVAILABLE")
    assert new.labels[LABEL_INSTANCE] != old.labels[LABEL_INSTANCE]
    assert pod["status_requested"] == "ON"
    assert env.fetch(pod_id).strip() == HELLO
    assert any("no container" in line for line in env.logs(pod_id)["action_logs"])


def test_orphan_container_is_removed(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("orphan")
    labels = {
        LABEL_MANAGED: "true",
        LABEL_TENANT: env.tenant,
        LABEL_POD_ID: pod_id,
        LABEL_INSTANCE: "x1",
        LABEL_INSTALLATION: env.srv.ctx.installation_id,
    }
    orphan = env.engine.client.containers.run(
        "localhost/openpods-test/busybox:latest",
        name=f"openpods-{env.tenant}-{pod_id}",
        labels=labels,
        detach=True,
    )
    # A container without OpenPods' labels is none of its business.
    bystander = env.engine.client.containers.run(
        "localhost/openpods-test/busybox:latest", detach=True, labels={"purpose": "bystander"}
    )
    try:
        _wait(lambda: not env.engine.exists(orphan.id), timeout=60, what="the orphan container to be removed")
        bystander.reload()
        assert bystander.status == "running"
    finally:
        env.engine.remove(bystander.id)


def test_time_to_stop_instance_ends_the_pod(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server  # min_time_to_stop_sec=2 (MODULE_SETTINGS)
    pod_id = new_id("ttl")
    env.create(pod_id, time_to_stop_instance=2)
    pod = env.wait_status(pod_id, "AVAILABLE")
    assert pod["time_to_stop_instance"] == 2
    pod = env.wait_status(pod_id, "STOPPED", timeout=60)
    assert pod["status_requested"] == "OFF"
    # time_to_stop_instance applies to one instance only: reset at STOPPED (Tapis semantics).
    assert pod.get("time_to_stop_instance") is None
    assert any("time_to_stop" in line for line in env.logs(pod_id)["action_logs"])
    _wait(lambda: _gone(env, pod_id), what="the container to be removed")
    # The pod then stays down.
    time.sleep(1.5)
    assert env.get(pod_id)["status"] == "STOPPED"


def test_time_to_stop_below_the_site_minimum_is_refused(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server  # the minimum is a site setting (production: 300 s, Tapis' rule); here 2 s
    r = env.http.post(
        "/v3/pods",
        json={
            "pod_id": new_id("short"),
            "image": "localhost/openpods-test/http:latest",
            "time_to_stop_instance": 1,
        },
    )
    assert r.status_code == 400
    assert "time_to_stop_instance" in r.text
