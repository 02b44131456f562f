"""One contract suite for every Runtime, written against the interface only (openpods.runtimes.base):

- ``fake``: the in-memory FakeRuntime (what the controller tests run on);
- ``docker``: the Docker Engine API runtime on real Podman (fixtures of tests/runtime/conftest.py);
- ``docker-events``: the same, with ``list_managed`` answered from the cache the engine's events keep;
- ``kubernetes``: the Kubernetes runtime (real kubernetes_asyncio client) against kmock's KubernetesEmulator
  over real HTTP on 127.0.0.1, with a simulated kubelet, log and exec subresources (tests/runtime/kube_sim.py).

Waits poll the runtime until a condition holds, with a generous bound that only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openpods.domain.container_spec import LABEL_INSTALLATION, ContainerSpec, Ulimit, build_container_spec
from openpods.runtimes.base import (
    BadDestination,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerState,
    ImageNotFound,
    Runtime,
    UnsupportedFeature,
)
from openpods.runtimes.fake import FakeEngine, FakeRuntime, stop_all

sys.path.insert(0, str(Path(__file__).parent))
from kube_sim import KubeSim

IMAGE = "localhost/openpods-test/{}:latest"
INSTALLATION = "c0ffee0123456789"
WAIT_BOUND_SEC = 60.0
DOCKER_ULIMITS = (Ulimit("nofile", 20000, 20000), Ulimit("nproc", 32768, 32768))  # as tests/runtime/conftest.py


@dataclass
class Backend:
    kind: str
    runtime: Runtime
    new_runtime: Callable[[], Runtime]  # another client of the same engine (a restarted controller)
    tenant: str


def _k8s_runtime(url: str, **kw: Any) -> Runtime:
    from openpods.domain.k8s_manifests import KubeOptions
    from openpods.runtimes.kubernetes import KubernetesRuntime

    return KubernetesRuntime(str(url).rstrip("/"), options=KubeOptions(namespace="openpods-test"),
                             installation_id=INSTALLATION, start_wait_sec=5.0, **kw)


@pytest.fixture(params=["fake", "docker", "docker-events", "kubernetes"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind = request.param
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    extra: list[Runtime] = []

    def track(rt: Runtime) -> Runtime:
        extra.append(rt)
        return rt

    if kind == "fake":
        engine = FakeEngine()
        yield Backend(kind, FakeRuntime(engine), lambda: track(FakeRuntime(engine)), tenant)
        await stop_all(engine)
    elif kind == "docker":
        from openpods.runtimes.docker import DockerRuntime

        runtime = request.getfixturevalue("runtime")  # session DockerRuntime on real Podman, images built
        url = request.getfixturevalue("engine_url")
        tenant = request.getfixturevalue("tenant")  # the session fixture removes its containers at the end
        yield Backend(kind, runtime, lambda: track(DockerRuntime(url, default_ulimits=DOCKER_ULIMITS)), tenant)
    elif kind == "docker-events":  # list_managed answered from the engine-event cache
        from openpods.runtimes.docker import DockerRuntime

        request.getfixturevalue("test_images")
        url = request.getfixturevalue("engine_url")
        tenant = request.getfixturevalue("tenant")  # the session fixture removes its containers at the end

        def events_runtime() -> Runtime:
            return DockerRuntime(url, default_ulimits=DOCKER_ULIMITS, events=True, relist_sec=600)

        runtime = track(events_runtime())
        yield Backend(kind, runtime, lambda: track(events_runtime()), tenant)
    else:
        import kmock

        engine = FakeEngine()
        sim = KubeSim()
        sim.attach(engine)
        async with sim, kmock.Server(sim) as server:
            rt = _k8s_runtime(server.url)
            yield Backend(kind, rt, lambda: track(_k8s_runtime(server.url)), tenant)
            await rt.close()
            await sim.stop()
            await stop_all(engine)
    for rt in extra:
        await rt.close()


def make_spec(b: Backend, image: str, *, pod_id: str | None = None, instance_id: str | None = None,
              command: list[str] | None = None, networking: dict[str, Any] | None = None,
              resources: dict[str, int] | None = None) -> ContainerSpec:
    spec = build_container_spec(
        tenant_id=b.tenant, pod_id=pod_id or f"p{uuid.uuid4().hex[:10]}", instance_id=instance_id or uuid.uuid4().hex,
        image=IMAGE.format(image) if "/" not in image else image, command=command, arguments=None, env={},
        networking=networking or {}, resources=resources or {"cpu_request": 250, "cpu_limit": 1000,
                                                             "mem_request": 64, "mem_limit": 256})
    return dataclasses.replace(spec, labels={**spec.labels, LABEL_INSTALLATION: INSTALLATION})


async def until(probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool]) -> Any:
    deadline = asyncio.get_running_loop().time() + WAIT_BOUND_SEC
    value = await probe()
    while not ok(value):
        assert asyncio.get_running_loop().time() < deadline, f"condition never held; last value: {value!r}"
        await asyncio.sleep(0.1)
        value = await probe()
    return value


async def running(b: Backend, spec: ContainerSpec) -> ContainerState:
    await b.runtime.ensure_running(spec)
    return await until(lambda: b.runtime.observe(spec.name), lambda s: s.state == "running")


SLEEPER = ["sh", "-c", "sleep 3600"]


# ------------------------------------------------------------------------------------------------ lifecycle


async def test_create_start_inspect(backend: Backend) -> None:
    spec = make_spec(backend, "busybox")
    await backend.runtime.ensure_running(spec)
    state = await until(lambda: backend.runtime.observe(spec.name), lambda s: s.state == "running")
    assert state.name == spec.name
    assert (state.tenant_id, state.pod_id, state.instance_id) == (backend.tenant, spec.labels["openpods.pod_id"],
                                                                  spec.instance_id)
    assert state.started_at is not None and state.exit_code is None
    assert await backend.runtime.ping()


async def test_ensure_running_is_idempotent_and_replaces_other_instances(backend: Backend) -> None:
    spec = make_spec(backend, "busybox")
    first = await running(backend, spec)
    again = await backend.runtime.ensure_running(spec)
    assert again.state == "running" and again.instance_id == spec.instance_id
    mine = [c for c in await backend.runtime.list_managed() if c.name == spec.name]
    assert len(mine) == 1
    assert (await backend.runtime.observe(spec.name)).started_at == first.started_at  # not restarted

    other = dataclasses.replace(spec, labels={**spec.labels, "openpods.instance": "second-instance"})
    await backend.runtime.ensure_running(other)
    state = await until(lambda: backend.runtime.observe(spec.name), lambda s: s.state == "running")
    assert state.instance_id == "second-instance"
    assert [c.instance_id for c in await backend.runtime.list_managed() if c.name == spec.name] == ["second-instance"]


async def test_list_managed_reports_every_container_with_its_backend(backend: Backend) -> None:
    specs = [make_spec(backend, "http", networking={"web": {"protocol": "http", "port": 5000},
                                                     "inside": {"protocol": "local_only", "port": 6000}})
             for _ in range(2)]
    for spec in specs:
        await running(backend, spec)
    listed = {c.name: c for c in await backend.runtime.list_managed()}
    for spec in specs:
        c = listed[spec.name]
        assert c.state == "running" and c.instance_id == spec.instance_id
        backends = c.backends()
        assert set(backends) == {"web"}, backends  # published stanzas only
        target = backends["web"]
        assert (isinstance(target, int) and target > 0) or (isinstance(target, str) and target.endswith(":5000"))


async def test_finished_container_keeps_exit_code_logs_and_is_never_restarted(backend: Backend) -> None:
    spec = make_spec(backend, "exit1")
    await backend.runtime.ensure_running(spec)
    state = await until(lambda: backend.runtime.observe(spec.name), lambda s: s.state == "exited")
    assert state.exit_code == 1
    logs = await until(lambda: backend.runtime.logs(spec.name, 10_000), lambda t: "error on stderr" in t)
    assert "exit1: failing" in logs
    again = await backend.runtime.ensure_running(spec)
    assert again.state == "exited" and again.exit_code == 1
    listed = [c for c in await backend.runtime.list_managed() if c.name == spec.name]
    assert [c.state for c in listed] == ["exited"]


async def test_logs_are_capped_to_the_tail(backend: Backend) -> None:
    spec = make_spec(backend, "busybox", command=[
        "sh", "-c", f"echo {'a' * 3000}; echo {'b' * 3000}; echo {'c' * 300}; echo the-end; sleep 3600"])
    await running(backend, spec)
    full = await until(lambda: backend.runtime.logs(spec.name, 1 << 20), lambda t: "the-end" in t)
    assert full.startswith("a" * 3000) and full.endswith("the-end\n")
    tail = await backend.runtime.logs(spec.name, 1000)
    assert len(tail.encode()) <= 1000
    assert tail.endswith("c" * 300 + "\nthe-end\n")
    assert "a" not in tail
    assert await backend.runtime.logs(spec.name, 8) == "the-end\n"


async def test_exec_output_exit_codes_and_timeout(backend: Backend) -> None:
    spec = make_spec(backend, "busybox", command=SLEEPER)
    await running(backend, spec)
    res = await backend.runtime.exec(spec.name, ["echo", "hello"], 30)
    assert (res.exit_code, res.stdout, res.timed_out) == (0, "hello\n", False)
    res = await backend.runtime.exec(spec.name, ["sh", "-c", "echo out; echo err >&2; exit 3"], 30)
    assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
    res = await backend.runtime.exec(spec.name, ["no-such-command-here"], 30)
    assert res.exit_code in (126, 127) and not res.timed_out
    res = await backend.runtime.exec(spec.name, ["sleep", "30"], 1)
    assert res.timed_out and res.exit_code is None
    assert (await backend.runtime.exec(spec.name, ["echo", "still here"], 30)).stdout == "still here\n"


async def test_exec_needs_a_running_container(backend: Backend) -> None:
    with pytest.raises(ContainerNotFound):
        await backend.runtime.exec(f"openpods-{backend.tenant}-nosuchpod", ["echo"], 10)
    spec = make_spec(backend, "exit0")
    await backend.runtime.ensure_running(spec)
    await until(lambda: backend.runtime.observe(spec.name), lambda s: s.state == "exited")
    with pytest.raises(ContainerNotRunning):
        await backend.runtime.exec(spec.name, ["echo"], 10)


async def test_upload_creates_parents_replaces_files_and_refuses_bad_destinations(
    backend: Backend, tmp_path: Path
) -> None:
    spec = make_spec(backend, "busybox", command=SLEEPER)
    await running(backend, spec)
    src = tmp_path / "data.txt"
    src.write_bytes(b"first version\n")
    await backend.runtime.put_file(spec.name, "/tmp/new/deeper/data.txt", str(src))
    assert (await backend.runtime.exec(spec.name, ["cat", "/tmp/new/deeper/data.txt"], 30)).stdout == "first version\n"
    src.write_bytes(b"second version\n" * 1000)
    await backend.runtime.put_file(spec.name, "/tmp/new/deeper/data.txt", str(src))
    out = await backend.runtime.exec(spec.name, ["cat", "/tmp/new/deeper/data.txt"], 30)
    assert out.stdout == "second version\n" * 1000

    for bad in ("relative/path.txt", "/tmp/../etc/x", "/tmp/dir/", "/tmp", "/etc/passwd/below-a-file"):
        with pytest.raises(BadDestination):
            await backend.runtime.put_file(spec.name, bad, str(src))
    with pytest.raises(FileNotFoundError):
        await backend.runtime.put_file(spec.name, "/tmp/x.txt", str(tmp_path / "missing"))
    with pytest.raises(ContainerNotRunning):  # ContainerNotFound is one
        await backend.runtime.put_file(f"openpods-{backend.tenant}-nosuchpod", "/tmp/x.txt", str(src))


async def test_remove_is_idempotent(backend: Backend) -> None:
    spec = make_spec(backend, "busybox")
    await running(backend, spec)
    await backend.runtime.remove(spec.name, timeout_sec=1)
    assert (await backend.runtime.observe(spec.name)).state == "missing"
    assert spec.name not in {c.name for c in await backend.runtime.list_managed()}
    await backend.runtime.remove(spec.name, timeout_sec=1)  # again: not an error
    await backend.runtime.remove(f"openpods-{backend.tenant}-neverexisted", timeout_sec=1)
    with pytest.raises(ContainerNotFound):
        await backend.runtime.logs(spec.name, 100)


async def test_missing_image_is_image_not_found(backend: Backend) -> None:
    spec = make_spec(backend, "localhost/openpods-test/does-not-exist:latest")
    with pytest.raises(ImageNotFound):
        await backend.runtime.ensure_running(spec)
    assert (await backend.runtime.observe(spec.name)).state == "missing"


async def test_gpus_refused_when_unsupported_and_nothing_left(backend: Backend) -> None:
    if await backend.runtime.supports_gpus():
        pytest.skip("this engine has GPUs")
    spec = make_spec(backend, "busybox", resources={"gpus": 1})
    with pytest.raises(UnsupportedFeature):
        await backend.runtime.ensure_running(spec)
    assert (await backend.runtime.observe(spec.name)).state == "missing"


async def test_crash_resume_a_new_client_finds_and_adopts_containers(backend: Backend) -> None:
    """A controller killed after ensure_running: a new runtime client (fresh connections, no memory) lists the
    container, adopts it without a duplicate or a restart, and can operate on it."""
    spec = make_spec(backend, "busybox", command=SLEEPER)
    old = backend.new_runtime()
    await old.ensure_running(spec)
    before = await until(lambda: old.observe(spec.name), lambda s: s.state == "running")
    await old.close()  # the old process's client is gone
    fresh = backend.new_runtime()
    assert spec.name in {c.name for c in await fresh.list_managed()}
    adopted = await fresh.ensure_running(spec)
    assert adopted.state == "running"
    after = await fresh.observe(spec.name)
    assert after.started_at == before.started_at
    assert [c.name for c in await fresh.list_managed()].count(spec.name) == 1
    assert (await fresh.exec(spec.name, ["echo", "resumed"], 30)).stdout == "resumed\n"
    await fresh.remove(spec.name, timeout_sec=1)
    assert (await fresh.observe(spec.name)).state == "missing"


async def test_watch_managed_wakes_when_another_client_changes_a_container(backend: Backend) -> None:
    """A runtime that can watch calls back when a managed container changes behind its back (another client
    removes it), and its list follows; the default watch_managed returns at once (nothing to watch)."""
    woken = asyncio.Event()
    watcher = asyncio.create_task(backend.runtime.watch_managed(woken.set))
    try:
        await asyncio.sleep(0.2)
        if watcher.done():
            assert backend.kind in ("fake", "docker"), "only runtimes without a watch return at once"
            return
        spec = make_spec(backend, "busybox", command=SLEEPER)
        await running(backend, spec)
        await asyncio.wait_for(woken.wait(), WAIT_BOUND_SEC)  # its creation
        await asyncio.sleep(0.5)  # let the events of its start arrive
        woken.clear()
        other = backend.new_runtime()
        await other.remove(spec.name, timeout_sec=1)
        await asyncio.wait_for(woken.wait(), WAIT_BOUND_SEC)
        await until(backend.runtime.list_managed, lambda cs: spec.name not in {c.name for c in cs})
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
