"""Spawner and health loop on the in-memory FakeRuntime (seconds, no engine), through their public entry points
(``Spawner.pass_once``, ``Health.pass_once``), with pods created through the real API (ASGI, in process). One
test runs the same controllers on the Kubernetes runtime against the emulated cluster and checks that the proxy
routes to the pod's Service."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from openpods.api.app import create_app
from openpods.bootstrap import build_context, ensure_admin
from openpods.config import Settings
from openpods.context import AppContext
from openpods.controllers.health import Health
from openpods.controllers.runner import setup_storage
from openpods.controllers.spawner import Spawner
from openpods.domain import status as st
from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    ContainerSpec,
    build_container_spec,
    container_name,
)
from openpods.runtimes.base import ContainerState, RuntimeErrorPermanent, RuntimeUnavailable
from openpods.runtimes.fake import FakeEngine, FakeRuntime, stop_all
from openpods.store.tables import Pod

IMAGE = "localhost/openpods-test/{}:latest"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    # Plain directories: loop-mounted volumes are tested in tests/storage (they need unmounting).
    settings = Settings(data_dir=tmp_path / "data", runtime="none", proxy_enabled=False, volume_size_enforcement="api",
                        import_starter_catalog=False, admin_password="pw",
                        image_allow_list=[f"localhost/openpods-test/{n}" for n in ("busybox", "http", "exit0")], stuck_deadline_sec=600)
    ctx = build_context(settings)
    ensure_admin(ctx, announce=False)
    setup_storage(ctx)
    engine = FakeEngine()
    ctx.runtime = FakeRuntime(engine)
    token = ctx.tokens.issue(settings.default_tenant, "admin")["access_token"]
    transport = httpx.ASGITransport(app=create_app(ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                 headers={"X-Tapis-Token": token}) as client:
        yield {"ctx": ctx, "engine": engine, "client": client}
    await stop_all(engine)
    ctx.engine.dispose()


async def create_pod(client: httpx.AsyncClient, pod_id: str, image: str = "busybox", **extra: Any) -> None:
    r = await client.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE.format(image), **extra})
    assert r.status_code == 200, r.text


def pod(ctx: AppContext, pod_id: str) -> Pod:
    with ctx.sessions() as s:
        row = s.get(Pod, (ctx.settings.default_tenant, pod_id))
        assert row is not None
        s.expunge(row)
        return row


async def test_spawn_then_available_with_one_list_call_per_pass(site: dict[str, Any]) -> None:
    ctx, engine, client = site["ctx"], site["engine"], site["client"]
    ids = [f"pod{i}" for i in range(12)]
    for pod_id in ids:
        await create_pod(client, pod_id, networking={"default": {"protocol": "http", "port": 5000}})
    await Spawner(ctx).pass_once()
    assert {pod(ctx, i).status for i in ids} == {st.CREATING}
    assert all(pod(ctx, i).host_ports.get("default") for i in ids)  # the published port is recorded
    engine.calls.clear()
    health = Health(ctx)
    stats = await health.pass_once()
    assert {pod(ctx, i).status for i in ids} == {st.AVAILABLE}
    # Not one call per pod: one list call (plus, on a Health's first pass, its once-a-minute network prune).
    assert engine.calls["list_managed"] == 1 and stats.engine_calls - engine.calls["prune_networks"] == 1
    assert engine.calls["observe"] == 0
    engine.calls.clear()
    await health.pass_once()
    assert sum(engine.calls.values()) == 1  # a quiet pass: the list call only


async def test_crashed_container_turns_the_pod_to_error_with_its_logs(site: dict[str, Any]) -> None:
    ctx, engine, client = site["ctx"], site["engine"], site["client"]
    await create_pod(client, "crashy", image="http")
    await Spawner(ctx).pass_once()
    await Health(ctx).pass_once()
    assert pod(ctx, "crashy").status == st.AVAILABLE
    engine.crash(container_name(ctx.settings.default_tenant, "crashy", ctx.installation_id), 137)
    await Health(ctx).pass_once()
    row = pod(ctx, "crashy")
    assert row.status == st.ERROR
    assert "137" in row.status_container["message"] and "OOM" in row.status_container["message"]
    logs = (await client.get("/v3/pods/crashy/logs")).json()["result"]["logs"]
    assert "http: serving /www on port 5000" in logs


class SpawnerKilled(BaseException):
    """The spawner process dies (SIGKILL): nothing of it runs any more, no handler sees this."""


class DiesDuringStart(FakeRuntime):
    """The engine carries out the start only in part when its client dies in the middle of it: the container
    runs, but its published ports are not forwarded; the spawner never hears back."""

    async def ensure_running(self, spec: ContainerSpec) -> ContainerState:
        await super().ensure_running(spec)
        self.engine.drop_forwarding(spec.name)
        raise SpawnerKilled


async def test_a_container_whose_start_no_live_spawner_saw_succeed_is_replaced(site: dict[str, Any]) -> None:
    """A spawner killed during a container's start leaves the pod in SPAWNER SETUP with a running container that
    the engine may have set up only in part (here: its published port does not answer). After the deadline the
    restarted controllers do not adopt that container: the pod ends up AVAILABLE with a container whose published
    port answers."""
    ctx, engine, client = site["ctx"], site["engine"], site["client"]
    await create_pod(client, "halfway", image="http", networking={"default": {"protocol": "http", "port": 5000}})
    ctx.runtime = DiesDuringStart(engine)
    with pytest.raises(SpawnerKilled):
        await Spawner(ctx).pass_once()
    name = container_name(ctx.settings.default_tenant, "halfway", ctx.installation_id)
    assert engine.containers[name].state == "running" and not engine.containers[name].forwarded
    assert pod(ctx, "halfway").status == st.SPAWNER_SETUP

    # The restarted process, once the pod is past its deadline.
    ctx.runtime = FakeRuntime(engine)
    later = ctx.clock() + timedelta(seconds=ctx.settings.stuck_deadline_sec + 1)
    health, spawner = Health(ctx, clock=lambda: later), Spawner(ctx)
    for _ in range(3):
        await health.pass_once()
        await spawner.pass_once()
    await health.pass_once()
    row = pod(ctx, "halfway")
    assert row.status == st.AVAILABLE
    port = row.host_ports.get("default")
    assert isinstance(port, int) and engine.answers(port), f"AVAILABLE, but port {port} does not answer"


async def test_finished_container_completes(site: dict[str, Any]) -> None:
    ctx, client = site["ctx"], site["client"]
    await create_pod(client, "oneshot", image="exit0")
    await Spawner(ctx).pass_once()
    await Health(ctx).pass_once()
    assert pod(ctx, "oneshot").status == st.COMPLETE


async def test_engine_outage_leaves_pods_waiting_and_they_start_when_it_returns(site: dict[str, Any]) -> None:
    ctx, engine, client = site["ctx"], site["engine"], site["client"]
    await create_pod(client, "patient")
    engine.unavailable = True
    await Spawner(ctx).pass_once()
    row = pod(ctx, "patient")
    assert row.status == st.REQUESTED and "Waiting for the container engine" in row.status_container["message"]
    await Health(ctx).pass_once()  # skipped: nothing may be concluded without the engine
    assert pod(ctx, "patient").status == st.REQUESTED
    engine.unavailable = False
    await Spawner(ctx).pass_once()
    await Health(ctx).pass_once()
    assert pod(ctx, "patient").status == st.AVAILABLE


async def test_a_database_outage_while_recording_a_spawn_is_retried_not_left_to_the_deadline(
    site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, client = site["ctx"], site["client"]
    await create_pod(client, "dbdown")
    spawner = Spawner(ctx, finish_retry_sec=(0.01, 0.02))
    real_finish = Spawner._finish
    failures = []

    def finish_while_the_database_is_down(self: Spawner, *args: Any) -> bool:
        if len(failures) < 3:  # the database is unreachable for the first three attempts
            failures.append(args)
            raise OperationalError("UPDATE pods ...", {}, ConnectionError("server closed the connection"))
        return real_finish(self, *args)

    monkeypatch.setattr(Spawner, "_finish", finish_while_the_database_is_down)
    await spawner.pass_once()
    assert len(failures) == 3
    assert pod(ctx, "dbdown").status == st.CREATING  # not SPAWNER SETUP until stuck_deadline_sec (600 s here)


async def test_refused_spec_is_error_and_temporary_failure_retries(site: dict[str, Any]) -> None:
    ctx, engine, client = site["ctx"], site["engine"], site["client"]
    await create_pod(client, "refused")
    engine.fail_next("ensure_running", RuntimeErrorPermanent("the engine refused the spec"))
    await Spawner(ctx).pass_once()
    row = pod(ctx, "refused")
    assert row.status == st.ERROR and "refused the spec" in row.status_container["message"]

    await create_pod(client, "retried")
    engine.fail_next("ensure_running", RuntimeUnavailable("blip"))
    await Spawner(ctx).pass_once()
    assert pod(ctx, "retried").status == st.REQUESTED
    await Spawner(ctx).pass_once()
    assert pod(ctx, "retried").status == st.CREATING


async def test_stored_stanza_the_api_now_refuses_is_an_error_not_a_stuck_spawn(site: dict[str, Any]) -> None:
    """A pod stored before the API refused unroutable stanzas (here a CORS origin without a scheme) fails its
    spawn with the reason instead of crashing the spawner and staying in SPAWNER SETUP."""
    ctx, engine, client = site["ctx"], site["engine"], site["client"]
    await create_pod(client, "legacy", networking={"default": {"protocol": "http", "port": 5000,
                                                               "cors_allow_origins": ["https://ok.org"]}})
    with ctx.sessions.begin() as s:
        row = s.get(Pod, (ctx.settings.default_tenant, "legacy"))
        assert row is not None
        row.networking = {"default": {"protocol": "http", "port": 5000, "cors_allow_origins": ["example.org"]}}
    await Spawner(ctx).pass_once()
    row = pod(ctx, "legacy")
    assert row.status == st.ERROR, row.status
    assert "cors_allow_origins: not an origin" in row.status_container["message"]
    assert engine.calls.get("ensure_running", 0) == 0


async def test_orphan_of_this_installation_is_removed_and_others_are_left(site: dict[str, Any]) -> None:
    ctx, engine = site["ctx"], site["engine"]
    tenant = ctx.settings.default_tenant
    for pod_id, installation in (("orphan", ctx.installation_id), ("foreign", "anotherinstall")):
        spec = build_container_spec(tenant_id=tenant, pod_id=pod_id, instance_id="i1", image=IMAGE.format("busybox"),
                                    command=None, arguments=None, env={}, networking={}, resources={},
                                    installation_id=installation)
        assert spec.labels[LABEL_INSTALLATION] == installation
        await ctx.runtime.ensure_running(spec)
    assert container_name(tenant, "orphan", ctx.installation_id) in engine.containers
    await Health(ctx).pass_once()
    assert container_name(tenant, "orphan", ctx.installation_id) not in engine.containers
    assert container_name(tenant, "foreign", "anotherinstall") in engine.containers


async def test_delete_removes_the_container(site: dict[str, Any]) -> None:
    ctx, engine, client = site["ctx"], site["engine"], site["client"]
    await create_pod(client, "gone")
    await Spawner(ctx).pass_once()
    await Health(ctx).pass_once()
    assert (await client.delete("/v3/pods/gone")).status_code == 200
    for _ in range(3):
        await Health(ctx).pass_once()
    assert container_name(ctx.settings.default_tenant, "gone", ctx.installation_id) not in engine.containers


@pytest.fixture
async def cluster(site: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The site's runtime switched to Kubernetes (runtime = kubernetes) against the emulated cluster, with the
    shared storage as a claim (kubernetes_storage_pvc) mounted at the data dir."""
    import kmock

    from openpods.controllers.runner import kubernetes_runtime

    sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
    from kube_sim import KubeSim

    ctx = site["ctx"]
    engine = FakeEngine()
    sim = KubeSim()
    sim.attach(engine)
    async with sim, kmock.Server(sim) as server:
        ctx.settings = ctx.settings.model_copy(update={
            "runtime": "kubernetes", "kubernetes_api_url": str(server.url).rstrip("/"),
            "kubernetes_namespace": "pods", "kubernetes_storage_pvc": "openpods-storage"})
        ctx.runtime = kubernetes_runtime(ctx)
        try:
            yield {**site, "sim": sim, "k8s_engine": engine}
        finally:
            await ctx.runtime.close()
            await sim.stop()
            await stop_all(engine)


async def until_status(ctx: AppContext, pod_id: str, status: str, *, timeout: float = 30.0) -> Pod:
    """Health passes until the pod has ``status`` (an exit is judged only once it has settled: EXIT_SETTLE)."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        await Health(ctx).pass_once()
        if pod(ctx, pod_id).status == status:
            break
        await asyncio.sleep(0.05)
    return pod(ctx, pod_id)


def k8s_objects(sim: Any, plural: str) -> list[dict[str, Any]]:
    return [obj.raw for (res, _ns, _name), obj in sim.objects.items() if res.plural == plural and not obj.deleted]


async def test_kubernetes_pod_is_routed_to_its_service(cluster: dict[str, Any]) -> None:
    """Spawner and health on the Kubernetes runtime (emulated cluster): the pod becomes AVAILABLE and the
    proxy's dynamic config routes its stanza to <service>.<namespace>.svc:<port> (not to 127.0.0.1)."""
    from openpods.services.proxy import make_route_table

    ctx, client, sim = cluster["ctx"], cluster["client"], cluster["sim"]
    await create_pod(client, "webpod", image="http", networking={"web": {"protocol": "http", "port": 5000}})
    await Spawner(ctx).pass_once()
    row = await until_status(ctx, "webpod", st.AVAILABLE)
    assert row.status == st.AVAILABLE
    backend = row.host_ports["web"]
    assert isinstance(backend, str) and backend.endswith(".pods.svc:5000")
    table = make_route_table(ctx.settings, ctx.sessions, ctx.proxy_secret)
    table.sync_once()
    published = table.response()
    assert published is not None
    body = json.loads(published[0])
    urls = [srv["url"] for svc in body["http"]["services"].values() for srv in svc["loadBalancer"]["servers"]]
    assert f"http://{backend}" in urls
    assert sim.list_calls and all("openpods.managed=true" in sel for sel in sim.list_calls)
    [service] = k8s_objects(sim, "services")
    assert backend.startswith(service["metadata"]["name"] + ".pods.svc")
    assert service["metadata"]["ownerReferences"][0]["kind"] == "Pod"  # collected with the pod


async def test_kubernetes_volume_is_the_shared_claim_at_the_volume_sub_path(cluster: dict[str, Any]) -> None:
    """A file uploaded to a volume through the API lands in the claim at storage/<tenant>/volumes/<id>, which
    is exactly the subPath the pod mounts; a snapshot is mounted read-only the same way."""
    ctx, client, sim = cluster["ctx"], cluster["client"], cluster["sim"]
    tenant = ctx.settings.default_tenant
    assert (await client.post("/v3/pods/volumes", json={"volume_id": "vol1"})).status_code == 200
    r = await client.post("/v3/pods/volumes/vol1/upload/data/hello.txt", files={"file": ("hello.txt", b"hi there")})
    assert r.status_code == 200, r.text
    await create_pod(client, "withvol", volume_mounts={"vol1": {"type": "tapisvolume", "mount_path": "/work"}})
    await Spawner(ctx).pass_once()
    assert pod(ctx, "withvol").status == st.CREATING, pod(ctx, "withvol").status_container
    [k8s_pod] = [p for p in k8s_objects(sim, "pods") if p["metadata"]["labels"]["openpods.pod_id"] == "withvol"]
    spec = k8s_pod["spec"]
    assert spec["volumes"] == [{"name": "storage", "persistentVolumeClaim": {"claimName": "openpods-storage"}}]
    [mount] = spec["containers"][0]["volumeMounts"]
    assert mount == {"name": "storage", "mountPath": "/work", "subPath": f"storage/{tenant}/volumes/vol1",
                     "readOnly": False}
    # the API's view of the claim (mounted at the data dir) holds the uploaded file at that sub-path
    assert (ctx.settings.data_dir / mount["subPath"] / "data" / "hello.txt").read_bytes() == b"hi there"


async def test_kubernetes_watch_wakes_the_health_loop(cluster: dict[str, Any]) -> None:
    import asyncio

    from openpods.bus.base import HEALTH
    from openpods.controllers.runner import wake_health_on_changes

    ctx, client, engine = cluster["ctx"], cluster["client"], cluster["k8s_engine"]
    await ctx.bus.start()
    await create_pod(client, "watched", image="http")
    await Spawner(ctx).pass_once()
    watcher = asyncio.create_task(wake_health_on_changes(ctx, debounce_sec=0.01))
    try:
        await asyncio.sleep(0.3)
        await ctx.bus.wait(HEALTH, 0)  # drop the spawner's wake-up and the watch's initial events
        assert await ctx.bus.wait(HEALTH, 0.2) == []
        [name] = list(engine.containers)
        engine.crash(name, 137)  # the kubelet reports it through the API; nothing else publishes
        assert await ctx.bus.wait(HEALTH, 30)
        row = await until_status(ctx, "watched", st.ERROR)
        assert "137" in row.status_container["message"]
    finally:
        watcher.cancel()
