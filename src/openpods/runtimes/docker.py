"""The Docker Engine API runtime: a real Docker engine or Podman's Docker-compatible service.

Blocking ``docker`` (docker-py) calls run in a thread pool owned by the runtime, so long uploads, execs and log
reads never block the event loop nor starve each other. The low-level ``docker.APIClient`` is used throughout:
``list_managed`` is exactly one ``GET /containers/json`` call (docker-py's high-level ``containers.list()``
would inspect every container), or, with ``events=True``, an answer from a cache that the engine's event stream
keeps up to date (:mod:`openpods.runtimes.event_cache`): one inspect per container that changed since the
previous call, and a full list only when the cache may have missed events.

Engine notes (Podman 4.3 compat API, verified): setting any ulimit through the API drops Podman's
containers.conf ``default_ulimits`` for the other limits, which then exceed what a root without
CAP_SYS_RESOURCE may set; so the runtime always sends the complete set (``default_ulimits`` merged with the
spec's). Podman silently ignores GPU device requests; the runtime detects that after create and refuses.
A conflicting name is a 500 ("already in use") on Podman and a 409 on Docker.

Confinement: every container gets the spec's ``cap_drop``, ``no-new-privileges`` and user-namespace mode; a spec
without a ``network`` gets a bridge network of its own, named like the container and labelled like it, made
before the container and removed after it (:meth:`DockerRuntime.remove`, :meth:`DockerRuntime.prune_networks`).
Verified on Podman 4.3/netavark: containers on two such networks cannot reach each other, while ports published
on 127.0.0.1 stay reachable from the host (Traefik).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import posixpath
import re
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker
import docker.constants
import docker.errors
import docker.types
import requests.exceptions

from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
    MANAGED_SELECTOR,
    MANAGED_VALUE,
    ContainerSpec,
    Ulimit,
    published_ports_from_labels,
)
from openpods.runtimes.base import (
    BadDestination,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerState,
    ContainerStatus,
    ExecResult,
    ImageNotFound,
    Runtime,
    RuntimeErrorPermanent,
    RuntimeErrorTemporary,
    RuntimeFailure,
    RuntimeUnavailable,
    UnsupportedFeature,
)
from openpods.runtimes.event_cache import ManagedCache

T = TypeVar("T")
log = logging.getLogger(__name__)

_STATE_MAP: dict[str, ContainerStatus] = {
    "created": "created",
    "configured": "created",
    "initialized": "created",
    "running": "running",
    "exited": "exited",
    "stopped": "exited",
    "dead": "exited",
}
_EXITED_RE = re.compile(r"^Exited \((-?\d+)\)")
_TS_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?\s*(Z|[+-]\d{2}:?\d{2})?")
# Messages of engine errors that will not go away by retrying the same spec.
_PERMANENT_HINTS = (
    "executable file not found",
    "no such file or directory",
    "not found in $path",
    "permission denied",
    "exec format error",
    "oci runtime",
    "runc create failed",
    "crun:",
    "invalid",
    "operation not permitted",
    "could not select device driver",
    "read-only file system",
    "not a directory",
    "enough available ids",  # userns=auto without /etc/subuid entries
    "uid or gid mapping",
    "only supported in rootless mode",
)
_GO_MODE_DIR = 1 << 31
_GO_MODE_SYMLINK = 1 << 27
_MAX_PATH = 4096
# Podman's tail=N is quadratic in N; above this many lines one tail=all stream is cheaper.
_PODMAN_MAX_TAIL = 2000
_MAX_NAME = 255


# ------------------------------------------------------------------------------------------------ pure helpers


def parse_engine_time(value: str | None) -> datetime | None:
    """An engine timestamp (RFC 3339 with up to nanoseconds) as a UTC-aware datetime; None for empty/zero."""
    if not value or value.startswith("0001-01-01"):
        return None
    m = _TS_RE.match(value.strip())
    if not m:
        return None
    frac = ((m.group(3) or ".0")[1:] + "000000")[:6]
    tz = m.group(4) or "Z"
    if tz == "Z":
        tz = "+00:00"
    elif ":" not in tz:
        tz = f"{tz[:3]}:{tz[3:]}"
    try:
        return datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}.{frac}{tz}").astimezone(UTC)
    except ValueError:
        return None


def _map_state(raw: str | None) -> ContainerStatus:
    return _STATE_MAP.get((raw or "").lower(), "unknown")


def _host_ports(labels: dict[str, str], container_to_host: dict[int, int]) -> dict[str, int]:
    return {
        stanza: container_to_host[cport]
        for stanza, cport in published_ports_from_labels(labels).items()
        if cport in container_to_host
    }


def state_from_inspect(info: dict[str, Any]) -> ContainerState:
    """ContainerState from a ``GET /containers/{id}/json`` answer."""
    name = (info.get("Name") or "").lstrip("/")
    labels = dict((info.get("Config") or {}).get("Labels") or {})
    st = info.get("State") or {}
    state = _map_state(st.get("Status"))
    started = parse_engine_time(st.get("StartedAt"))
    finished = parse_engine_time(st.get("FinishedAt")) if state == "exited" else None
    if started and finished and finished < started:
        finished = started  # Podman reports FinishedAt slightly before StartedAt for very short runs
    exit_code = st.get("ExitCode") if state == "exited" else None
    parts: list[str] = []
    if state == "exited":
        parts.append(f"exited with code {exit_code}")
        if st.get("OOMKilled"):
            parts.append("killed: out of memory (OOM)")
    elif state == "unknown":
        parts.append(f"engine state {st.get('Status')!r}")
    else:
        parts.append(state)
    if st.get("Error"):
        parts.append(str(st["Error"]))
    c2h: dict[int, int] = {}
    if state == "running":
        for key, bindings in ((info.get("NetworkSettings") or {}).get("Ports") or {}).items():
            port_s, _, proto = key.partition("/")
            if proto not in ("", "tcp") or not bindings:
                continue
            for b in bindings:
                with contextlib.suppress(TypeError, ValueError):
                    if int(b.get("HostPort") or 0) > 0:
                        c2h.setdefault(int(port_s), int(b["HostPort"]))
    return ContainerState(
        name=name,
        labels=labels,
        state=state,
        exit_code=exit_code,
        started_at=started,
        finished_at=finished,
        message="; ".join(parts),
        host_ports=_host_ports(labels, c2h),
    )


def state_from_list_item(item: dict[str, Any]) -> ContainerState:
    """ContainerState from one element of a ``GET /containers/json`` answer (no timestamps there)."""
    names = item.get("Names") or []
    name = (names[0] if names else item.get("Id", "")[:12]).lstrip("/")
    labels = dict(item.get("Labels") or {})
    status_text = item.get("Status") or ""
    raw_state = item.get("State")
    if not raw_state:  # very old engines: derive from the Status text
        raw_state = {"Up": "running", "Exited": "exited"}.get(status_text.split(" ", 1)[0], "")
    state = _map_state(raw_state)
    exit_code: int | None = None
    if state == "exited":
        m = _EXITED_RE.match(status_text)
        if m:
            exit_code = int(m.group(1))
    c2h: dict[int, int] = {}
    if state == "running":
        for p in item.get("Ports") or []:
            if p.get("PublicPort") and p.get("PrivatePort") and (p.get("Type") or "tcp") == "tcp":
                c2h.setdefault(int(p["PrivatePort"]), int(p["PublicPort"]))
    return ContainerState(
        name=name,
        labels=labels,
        state=state,
        exit_code=exit_code,
        message=status_text or str(raw_state),
        host_ports=_host_ports(labels, c2h),
    )


def check_dest_path(dest_path: str) -> str:
    """Validate an absolute, normalized file path inside a container; returns it. Raises BadDestination."""
    if not isinstance(dest_path, str) or not dest_path:
        raise BadDestination("dest_path must be a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 for c in dest_path):
        raise BadDestination("dest_path must not contain control characters")
    if not dest_path.startswith("/"):
        raise BadDestination(f"dest_path {dest_path!r} must be an absolute path (starting with '/')")
    if dest_path.endswith("/"):
        raise BadDestination(f"dest_path {dest_path!r} must name a file, not a directory (it ends with '/')")
    parts = dest_path.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts):
        raise BadDestination(f"dest_path {dest_path!r} must be normalized (no '..', '.' or '//')")
    if len(dest_path.encode()) > _MAX_PATH or any(len(p.encode()) > _MAX_NAME for p in parts):
        raise BadDestination("dest_path is too long")
    return dest_path


def _tar_dir(name: str, mtime: float) -> bytes:
    info = tarfile.TarInfo(name.rstrip("/") + "/")
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(mtime)
    info.uname = info.gname = "root"
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8")


def tar_stream(
    dirs: Sequence[str], file_name: str, src_path: str, *, chunk_bytes: int = 1 << 20
) -> Iterator[bytes]:
    """A tar archive, as a stream of chunks, holding the directories ``dirs`` (in order) and the file
    ``src_path`` as ``file_name``. Reads the file chunk by chunk (memory use is one chunk)."""
    now = time.time()
    for d in dirs:
        yield _tar_dir(d, now)
    with open(src_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        info = tarfile.TarInfo(file_name)
        info.size = size
        info.mode = 0o644
        info.mtime = int(now)
        info.uname = info.gname = "root"
        yield info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8")
        left = size
        while left > 0:
            chunk = f.read(min(chunk_bytes, left))
            if not chunk:
                raise OSError(f"{src_path} shrank while it was being uploaded")
            left -= len(chunk)
            yield chunk
    pad = (-size) % tarfile.BLOCKSIZE
    yield b"\0" * pad + b"\0" * (2 * tarfile.BLOCKSIZE)


def _decode_tail(data: bytes | bytearray, max_bytes: int) -> str:
    """The last ``max_bytes`` of ``data`` as text whose UTF-8 encoding is at most ``max_bytes`` long."""
    tail = bytes(data[-max_bytes:]) if max_bytes > 0 else b""
    # Do not start in the middle of a multi-byte character.
    skip = 0
    while skip < min(3, len(tail)) and (tail[skip] & 0xC0) == 0x80:
        skip += 1
    text = tail[skip:].decode("utf-8", errors="replace")
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:  # replacement characters are longer than the bytes they replace
        text = encoded[-max_bytes:].decode("utf-8", errors="ignore")
    return text


def _pullable(image: str) -> bool:
    """False for references that only exist locally by convention (Podman's ``localhost/`` prefix)."""
    first, sep, _ = image.partition("/")
    return not (sep and first == "localhost")


def _engine_message(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        msg = exc.explanation
        if isinstance(msg, bytes):
            msg = msg.decode(errors="replace")
        return str(msg or exc)
    return str(exc) or exc.__class__.__name__


def _is_conflict(exc: docker.errors.APIError) -> bool:
    return exc.status_code == 409 or "already in use" in _engine_message(exc).lower()


def _looks_permanent(message: str) -> bool:
    low = message.lower()
    return any(h in low for h in _PERMANENT_HINTS)


class FrameParser:
    """Incremental parser of the Engine API's multiplexed stream (8-byte header: stream type 0/1/2, three zero
    bytes, big-endian payload size). Calls ``sink(stream, payload)`` per frame. A stream that does not start
    with a valid header (a TTY stream) is passed through as stream 1."""

    def __init__(self, sink: Callable[[int, bytes | bytearray], None]) -> None:
        self._sink = sink
        self._pending = bytearray()
        self._raw: bool | None = None

    def feed(self, data: bytes) -> None:
        if self._raw:
            self._sink(1, data)
            return
        pending = self._pending
        pending += data
        while len(pending) >= 8:
            if pending[0] not in (0, 1, 2) or pending[1:4] != b"\0\0\0":
                if self._raw is None:  # not multiplexed at all
                    self._raw = True
                    self._sink(1, bytes(pending))
                    pending.clear()
                    return
                raise docker.errors.DockerException("corrupt multiplexed stream from the engine")
            self._raw = False
            (size,) = struct.unpack(">L", pending[4:8])
            if len(pending) < 8 + size:
                return
            self._sink(pending[0], pending[8 : 8 + size])
            del pending[: 8 + size]


def read_k8s_log_tail(path: str, max_bytes: int, *, block_bytes: int = 1 << 20) -> bytes:
    """The last ``max_bytes`` of container output from a CRI/k8s-file log (records
    ``<time> <stream> <F|P> <content>``; ``F`` ends a line, ``P`` is part of one), reading the file backwards
    in blocks. Memory use is about ``max_bytes + block_bytes``. An incomplete last record is ignored.
    Raises ValueError when a record does not have that format, OSError when the file cannot be read."""
    pieces: list[bytes] = []
    total = 0
    with open(path, "rb") as f:
        pos = os.fstat(f.fileno()).st_size
        carry = b""
        first = True
        while pos > 0 and total < max_bytes:
            start = max(0, pos - block_bytes)
            f.seek(start)
            data = f.read(pos - start) + carry
            pos = start
            records = data.split(b"\n")
            if first:
                records.pop()  # after the last newline: empty, or a record still being written
                first = False
            if start > 0:
                carry = records.pop(0)  # may begin in the previous block
                if len(carry) > max_bytes + block_bytes:  # no newline for that long: not a k8s-file log
                    raise OSError(f"{path} does not look like a k8s-file log")
            for record in reversed(records):
                parts = record.split(b" ", 3)
                if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
                    raise ValueError(f"{path} is not a k8s-file log")
                content = parts[3] if len(parts) == 4 else b""
                if parts[2] == b"F":
                    content += b"\n"
                pieces.append(content)
                total += len(content)
                if total >= max_bytes:
                    break
    data = b"".join(reversed(pieces))
    return data[-max_bytes:] if max_bytes > 0 else b""


def translate_error(exc: BaseException, what: str) -> BaseException:
    """Map a docker-py / requests exception to the runtime's error classes (others are returned unchanged)."""
    if isinstance(exc, RuntimeFailure | BadDestination):
        return exc
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageNotFound(f"{what}: {_engine_message(exc)}")
    if isinstance(exc, docker.errors.NotFound):
        return ContainerNotFound(f"{what}: {_engine_message(exc)}")
    if isinstance(exc, docker.errors.APIError):
        msg = f"{what}: {_engine_message(exc)}"
        status = exc.status_code or 0
        if _is_conflict(exc) or status in (408, 429):
            return RuntimeErrorTemporary(msg)
        if 400 <= status < 500 or _looks_permanent(msg):
            return RuntimeErrorPermanent(msg)
        return RuntimeErrorTemporary(msg)
    if isinstance(exc, requests.exceptions.Timeout | socket.timeout):
        return RuntimeErrorTemporary(f"{what}: the container engine did not answer in time ({exc})")
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return RuntimeUnavailable(f"{what}: cannot reach the container engine ({exc})")
    if isinstance(exc, docker.errors.DockerException):
        return RuntimeUnavailable(f"{what}: {exc}")
    return exc


# ------------------------------------------------------------------------------------------------ the runtime


#: Prefix of the bridges of pods' private networks (Linux interface names have at most 15 characters).
POD_BRIDGE_PREFIX = "opb"
_isolation_rule_lock = threading.Lock()
_isolation_rule_ok: bool | None = None  # None: not tried yet; False: iptables unusable here


def pod_bridge_name(network_name: str) -> str:
    """The bridge interface of a pod's private network: the prefix and 12 hex digits of its name's hash."""
    return POD_BRIDGE_PREFIX + hashlib.sha256(network_name.encode()).hexdigest()[:12]


@contextlib.contextmanager
def isolation_rule_host_lock() -> Iterator[None]:
    """Serialises the rule's check-and-move across the processes of this host (several OpenPods processes, or
    test workers, starting containers at once would otherwise each insert a copy)."""
    directory = "/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir()
    fd = os.open(os.path.join(directory, "openpods-bridge-isolation.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _rule_is_first(exe: str, rule: list[str]) -> bool | None:
    """Whether ``rule`` is the first rule of its chain, and there once (None: it is not in the chain at all)."""
    listed = subprocess.run([exe, "-w", "-S", rule[0]], capture_output=True, text=True, timeout=30, check=True)
    rules = [line.split() for line in listed.stdout.splitlines() if line.startswith(f"-A {rule[0]} ")]
    mine = ["-A", *rule]
    if mine not in rules:
        return None
    return rules[0] == mine and rules.count(mine) == 1


def ensure_bridge_isolation_rule() -> bool:
    """Make sure the host drops traffic forwarded from one pod bridge to another (IPv4 and, where present, IPv6):
    ``FORWARD -i opb+ -o opb+ -j DROP``, *first* in the chain. netavark inserts its own ``NETAVARK_FORWARD``
    jump (which accepts a pod subnet's traffic) at the top of FORWARD when it sets up a network, which would put
    it above ours: so this is called again after every container start, and moves the rule back to the top.
    Needs root and iptables on the host of a local engine; costs one ``iptables -S`` when all is in place.
    Traffic within one bridge is not forwarded, so a pod still reaches itself; the host (Traefik, through the
    published ports) and the outside world are not affected. Returns whether the rule is in place (a failure
    is logged once and leaves isolation to the engine)."""
    global _isolation_rule_ok
    with _isolation_rule_lock, isolation_rule_host_lock():
        if _isolation_rule_ok is False:
            return False
        rule = ["FORWARD", "-i", f"{POD_BRIDGE_PREFIX}+", "-o", f"{POD_BRIDGE_PREFIX}+", "-j", "DROP"]
        ok = False
        for tool in ("iptables", "ip6tables"):
            exe = shutil.which(tool)
            if exe is None:
                continue
            try:
                if _rule_is_first(exe, rule) is not True:
                    # Every copy out (there is one unless something went wrong before), then one at the top.
                    while subprocess.run([exe, "-w", "-D", *rule], capture_output=True, timeout=30).returncode == 0:
                        pass
                    subprocess.run([exe, "-w", "-I", *rule[:1], "1", *rule[1:]], capture_output=True, timeout=30,
                                   check=True)
                ok = ok or tool == "iptables"
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("could not install the pod bridge isolation rule with %s: %s", tool, exc)
        if not ok and _isolation_rule_ok is None:
            log.warning("pods' private networks rely on the engine alone to keep them apart (no iptables rule)")
        if _isolation_rule_ok is None:
            _isolation_rule_ok = ok  # iptables unusable on this host: do not try on every start
        return ok


class DockerRuntime(Runtime):
    """:class:`Runtime` over the Docker Engine API (Docker, or Podman's compatible service).

    - ``base_url``: ``unix:///path.sock`` or ``tcp://host:port``; None means the docker-py environment
      (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``) or the default socket.
    - ``default_ulimits``: applied to every container, overridden per name by the spec's ulimits.
    - ``pull_missing``: try one pull when an image is not local (never for ``localhost/…`` images); a failed
      pull is reported as ImageNotFound with the engine's message.
    - ``api_timeout_sec``: socket timeout of each engine call (streams use their own deadlines).
    - ``max_workers``: threads for blocking engine calls (and HTTP connections kept to the engine).
    - ``exec_output_max_bytes``: stdout and stderr of an exec are each cut after this many bytes.
    - ``events``: answer :meth:`list_managed` from a cache fed by the engine's event stream (see
      :mod:`openpods.runtimes.event_cache`), with a full list every ``relist_sec`` in the background;
      ``events_lag_sec`` is then :attr:`list_lag_sec`. :meth:`watch_managed` needs it.
    """

    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        default_ulimits: Sequence[Ulimit] = (),
        pull_missing: bool = True,
        api_timeout_sec: float = 60.0,
        max_workers: int = 16,
        exec_output_max_bytes: int = 1 << 20,
        upload_chunk_bytes: int = 1 << 20,
        events: bool = False,
        relist_sec: float = 60.0,
        events_lag_sec: float = 2.0,
    ) -> None:
        self._base_url = base_url
        self._default_ulimits = tuple(default_ulimits)
        self._pull_missing = pull_missing
        self._api_timeout = api_timeout_sec
        self._max_workers = max_workers
        self._exec_max = exec_output_max_bytes
        self._chunk = upload_chunk_bytes
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="openpods-docker")
        self._lock = threading.Lock()
        self._client: docker.APIClient | None = None
        self._is_podman = False
        self._local_engine = False
        self._closed = False
        self._events: ManagedCache | None = None
        if events:
            self._events = ManagedCache(open_stream=self._open_event_stream, list_all=self._list_with_ids,
                                        inspect=self._inspect_with_id, relist_sec=relist_sec)
            self.list_lag_sec = events_lag_sec

    # -------------------------------------------------------------------------------------- plumbing

    @property
    def base_url(self) -> str | None:
        return self._base_url

    def _api(self) -> docker.APIClient:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                if self._closed:
                    raise RuntimeUnavailable("the runtime is closed")
                kwargs: dict[str, Any] = {}
                if self._base_url:
                    kwargs["base_url"] = self._base_url
                else:
                    kwargs.update(docker.utils.kwargs_from_env())
                where = kwargs.get("base_url") or docker.constants.DEFAULT_UNIX_SOCKET
                common = {"timeout": self._api_timeout, "max_pool_size": self._max_workers, **kwargs}
                try:
                    # GET /_ping tells the API version (and Podman adds Libpod-* headers) in milliseconds;
                    # Podman's /version (docker-py's version="auto") takes most of a second.
                    probe = docker.APIClient(version=docker.constants.MINIMUM_DOCKER_API_VERSION, **common)
                    try:
                        res = probe.get(f"{probe.base_url}/_ping", timeout=min(self._api_timeout, 10.0))
                        res.raise_for_status()
                        headers = res.headers
                    finally:
                        probe.close()
                    api_version = headers.get("Api-Version") or "auto"
                    client = docker.APIClient(version=api_version, **common)
                except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                    raise RuntimeUnavailable(f"cannot reach the container engine at {where}: {exc}") from exc
                self._is_podman = "Libpod-Api-Version" in headers
                self._local_engine = str(where).startswith(("unix://", "http+unix://", "/"))
                self._client = client
            return self._client

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeUnavailable("the runtime is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except Exception as exc:
            mapped = translate_error(exc, what)
            if mapped is exc:
                raise
            raise mapped from exc

    @staticmethod
    def _inspect_or_none(api: docker.APIClient, name: str) -> dict[str, Any] | None:
        try:
            return api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            # Podman 4.3 answers 500 "... does not exist in database: no such container" for a container whose
            # removal is under way or left it half gone; it is not listed any more: gone, for every caller.
            if "no such container" in _engine_message(exc).lower():
                return None
            raise

    def _require_running(self, api: docker.APIClient, name: str) -> dict[str, Any]:
        info = self._inspect_or_none(api, name)
        if info is None:
            raise ContainerNotFound(f"no container named {name}")
        state = state_from_inspect(info)
        if state.state != "running":
            raise ContainerNotRunning(f"container {name} is not running ({state.message})")
        return info

    # -------------------------------------------------------------------------------------- ensure_running

    async def ensure_running(self, spec: ContainerSpec) -> ContainerState:
        try:
            return await self._run(f"ensure_running {spec.name}", self._ensure_running_sync, spec)
        finally:
            self._changed(spec.name)

    def _changed(self, *names: str) -> None:
        """Our own change: the event cache looks at these containers on the next list (before their events
        arrive)."""
        if self._events is not None:
            self._events.changed(*names)

    def _ensure_running_sync(self, spec: ContainerSpec) -> ContainerState:
        api = self._api()
        for _ in range(4):
            info = self._inspect_or_none(api, spec.name)
            if info is not None:
                labels = (info.get("Config") or {}).get("Labels") or {}
                if labels.get(LABEL_INSTALLATION, "") != spec.installation_id:
                    # Another installation's (or nobody's) container: never ours to replace.
                    raise RuntimeErrorPermanent(
                        f"a container named {spec.name} exists that this OpenPods installation did not make; "
                        "it is left alone"
                    )
                if labels.get(LABEL_INSTANCE) == spec.instance_id:
                    state = state_from_inspect(info)
                    if state.state != "created":
                        return state  # running, exited (final) or unknown: never restarted here
                    if self._mount_sources(info) == sorted(m.source for m in spec.mounts):
                        self._ensure_network(api, spec)
                        self._start(api, spec)
                        return self._observe_sync(spec.name)
                    # Never started, and its mount sources are stale (e.g. pins of a killed spawner): re-create.
                self._force_remove(api, spec.name)
            self._ensure_network(api, spec)
            try:
                self._create(api, spec)
            except docker.errors.APIError as exc:
                if _is_conflict(exc):
                    continue  # created concurrently, or a removal still in progress: look again
                raise
            self._start(api, spec)
            return self._observe_sync(spec.name)
        raise RuntimeErrorTemporary(f"container name {spec.name} stayed in conflict; try again")

    @staticmethod
    def _mount_sources(info: dict[str, Any]) -> list[str]:
        return sorted(str(m.get("Source") or "") for m in info.get("Mounts") or [] if m.get("Type") == "bind")

    @staticmethod
    def _network_labels(spec: ContainerSpec) -> dict[str, str]:
        keep = (LABEL_MANAGED, LABEL_TENANT, LABEL_POD_ID, LABEL_INSTALLATION)
        return {k: v for k, v in spec.labels.items() if k in keep}

    def _ensure_network(self, api: docker.APIClient, spec: ContainerSpec) -> None:
        """The pod's private network (named like its container), made if missing; idempotent."""
        if spec.network:
            return
        try:
            info = api.inspect_network(spec.name)
        except docker.errors.NotFound:
            info = None
        except docker.errors.APIError as exc:  # Podman 4.3: 500 "unable to find network" on some paths
            if "unable to find" not in _engine_message(exc).lower():
                raise
            info = None
        if info is not None:
            labels = info.get("Labels") or {}
            if labels.get(LABEL_INSTALLATION, "") != spec.installation_id or labels.get(LABEL_MANAGED) != "true":
                raise RuntimeErrorPermanent(
                    f"a network named {spec.name} exists that this OpenPods installation did not make"
                )
            return
        try:
            # Docker keeps user bridges apart by default (DOCKER-ISOLATION chains); Podman's netavark routes
            # between bridges unless each is made with isolate=true, and netavark 1.4 (Debian 12) drops its
            # FORWARD jump to the isolation chains when any isolated network is removed. So pod bridges get a
            # name with our prefix and one rule of our own drops forwarding between any two of them.
            options = None
            if self._is_podman:
                options = {"isolate": "true", "com.docker.network.bridge.name": pod_bridge_name(spec.name)}
                if self._local_engine:
                    ensure_bridge_isolation_rule()
            api.create_network(spec.name, driver="bridge", labels=self._network_labels(spec), options=options,
                               check_duplicate=True)
        except docker.errors.APIError as exc:
            if _is_conflict(exc) or "already exists" in _engine_message(exc).lower():
                return  # made concurrently
            raise RuntimeErrorTemporary(
                f"could not create the pod's private network {spec.name}: {_engine_message(exc)}"
            ) from exc

    def _ulimits(self, spec: ContainerSpec) -> list[docker.types.Ulimit]:
        merged = {u.name: u for u in self._default_ulimits}
        merged.update({u.name: u for u in spec.ulimits})
        return [docker.types.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in merged.values()]

    def _create(self, api: docker.APIClient, spec: ContainerSpec) -> None:
        published = sorted({p.container_port for p in spec.ports if p.publish})
        mib = 1024 * 1024
        hc_kwargs: dict[str, Any] = {
            "port_bindings": {f"{port}/tcp": ("127.0.0.1",) for port in published},
            "restart_policy": {"Name": "no"},
            "ulimits": self._ulimits(spec) or None,
            "mounts": [
                docker.types.Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
                for m in spec.mounts
            ]
            or None,
        }
        if spec.cpu_limit_millicpu:
            hc_kwargs["nano_cpus"] = spec.cpu_limit_millicpu * 1_000_000
        if spec.cpu_request_millicpu:
            hc_kwargs["cpu_shares"] = max(2, spec.cpu_request_millicpu * 1024 // 1000)
        if spec.mem_limit_mib:
            hc_kwargs["mem_limit"] = spec.mem_limit_mib * mib
            hc_kwargs["memswap_limit"] = spec.mem_limit_mib * mib  # no swap on top of the limit
        if spec.mem_request_mib:
            hc_kwargs["mem_reservation"] = spec.mem_request_mib * mib
        if spec.gpus:
            hc_kwargs["device_requests"] = [
                docker.types.DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])
            ]
        hc_kwargs["network_mode"] = spec.network or spec.name
        if spec.cap_drop:
            hc_kwargs["cap_drop"] = list(spec.cap_drop)
        if spec.no_new_privileges:
            hc_kwargs["security_opt"] = ["no-new-privileges"]
        host_config = api.create_host_config(**hc_kwargs)
        if spec.userns:
            host_config["UsernsMode"] = spec.userns  # docker-py only accepts "host"; engines know more modes

        def create() -> None:
            api.create_container(
                spec.image,
                name=spec.name,
                command=spec.args,
                entrypoint=spec.command,
                environment=dict(spec.env),
                labels=dict(spec.labels),
                ports=[(port, "tcp") for port in published] or None,
                host_config=host_config,
                detach=True,
            )

        try:
            create()
        except docker.errors.ImageNotFound as exc:
            local_msg = _engine_message(exc)
            if not (self._pull_missing and _pullable(spec.image)):
                raise ImageNotFound(f"image {spec.image} is not available: {local_msg}") from exc
            pull_error = self._pull(api, spec.image)
            if pull_error:
                raise ImageNotFound(
                    f"image {spec.image} is not available: {local_msg}; pulling it failed: {pull_error}"
                ) from exc
            try:
                create()
            except docker.errors.ImageNotFound as exc2:
                raise ImageNotFound(f"image {spec.image} is not available: {_engine_message(exc2)}") from exc2

        if spec.gpus:
            info = api.inspect_container(spec.name)
            if not (info.get("HostConfig") or {}).get("DeviceRequests"):
                self._force_remove(api, spec.name)
                raise UnsupportedFeature(
                    "GPUs are not supported by this container engine (it ignores device requests)"
                )

    @staticmethod
    def _pull(api: docker.APIClient, image: str) -> str | None:
        """Pull ``image``; None on success, else the engine's error message."""
        try:
            for event in api.pull(image, stream=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    return str(event.get("error"))
        except docker.errors.APIError as exc:
            return _engine_message(exc)
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            return str(exc)
        return None

    def _start(self, api: docker.APIClient, spec: ContainerSpec) -> None:
        try:
            api.start(spec.name)
            if self._is_podman and self._local_engine:
                ensure_bridge_isolation_rule()  # netavark may just have put its FORWARD jump above our rule
        except docker.errors.NotFound:
            raise RuntimeErrorTemporary(f"container {spec.name} disappeared before it could start") from None
        except docker.errors.APIError as exc:
            msg = _engine_message(exc)
            if spec.gpus and "device driver" in msg.lower():
                self._force_remove(api, spec.name)
                raise UnsupportedFeature(f"GPUs are not available on this container engine: {msg}") from exc
            if "address already in use" in msg.lower():
                # The engine handed out a host port another container took meanwhile: a new container gets
                # a new port, so remove this one and let the caller try again.
                self._force_remove(api, spec.name)
                raise RuntimeErrorTemporary(f"container {spec.name} could not start (port clash): {msg}") from exc
            if _looks_permanent(msg) or 400 <= (exc.status_code or 0) < 500:
                raise RuntimeErrorPermanent(f"container {spec.name} could not start: {msg}") from exc
            raise RuntimeErrorTemporary(f"container {spec.name} could not start: {msg}") from exc

    @staticmethod
    def _force_remove(api: docker.APIClient, name: str) -> None:
        try:
            api.remove_container(name, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "in progress" not in _engine_message(exc).lower():
                raise

    # -------------------------------------------------------------------------------------- remove / observe

    async def remove(self, name: str, timeout_sec: float = 10) -> None:
        try:
            await self._run(f"remove {name}", self._remove_sync, name, timeout_sec)
        finally:
            self._changed(name)

    def _remove_sync(self, name: str, timeout_sec: float) -> None:
        api = self._api()
        try:
            api.stop(name, timeout=max(0, math.ceil(timeout_sec)))
        except docker.errors.NotFound:
            self._remove_private_network(api, name)
            return
        except docker.errors.APIError:
            pass  # e.g. already stopping; the forced removal below kills it anyway
        self._force_remove(api, name)
        self._remove_private_network(api, name)

    @staticmethod
    def _remove_private_network(api: docker.APIClient, name: str) -> bool:
        """Remove the private network named ``name`` if OpenPods made it (labelled managed) and no container
        uses it any more; True when it is gone."""
        try:
            info = api.inspect_network(name)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            if "unable to find" in _engine_message(exc).lower():
                return True
            raise
        if (info.get("Labels") or {}).get(LABEL_MANAGED) != "true":
            return False  # not ours (an operator's network of the same name)
        try:
            api.remove_network(name)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            log_msg = _engine_message(exc).lower()
            if "unable to find" in log_msg:
                return True
            if "in use" in log_msg or "being used" in log_msg or "has active endpoints" in log_msg:
                return False  # a container still uses it (e.g. being re-created): the next prune retries
            raise
        return True

    async def prune_networks(self, installation_id: str, keep: Collection[str]) -> list[str]:
        return await self._run("prune networks", self._prune_networks_sync, installation_id, set(keep))

    def _prune_networks_sync(self, installation_id: str, keep: set[str]) -> list[str]:
        api = self._api()
        removed: list[str] = []
        selector = [MANAGED_SELECTOR, f"{LABEL_INSTALLATION}={installation_id}"]
        for net in api.networks(filters={"label": selector}):
            name = str(net.get("Name") or "")
            labels = net.get("Labels") or {}
            if not name or name in keep or labels.get(LABEL_INSTALLATION) != installation_id:
                continue
            if self._remove_private_network(api, name):
                removed.append(name)
        return removed

    async def rename(self, name: str, new_name: str) -> None:
        try:
            await self._run(f"rename {name}", lambda: self._api().rename(name, new_name))
        finally:
            self._changed(name, new_name)

    async def observe(self, name: str) -> ContainerState:
        return await self._run(f"observe {name}", self._observe_sync, name)

    def _observe_sync(self, name: str) -> ContainerState:
        info = self._inspect_or_none(self._api(), name)
        return ContainerState.missing(name) if info is None else state_from_inspect(info)

    async def list_managed(self) -> list[ContainerState]:
        if self._events is not None:
            return await self._run("list containers", self._events.list)
        return await self._run("list containers", self._list_sync)

    def _list_sync(self) -> list[ContainerState]:
        items = self._api().containers(all=True, filters={"label": MANAGED_SELECTOR})
        return [state_from_list_item(item) for item in items]

    # -------------------------------------------------------------------------------------- event cache

    @property
    def event_cache(self) -> ManagedCache | None:
        """The event-fed cache behind :meth:`list_managed` (None without ``events``); for tests and benchmarks."""
        return self._events

    def _list_with_ids(self) -> list[tuple[ContainerState, str]]:
        items = self._api().containers(all=True, filters={"label": MANAGED_SELECTOR})
        return [(state_from_list_item(item), str(item.get("Id") or "")) for item in items]

    def _inspect_with_id(self, name: str) -> tuple[ContainerState, str] | None:
        info = self._inspect_or_none(self._api(), name)
        if info is None:
            return None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_MANAGED) != MANAGED_VALUE:
            return None  # not (or no longer) a managed container: not in the list either
        return state_from_inspect(info), str(info.get("Id") or "")

    def _open_event_stream(self, since: float) -> Any:
        # docker-py reads events without a socket timeout: an idle stream is not an error.
        return self._api().events(since=int(since), decode=True,
                                  filters={"label": [MANAGED_SELECTOR], "type": ["container"]})

    async def watch_managed(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` (in this event loop) after every event of a managed container, and when the event
        cache turns stale or fresh again; runs until cancelled. Without ``events`` there is nothing to watch
        and it returns at once. Only a wake-up: :meth:`list_managed` is what tells the state."""
        if self._events is None:
            return
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(on_change)

        self._events.add_listener(wake)
        try:
            await asyncio.Event().wait()
        finally:
            self._events.remove_listener(wake)

    # -------------------------------------------------------------------------------------- logs

    async def logs(self, name: str, max_bytes: int) -> str:
        if max_bytes <= 0:
            return ""
        return await self._run(f"logs {name}", self._logs_sync, name, max_bytes)

    def _logs_sync(self, name: str, max_bytes: int) -> str:
        api = self._api()
        info = self._inspect_or_none(api, name)
        if info is None:
            raise ContainerNotFound(f"no container named {name}")
        text = self._logs_from_local_file(info, max_bytes)
        if text is not None:
            return text
        return self._logs_via_api(api, name, max_bytes)

    def _logs_from_local_file(self, info: dict[str, Any], max_bytes: int) -> str | None:
        """Podman's k8s-file log read backwards from its end, when the engine is local and the file readable.

        Podman's ``tail=N`` costs grow quadratically with N (60,000 lines: ~20 s) and ``tail=all`` reads the
        whole log, so for Podman on this host this is the bounded, fast path. None when not applicable."""
        if not (self._local_engine and self._is_podman):
            return None
        log_config = (info.get("HostConfig") or {}).get("LogConfig") or {}
        path = info.get("LogPath") or log_config.get("Path")
        # Podman's compat API calls its k8s-file driver "json-file"; journald/none/passthrough have no file.
        if not path or log_config.get("Type") in ("journald", "none", "passthrough"):
            return None
        try:
            return _decode_tail(read_k8s_log_tail(path, max_bytes), max_bytes)
        except (OSError, ValueError):
            return None

    def _logs_via_api(self, api: docker.APIClient, name: str, max_bytes: int) -> str:
        """``GET /containers/{name}/logs`` with a growing ``tail`` until ``max_bytes`` are covered (Docker's
        tail is cheap); Podman switches to one streamed ``tail=all`` early. Memory stays within ~2 x max_bytes."""
        lines = max(100, max_bytes // 100)
        if self._is_podman:
            lines = min(lines, _PODMAN_MAX_TAIL)
        while True:
            data, entries = self._read_log_stream(api, name, lines, max_bytes)
            complete = entries < lines  # the engine had fewer lines than asked for
            if complete or len(data) >= max_bytes or lines >= max_bytes:
                return _decode_tail(data, max_bytes)
            if self._is_podman and lines >= _PODMAN_MAX_TAIL:
                data, _ = self._read_log_stream(api, name, "all", max_bytes)
                return _decode_tail(data, max_bytes)
            lines = min(lines * 4, max_bytes)

    @classmethod
    def _read_log_stream(
        cls, api: docker.APIClient, name: str, tail: int | str, max_bytes: int
    ) -> tuple[bytes, int]:
        # Podman reads its k8s-file log while conmon appends to it and refuses a half-written last line
        # ("'2026-12-01T' is not a valid container log line"): a moment later the line is whole.
        for attempt in range(3):
            try:
                return cls._read_log_stream_once(api, name, tail, max_bytes)
            except docker.errors.APIError as exc:
                if attempt == 2 or "not a valid container log line" not in _engine_message(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    @staticmethod
    def _read_log_stream_once(
        api: docker.APIClient, name: str, tail: int | str, max_bytes: int
    ) -> tuple[bytes, int]:
        """The log stream (stdout+stderr, in order) keeping only the last ``max_bytes``; also returns the
        number of entries seen (max of frames and newlines, to compare with ``tail``)."""
        res = api._get(
            api._url("/containers/{0}/logs", name),
            params={"stdout": 1, "stderr": 1, "follow": 0, "timestamps": 0, "tail": tail},
            stream=True,
        )
        out = bytearray()
        counts = [0, 0]  # frames, newlines

        def sink(_stream: int, payload: bytes | bytearray) -> None:
            counts[0] += 1
            counts[1] += payload.count(b"\n")
            out.extend(payload)
            if len(out) > 2 * max_bytes:
                del out[: len(out) - max_bytes]

        try:
            api._raise_for_status(res)
            parser = FrameParser(sink)
            for chunk in res.iter_content(1 << 16):
                parser.feed(chunk)
        finally:
            res.close()
        return bytes(out[-max_bytes:]), max(counts)

    # -------------------------------------------------------------------------------------- exec

    async def exec(self, name: str, argv: list[str], timeout_sec: float) -> ExecResult:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a non-empty list of strings")
        return await self._run(f"exec in {name}", self._exec_sync, name, list(argv), float(timeout_sec))

    def _exec_sync(self, name: str, argv: list[str], timeout_sec: float) -> ExecResult:
        api = self._api()
        info = self._require_running(api, name)
        t0 = time.monotonic()
        deadline = t0 + max(0.0, timeout_sec)
        try:
            exec_id = api.exec_create(name, argv, stdout=True, stderr=True, tty=False)["Id"]
        except docker.errors.APIError as exc:
            if "state improper" in _engine_message(exc) or exc.status_code == 409:
                raise ContainerNotRunning(f"container {name} is not running") from exc
            raise
        res = api._post_json(
            api._url("/exec/{0}/start", exec_id),
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
            data={"Tty": False, "Detach": False},
            stream=True,
        )
        out = {1: bytearray(), 2: bytearray()}

        def sink(stream: int, payload: bytes | bytearray) -> None:
            target = out[2] if stream == 2 else out[1]
            room = self._exec_max - len(target)
            if room > 0:
                target.extend(payload[:room])

        parser = FrameParser(sink)
        timed_out = False
        try:
            api._raise_for_status(res)
            # Read through the connection's buffered reader: bytes that arrived together with the response
            # headers are already in its buffer (reading the raw socket would lose them).
            fp = res.raw._fp.fp
            sock = getattr(fp.raw, "_sock", None)
            if sock is None:  # ssh:// or npipe connections: no socket whose timeout could be set
                raise UnsupportedFeature("exec needs a unix:// or tcp:// connection to the engine")
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                sock.settimeout(remaining)
                try:
                    chunk = fp.read1(65536)
                except TimeoutError:
                    timed_out = True
                    break
                if not chunk:
                    break
                parser.feed(chunk)
        finally:
            res.close()
        exit_code: int | None = None
        if not timed_out:
            exit_code, timed_out = self._exec_exit_code(api, exec_id, deadline)
        if timed_out:
            exit_code = None
            self._kill_exec(api, exec_id, int((info.get("State") or {}).get("Pid") or 0))
        return ExecResult(
            exit_code=exit_code,
            stdout=out[1].decode("utf-8", errors="replace"),
            stderr=out[2].decode("utf-8", errors="replace"),
            timed_out=timed_out,
            duration_sec=time.monotonic() - t0,
        )

    @staticmethod
    def _exec_exit_code(api: docker.APIClient, exec_id: str, deadline: float) -> tuple[int | None, bool]:
        """(exit code, timed out) once the output stream has ended. The engine may record the exit a moment
        after the stream ends, and a process that closed its stdout/stderr may still be running: wait for it
        until the deadline (with a short grace for the former case)."""
        give_up = max(deadline, time.monotonic() + 2.0)
        delay = 0.01
        while True:
            inspected = api.exec_inspect(exec_id)
            if not inspected.get("Running"):
                code = inspected.get("ExitCode")
                return (int(code) if code is not None else None), False
            if time.monotonic() >= give_up:
                return None, True
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    @staticmethod
    def _kill_exec(api: docker.APIClient, exec_id: str, container_pid: int) -> None:
        """Best effort: SIGKILL the exec'd process and its descendants, when the engine runs on this host and
        reports host PIDs. Only processes in the container's PID namespace are ever signalled."""
        try:
            pid = int(api.exec_inspect(exec_id).get("Pid") or 0)
        except (docker.errors.DockerException, requests.exceptions.RequestException, ValueError):
            return
        if pid <= 0 or container_pid <= 0:
            return
        try:
            ns = os.readlink(f"/proc/{container_pid}/ns/pid")
        except OSError:
            return
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        victims: list[int] = []
        todo = [pid]
        while todo:
            p = todo.pop()
            victims.append(p)
            todo.extend(children.get(p, []))
        for victim in victims:
            try:
                if os.readlink(f"/proc/{victim}/ns/pid") != ns:
                    continue
                os.kill(victim, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    # -------------------------------------------------------------------------------------- put_file

    async def put_file(self, name: str, dest_path: str, src_path: str) -> None:
        check_dest_path(dest_path)
        if not os.path.isfile(src_path):
            raise FileNotFoundError(f"{src_path} is not a readable file")
        await self._run(f"upload to {name}", self._put_file_sync, name, dest_path, src_path)

    def _path_stat(self, api: docker.APIClient, name: str, path: str) -> dict[str, Any] | None:
        """The engine's stat of ``path`` in the container (HEAD /archive), or None when it does not exist."""
        res = api.head(api._url("/containers/{0}/archive", name), params={"path": path})
        try:
            if res.status_code == 404:
                return None
            api._raise_for_status(res)
            header = res.headers.get("X-Docker-Container-Path-Stat")
            return json.loads(base64.b64decode(header)) if header else {}
        finally:
            res.close()

    @staticmethod
    def _is_dir(stat: dict[str, Any]) -> bool:
        mode = int(stat.get("mode") or 0)
        return bool(stat.get("isDir")) or bool(mode & _GO_MODE_DIR)

    @staticmethod
    def _is_symlink(stat: dict[str, Any]) -> bool:
        return bool(int(stat.get("mode") or 0) & _GO_MODE_SYMLINK)

    def _put_file_sync(self, name: str, dest_path: str, src_path: str) -> None:
        api = self._api()
        self._require_running(api, name)
        existing = self._path_stat(api, name, dest_path)
        if existing is not None and self._is_dir(existing):
            raise BadDestination(f"dest_path {dest_path} is an existing directory; give the full file path")
        # Find the deepest existing ancestor; the missing ones are created through the archive.
        base = posixpath.dirname(dest_path)
        missing: list[str] = []
        while base != "/":
            stat = self._path_stat(api, name, base)
            if stat is None:
                missing.append(base)
                base = posixpath.dirname(base)
                continue
            if not (self._is_dir(stat) or self._is_symlink(stat)):
                raise BadDestination(f"cannot create {dest_path}: {base} is a file, not a directory")
            break

        def rel(path: str) -> str:
            return posixpath.relpath(path, base)

        dirs = [rel(d) for d in reversed(missing)]
        stream = tar_stream(dirs, rel(dest_path), src_path, chunk_bytes=self._chunk)
        try:
            ok = api.put_archive(name, base, stream)
        except docker.errors.APIError as exc:
            msg = _engine_message(exc)
            low = msg.lower()
            if "no such container" in low or "no container with" in low:
                raise ContainerNotFound(f"no container named {name}") from exc
            if (exc.status_code or 0) in (400, 403, 404) or _looks_permanent(msg):
                raise BadDestination(f"cannot write {dest_path}: {msg}") from exc
            raise
        if not ok:
            raise RuntimeErrorTemporary(f"the engine did not confirm the upload to {dest_path}")
        written = self._path_stat(api, name, dest_path)
        size = os.path.getsize(src_path)
        if written is None or (not self._is_symlink(written) and int(written.get("size", size)) != size):
            raise RuntimeErrorTemporary(f"upload to {dest_path} is incomplete; try again")

    # -------------------------------------------------------------------------------------- misc

    async def supports_gpus(self) -> bool:
        try:
            info = await self._run("engine info", lambda: self._api().info())
        except RuntimeFailure:
            return False
        return "nvidia" in (info.get("Runtimes") or {})

    async def image_tags_for_digest(self, ref: str, digest: str) -> list[str]:
        def _inspect() -> list[str]:
            try:
                info = self._api().inspect_image(ref)
            except docker.errors.NotFound:
                return []
            # The engine may resolve a digest whatever the name says: trust only an image that has that digest.
            digests = {d.partition("@")[2].lower() for d in info.get("RepoDigests") or []}
            return list(info.get("RepoTags") or []) if digest.lower() in digests else []

        return await self._run("image inspect", _inspect)

    async def ping(self) -> bool:
        def _ping() -> bool:
            return bool(self._api().ping())

        try:
            return await self._run("ping", _ping)
        except Exception:
            return False

    async def close(self) -> None:
        self._closed = True
        if self._events is not None:
            await asyncio.to_thread(self._events.close)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
