"""What only the Kubernetes runtime does (the shared behaviour is in test_runtime_contract.py): the objects it
creates and in which order, idempotency without churn, recovery from half-done work, one list call, errors
of the API server, pods the kubelet has not started, logs of a very long line. Real kubernetes_asyncio client,
kmock's KubernetesEmulator over HTTP on 127.0.0.1 with the simulated kubelet of kube_sim.py."""

from __future__ import annotations

import dataclasses
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from openpods.domain.container_spec import LABEL_INSTALLATION, ContainerSpec, build_container_spec
from openpods.domain.k8s_manifests import KubeOptions, object_name
from openpods.runtimes.base import RuntimeErrorPermanent, RuntimeErrorTemporary, RuntimeUnavailable
from openpods.runtimes.fake import FakeEngine, stop_all
from openpods.runtimes.kubernetes import KubernetesRuntime

sys.path.insert(0, str(Path(__file__).parent))
from kube_sim import KubeSim

NS = "pods"
INSTALLATION = "feedface00000000"
BUSYBOX = "localhost/openpods-test/busybox:latest"


@pytest.fixture
async def k8s() -> AsyncIterator[dict[str, Any]]:
    engine = FakeEngine()
    sim = KubeSim()
    sim.attach(engine)
    async with sim, kmock.Server(sim) as server:
        rt = KubernetesRuntime(str(server.url).rstrip("/"), options=KubeOptions(namespace=NS),
                               installation_id=INSTALLATION, start_wait_sec=0.5)
        yield {"rt": rt, "sim": sim, "engine": engine, "url": str(server.url).rstrip("/")}
        await rt.close()
        await sim.stop()
        await stop_all(engine)


def make_spec(instance: str = "i1", image: str = BUSYBOX, **kw: Any) -> ContainerSpec:
    spec = build_container_spec(tenant_id="tacc", pod_id=f"p{uuid.uuid4().hex[:8]}", instance_id=instance,
                                image=image, command=kw.pop("command", ["sh", "-c", "sleep 3600"]),
                                arguments=None, env=kw.pop("env", {"PASSWORD": "s3cret"}),
                                networking=kw.pop("networking", {"web": {"protocol": "http", "port": 5000}}),
                                resources={}, **kw)
    return dataclasses.replace(spec, labels={**spec.labels, LABEL_INSTALLATION: INSTALLATION})


def objects(sim: KubeSim, plural: str) -> dict[str, dict[str, Any]]:
    return {name: obj.raw for (res, _ns, name), obj in sim.objects.items() if res.plural == plural and not obj.deleted}


async def test_objects_order_owners_and_no_secret_in_the_pod(k8s: dict[str, Any]) -> None:
    rt, sim = k8s["rt"], k8s["sim"]
    spec = make_spec()
    name = object_name(spec.name, INSTALLATION)
    await rt.ensure_running(spec)
    posts = [path.rsplit("/", 1)[-1] for method, path in sim.requests_seen if method == "POST"]
    assert posts[:2] == ["networkpolicies", "pods"]  # never a running pod without its policy
    pod = objects(sim, "pods")[name]
    uid = pod["metadata"]["uid"]
    assert "s3cret" not in repr(pod)
    for plural in ("secrets", "services", "networkpolicies"):
        obj = objects(sim, plural)[name]
        assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [uid], plural
    assert objects(sim, "secrets")[name]["stringData"] == {"PASSWORD": "s3cret"}


async def test_ensure_running_again_changes_nothing(k8s: dict[str, Any]) -> None:
    rt, sim = k8s["rt"], k8s["sim"]
    spec = make_spec()
    await rt.ensure_running(spec)
    before = len(sim.requests_seen)
    await rt.ensure_running(spec)
    again = sim.requests_seen[before:]
    assert [m for m, _ in again if m in ("POST", "DELETE")] == ["POST", "POST", "POST"]  # 409s, nothing replaced
    assert not [m for m, _ in again if m == "DELETE"]


async def test_half_done_work_is_completed_and_stale_objects_replaced(k8s: dict[str, Any]) -> None:
    """A spawner killed after creating the Pod (dependents missing) or leaving objects of an older instance."""
    rt, sim = k8s["rt"], k8s["sim"]
    spec = make_spec()
    name = object_name(spec.name, INSTALLATION)
    # an old instance's Secret with old content is in the way
    core = await rt._core()
    await core.create_namespaced_secret(NS, {"metadata": {"name": name, "labels": {"openpods.instance": "old"}},
                                             "stringData": {"PASSWORD": "old"}})
    await rt.ensure_running(spec)
    assert objects(sim, "secrets")[name]["stringData"] == {"PASSWORD": "s3cret"}
    assert objects(sim, "secrets")[name]["metadata"]["labels"]["openpods.instance"] == "i1"
    # the Service went missing (crash between the Pod and it): the next ensure_running restores it
    await core.delete_namespaced_service(name, NS)
    await rt.ensure_running(spec)
    assert name in objects(sim, "services")


async def test_remove_deletes_every_object(k8s: dict[str, Any]) -> None:
    rt, sim = k8s["rt"], k8s["sim"]
    spec = make_spec()
    await rt.ensure_running(spec)
    await rt.remove(spec.name, timeout_sec=0)
    for plural in ("pods", "secrets", "services", "networkpolicies"):
        assert objects(sim, plural) == {}, plural


async def test_list_is_one_call_with_the_selector_and_foreign_pods_are_not_listed(k8s: dict[str, Any]) -> None:
    rt, sim = k8s["rt"], k8s["sim"]
    mine = make_spec()
    await rt.ensure_running(mine)
    other = KubernetesRuntime(k8s["url"], options=KubeOptions(namespace=NS), installation_id="0ther0000000000",
                              start_wait_sec=0.5)
    foreign = dataclasses.replace(make_spec(), labels={**make_spec().labels, LABEL_INSTALLATION: "0ther0000000000"})
    await other.ensure_running(foreign)
    await other.close()
    sim.list_calls.clear()
    listed = await rt.list_managed()
    assert [c.name for c in listed] == [mine.name]
    assert sim.list_calls == [f"openpods.managed=true,openpods.installation={INSTALLATION}"]


async def test_api_errors_map_to_runtime_errors(k8s: dict[str, Any]) -> None:
    rt, sim = k8s["rt"], k8s["sim"]
    sim.fail_next("POST", r"/pods$", 403)  # RBAC missing: a site problem, pods wait
    with pytest.raises(RuntimeUnavailable):
        await rt.ensure_running(make_spec())
    sim.fail_next("POST", r"/pods$", 422)  # the API server refused the manifest: this pod fails
    with pytest.raises(RuntimeErrorPermanent):
        await rt.ensure_running(make_spec())
    sim.fail_next("GET", r"/pods$", 503)
    with pytest.raises(RuntimeErrorTemporary):
        await rt.list_managed()
    with pytest.raises(RuntimeErrorPermanent, match="not valid on Kubernetes"):
        await rt.ensure_running(make_spec(env={"BAD NAME": "x"}))


async def test_unreachable_api_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rt = KubernetesRuntime(f"http://127.0.0.1:{port}", options=KubeOptions(namespace=NS), api_timeout_sec=5)
    try:
        assert not await rt.ping()
        with pytest.raises(RuntimeUnavailable):
            await rt.list_managed()
    finally:
        await rt.close()


async def test_a_pod_the_kubelet_has_not_started_is_created(k8s: dict[str, Any]) -> None:
    rt, sim = k8s["rt"], k8s["sim"]
    sim.hold_images.add(BUSYBOX)
    state = await rt.ensure_running(make_spec())
    assert state.state == "created" and "ContainerCreating" in state.message
    assert await rt.logs(state.name, 100) == ""  # no logs yet, not an error


async def test_logs_of_a_last_line_longer_than_the_cap(k8s: dict[str, Any]) -> None:
    rt = k8s["rt"]
    spec = make_spec(command=["sh", "-c", f"echo short; echo -n {'x' * 5000}END; sleep 3600"])
    await rt.ensure_running(spec)
    for _ in range(100):
        if (await rt.logs(spec.name, 1 << 20)).endswith("END"):
            break
    tail = await rt.logs(spec.name, 100)
    assert tail == "x" * 97 + "END"
