"""Security hardening with REAL containers (issue 9, items 1, 5, 10, 12, 13), driven through the HTTP API.

- A pod swapping a directory and a symlink in a shared volume while another pod with a ``sub_path`` mount of
  that directory restarts again and again: the victim's mount never shows the directory outside the volume.
- Pods are on private networks: one cannot reach another's IP, the host (Traefik) reaches both through their
  published 127.0.0.1 ports; capabilities are dropped and no-new-privileges is set.
- Two installations on one engine, with the same tenant and pod id, never touch each other's containers; a
  container of the old naming scheme is adopted (renamed) by its own installation only.
- An engine that cannot start a pod (IPAM: no free IP) shows why in ``status_container.message`` and in one
  action log entry, however often the spawner retries; the pod starts once an address is free again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from prometheus_client import REGISTRY
from tests.integration.conftest import IMAGE_PREFIX, _free_subnet, wait_until

from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
    container_name,
    legacy_container_name,
)
from openpods.storage.pins import _mount_points_below

DB_BACKENDS = "one"
IDLE = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'


def _make_volume(env: Any, volume_id: str) -> Path:
    r = env.http.post("/v3/pods/volumes", json={"volume_id": volume_id})
    assert r.status_code == 200, r.text
    path = env.srv.settings.data_dir / "storage" / env.tenant / "volumes" / volume_id
    assert path.is_dir()
    return path


def _row(env: Any, pod_id: str) -> dict[str, Any]:
    return env.row(pod_id)


def _settled(env: Any, pod_id: str, old_instance: str | None) -> dict[str, Any]:
    """Waits for a new instance (other than ``old_instance``) to be AVAILABLE or ERROR; returns the pod row."""

    def check() -> dict[str, Any] | None:
        row = _row(env, pod_id)
        if row["instance_id"] != old_instance and row["status"] in ("AVAILABLE", "ERROR"):
            return row
        return None

    return wait_until(check, timeout=120, interval=0.1, what=f"{pod_id} to settle on a new instance")


# ------------------------------------------------------------------------------------------------ item 1


SWAPPER = """
import ctypes, sys, time
libc = ctypes.CDLL(None)
a, b, flag = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
n = 0
while True:
    libc.renameat2(-100, a, -100, b, 2)  # RENAME_EXCHANGE: the directory and the symlink trade places
    n += 1
    if n % 1000 == 0:
        open(flag, "w").write(str(n))
    time.sleep(0.0005)
"""


def test_sub_path_mount_cannot_be_raced_to_a_host_directory(pod_server: Any, new_id: Any, tmp_path: Path) -> None:
    """The attack of issue 9 item 1: whoever can write to a shared volume (a pod mounting it; here a process
    working on the same directory) swaps the victim's sub_path directory and a symlink to a host directory
    with renameat2(RENAME_EXCHANGE), over and over, while the victim pod restarts again and again. The
    victim's mount never shows the host directory: each start either mounts the real directory or is refused.
    (Before pinning, about one start in four mounted the host directory.)"""
    env = pod_server()
    vol = new_id("racevol")
    root = _make_volume(env, vol)
    (root / "sub").mkdir()
    (root / "sub" / "marker").write_text("inside\n")
    outside = tmp_path / "host-secret"  # stands for <data_dir>/keys or /
    outside.mkdir()
    (outside / "marker").write_text("OUTSIDE\n")
    os.symlink(str(outside), root / "evil")  # a host path: the engine resolves bind sources on the host
    flag = tmp_path / "swaps"
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(root / "sub"), str(root / "evil"), str(flag)])
    try:
        wait_until(flag.exists, timeout=60, what="the swapper to run")
        victim = new_id("victim")
        env.create(victim, "busybox", command=["sh", "-c", IDLE],
                   volume_mounts={vol: {"type": "tapisvolume", "mount_path": "/data", "sub_path": "sub"}})
        outcomes: dict[str, int] = {"inside": 0, "refused": 0}
        instance = None
        for _ in range(30):
            row = _settled(env, victim, instance)
            instance = row["instance_id"]
            if row["status"] == "AVAILABLE":
                res = env.exec_ok(victim, ["cat", "/data/marker"])
                assert "OUTSIDE" not in res["stdout"], f"the victim's mount shows the host directory: {res}"
                assert res["stdout"].strip() == "inside", res
                outcomes["inside"] += 1
                r = env.action(victim, "restart")
            else:
                assert "symbolic link" in row["status_container"]["message"], row["status_container"]
                outcomes["refused"] += 1
                r = env.action(victim, "start")
            assert r.status_code == 200, r.text
        assert swapper.poll() is None, "the swapper stopped"
        print("sub_path race outcomes:", outcomes, "swaps:", flag.read_text())
    finally:
        swapper.kill()
        swapper.wait()
    assert outcomes["inside"] > 0, outcomes
    # Every pin was unmounted once its container had started (or the spawn was refused).
    wait_until(lambda: not _mount_points_below(str(env.srv.settings.data_dir / "pins")), timeout=30,
               what="pins to be released")
    assert (outside / "marker").read_text() == "OUTSIDE\n"


# ------------------------------------------------------------------------------------------------ items 5, 10


def _ip(env: Any, pod_id: str) -> str:
    info = env.container_by_name(pod_id)
    assert info is not None
    nets = info["NetworkSettings"]["Networks"]
    assert list(nets) == [container_name(env.tenant, pod_id, env.srv.ctx.installation_id)], nets
    return next(iter(nets.values()))["IPAddress"]


def test_pods_are_isolated_from_each_other_and_confined(pod_server: Any, new_id: Any) -> None:
    env = pod_server()
    a, b = new_id("neta"), new_id("netb")
    for pod_id in (a, b):
        env.create(pod_id, "http", networking={"default": {"protocol": "http", "port": 5000}})
    for pod_id in (a, b):
        env.wait_status(pod_id, "AVAILABLE")
        assert env.fetch(pod_id)  # what Traefik does: the published 127.0.0.1 port answers
    ip_a, ip_b = _ip(env, a), _ip(env, b)

    def reach(src: str, ip: str) -> str:
        script = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 5000 2>&1"
        return env.exec_ok(src, ["sh", "-c", script])["stdout"]

    assert "200" in reach(a, ip_a)  # the probe works
    assert "200" not in reach(a, ip_b)
    assert "200" not in reach(b, ip_a)

    status = env.exec_ok(a, ["cat", "/proc/self/status"])["stdout"]
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in status.splitlines())}
    assert fields["NoNewPrivs"] == "1"
    assert not int(fields["CapEff"], 16) & (1 << 13), "NET_RAW must be dropped"

    # Deleting a pod removes its private network with its container.
    net = container_name(env.tenant, a, env.srv.ctx.installation_id)
    assert env.http.delete(f"/v3/pods/{a}").status_code == 200

    def net_gone() -> bool:
        try:
            env.engine.client.api.inspect_network(net)
        except docker.errors.NotFound:
            return True
        return False

    wait_until(net_gone, timeout=60, what="the pod's network to be removed")


def test_health_loop_removes_orphaned_pod_networks_of_its_installation_only(pod_server: Any, new_id: Any) -> None:
    """A network left by a crash between making it and the container (or a pod deleted meanwhile) is pruned;
    another installation's network is kept."""
    from openpods.controllers.health import Health

    env = pod_server()
    api = env.engine.client.api
    inst = env.srv.ctx.installation_id
    names = {
        "orphan": (container_name(env.tenant, new_id("gone"), inst), inst),
        "foreign": (container_name(env.tenant, new_id("theirs"), "0ther1nstall"), "0ther1nstall"),
    }
    for name, installation in names.values():
        api.create_network(name, driver="bridge", labels={LABEL_MANAGED: "true", LABEL_TENANT: env.tenant,
                                                          LABEL_INSTALLATION: installation})
    try:
        import asyncio

        health = Health(env.srv.ctx)  # a fresh loop object prunes on its first pass
        asyncio.run_coroutine_threadsafe(health.pass_once(), env.srv.ctx.loop).result(60)
        with pytest.raises(docker.errors.NotFound):
            api.inspect_network(names["orphan"][0])
        api.inspect_network(names["foreign"][0])
    finally:
        for name, _ in names.values():
            with contextlib.suppress(docker.errors.APIError):
                api.remove_network(name)


# ------------------------------------------------------------------------------------------------ item 12


def test_two_installations_with_the_same_pod_ids_leave_each_other_alone(pod_server: Any, new_id: Any) -> None:
    first = pod_server()
    second = pod_server(site_id="second")
    assert first.tenant == second.tenant and first.srv.ctx.installation_id != second.srv.ctx.installation_id
    pod_id = new_id("same")
    first.create(pod_id, "http")
    first.wait_status(pod_id, "AVAILABLE")
    second.create(pod_id, "http")
    second.wait_status(pod_id, "AVAILABLE")
    ours = {env.srv.ctx.installation_id: env for env in (first, second)}
    containers = first.engine.pod_containers(first.tenant, pod_id)
    assert sorted(c.labels[LABEL_INSTALLATION] for c in containers) == sorted(ours)
    assert all(c.status == "running" for c in containers)
    instances = {inst: env.row(pod_id)["instance_id"] for inst, env in ours.items()}

    # Containers of the old naming scheme: one of the first installation (adopted, i.e. renamed), one of
    # nobody's (no installation label) that neither installation may touch.
    legacy_pod = new_id("legacy")
    first.create(legacy_pod, "http")
    first.wait_status(legacy_pod, "AVAILABLE")
    new_name = container_name(first.tenant, legacy_pod, first.srv.ctx.installation_id)
    first.engine.client.api.rename(new_name, legacy_container_name(first.tenant, legacy_pod))
    stray_pod = new_id("stray")
    stray = first.engine.client.api.create_container(
        f"{IMAGE_PREFIX}/busybox:latest", name=legacy_container_name(first.tenant, stray_pod),
        command=["sleep", "600"],
        labels={LABEL_MANAGED: "true", LABEL_TENANT: first.tenant, LABEL_POD_ID: stray_pod,
                LABEL_INSTANCE: "old"},
    )["Id"]
    first.engine.client.api.start(stray)
    try:
        wait_until(lambda: first.engine.exists(new_name), timeout=30, what="the legacy container to be renamed")
        assert first.exec_ok(legacy_pod, ["echo", "adopted"])["stdout"].strip() == "adopted"
        deadline = time.monotonic() + 5  # about ten health passes of each installation
        while time.monotonic() < deadline:
            for inst, env in ours.items():
                row = env.row(pod_id)
                assert row["status"] == "AVAILABLE" and row["instance_id"] == instances[inst], row
            time.sleep(0.25)
        assert first.engine.exists(stray)
        assert first.row(legacy_pod)["status"] == "AVAILABLE"
        for env in (first, second):
            assert env.exec_ok(pod_id, ["echo", "ok"])["stdout"].strip() == "ok"
    finally:
        first.engine.remove(stray)


# ------------------------------------------------------------------------------------------------ item 13


def test_engine_refusal_is_shown_once_and_the_pod_recovers(pod_server: Any, new_id: Any) -> None:
    """A shared pod network whose /30 subnet has room for one container: the pod cannot get an address."""
    api = None
    net = f"openpods-test-tiny-{uuid.uuid4().hex[:8]}"
    subnet = next(ipaddress.ip_network(_free_subnet()).subnets(new_prefix=30))
    env = pod_server(pod_network=net, stuck_deadline_sec=0.5)
    api = env.engine.client.api
    api.create_network(net, driver="bridge", ipam=docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=str(subnet))]))
    squatter = api.create_container(f"{IMAGE_PREFIX}/busybox:latest", name=f"{net}-squatter",
                                    command=["sleep", "600"], host_config=api.create_host_config(network_mode=net))
    api.start(squatter)
    try:
        pod_id = new_id("noip")
        def retries() -> float:
            return REGISTRY.get_sample_value("openpods_spawns_total", {"outcome": "retry"}) or 0.0

        retries_before = retries()
        env.create(pod_id, "http")

        def shown() -> dict[str, Any] | None:
            pod = env.get(pod_id)
            return pod if "free ip" in (pod["status_container"] or {}).get("message", "").lower() else None

        pod = wait_until(shown, timeout=60, what="the IPAM failure in status_container.message")
        assert pod["status"] in ("REQUESTED", "SPAWNER SETUP")
        wait_until(lambda: retries() >= retries_before + 4, timeout=60,
                   what="several retries")
        logs = [r["message"] for r in env.action_log_rows(pod_id)]
        ipam = [a for a in logs if "free ip" in a.lower()]
        assert len(ipam) == 1, logs
        assert len([a for a in logs if "SPAWNER SETUP" in a]) <= 2, logs
        # An address frees up: the pod starts by itself.
        api.remove_container(squatter, force=True)
        env.wait_status(pod_id, "AVAILABLE")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(squatter, force=True)
        env.srv.stop()
        with contextlib.suppress(docker.errors.APIError):
            for c in api.containers(all=True, filters={"network": net}):
                api.remove_container(c["Id"], force=True)
            api.remove_network(net)


def test_a_restarted_spawner_unmounts_pins_of_a_killed_one(pod_server: Any, new_id: Any) -> None:
    """SIGKILL between pinning a sub_path and starting the container leaves a pin mounted; the next spawner
    that starts unmounts and removes it (and never deletes anything through a mount)."""
    import asyncio

    from openpods.controllers.spawner import Spawner

    env = pod_server()
    vol = new_id("pinvol")
    root = _make_volume(env, vol)
    (root / "sub").mkdir()
    (root / "sub" / "keep").write_text("data\n")
    base = env.srv.settings.data_dir / "pins"
    code = (
        "import os\n"
        "from openpods.storage.pins import MountPins\n"
        f"print(MountPins({str(base)!r}).new_set().pin({str(root)!r}, 'sub'), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    point = proc.stdout.strip()
    assert proc.returncode == -9 and _mount_points_below(point) == [point], proc.stderr
    fut = asyncio.run_coroutine_threadsafe(Spawner(env.srv.ctx).run(), env.srv.ctx.loop)
    try:
        wait_until(lambda: not os.path.exists(point), timeout=30, what="the stale pin to be swept")
    finally:
        fut.cancel()
    assert _mount_points_below(str(base)) == []
    assert (root / "sub" / "keep").read_text() == "data\n"
