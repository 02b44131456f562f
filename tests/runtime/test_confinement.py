"""Pod confinement on a REAL engine: dropped capabilities, no-new-privileges, user-namespace mode, a private
network per pod (pods cannot reach each other, the host still reaches published ports), and installations that
never touch each other's containers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import docker
import pytest
from tests.runtime.conftest import image, new_pod_id
from tests.runtime.test_docker_runtime import http_get, wait_for

from openpods.domain.container_spec import (
    DEFAULT_CAP_DROP,
    LABEL_INSTALLATION,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
    build_container_spec,
)
from openpods.runtimes.base import RuntimeErrorPermanent
from openpods.runtimes.docker import DockerRuntime

# Capability bit numbers (linux/capability.h).
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "SETGID": 6, "SETUID": 7, "SETPCAP": 8,
            "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18, "MKNOD": 27, "AUDIT_WRITE": 29,
            "SETFCAP": 31}
HTTP = {"default": {"protocol": "http", "port": 5000}}


def _status_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


async def _status(runtime: DockerRuntime, name: str) -> dict[str, str]:
    res = await runtime.exec(name, ["cat", "/proc/self/status"], 20)
    assert res.exit_code == 0, res
    return _status_fields(res.stdout)


async def test_caps_dropped_and_no_new_privileges(runtime: DockerRuntime, make_spec, raw_api) -> None:
    spec = make_spec("busybox", command=["sleep", "300"])
    assert set(DEFAULT_CAP_DROP) == set(spec.cap_drop) and spec.no_new_privileges
    await runtime.ensure_running(spec)
    try:
        status = await _status(runtime, spec.name)
        assert status["NoNewPrivs"] == "1"
        eff = int(status["CapEff"], 16)
        bnd = int(status["CapBnd"], 16)
        for cap in DEFAULT_CAP_DROP:
            assert not eff & (1 << CAP_BITS[cap]), f"{cap} still effective"
            assert not bnd & (1 << CAP_BITS[cap]), f"{cap} still in the bounding set"
        for cap in ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "NET_BIND_SERVICE"):
            assert eff & (1 << CAP_BITS[cap]), f"{cap} is needed by common images and must stay"
        hc = raw_api.inspect_container(spec.name)["HostConfig"]
        assert set(DEFAULT_CAP_DROP) <= {c.removeprefix("CAP_") for c in hc["CapDrop"]}
        assert "no-new-privileges" in hc["SecurityOpt"]
        # NET_RAW is gone: no raw sockets (ping needs one).
        ping = await runtime.exec(spec.name, ["ping", "-c", "1", "-W", "1", "127.0.0.1"], 20)
        assert ping.exit_code != 0 and "permission denied" in ping.stderr.lower(), ping
    finally:
        await runtime.remove(spec.name, 0)


async def test_caps_can_be_kept_when_configured_so(runtime: DockerRuntime, make_spec) -> None:
    spec = make_spec("busybox", command=["sleep", "300"], cap_drop=(), no_new_privileges=False)
    await runtime.ensure_running(spec)
    try:
        status = await _status(runtime, spec.name)
        assert status["NoNewPrivs"] == "0"
        assert int(status["CapEff"], 16) & (1 << CAP_BITS["NET_RAW"])
    finally:
        await runtime.remove(spec.name, 0)


async def test_userns_mode_is_passed_to_the_engine(runtime: DockerRuntime, make_spec, raw_api) -> None:
    """docker-py only knows 'host'; the runtime sends the mode itself. 'auto' needs /etc/subuid entries for
    'containers' on the engine's host: without them the engine refuses clearly (permanent, nothing left)."""
    spec = make_spec("busybox", command=["sleep", "300"], userns="host")
    await runtime.ensure_running(spec)
    try:
        assert raw_api.inspect_container(spec.name)["HostConfig"]["UsernsMode"] in ("host", "")
    finally:
        await runtime.remove(spec.name, 0)
    auto = make_spec("busybox", command=["sleep", "300"], userns="auto")
    try:
        await runtime.ensure_running(auto)
    except RuntimeErrorPermanent as exc:
        assert "ids" in str(exc).lower() or "userns" in str(exc).lower() or "mapping" in str(exc).lower()
    else:
        res = await runtime.exec(auto.name, ["cat", "/proc/self/uid_map"], 20)
        first = res.stdout.split()
        assert first[:2] == ["0", first[1]] and first[1] != "0", f"container root is host root: {res.stdout}"
    finally:
        await runtime.remove(auto.name, 0)


def _ip(raw_api, name: str) -> str:
    nets = raw_api.inspect_container(name)["NetworkSettings"]["Networks"]
    assert len(nets) == 1, nets
    return next(iter(nets.values()))["IPAddress"]


async def _reach(runtime: DockerRuntime, src: str, ip: str, port: int = 5000) -> str:
    res = await runtime.exec(
        src, ["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port} 2>&1"], 30
    )
    return res.stdout


async def test_pods_cannot_reach_each_other_but_the_host_reaches_published_ports(
    runtime: DockerRuntime, make_spec, raw_api
) -> None:
    a = make_spec("http", networking=HTTP)
    b = make_spec("http", networking=HTTP)
    sa, sb = await asyncio.gather(runtime.ensure_running(a), runtime.ensure_running(b))
    try:
        # Each has a network of its own, named and labelled like the container.
        for spec in (a, b):
            net = raw_api.inspect_network(spec.name)
            assert net["Labels"][LABEL_MANAGED] == "true" and net["Labels"][LABEL_POD_ID] == spec.labels[LABEL_POD_ID]
            assert list(raw_api.inspect_container(spec.name)["NetworkSettings"]["Networks"]) == [spec.name]
        ip_a, ip_b = _ip(raw_api, a.name), _ip(raw_api, b.name)
        # The host (Traefik) reaches both through 127.0.0.1.
        for st in (sa, sb):
            assert await wait_for(lambda st=st: http_get(st.host_ports["default"]), what="published port")
        # A pod reaches itself on its own IP (the probe works) ...
        assert "200" in await _reach(runtime, a.name, ip_a)
        # ... but not the other pod, in either direction.
        assert "200" not in await _reach(runtime, a.name, ip_b)
        assert "200" not in await _reach(runtime, b.name, ip_a)
        # Nor through the host: the other pod's published port is bound to the host's 127.0.0.1 only, which
        # the gateway address of a pod's network does not reach.
        gateway = raw_api.inspect_network(a.name)["IPAM"]["Config"][0]["Gateway"]
        assert "200" not in await _reach(runtime, a.name, gateway, sb.host_ports["default"])
    finally:
        await asyncio.gather(runtime.remove(a.name, 0), runtime.remove(b.name, 0))
    # remove() takes the private networks along.
    for spec in (a, b):
        with pytest.raises(docker.errors.NotFound):
            raw_api.inspect_network(spec.name)


async def test_shared_network_when_configured(runtime: DockerRuntime, make_spec, raw_api) -> None:
    """network=<name> joins an existing network (the old shared-bridge behaviour, for operators who want it)."""
    shared = f"openpods-test-shared-{uuid.uuid4().hex[:8]}"
    raw_api.create_network(shared, driver="bridge")
    a = make_spec("http", networking=HTTP, network=shared)
    b = make_spec("http", networking=HTTP, network=shared)
    try:
        await asyncio.gather(runtime.ensure_running(a), runtime.ensure_running(b))
        assert "200" in await _reach(runtime, a.name, _ip(raw_api, b.name))
    finally:
        await asyncio.gather(runtime.remove(a.name, 0), runtime.remove(b.name, 0))
        raw_api.remove_network(shared)  # remove() never deletes a network it did not make


async def test_prune_networks_removes_only_unused_networks_of_the_installation(
    runtime: DockerRuntime, tenant: str, raw_api
) -> None:
    inst, other = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    names = {}
    for key, installation in (("orphan", inst), ("kept", inst), ("foreign", other)):
        name = f"openpods-{installation}-{tenant}-{new_pod_id()}"
        raw_api.create_network(name, driver="bridge", labels={LABEL_MANAGED: "true", LABEL_TENANT: tenant,
                                                              LABEL_INSTALLATION: installation})
        names[key] = name
    used = build_container_spec(tenant_id=tenant, pod_id=new_pod_id(), instance_id="i1", image=image("busybox"),
                                command=["sleep", "300"], arguments=None, env={}, networking={}, resources={},
                                installation_id=inst)
    await runtime.ensure_running(used)
    try:
        removed = await runtime.prune_networks(inst, keep={names["kept"]})
        assert removed == [names["orphan"]]
        raw_api.inspect_network(names["kept"])
        raw_api.inspect_network(names["foreign"])  # another installation's: untouched
        raw_api.inspect_network(used.name)  # in use by a container: untouched
    finally:
        await runtime.remove(used.name, 0)
        for name in names.values():
            with contextlib.suppress(docker.errors.APIError):
                raw_api.remove_network(name)


async def test_ensure_running_never_replaces_another_installations_container(
    runtime: DockerRuntime, tenant: str, raw_api
) -> None:
    """Same name, other installation label (or none): refused, and the container is left exactly as it was."""
    pod_id = new_pod_id()

    def spec(installation: str, instance: str):
        return build_container_spec(tenant_id=tenant, pod_id=pod_id, instance_id=instance, image=image("busybox"),
                                    command=["sleep", "300"], arguments=None, env={}, networking={},
                                    resources={}, installation_id=installation)

    ours = spec("aaaa1111", "i-ours")
    # A container with our name made by someone else (no installation label): must survive.
    foreign_id = raw_api.create_container(image("busybox"), name=ours.name, command=["sleep", "300"],
                                          labels={LABEL_MANAGED: "true", LABEL_TENANT: tenant,
                                                  LABEL_POD_ID: pod_id, LABEL_INSTALLATION: "bbbb2222"})["Id"]
    try:
        with pytest.raises(RuntimeErrorPermanent):
            await runtime.ensure_running(ours)
        assert raw_api.inspect_container(ours.name)["Id"] == foreign_id
        # Two installations with the same tenant and pod id get different names and coexist.
        mine, theirs = spec("aaaa1111", "i1"), spec("cccc3333", "i2")
        assert mine.name != theirs.name
        raw_api.remove_container(foreign_id, force=True)
        await asyncio.gather(runtime.ensure_running(mine), runtime.ensure_running(theirs))
        assert (await runtime.observe(mine.name)).state == "running"
        assert (await runtime.observe(theirs.name)).state == "running"
        await runtime.remove(mine.name, 0)
        assert (await runtime.observe(theirs.name)).state == "running"
        await runtime.remove(theirs.name, 0)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            raw_api.remove_container(foreign_id, force=True)


async def test_created_container_with_stale_mount_sources_is_recreated(
    runtime: DockerRuntime, make_spec, raw_api, tmp_path
) -> None:
    """A spawner killed between creating a container and starting it leaves a container whose bind source was
    a pin point of the dead process; the re-drive pins anew and the runtime re-creates the container (never
    started, so nothing is lost) instead of starting it with the stale source."""
    import dataclasses

    from openpods.domain.container_spec import MountSpec

    old, new = tmp_path / "old-pin", tmp_path / "new-pin"
    for d, text in ((old, "old"), (new, "new")):
        d.mkdir()
        (d / "marker").write_text(text)
    spec = make_spec("busybox", command=["sleep", "300"], mounts=[MountSpec(str(old), "/data")])

    def create_only() -> None:
        api = runtime._api()
        runtime._ensure_network(api, spec)
        runtime._create(api, spec)

    await runtime._run("create", create_only)
    first_id = raw_api.inspect_container(spec.name)["Id"]
    redriven = dataclasses.replace(spec, mounts=(MountSpec(str(new), "/data"),))
    try:
        state = await runtime.ensure_running(redriven)
        assert state.state == "running"
        assert raw_api.inspect_container(spec.name)["Id"] != first_id
        res = await runtime.exec(spec.name, ["cat", "/data/marker"], 20)
        assert res.stdout == "new"
    finally:
        await runtime.remove(spec.name, 0)
