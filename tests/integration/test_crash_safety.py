"""Crash safety: ``openpods serve`` runs in a subprocess and is SIGKILLed in the middle of creating a batch of
pods, and (separately) in the middle of stopping a batch. Restarted on the same data dir and database, every pod
converges to what was requested, with exactly one container per running pod (right instance, serving) and no
duplicate or orphan container on the engine.

Also an engine fault seen while benchmarking 200 pods: Podman (4.3) gave two containers created at the same time
the same random host port, so one of them could never start; the runtime must recover by recreating it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from process_control import ProcessControl

from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_POD_ID,
    LABEL_TENANT,
    Ulimit,
    build_container_spec,
)
from openpods.runtimes.base import RuntimeErrorTemporary
from openpods.runtimes.docker import DockerRuntime
from openpods.store.tables import Meta, Pod

ADMIN_PASSWORD = "crash-admin-pw"
TENANT = "default"
BATCH = 8
OPENPODS = Path(sys.executable).with_name("openpods")
HTTP_IMAGE = "localhost/openpods-test/http:latest"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proc(ProcessControl):
    """One `openpods serve` subprocess on a fixed data dir, database and port."""

    data_dir: Path
    database_url: str
    engine_url: str
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "OPENPODS_DATA_DIR": str(self.data_dir),
            "OPENPODS_DATABASE_URL": self.database_url,
            "OPENPODS_HOST": "127.0.0.1",
            "OPENPODS_PORT": str(self.port),
            "OPENPODS_RUNTIME": "docker",
            "OPENPODS_DOCKER_HOST": self.engine_url,
            "OPENPODS_START_PODMAN_SERVICE": "false",
            "OPENPODS_STUCK_DEADLINE_SEC": "3",
            "OPENPODS_HEALTH_INTERVAL_SEC": "0.5",
            "OPENPODS_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "OPENPODS_IMPORT_STARTER_CATALOG": "false",
            "OPENPODS_IMAGE_ALLOW_LIST": json.dumps(["localhost/openpods-test/http"]),
            "OPENPODS_MEM_MIN": "16",
            "OPENPODS_CPU_MIN": "10",
        }
        env.pop("DOCKER_HOST", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child holds it; closed below)
        try:
            self.popen = subprocess.Popen(
                [str(OPENPODS), "serve", "--no-proxy", "--log-level", "info"],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                pytest.fail(f"openpods serve exited with {self.popen.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/healthcheck", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"openpods serve did not answer /healthcheck:\n{self.log_tail()}")

    def client(self) -> httpx.Client:
        r = httpx.post(
            f"{self.base}/v3/oauth2/tokens",
            json={"username": "admin", "password": ADMIN_PASSWORD, "grant_type": "password"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        token = r.json()["result"]["access_token"]["access_token"]
        return httpx.Client(base_url=self.base, headers={"X-Tapis-Token": token}, timeout=60)


@pytest.fixture
def proc(engine: Any, database_url: str, tmp_path: Path) -> Iterator[Proc]:
    p = Proc(
        data_dir=tmp_path / "data",
        database_url=database_url,
        engine_url=engine.url,
        port=_free_port(),
        log_path=tmp_path / "openpods.log",
    )
    try:
        yield p
    finally:
        p.stop()
        # What this test created goes (the next server's health loop would remove it anyway).
        for c in engine.containers({LABEL_TENANT: TENANT}):
            engine.remove(c.id)


def _db_pods(database_url: str, pod_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The pod rows as stored (read directly: OpenPods is dead at this point)."""
    eng = create_engine(database_url)
    try:
        with eng.connect() as conn:
            rows = conn.execute(
                select(Pod.pod_id, Pod.status, Pod.status_requested, Pod.instance_id).where(
                    Pod.tenant_id == TENANT, Pod.pod_id.in_(pod_ids)
                )
            )
            return {
                r.pod_id: {"status": r.status, "requested": r.status_requested, "instance": r.instance_id}
                for r in rows
            }
    finally:
        eng.dispose()


def _statuses(client: httpx.Client, pod_ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for pod_id in pod_ids:
        r = client.get(f"/v3/pods/{pod_id}")
        assert r.status_code == 200, r.text
        out[pod_id] = r.json()["result"]
    return out


def _host_port(engine: Any, container_id: str) -> int:
    ports = engine.inspect(container_id)["NetworkSettings"]["Ports"]["5000/tcp"]
    return int(ports[0]["HostPort"])


def _serves(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text.strip() == "hello from openpods"
    except httpx.TransportError:
        return False


def _installation_id(database_url: str) -> str:
    """The installation id OpenPods labels its containers with (other installations' are not its business)."""
    eng = create_engine(database_url)
    try:
        with eng.connect() as conn:
            return conn.execute(select(Meta.value).where(Meta.key == "installation_id")).scalar_one()
    finally:
        eng.dispose()


def _wait_converged(
    proc: Proc, engine: Any, pod_ids: list[str], want: str, context: str, timeout: float = 60.0
) -> None:
    """Every pod reaches ``want`` (AVAILABLE or STOPPED) and the engine holds exactly the containers that
    state calls for: one running container per AVAILABLE pod, of the pod's current instance, and nothing else
    managed by OpenPods."""
    client = proc.client()
    deadline = time.monotonic() + timeout
    problems: list[str] = ["not checked yet"]
    while time.monotonic() < deadline:
        pods = _statuses(client, pod_ids)
        instances = {pid: row["instance"] for pid, row in _db_pods(proc.database_url, pod_ids).items()}
        ours = _installation_id(proc.database_url)
        managed = [c for c in engine.containers() if c.labels.get(LABEL_INSTALLATION) == ours]
        problems = []
        for pod_id, pod in pods.items():
            if pod["status"] != want:
                problems.append(f"{pod_id} is {pod['status']} ({pod['status_requested']})")
        by_pod: dict[str, list[Any]] = {}
        for c in managed:
            by_pod.setdefault(c.labels.get(LABEL_POD_ID, "?"), []).append(c)
        strays = sorted(set(by_pod) - set(pod_ids))
        if strays:
            problems.append(f"orphan containers of {strays}")
        for pod_id in pod_ids:
            containers = by_pod.get(pod_id, [])
            if want == "STOPPED" and containers:
                problems.append(f"{pod_id} still has {len(containers)} container(s)")
            if want == "AVAILABLE":
                if len(containers) != 1:
                    problems.append(f"{pod_id} has {len(containers)} containers")
                elif containers[0].status != "running":
                    problems.append(f"{pod_id}'s container is {containers[0].status}")
                elif containers[0].labels.get(LABEL_INSTANCE) != instances.get(pod_id):
                    problems.append(
                        f"{pod_id}'s container is of instance {containers[0].labels.get(LABEL_INSTANCE)}"
                        f", the pod's is {instances.get(pod_id)}"
                    )
        if not problems:
            break
        time.sleep(0.25)
    client.close()
    assert not problems, (
        f"{context}: not converged after {timeout:.0f}s: {problems}\n--- openpods log ---\n{proc.log_tail()}"
    )
    if want == "AVAILABLE":
        # This server's containers of these pods only (other modules share the engine and the tenant name).
        for c in managed:
            if c.labels.get(LABEL_POD_ID) not in pod_ids:
                continue
            port = _host_port(engine, c.id)
            deadline = time.monotonic() + 30
            while not _serves(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _serves(port), (
                f"{context}: container {c.name} does not serve on port {port}\n{_port_diagnostics(engine, c, port)}"
                f"\n--- openpods log ---\n{proc.log_tail()}"
            )


def _port_diagnostics(engine: Any, container: Any, port: int) -> str:
    """What the engine and the host say about a published port that does not answer (a rare CI failure)."""
    lines: list[str] = []
    try:
        info = engine.client.api.inspect_container(container.id)
        state = info.get("State") or {}
        lines.append(f"state={state.get('Status')} started={state.get('StartedAt')} pid={state.get('Pid')}")
        lines.append(f"networks={json.dumps((info.get('NetworkSettings') or {}).get('Networks'), default=str)[:800]}")
        lines.append(f"ports={json.dumps((info.get('NetworkSettings') or {}).get('Ports'), default=str)}")
    except Exception as exc:
        lines.append(f"inspect failed: {exc}")
    try:
        nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True, timeout=30).stdout
        lines.append("nat rules for the port: " + "; ".join(r for r in nat.splitlines() if str(port) in r))
        lines.append("nat jumps: " + "; ".join(r for r in nat.splitlines() if "HOSTPORT-DNAT" in r and "-A " in r
                                               and "--dport" not in r))
    except (OSError, subprocess.SubprocessError) as exc:
        lines.append(f"iptables failed: {exc}")
    # Does the app answer inside the container (then the fault is the host's forwarding), and who holds the
    # port on the host (Podman's conmon keeps it bound: without a DNAT rule a connection lands there and hangs)?
    try:
        api = engine.client.api
        probe = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 5000 2>&1"
        exec_id = api.exec_create(container.id, ["sh", "-c", probe])
        lines.append(f"inside the container: {api.exec_start(exec_id)!r:.300}")
    except Exception as exc:
        lines.append(f"exec in the container failed: {exc}")
    # Two bridges with the same subnet (or a stale route) send the DNATed packets to the wrong bridge.
    for argv in (["ss", "-Htlnp", f"sport = :{port}"], ["ip", "-4", "route"], ["ip", "-4", "-o", "addr"]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
            lines.append(f"{' '.join(argv)}: " + "; ".join(out.splitlines()))
        except (OSError, subprocess.SubprocessError) as exc:
            lines.append(f"{' '.join(argv)} failed: {exc}")
    return "\n".join(lines)


def _kill_when(
    proc: Proc, engine: Any, pod_ids: list[str], ready: Any, what: str, timeout: float = 60
) -> list[Any]:
    """Polls the engine and SIGKILLs the server as soon as ``ready(containers)`` is true; returns the
    containers seen at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [c for c in engine.containers({LABEL_TENANT: TENANT}) if c.labels.get(LABEL_POD_ID) in pod_ids]
        if ready(seen):
            proc.sigkill()
            return seen
        time.sleep(0.01)
    pytest.fail(f"never saw {what} within {timeout:.0f}s\n{proc.log_tail()}")


def test_sigkill_while_creating_a_batch(proc: Proc, engine: Any) -> None:
    proc.start()
    client = proc.client()
    pod_ids = [f"crash{i}{uuid.uuid4().hex[:6]}" for i in range(BATCH)]
    for pod_id in pod_ids:
        r = client.post(
            "/v3/pods",
            json={
                "pod_id": pod_id,
                "image": HTTP_IMAGE,
                "resources": {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128},
            },
        )
        assert r.status_code == 200, r.text
    client.close()
    # Kill while containers are being made: some exist, not all.
    seen = _kill_when(proc, engine, pod_ids, lambda cs: 0 < len(cs) < BATCH, "the first containers")
    at_kill = _db_pods(proc.database_url, pod_ids)
    context = (
        f"killed with {len(seen)} of {BATCH} containers; statuses at the kill: "
        f"{sorted(row['status'] for row in at_kill.values())}"
    )
    assert all(row["requested"] == "ON" for row in at_kill.values()), at_kill

    proc.start()
    _wait_converged(proc, engine, pod_ids, "AVAILABLE", context)


def test_sigkill_while_stopping_a_batch(proc: Proc, engine: Any) -> None:
    proc.start()
    client = proc.client()
    pod_ids = [f"crashstop{i}{uuid.uuid4().hex[:6]}" for i in range(BATCH)]
    for pod_id in pod_ids:
        r = client.post(
            "/v3/pods",
            json={
                "pod_id": pod_id,
                "image": HTTP_IMAGE,
                "resources": {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128},
            },
        )
        assert r.status_code == 200, r.text
    _wait_converged(proc, engine, pod_ids, "AVAILABLE", "before the stop")

    for pod_id in pod_ids:
        r = client.get(f"/v3/pods/{pod_id}/stop")
        assert r.status_code == 200, r.text
    client.close()
    # Kill while containers are being removed: some gone, not all.
    seen = _kill_when(proc, engine, pod_ids, lambda cs: 0 < len(cs) < BATCH, "the first removals")
    at_kill = _db_pods(proc.database_url, pod_ids)
    context = (
        f"killed with {len(seen)} of {BATCH} containers left; statuses at the kill: "
        f"{sorted(row['status'] for row in at_kill.values())}"
    )
    assert all(row["requested"] == "OFF" for row in at_kill.values()), at_kill

    proc.start()
    _wait_converged(proc, engine, pod_ids, "STOPPED", context)
    # The desired state holds: the pods stay down.
    time.sleep(2)
    client = proc.client()
    assert {p["status"] for p in _statuses(client, pod_ids).values()} == {"STOPPED"}
    client.close()
    assert not [c for c in engine.containers({LABEL_TENANT: TENANT}) if c.labels.get(LABEL_POD_ID) in pod_ids]


async def test_a_created_container_whose_host_port_was_taken_is_recreated(engine: Any) -> None:
    """The container of a pod instance exists, merely ``created``, with a host port that another process holds
    by the time it starts (Podman chooses the random host port at create time; two concurrent creates got the
    same one in the benchmark). Starting it again can never succeed: ``ensure_running`` (retried by the spawner
    on temporary failures) must replace it, so that the engine picks a free port."""
    ulimits = [Ulimit("nofile", 20000, 20000), Ulimit("nproc", 32768, 32768)]
    spec = build_container_spec(
        tenant_id="portclash",
        pod_id=f"port{uuid.uuid4().hex[:8]}",
        instance_id="inst1",
        image=HTTP_IMAGE,
        command=None,
        arguments=None,
        env={},
        networking={"default": {"protocol": "http", "port": 5000}},
        resources={"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128},
        ulimits=ulimits,
    )
    api = engine.client.api
    runtime = DockerRuntime(engine.url, default_ulimits=ulimits)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        api.create_container(
            HTTP_IMAGE,
            name=spec.name,
            labels=dict(spec.labels),
            ports=[(5000, "tcp")],
            host_config=api.create_host_config(
                port_bindings={"5000/tcp": ("127.0.0.1", taken)},
                ulimits=[{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in ulimits],
            ),
        )
        try:
            errors: list[str] = []
            state = None
            for _ in range(4):  # as the spawner does: a temporary failure is retried
                try:
                    state = await runtime.ensure_running(spec)
                except RuntimeErrorTemporary as exc:
                    errors.append(str(exc))
                    continue
                if state.state == "running":
                    break
            assert state is not None and state.state == "running", f"never started: {errors}"
            assert state.host_ports.get("default") not in (None, taken)
            assert _serves(state.host_ports["default"])
        finally:
            await runtime.close()
            engine.remove(spec.name)
