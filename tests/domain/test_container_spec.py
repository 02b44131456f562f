"""build_container_spec and friends: pure, no engine."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from openpods.domain.container_spec import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
    MANAGED_SELECTOR,
    ContainerSpec,
    MountSpec,
    PortSpec,
    Ulimit,
    build_container_spec,
    container_name,
    parse_ulimit,
    published_ports_from_labels,
)

RESOURCES = {"cpu_request": 250, "cpu_limit": 2000, "mem_request": 256, "mem_limit": 3072, "gpus": 0}


def build(**overrides: Any) -> ContainerSpec:
    kwargs: dict[str, Any] = {
        "tenant_id": "tacc",
        "pod_id": "mypod",
        "instance_id": "inst1",
        "image": "localhost/openpods-test/http:latest",
        "command": None,
        "arguments": None,
        "env": {},
        "networking": {"default": {"protocol": "http", "port": 5000}},
        "resources": RESOURCES,
        "mounts": [],
        "ulimits": [],
    }
    kwargs.update(overrides)
    return build_container_spec(**kwargs)


def test_container_name() -> None:
    assert container_name("tacc", "mypod") == "openpods-tacc-mypod"
    assert container_name("my-tenant", "pod1") == "openpods-my-tenant-pod1"
    for tenant, pod in [("", "x"), ("tacc", ""), ("Tacc", "x"), ("ta cc", "x"), ("tacc", "a/b"), ("-x", "p")]:
        with pytest.raises(ValueError):
            container_name(tenant, pod)


def test_identity_labels_and_name() -> None:
    spec = build(tenant_id="dev-tenant", pod_id="abc123", instance_id="i-42")
    assert spec.name == "openpods-dev-tenant-abc123"
    assert spec.labels[LABEL_TENANT] == "dev-tenant"  # labels, not the name, identify the pod
    assert spec.labels[LABEL_POD_ID] == "abc123"
    assert spec.labels[LABEL_INSTANCE] == "i-42" == spec.instance_id
    assert spec.labels[LABEL_MANAGED] == "true"
    assert MANAGED_SELECTOR == "openpods.managed=true"


def test_ports_published_except_local_only() -> None:
    spec = build(
        networking={
            "default": {"protocol": "http", "port": 5000, "url": "ignored", "tapis_auth": True},
            "db": {"protocol": "postgres", "port": 5432},
            "raw": {"protocol": "tcp", "port": 7000},
            "inside": {"protocol": "local_only", "port": 9000},
        }
    )
    assert spec.ports == (
        PortSpec("default", 5000, True),
        PortSpec("db", 5432, True),
        PortSpec("raw", 7000, True),
        PortSpec("inside", 9000, False),
    )
    assert [p.name for p in spec.published_ports] == ["default", "db", "raw"]
    assert published_ports_from_labels(spec.labels) == {"default": 5000, "db": 5432, "raw": 7000}


def test_no_networking_means_no_ports() -> None:
    spec = build(networking={})
    assert spec.ports == () and published_ports_from_labels(spec.labels) == {}


@pytest.mark.parametrize(
    "networking",
    [
        {"default": {"protocol": "udp", "port": 5000}},
        {"default": {"protocol": "http", "port": 0}},
        {"default": {"protocol": "http", "port": 70000}},
        {"default": {"protocol": "http", "port": "5000"}},
        {"default": {"protocol": "http", "port": True}},
        {"bad key": {"protocol": "http", "port": 5000}},
    ],
)
def test_bad_networking(networking: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(ValueError):
        build(networking=networking)


def test_published_ports_from_labels_skips_garbage() -> None:
    labels = {
        "openpods.port.a": "80",
        "openpods.port.b": "x",
        "openpods.port.c": "0",
        "openpods.port.": "1",
        "o": "2",
    }
    assert published_ports_from_labels(labels) == {"a": 80}


def test_env_never_reaches_labels() -> None:
    spec = build(env={"PASSWORD": "hunter2-secret", "USER": "alice"})
    assert spec.env == {"PASSWORD": "hunter2-secret", "USER": "alice"}
    assert "hunter2-secret" not in repr(spec.labels)
    for bad in ({"A=B": "x"}, {"": "x"}, {"A": 1}, {"A": "nul\x00byte"}):
        with pytest.raises(ValueError):
            build(env=bad)


def test_env_is_copied() -> None:
    env = {"A": "1"}
    spec = build(env=env)
    env["A"] = "2"
    assert spec.env == {"A": "1"}


def test_command_and_arguments() -> None:
    spec = build(command=["python", "-m", "http.server"], arguments=["8000"])
    assert spec.command == ["python", "-m", "http.server"] and spec.args == ["8000"]
    spec = build(command=[], arguments=[])
    assert spec.command is None and spec.args is None  # empty lists keep the image's defaults (Kubernetes)
    with pytest.raises(ValueError):
        build(command="sh -c 'x'")
    with pytest.raises(ValueError):
        build(arguments=["ok", 3])


def test_resources() -> None:
    spec = build(
        resources={"cpu_request": 500, "cpu_limit": 1000, "mem_request": 512, "mem_limit": 1024, "gpus": 1}
    )
    assert (spec.cpu_request_millicpu, spec.cpu_limit_millicpu) == (500, 1000)
    assert (spec.mem_request_mib, spec.mem_limit_mib, spec.gpus) == (512, 1024, 1)
    empty = build(resources={})
    assert (empty.cpu_limit_millicpu, empty.mem_limit_mib, empty.gpus) == (0, 0, 0)


@pytest.mark.parametrize(
    "resources",
    [
        {"cpu_request": 3000, "cpu_limit": 2000},
        {"mem_request": 4096, "mem_limit": 1024},
        {"cpu_limit": -1},
        {"gpus": 1.5},
        {"mem_limit": "1G"},
        {"gpus": True},
    ],
)
def test_bad_resources(resources: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build(resources=resources)


def test_mounts() -> None:
    m = MountSpec(source="/srv/openpods/volumes/tacc/v1", target="/tapis_volume_mount", read_only=False)
    spec = build(mounts=[m])
    assert spec.mounts == (m,)
    for bad in (MountSpec("relative", "/x"), MountSpec("/src", "relative"), MountSpec("/src", "/")):
        with pytest.raises(ValueError):
            build(mounts=[bad])


def test_ulimits() -> None:
    assert parse_ulimit("nofile=20000:20000") == Ulimit("nofile", 20000, 20000)
    assert parse_ulimit("nproc=1000") == Ulimit("nproc", 1000, 1000)
    assert parse_ulimit(" core = -1 : -1 ") == Ulimit("core", -1, -1)
    for bad in ("nofile", "nofile=a:b", "bogus=1:1", "nofile=10:5", "nofile=-5:-5"):
        with pytest.raises(ValueError):
            parse_ulimit(bad)
    spec = build(ulimits=[Ulimit("nofile", 10, 10), Ulimit("nproc", 5, 5), Ulimit("nofile", 20, 20)])
    assert spec.ulimits == (Ulimit("nofile", 20, 20), Ulimit("nproc", 5, 5))  # later entries win


@pytest.mark.parametrize("image", ["", "  ", "has space:latest"])
def test_bad_image(image: str) -> None:
    with pytest.raises(ValueError):
        build(image=image)


def test_bad_instance_id() -> None:
    with pytest.raises(ValueError):
        build(instance_id="")


def test_spec_is_frozen() -> None:
    spec = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.image = "other"  # type: ignore[misc]


# ------------------------------------------------------------------------------- installation and confinement


def test_name_and_labels_carry_the_installation() -> None:
    from openpods.domain.container_spec import LABEL_INSTALLATION, legacy_container_name

    assert container_name("tacc", "mypod", "0123abcd") == "openpods-0123abcd-tacc-mypod"
    assert legacy_container_name("tacc", "mypod") == "openpods-tacc-mypod"
    a = build(installation_id="aaaa1111")
    b = build(installation_id="bbbb2222")
    assert a.name != b.name  # two installations never share a container name for the same pod
    assert a.labels[LABEL_INSTALLATION] == "aaaa1111" == a.installation_id
    for bad in ("UPPER", "has-dash", "x" * 33, "a b"):
        with pytest.raises(ValueError):
            container_name("tacc", "mypod", bad)


def test_confinement_defaults_and_overrides() -> None:
    from openpods.domain.container_spec import DEFAULT_CAP_DROP

    spec = build()
    assert spec.network == "" and spec.no_new_privileges and spec.userns == ""
    assert spec.cap_drop == DEFAULT_CAP_DROP and "NET_RAW" in spec.cap_drop
    for needed in ("CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER"):
        assert needed not in spec.cap_drop  # postgres and friends need them to start
    spec = build(cap_drop=["cap_net_raw", "NET_RAW", " sys_admin "], network="podman", userns="auto",
                 no_new_privileges=False)
    assert spec.cap_drop == ("NET_RAW", "SYS_ADMIN")
    assert (spec.network, spec.userns, spec.no_new_privileges) == ("podman", "auto", False)
    for kwargs in ({"cap_drop": ["NET RAW"]}, {"cap_drop": ["1"]}, {"network": "a b"}, {"userns": "a\x00"}):
        with pytest.raises(ValueError):
            build(**kwargs)
