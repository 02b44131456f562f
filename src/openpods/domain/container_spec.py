"""The engine-neutral description of a pod's container, built by a pure function from the pod.

Pure: no I/O. A runtime (``openpods.runtimes``) turns a :class:`ContainerSpec` into engine objects.

Identity: the container of a pod has the deterministic name ``openpods-<installation>-<tenant>-<pod_id>`` and
the labels ``openpods.installation``, ``openpods.tenant``, ``openpods.pod_id``, ``openpods.instance`` and
``openpods.managed=true``. The installation id keeps two OpenPods installations on one engine apart: neither
ever names, lists as its own, replaces or removes the other's containers. (Containers of the old naming scheme,
``openpods-<tenant>-<pod_id>``, are renamed by the health loop when they carry this installation's label.)
Tenant ids may contain hyphens, so the name is never parsed: the labels identify the pod.

Confinement (engine-neutral, filled from the site settings): ``network`` ("" = a private network of the pod's
own, named like the container), ``cap_drop`` (Linux capabilities removed from the engine's default set),
``no_new_privileges`` and ``userns`` (a user-namespace mode, "" = the engine's default).

Published container ports are recorded as labels too (``openpods.port.<stanza>=<container port>``) so that a single "list containers" call
is enough to map every stanza to its host port. Environment values (which may hold resolved secrets) are never
copied into labels.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LABEL_TENANT = "openpods.tenant"
LABEL_POD_ID = "openpods.pod_id"
LABEL_INSTANCE = "openpods.instance"
LABEL_INSTALLATION = "openpods.installation"
LABEL_MANAGED = "openpods.managed"
MANAGED_VALUE = "true"
MANAGED_SELECTOR = f"{LABEL_MANAGED}={MANAGED_VALUE}"
LABEL_PORT_PREFIX = "openpods.port."

CONTAINER_NAME_PREFIX = "openpods-"
PROTOCOLS = ("http", "tcp", "postgres", "local_only")
UNPUBLISHED_PROTOCOLS = frozenset({"local_only"})

_NAME_PART_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_INSTALLATION_RE = re.compile(r"^[a-z0-9]{1,32}$")
_CAP_RE = re.compile(r"^[A-Z][A-Z_]*$")
_NETWORK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_CAP_DROP: tuple[str, ...] = ("NET_RAW", "MKNOD", "AUDIT_WRITE", "SYS_CHROOT", "SETFCAP", "SETPCAP")
"""Capabilities a generic service pod does not need (raw sockets/ARP spoofing, device nodes, audit records,
chroot, file capabilities, capability transfer). Kept: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETUID,
SETGID, NET_BIND_SERVICE, which images such as postgres need to start and drop privileges."""
_STANZA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME_RE = re.compile(r"^[^=\x00]+$")
_ULIMIT_RE = re.compile(r"^\s*([a-z]+)\s*=\s*(-?\d+)\s*(?::\s*(-?\d+)\s*)?$")
ULIMIT_NAMES = frozenset(
    [
        "as",
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ]
)


@dataclass(frozen=True)
class PortSpec:
    """One networking stanza: ``name`` is the stanza key, ``container_port`` the port inside the container.
    ``publish`` is False for ``local_only`` stanzas (reachable only from inside the engine's network)."""

    name: str
    container_port: int
    publish: bool


@dataclass(frozen=True)
class MountSpec:
    """A bind mount of the host directory or file ``source`` (absolute host path) at ``target`` (absolute
    path in the container)."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Ulimit:
    """A resource limit (``name`` as in ``ulimit``/``setrlimit``, e.g. ``nofile``, ``nproc``)."""

    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a runtime needs to create a pod's container.

    ``command`` replaces the image's entrypoint and ``args`` its default arguments (Kubernetes semantics):
    ``None`` keeps the image's value; a ``command`` without ``args`` runs with no arguments.
    :func:`build_container_spec` turns empty lists into ``None``, as Kubernetes does.
    Resources: millicpu and MiB; 0 means "no request/limit" (engine default). ``gpus`` is a device count.
    """

    name: str
    image: str
    command: list[str] | None
    args: list[str] | None
    env: dict[str, str]
    ports: tuple[PortSpec, ...]
    cpu_request_millicpu: int
    cpu_limit_millicpu: int
    mem_request_mib: int
    mem_limit_mib: int
    gpus: int
    mounts: tuple[MountSpec, ...]
    labels: dict[str, str]
    ulimits: tuple[Ulimit, ...] = field(default=())
    network: str = ""
    """"" = a private network of this container's own, named ``name`` (made and removed by the runtime, so
    pods cannot reach each other); otherwise the name of an existing engine network the container joins."""
    cap_drop: tuple[str, ...] = ()
    """Linux capabilities (without ``CAP_``) removed from the engine's default set."""
    no_new_privileges: bool = True
    """No process in the container can gain privileges (setuid binaries, file capabilities)."""
    userns: str = ""
    """User-namespace mode (Podman: ``auto``, ``host``, ...); "" = the engine's default (none)."""

    @property
    def instance_id(self) -> str:
        return self.labels.get(LABEL_INSTANCE, "")

    @property
    def installation_id(self) -> str:
        return self.labels.get(LABEL_INSTALLATION, "")

    @property
    def published_ports(self) -> tuple[PortSpec, ...]:
        return tuple(p for p in self.ports if p.publish)


def container_name(tenant_id: str, pod_id: str, installation_id: str = "") -> str:
    """The deterministic container name of a pod: ``openpods-<installation>-<tenant>-<pod_id>``.

    Every OpenPods process passes its installation id (``AppContext.installation_id``); without one the name
    is the old scheme's ``openpods-<tenant>-<pod_id>`` (see :func:`legacy_container_name`), which two
    installations on one engine would share. Raises ValueError when a part is empty or holds characters an
    engine would refuse in a name.
    """
    for what, value in (("tenant_id", tenant_id), ("pod_id", pod_id)):
        if not isinstance(value, str) or not _NAME_PART_RE.match(value):
            raise ValueError(
                f"{what} {value!r} cannot be part of a container name (lowercase letters, digits, '-')."
            )
    if not installation_id:
        return f"{CONTAINER_NAME_PREFIX}{tenant_id}-{pod_id}"
    if not isinstance(installation_id, str) or not _INSTALLATION_RE.match(installation_id):
        raise ValueError(f"installation id {installation_id!r} must be 1-32 lowercase letters or digits.")
    return f"{CONTAINER_NAME_PREFIX}{installation_id}-{tenant_id}-{pod_id}"


def legacy_container_name(tenant_id: str, pod_id: str) -> str:
    """The name of the old scheme (``openpods-<tenant>-<pod_id>``, no installation), for migration only."""
    return container_name(tenant_id, pod_id)


def pod_labels(tenant_id: str, pod_id: str, instance_id: str, installation_id: str = "") -> dict[str, str]:
    """The identity labels of a pod's container (``openpods.installation`` when an installation is given)."""
    labels = {
        LABEL_TENANT: tenant_id,
        LABEL_POD_ID: pod_id,
        LABEL_INSTANCE: instance_id,
        LABEL_MANAGED: MANAGED_VALUE,
    }
    if installation_id:
        labels[LABEL_INSTALLATION] = installation_id
    return labels


def port_labels(ports: Sequence[PortSpec]) -> dict[str, str]:
    """``openpods.port.<stanza>`` -> container port, for every published stanza."""
    return {f"{LABEL_PORT_PREFIX}{p.name}": str(p.container_port) for p in ports if p.publish}


def published_ports_from_labels(labels: Mapping[str, str]) -> dict[str, int]:
    """Stanza name -> container port, read back from a container's labels (the inverse of :func:`port_labels`).
    Malformed values are skipped."""
    out: dict[str, int] = {}
    for key, value in labels.items():
        if key.startswith(LABEL_PORT_PREFIX) and len(key) > len(LABEL_PORT_PREFIX):
            try:
                port = int(value)
            except (TypeError, ValueError):
                continue
            if 0 < port < 65536:
                out[key[len(LABEL_PORT_PREFIX) :]] = port
    return out


def parse_ulimit(text: str) -> Ulimit:
    """Parse ``name=soft:hard`` (or ``name=value`` for soft = hard), e.g. ``nofile=20000:20000``.
    ``-1`` means unlimited. Raises ValueError for anything else."""
    m = _ULIMIT_RE.match(text)
    if not m:
        raise ValueError(f"ulimit {text!r} is not of the form name=soft:hard")
    name, soft_s, hard_s = m.group(1), m.group(2), m.group(3)
    soft = int(soft_s)
    hard = int(hard_s) if hard_s is not None else soft
    return _checked_ulimit(Ulimit(name, soft, hard))


def _checked_ulimit(u: Ulimit) -> Ulimit:
    if u.name not in ULIMIT_NAMES:
        raise ValueError(f"unknown ulimit {u.name!r}; known: {', '.join(sorted(ULIMIT_NAMES))}")
    if u.soft < -1 or u.hard < -1:
        raise ValueError(f"ulimit {u.name}: values must be >= -1 (-1 = unlimited)")
    if u.hard != -1 and (u.soft == -1 or u.soft > u.hard):
        raise ValueError(f"ulimit {u.name}: soft limit {u.soft} exceeds hard limit {u.hard}")
    return u


def _nonneg_int(resources: Mapping[str, Any], key: str) -> int:
    value = resources.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"resources.{key} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"resources.{key} must not be negative, got {value}")
    return value


def _ports(networking: Mapping[str, Mapping[str, Any]]) -> tuple[PortSpec, ...]:
    ports: list[PortSpec] = []
    for stanza, conf in networking.items():
        if not isinstance(stanza, str) or not _STANZA_RE.match(stanza):
            raise ValueError(f"networking key {stanza!r} is not a valid stanza name")
        protocol = conf.get("protocol", "http")
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"networking.{stanza}.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        port = conf.get("port", 5000)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"networking.{stanza}.port must be an integer 1-65535, got {port!r}")
        ports.append(
            PortSpec(name=stanza, container_port=port, publish=protocol not in UNPUBLISHED_PROTOCOLS)
        )
    return tuple(ports)


def _argv(value: Sequence[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError(f"{what} must be a list of strings, not a string")
    out = list(value)
    for item in out:
        if not isinstance(item, str) or "\x00" in item:
            raise ValueError(f"{what} must be a list of strings without NUL bytes")
    return out or None


def _mount(m: MountSpec) -> MountSpec:
    for what, path in (("source", m.source), ("target", m.target)):
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise ValueError(f"mount {what} {path!r} must be an absolute path")
    if posixpath.normpath(m.target) == "/":
        raise ValueError("a mount cannot replace the container's root directory")
    return m


def build_container_spec(
    *,
    tenant_id: str,
    pod_id: str,
    instance_id: str,
    image: str,
    command: Sequence[str] | None,
    arguments: Sequence[str] | None,
    env: Mapping[str, str],
    networking: Mapping[str, Mapping[str, Any]],
    resources: Mapping[str, Any],
    mounts: Sequence[MountSpec] = (),
    ulimits: Sequence[Ulimit] = (),
    installation_id: str = "",
    network: str = "",
    cap_drop: Sequence[str] = DEFAULT_CAP_DROP,
    no_new_privileges: bool = True,
    userns: str = "",
) -> ContainerSpec:
    """Build the container spec of one pod instance.

    - ``env`` must already be secret-resolved; it goes to the container environment only (never to labels).
    - ``networking``: stanza key -> ``{"protocol": "http"|"tcp"|"postgres"|"local_only", "port": int, ...}``
      (other keys are ignored here). Every stanza but ``local_only`` is published.
    - ``resources``: ``cpu_request``/``cpu_limit`` (millicpu), ``mem_request``/``mem_limit`` (MiB), ``gpus``;
      a missing key or 0 means "engine default". A request above its limit is an error.
    - ``ulimits``: at most one per name (later entries win).
    - ``installation_id``: goes into the name and the ``openpods.installation`` label (see module doc).
    - ``network``, ``cap_drop``, ``no_new_privileges``, ``userns``: see :class:`ContainerSpec`; capability
      names may be given with or without ``CAP_`` and in any case.

    Raises ValueError for an invalid argument (empty image or instance id, bad port, ...).
    """
    name = container_name(tenant_id, pod_id, installation_id)
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise ValueError(f"image {image!r} is not a valid image reference")
    if not isinstance(instance_id, str) or not instance_id or "\x00" in instance_id:
        raise ValueError("instance_id must be a non-empty string")

    cpu_request = _nonneg_int(resources, "cpu_request")
    cpu_limit = _nonneg_int(resources, "cpu_limit")
    mem_request = _nonneg_int(resources, "mem_request")
    mem_limit = _nonneg_int(resources, "mem_limit")
    gpus = _nonneg_int(resources, "gpus")
    if cpu_limit and cpu_request > cpu_limit:
        raise ValueError(f"cpu_request ({cpu_request}) exceeds cpu_limit ({cpu_limit})")
    if mem_limit and mem_request > mem_limit:
        raise ValueError(f"mem_request ({mem_request}) exceeds mem_limit ({mem_limit})")

    env_out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
            raise ValueError(f"environment variable name {key!r} is invalid")
        if not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"environment variable {key!r} must be a string without NUL bytes")
        env_out[key] = value

    ports = _ports(networking)
    labels = {**pod_labels(tenant_id, pod_id, instance_id, installation_id), **port_labels(ports)}
    caps: list[str] = []
    for cap in cap_drop:
        norm = cap.strip().upper().removeprefix("CAP_") if isinstance(cap, str) else ""
        if not _CAP_RE.match(norm):
            raise ValueError(f"capability {cap!r} is not a capability name such as NET_RAW")
        if norm not in caps:
            caps.append(norm)
    if network and not _NETWORK_RE.match(network):
        raise ValueError(f"network {network!r} is not a valid network name")
    if not isinstance(userns, str) or any(c.isspace() or c == "\x00" for c in userns):
        raise ValueError(f"userns {userns!r} is not a valid user-namespace mode")

    by_name: dict[str, Ulimit] = {}
    for u in ulimits:
        by_name[u.name] = _checked_ulimit(u)

    return ContainerSpec(
        name=name,
        image=image,
        command=_argv(command, "command"),
        args=_argv(arguments, "arguments"),
        env=env_out,
        ports=ports,
        cpu_request_millicpu=cpu_request,
        cpu_limit_millicpu=cpu_limit,
        mem_request_mib=mem_request,
        mem_limit_mib=mem_limit,
        gpus=gpus,
        mounts=tuple(_mount(m) for m in mounts),
        labels=labels,
        ulimits=tuple(by_name.values()),
        network=network,
        cap_drop=tuple(caps),
        no_new_privileges=no_new_privileges,
        userns=userns,
    )
