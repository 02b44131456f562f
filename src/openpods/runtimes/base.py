"""The Runtime interface: what the controllers need from a container engine.

Every operation is async, idempotent where stated, and addressed by the deterministic container name of a pod
(:func:`openpods.domain.container_spec.container_name`). The runtime never decides what a pod *should* be; it
reports what exists and carries out one operation at a time. Controllers reconcile.

Errors: every failure is one of the classes below. ``temporary`` tells a controller whether retrying the same
operation later can help (engine down, timeouts) or whether the pod must go to ``ERROR`` (image missing, a
feature the engine lacks, a command the engine refused).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from openpods.domain.container_spec import LABEL_INSTANCE, LABEL_POD_ID, LABEL_TENANT, ContainerSpec

ContainerStatus = Literal["created", "running", "exited", "missing", "unknown"]


# ------------------------------------------------------------------------------------------------- errors


class RuntimeFailure(Exception):
    """Base class of every runtime error. ``temporary`` is True when retrying later may succeed."""

    temporary: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RuntimeErrorTemporary(RuntimeFailure):
    """The operation failed for a reason that may go away (timeout, engine busy, conflict). Retry later."""

    temporary = True


class RuntimeUnavailable(RuntimeErrorTemporary):
    """The engine cannot be reached (not installed, not running, socket missing). Retry later."""


class RuntimeErrorPermanent(RuntimeFailure):
    """The engine refused the operation for this spec/container; retrying the same thing will not help."""


class ImageNotFound(RuntimeErrorPermanent):
    """The image is neither present locally nor pullable. ``message`` holds the engine's explanation."""


class UnsupportedFeature(RuntimeErrorPermanent):
    """The spec asks for something this engine cannot do (e.g. GPUs on an engine without device requests)."""


class ContainerNotRunning(RuntimeErrorPermanent):
    """The operation needs a running container (exec, put_file) and the container is not running."""


class ContainerNotFound(ContainerNotRunning):
    """No container has the given name."""


class BadDestination(ValueError):
    """A destination path given to :meth:`Runtime.put_file` is not acceptable (relative, '..', a directory,
    below a file, ...). The message says why and is safe to show to the user."""


# ------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ContainerState:
    """What the engine reports about one container.

    - ``state``: ``created`` (exists, never started), ``running``, ``exited`` (stopped or finished; see
      ``exit_code``), ``missing`` (no such container) or ``unknown`` (paused, restarting, being removed, or a
      state this runtime does not know; ``message`` holds the engine's word).
    - ``exit_code``: set when ``state == "exited"`` and the engine knows it, else None.
    - ``started_at`` / ``finished_at``: UTC-aware; None when unknown (list calls of some engines omit them).
    - ``message``: a human-readable summary (e.g. ``"Exited (1) 3 seconds ago"``, an OOM kill, an engine error).
    - ``host_ports``: stanza name -> host port on 127.0.0.1, for published stanzas of a *running* container.
    - ``endpoints``: stanza name -> ``host:port`` the proxy routes to, for runtimes whose containers are not
      published on 127.0.0.1 (Kubernetes: the Service's cluster DNS name and port). Empty for Docker.
      :meth:`backends` merges both.
    """

    name: str
    labels: dict[str, str]
    state: ContainerStatus
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    host_ports: dict[str, int] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)

    def backends(self) -> dict[str, int | str]:
        """What the spawner records for the proxy (``Pod.host_ports``): host ports (ints, on 127.0.0.1) and
        endpoints (``host:port`` strings)."""
        return {**self.host_ports, **self.endpoints}

    @property
    def tenant_id(self) -> str | None:
        return self.labels.get(LABEL_TENANT)

    @property
    def pod_id(self) -> str | None:
        return self.labels.get(LABEL_POD_ID)

    @property
    def instance_id(self) -> str | None:
        return self.labels.get(LABEL_INSTANCE)

    @classmethod
    def missing(cls, name: str) -> ContainerState:
        return cls(name=name, labels={}, state="missing", message="no such container")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of :meth:`Runtime.exec`. ``exit_code`` is None when the command timed out or the engine could not
    tell. ``stdout``/``stderr`` are decoded as UTF-8 (invalid bytes replaced) and may be truncated."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_sec: float


# ------------------------------------------------------------------------------------------------- interface


class Runtime(abc.ABC):
    """A container engine as seen by the controllers. Implementations must be safe to call concurrently from
    one event loop; none of the methods may block the loop."""

    name: str = "abstract"
    #: How far behind the engine a :meth:`list_managed` answer may be, in seconds. 0: every call asks the engine.
    #: A runtime that answers from a cache fed by the engine's events may miss the changes that other processes
    #: (or the engine itself) made during the last ``list_lag_sec`` seconds; its own operations are never missed.
    #: Callers that must not act on an outdated observation (the health loop, for pods whose status changed
    #: that recently) ask :meth:`observe` instead.
    list_lag_sec: float = 0.0

    @abc.abstractmethod
    async def ensure_running(self, spec: ContainerSpec) -> ContainerState:
        """Make sure the container of ``spec`` exists and has been started; idempotent.

        - No container named ``spec.name``: create it from the spec (no restart policy, published ports bound
          to 127.0.0.1 on engine-chosen host ports) and start it.
        - A container with that name and the same ``openpods.instance`` label: return its state; start it only
          if it is merely ``created``. An ``exited`` container of the same instance is NEVER restarted (a
          finished instance is final) and its state is returned as is.
        - A container with that name and another (or no) instance label: remove it (force) and create anew.
        - A container with that name whose ``openpods.installation`` label differs from the spec's (another
          OpenPods installation's, or one no OpenPods made): NEVER removed or changed; RuntimeErrorPermanent.

        Confinement: the container gets ``spec.cap_drop``, ``spec.no_new_privileges`` and ``spec.userns``
        (an engine that cannot honour one raises UnsupportedFeature rather than ignoring it). With
        ``spec.network == ""`` the container is attached to a network of its own that isolates it from every
        other pod (Docker runtime: a bridge network named ``spec.name``, made here and removed by
        :meth:`remove`; Kubernetes: a NetworkPolicy or equivalent); published ports stay reachable from the
        host/proxy. Otherwise it joins the existing network ``spec.network``.

        Returns the state after the operation (usually ``running``; possibly already ``exited`` for a short-lived
        command). Raises ImageNotFound, UnsupportedFeature (e.g. ``spec.gpus`` on an engine without GPU
        support; nothing is left behind then), RuntimeErrorPermanent (the engine refused the spec, e.g. an
        executable that does not exist; the container is left in place so its state stays observable),
        RuntimeUnavailable / RuntimeErrorTemporary (retry later).
        """

    @abc.abstractmethod
    async def remove(self, name: str, timeout_sec: float = 10) -> None:
        """Stop the container (SIGTERM, then SIGKILL after ``timeout_sec``) and remove it with its anonymous
        volumes, and the private network :meth:`ensure_running` made for it (also when the container is
        already gone). Idempotent: a missing container is not an error, nor is one that is already stopped.
        Callers only pass names of their own installation's containers."""

    @abc.abstractmethod
    async def list_managed(self) -> list[ContainerState]:
        """Every container labelled ``openpods.managed=true`` (running or not), in ONE engine call, or from a
        cache that the engine's events keep up to date: then one engine call per container that changed since the
        previous call (a full list when that would cost more, or when the cache may have missed events), and the
        answer may lag by up to :attr:`list_lag_sec` for changes this runtime did not make itself.

        This is what the health loop uses once per pass, so the cost must not grow with per-container calls.
        ``host_ports`` are filled from that same call. ``started_at``/``finished_at`` may be None when the
        engine's list does not report them (use :meth:`observe` for one container when they matter), and
        ``exit_code`` may be None when the engine's list does not say it.
        """

    async def watch_managed(self, on_change: Callable[[], None]) -> None:
        """Optional: call ``on_change`` (in the caller's event loop) whenever a managed container may have
        changed; runs until cancelled. Only a wake-up, never a state: a missed or extra call changes nothing,
        since :meth:`list_managed` tells what exists. The default (a runtime that cannot watch) returns at once."""
        return

    @abc.abstractmethod
    async def observe(self, name: str) -> ContainerState:
        """The full state of one container, or ``state == "missing"`` when there is none."""

    @abc.abstractmethod
    async def logs(self, name: str, max_bytes: int) -> str:
        """The container's stdout and stderr, interleaved in the order written, limited to the LAST
        ``max_bytes`` bytes (UTF-8) at most. Reads a bounded tail from the engine: memory use is bounded by
        ``max_bytes``, not by the size of the log. Works for running and stopped containers.
        Raises ContainerNotFound when there is no such container."""

    @abc.abstractmethod
    async def exec(self, name: str, argv: list[str], timeout_sec: float) -> ExecResult:
        """Run ``argv`` (no shell) in the running container and collect its output and exit code.

        The timeout is enforced: after ``timeout_sec`` the call returns with ``timed_out=True`` and
        ``exit_code=None``; the process is killed where the runtime can do so, else abandoned.
        A command that cannot be started (not found) is reported as an ExecResult with the engine's exit code
        (126/127) where the engine reports one, not as an exception.
        Raises ContainerNotRunning / ContainerNotFound when the container is not running.
        """

    @abc.abstractmethod
    async def put_file(self, name: str, dest_path: str, src_path: str) -> None:
        """Copy the local file ``src_path`` into the running container at the absolute path ``dest_path``.

        Streams through the engine's archive API: no shell or tool is needed in the image, and memory use does
        not depend on the file size (files of several GB are fine). Missing parent directories of ``dest_path``
        are created (mode 0755, owned by root); existing ones are not modified. An existing file at
        ``dest_path`` is replaced. The file is written with mode 0644, owned by root.

        Raises BadDestination for a relative or otherwise invalid ``dest_path`` (``..``, trailing ``/``, an
        existing directory, a parent that is a file), ContainerNotRunning / ContainerNotFound when the container
        is not running, FileNotFoundError when ``src_path`` does not exist.
        """

    async def prune_networks(self, installation_id: str, keep: Collection[str]) -> list[str]:
        """Optional housekeeping: remove the private pod networks of installation ``installation_id`` whose
        names are not in ``keep`` and that no container uses (left behind by a crash between making a network
        and its container, or by a pod deleted meanwhile). Never touches another installation's networks.
        Returns the names removed. The default does nothing (runtimes without such objects)."""
        return []

    async def rename(self, name: str, new_name: str) -> None:
        """Optional: rename a container (used once to move containers of the old naming scheme, which lacked
        the installation id, to their new names). Raises UnsupportedFeature where the engine cannot rename,
        ContainerNotFound when there is no such container."""
        raise UnsupportedFeature(f"{self.name} runtime cannot rename containers")

    async def supports_gpus(self) -> bool:
        """Best guess whether :meth:`ensure_running` can honour ``spec.gpus > 0``; for an early, clear refusal
        at the API. The authoritative answer is UnsupportedFeature from :meth:`ensure_running`."""
        return False

    async def image_tags_for_digest(self, ref: str, digest: str) -> list[str]:
        """The tags (``name:tag``) of the local image that ``ref`` resolves to, provided that image's content
        digest is ``digest``; [] when there is no such local image. The image allowlist asks this for a
        reference whose digest no entry names. Engines that cannot tell answer [] (such references are refused).
        """
        return []

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the engine answers; never raises."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads. The runtime must not be used afterwards."""
