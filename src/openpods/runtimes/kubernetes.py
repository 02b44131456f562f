"""The Kubernetes runtime: each pod is a Kubernetes Pod (+ Secret, Service, NetworkPolicy) in one namespace.

Built on ``kubernetes_asyncio`` (configuration from a kubeconfig or the in-cluster service account, the
generated API methods, and its websocket client for exec). Answers are read as raw JSON
(``_preload_content=False``): a list of thousands of pods is parsed once, without building model objects.

Semantics, against the :class:`~openpods.runtimes.base.Runtime` docstrings:

- Names: every object of a container is named :func:`~openpods.domain.k8s_manifests.object_name` (tenant, pod
  id and installation, DNS-safe, <= 63 characters, hashed when longer); the container name the controllers
  use is kept in an annotation and reported back as ``ContainerState.name``.
- ``ensure_running`` creates the NetworkPolicy (so the pod is never reachable without it), the Pod
  (``restartPolicy: Never``), then its Secret and Service, all three owned by the Pod; an existing Pod of the same instance is returned as it is, one of another instance is deleted
  first (its replacement is created once it is gone). It waits up to ``start_wait_sec`` for the kubelet to
  start the container: an image that cannot be pulled is ImageNotFound (and the objects are removed); a pod
  still pending after that is returned as ``created`` (the health loop's deadline covers it).
- ``list_managed`` is ONE list call (label selector ``openpods.managed=true,openpods.installation=…``).
  :meth:`KubernetesRuntime.watch_managed` streams changes so the health loop can be woken at once.
- ``host_ports`` is empty; ``ContainerState.endpoints`` maps each published stanza to the Service's cluster
  DNS name and port (``<name>.<namespace>.svc:<port>``), which the proxy routes to.
- ``logs`` reads a bounded tail with ``tailLines`` + ``limitBytes`` (memory bounded by ``max_bytes``).
- ``exec`` and ``put_file`` use the exec API over a websocket; ``put_file`` streams a tar archive into
  ``tar -x`` in the container (as ``kubectl cp`` does), so the image needs ``tar`` and ``mkdir``.
- Ulimits have no per-container setting in Kubernetes: the node's limits apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp

from openpods.domain.container_spec import LABEL_INSTANCE, ContainerSpec
from openpods.domain.k8s_manifests import (
    ANNOTATION_CONTAINER_NAME,
    CONTAINER,
    KubeOptions,
    build_pod_objects,
    identity_from_metadata,
    managed_selector,
    object_name,
    service_endpoints,
)
from openpods.runtimes.base import (
    BadDestination,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerState,
    ExecResult,
    ImageNotFound,
    Runtime,
    RuntimeErrorPermanent,
    RuntimeErrorTemporary,
    RuntimeFailure,
    RuntimeUnavailable,
    UnsupportedFeature,
)

log = logging.getLogger(__name__)

# Waiting reasons after which the kubelet will not start the container by itself.
IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
FATAL_REASONS = IMAGE_REASONS | {"CreateContainerError", "RunContainerError", "CrashLoopBackOff"}
_TAR_RECORD = 10240
_STDIN, _STDOUT, _STDERR, _ERROR, _CLOSE = 0, 1, 2, 3, 255


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def state_from_pod(obj: dict[str, Any], namespace: str) -> ContainerState:
    """ContainerState from a Pod object (as listed or fetched)."""
    meta = obj.get("metadata") or {}
    labels = identity_from_metadata(meta)
    name = (meta.get("annotations") or {}).get(ANNOTATION_CONTAINER_NAME) or meta.get("name", "")
    status = obj.get("status") or {}
    cs = next((c for c in status.get("containerStatuses") or [] if c.get("name") == CONTAINER), {})
    st = cs.get("state") or {}
    # The Service exists from creation on, so the endpoints are known before the container runs (the spawner
    # records them right after ensure_running; the proxy routes only AVAILABLE pods).
    kw: dict[str, Any] = {"endpoints": service_endpoints(meta.get("name", ""), namespace, labels)}
    if meta.get("deletionTimestamp"):
        state, message = "unknown", "terminating"
    elif "running" in st:
        state, message = "running", "running"
        kw["started_at"] = parse_time(st["running"].get("startedAt"))
    elif "terminated" in st:
        t = st["terminated"]
        code = t.get("exitCode")
        state, message = "exited", f"exited with code {code}"
        if t.get("reason") == "OOMKilled":
            message += "; killed: out of memory (OOM)"
        elif t.get("reason") not in (None, "", "Completed", "Error"):
            message += f"; {t['reason']}"
        if t.get("message"):
            message += f"; {t['message']}"
        kw.update(exit_code=code if isinstance(code, int) else None, started_at=parse_time(t.get("startedAt")),
                  finished_at=parse_time(t.get("finishedAt")))
    elif "waiting" in st:
        w = st["waiting"]
        reason = w.get("reason") or "Waiting"
        state = "unknown" if reason in FATAL_REASONS else "created"
        message = f"{reason}: {w['message']}" if w.get("message") else reason
    elif status.get("phase") in ("Succeeded", "Failed"):  # e.g. evicted before the container started
        state = "exited"
        message = "; ".join(x for x in (status.get("reason"), status.get("message")) if x) or status["phase"]
    else:
        state, message = "created", status.get("phase") or "Pending"
    return ContainerState(name=name, labels=labels, state=state, message=message, **kw)  # type: ignore[arg-type]


def _status_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        return str(data.get("message") or data.get("reason") or body[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


def translate_status(status: int, body: bytes, what: str) -> RuntimeFailure:
    msg = f"{what}: {_status_message(body)} (HTTP {status})"
    if status == 404:
        return ContainerNotFound(msg)
    if status in (401, 403):
        # A configuration problem of the site (credentials, RBAC), not of this pod: pods wait, nothing fails.
        return RuntimeUnavailable(msg)
    if status in (409, 429) or status >= 500:
        return RuntimeErrorTemporary(msg)
    return RuntimeErrorPermanent(msg)


class KubernetesRuntime(Runtime):
    """:class:`Runtime` on a Kubernetes API server.

    - ``host``: API server URL (tests: the emulator); None means ``kubeconfig`` (a path; empty: the default
      kubeconfig) or, inside a cluster, the pod's service account.
    - ``options``: the site's manifest choices (namespace, security, storage, GPUs).
    - ``installation_id``: part of object names and of the list selector (several installations may share
      a namespace).
    - ``gpus``: whether the cluster schedules ``options.gpu_resource``.
    - ``start_wait_sec``: how long ``ensure_running`` waits for the kubelet's first verdict.
    - ``api_timeout_sec``: per API call; ``exec_output_max_bytes``: stdout/stderr cap of exec.
    """

    name = "kubernetes"

    def __init__(
        self,
        host: str | None = None,
        *,
        options: KubeOptions | None = None,
        installation_id: str = "",
        kubeconfig: str = "",
        context: str = "",
        token: str = "",
        gpus: bool = False,
        start_wait_sec: float = 20.0,
        api_timeout_sec: float = 30.0,
        exec_output_max_bytes: int = 1 << 20,
        upload_chunk_bytes: int = 1 << 18,
    ) -> None:
        self._host = host
        self.options = options or KubeOptions()
        self.namespace = self.options.namespace
        self.installation_id = installation_id
        self._kubeconfig = kubeconfig
        self._context = context
        self._token = token
        self._gpus = gpus
        self._start_wait = start_wait_sec
        self._timeout = api_timeout_sec
        self._exec_max = exec_output_max_bytes
        self._chunk = upload_chunk_bytes
        self._lock = asyncio.Lock()
        self._api: Any = None
        self._ws: Any = None
        self._closed = False

    # -------------------------------------------------------------------------------------- plumbing

    async def _clients(self) -> tuple[Any, Any]:
        if self._api is not None:
            return self._api, self._ws
        async with self._lock:
            if self._closed:
                raise RuntimeUnavailable("the runtime is closed")
            if self._api is None:
                from kubernetes_asyncio import client, config
                from kubernetes_asyncio.stream import WsApiClient

                conf = client.Configuration()
                try:
                    if self._host:
                        conf.host = self._host
                    elif os.environ.get("KUBERNETES_SERVICE_HOST") and not self._kubeconfig:
                        config.load_incluster_config(client_configuration=conf)
                    else:
                        await config.load_kube_config(config_file=self._kubeconfig or None,
                                                      context=self._context or None, client_configuration=conf)
                except Exception as exc:  # no kubeconfig, bad file, ...
                    raise RuntimeUnavailable(f"cannot load the Kubernetes configuration: {exc}") from exc
                if self._token:
                    conf.api_key = {"authorization": f"Bearer {self._token}"}
                self._api = client.ApiClient(conf)
                self._ws = WsApiClient(conf)
        return self._api, self._ws

    async def _core(self) -> Any:
        from kubernetes_asyncio import client

        api, _ = await self._clients()
        return client.CoreV1Api(api)

    async def _net(self) -> Any:
        from kubernetes_asyncio import client

        api, _ = await self._clients()
        return client.NetworkingV1Api(api)

    async def _call(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, ok404: bool = False,
                    **kwargs: Any) -> Any:
        """Call a generated API method, return the answer's JSON (None for a 404 when ``ok404``)."""
        try:
            resp = await asyncio.wait_for(fn(*args, _preload_content=False, **kwargs), self._timeout)
            async with resp:
                body = await asyncio.wait_for(resp.read(), self._timeout)
                status = resp.status
        except TimeoutError as exc:
            raise RuntimeErrorTemporary(f"{what}: the Kubernetes API did not answer in time") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise RuntimeUnavailable(f"{what}: cannot reach the Kubernetes API ({exc})") from exc
        except aiohttp.ClientError as exc:
            raise RuntimeErrorTemporary(f"{what}: {exc}") from exc
        if 200 <= status < 300:
            return json.loads(body) if body else {}
        if status == 404 and ok404:
            return None
        raise translate_status(status, body, what)

    def _object(self, name: str) -> str:
        return object_name(name, self.installation_id)

    async def _get_pod(self, obj: str) -> dict[str, Any] | None:
        core = await self._core()
        return await self._call(f"read pod {obj}", core.read_namespaced_pod, obj, self.namespace, ok404=True)

    # -------------------------------------------------------------------------------------- lifecycle

    async def ensure_running(self, spec: ContainerSpec) -> ContainerState:
        if spec.gpus and not self._gpus:
            raise UnsupportedFeature(f"{spec.name}: this cluster is not configured for GPUs "
                                     "(OPENPODS_KUBERNETES_GPUS)")
        try:
            objs = build_pod_objects(spec, self.options, self.installation_id)
        except ValueError as exc:
            raise RuntimeErrorPermanent(f"{spec.name}: {exc}") from None
        core = await self._core()
        existing = await self._get_pod(objs.name)
        if existing is not None:
            labels = identity_from_metadata(existing.get("metadata") or {})
            if labels.get(LABEL_INSTANCE) == spec.instance_id and not existing["metadata"].get("deletionTimestamp"):
                await self._ensure_dependents(objs, existing, spec.instance_id)  # a crash may have left some out
                return state_from_pod(existing, self.namespace)
            await self._delete_all(objs.name, grace_sec=0)
            if not await self._wait_gone(objs.name, 10.0):
                raise RuntimeErrorTemporary(f"{spec.name}: the previous instance is still terminating")
        # The NetworkPolicy first: the pod is never reachable without it (it gains its owner below).
        await self._put(objs.network_policy, spec.instance_id)
        try:
            created = await self._call(f"create pod {objs.name}", core.create_namespaced_pod, self.namespace, objs.pod)
        except RuntimeErrorTemporary:
            # 409: created concurrently (or still terminating): look again.
            created = await self._get_pod(objs.name)
            if created is None or identity_from_metadata(created["metadata"]).get(LABEL_INSTANCE) != spec.instance_id:
                raise
        except RuntimeErrorPermanent as exc:  # 422: the API server refused the manifest
            raise RuntimeErrorPermanent(f"{spec.name}: {exc.message}") from None
        await self._ensure_dependents(objs, created, spec.instance_id)
        return await self._await_start(objs.name, created)

    async def _kind_api(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any],
                                                  Callable[..., Any]]:
        """(create, read, delete, patch) of a dependent kind."""
        core = await self._core()
        net = await self._net()
        return {
            "Secret": (core.create_namespaced_secret, core.read_namespaced_secret, core.delete_namespaced_secret,
                       core.patch_namespaced_secret),
            "Service": (core.create_namespaced_service, core.read_namespaced_service,
                        core.delete_namespaced_service, core.patch_namespaced_service),
            "NetworkPolicy": (net.create_namespaced_network_policy, net.read_namespaced_network_policy,
                              net.delete_namespaced_network_policy, net.patch_namespaced_network_policy),
        }[kind]

    async def _put(self, manifest: dict[str, Any], instance: str) -> None:
        """Create one dependent object. One already there for the same instance (an earlier, interrupted
        attempt) is kept (gaining its ownerReference if it lacks one); one of another instance is replaced."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        create, read, delete, patch = await self._kind_api(kind)
        what = f"create {kind.lower()} {name}"
        try:
            await self._call(what, create, self.namespace, manifest)
            return
        except RuntimeErrorTemporary as exc:
            if "HTTP 409" not in exc.message:
                raise
        current = await self._call(f"read {kind.lower()} {name}", read, name, self.namespace, ok404=True)
        meta = (current or {}).get("metadata") or {}
        if current is not None and identity_from_metadata(meta).get(LABEL_INSTANCE) == instance:
            owners = manifest["metadata"].get("ownerReferences")
            if owners and meta.get("ownerReferences") != owners:
                await self._call(f"own {kind.lower()} {name}", patch, name, self.namespace,
                                 {"metadata": {"ownerReferences": owners}},
                                 _content_type="application/merge-patch+json")
            return
        await self._call(f"delete {kind.lower()} {name}", delete, name, self.namespace, ok404=True)
        await self._call(what, create, self.namespace, manifest)

    async def _ensure_dependents(self, objs: Any, pod: dict[str, Any] | None, instance: str) -> None:
        """Secret, Service and NetworkPolicy of ``objs``, owned by ``pod`` (without an owner when None)."""
        uid = ((pod or {}).get("metadata") or {}).get("uid", "")
        for manifest in objs.dependents({"name": objs.name, "uid": uid} if uid else None):
            await self._put(manifest, instance)

    async def _await_start(self, obj: str, pod: dict[str, Any]) -> ContainerState:
        deadline = time.monotonic() + self._start_wait
        delay = 0.05
        state = state_from_pod(pod, self.namespace)
        while True:
            reason = state.message.split(":", 1)[0]
            if state.state == "unknown" and reason in IMAGE_REASONS:
                await self._delete_all(obj, grace_sec=0)
                raise ImageNotFound(f"{state.name}: {state.message}")
            if state.state == "unknown" and reason in FATAL_REASONS:
                raise RuntimeErrorPermanent(f"{state.name}: {state.message}")
            if state.state != "created" or time.monotonic() >= deadline:
                return state
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            current = await self._get_pod(obj)
            if current is None:
                return ContainerState.missing(state.name)
            state = state_from_pod(current, self.namespace)

    async def _delete_all(self, obj: str, grace_sec: int) -> None:
        core = await self._core()
        net = await self._net()
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": grace_sec,
                "propagationPolicy": "Background"}
        await self._call(f"delete pod {obj}", core.delete_namespaced_pod, obj, self.namespace, body=body, ok404=True)
        for what, fn in (("service", core.delete_namespaced_service),
                         ("networkpolicy", net.delete_namespaced_network_policy),
                         ("secret", core.delete_namespaced_secret)):
            await self._call(f"delete {what} {obj}", fn, obj, self.namespace, ok404=True)

    async def _wait_gone(self, obj: str, within_sec: float) -> bool:
        deadline = time.monotonic() + within_sec
        delay = 0.05
        while True:
            if await self._get_pod(obj) is None:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def remove(self, name: str, timeout_sec: float = 10) -> None:
        obj = self._object(name)
        await self._delete_all(obj, grace_sec=max(0, int(timeout_sec)))
        await self._wait_gone(obj, timeout_sec + 5)

    async def list_managed(self) -> list[ContainerState]:
        core = await self._core()
        selector = managed_selector(self.installation_id)
        data = await self._call("list pods", core.list_namespaced_pod, self.namespace, label_selector=selector)
        wanted = dict(kv.split("=", 1) for kv in selector.split(","))
        out = []
        for item in data.get("items") or []:
            labels = (item.get("metadata") or {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted.items()):  # the selector, checked again
                out.append(state_from_pod(item, self.namespace))
        return out

    async def watch_managed(self, on_change: Callable[[], None], *, retry_sec: float = 5.0) -> None:
        """Call ``on_change`` whenever a managed pod is added, changed or deleted; runs until cancelled.
        Only a wake-up: the health loop still lists (level-triggered), so a missed event costs nothing."""
        while True:
            started = time.monotonic()
            try:
                core = await self._core()
                # watch="true" as kubectl sends it (the generated client would send "True").
                resp = await core.list_namespaced_pod(self.namespace, label_selector=managed_selector(
                    self.installation_id), watch="true", timeout_seconds=300, _preload_content=False)
                async with resp:
                    async for line in resp.content:
                        if line.strip():
                            on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("pod watch ended, restarting in %g s: %s", retry_sec, exc)
            else:
                if time.monotonic() - started > retry_sec:
                    continue  # the server ended a long watch (timeoutSeconds): start the next one at once
            await asyncio.sleep(retry_sec)  # never a hot loop against a server that ends watches at once

    async def observe(self, name: str) -> ContainerState:
        pod = await self._get_pod(self._object(name))
        return ContainerState.missing(name) if pod is None else state_from_pod(pod, self.namespace)

    # -------------------------------------------------------------------------------------- logs

    async def _log_chunk(self, obj: str, tail_lines: int, limit_bytes: int | None, window: int = 0) -> bytes | None:
        """The log tail as bytes (None when the pod is gone). Streams, so memory stays bounded."""
        core = await self._core()
        kwargs: dict[str, Any] = {"container": CONTAINER, "tail_lines": tail_lines}
        if limit_bytes is not None:
            kwargs["limit_bytes"] = limit_bytes
        try:
            resp = await asyncio.wait_for(core.read_namespaced_pod_log(obj, self.namespace, _preload_content=False,
                                                                       **kwargs), self._timeout)
            async with resp:
                if resp.status == 404:
                    return None
                if resp.status == 400:  # the container has not started yet: no logs
                    return b""
                if resp.status >= 300:
                    raise translate_status(resp.status, await resp.read(), f"logs of {obj}")
                if limit_bytes is not None:
                    try:
                        return await asyncio.wait_for(resp.content.readexactly(limit_bytes), self._timeout)
                    except asyncio.IncompleteReadError as exc:  # the whole answer is shorter
                        return exc.partial
                # No limit: keep only a rolling window (one very long last line).
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    buf += chunk
                    if len(buf) > window:
                        del buf[: len(buf) - window]
                return bytes(buf)
        except TimeoutError as exc:
            raise RuntimeErrorTemporary(f"logs of {obj}: the Kubernetes API did not answer in time") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise RuntimeUnavailable(f"logs of {obj}: cannot reach the Kubernetes API ({exc})") from exc

    async def logs(self, name: str, max_bytes: int) -> str:
        """The largest tail of whole lines that fits in ``max_bytes`` (found with ``tailLines`` and
        ``limitBytes``: each call transfers at most ``max_bytes + 1`` bytes, and the line count doubles or
        halves per call); a single last line longer than ``max_bytes`` is streamed and cut to its end."""
        from openpods.runtimes.fake import _decode_tail

        obj = self._object(name)
        if max_bytes <= 0:
            if await self._get_pod(obj) is None:
                raise ContainerNotFound(f"no container named {name}")
            return ""
        lines = max(1, min(max_bytes // 64, 100_000))
        best: bytes | None = None
        for _ in range(24):
            data = await self._log_chunk(obj, lines, max_bytes + 1)  # one more byte: tells an overflow
            if data is None:
                raise ContainerNotFound(f"no container named {name}")
            if len(data) <= max_bytes:
                if data.count(b"\n") < lines or (best is not None and len(data) == len(best)):
                    return _decode_tail(data, max_bytes)  # the whole log (fewer lines than asked)
                best = data
                if best is not None and lines >= 1 << 30:
                    break
                lines *= 2
                continue
            if best is not None:  # the previous, smaller tail fitted: take it
                return _decode_tail(best, max_bytes)
            if lines == 1:
                tail = await self._log_chunk(obj, 1, None, window=max_bytes)
                return _decode_tail(tail or b"", max_bytes)
            lines = max(1, lines // 2)
        return _decode_tail(best or b"", max_bytes)

    # -------------------------------------------------------------------------------------- exec

    async def _require_running(self, name: str) -> str:
        obj = self._object(name)
        pod = await self._get_pod(obj)
        if pod is None:
            raise ContainerNotFound(f"no container named {name}")
        state = state_from_pod(pod, self.namespace)
        if state.state != "running":
            raise ContainerNotRunning(f"container {name} is not running ({state.state}: {state.message})")
        return obj

    @contextlib.asynccontextmanager
    async def _exec_ws(self, obj: str, argv: list[str], stdin: bool) -> AsyncIterator[Any]:
        core_ws = None
        from kubernetes_asyncio import client

        _, ws_api = await self._clients()
        core_ws = client.CoreV1Api(ws_api)
        try:
            ctx = await core_ws.connect_get_namespaced_pod_exec(
                obj, self.namespace, command=list(argv), container=CONTAINER, stdin=stdin, stdout=True,
                stderr=True, tty=False, _preload_content=False,
                _headers={"sec-websocket-protocol": "v5.channel.k8s.io,v4.channel.k8s.io"})
            async with ctx as ws:
                yield ws
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 404:
                raise ContainerNotFound(f"no container named {obj}") from exc
            if exc.status in (400, 409):  # e.g. "container not found" / not running
                raise ContainerNotRunning(f"{obj}: {exc.message}") from exc
            raise translate_status(exc.status, str(exc.message).encode(), f"exec in {obj}") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise RuntimeUnavailable(f"exec in {obj}: cannot reach the Kubernetes API ({exc})") from exc

    @staticmethod
    def _exit_code(status: dict[str, Any]) -> int | None:
        if status.get("status") == "Success":
            return 0
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                with contextlib.suppress(TypeError, ValueError):
                    return int(cause.get("message"))
        msg = str(status.get("message") or "").lower()
        if "not found" in msg or "no such file" in msg:
            return 127
        if "permission denied" in msg:
            return 126
        return None

    async def _collect(self, ws: Any, out: dict[int, bytearray]) -> dict[str, Any]:
        status: dict[str, Any] = {}
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                break
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel in (_STDOUT, _STDERR):
                buf = out[channel]
                if len(buf) < self._exec_max:
                    buf += payload[: self._exec_max - len(buf)]
            elif channel == _ERROR and payload:
                with contextlib.suppress(ValueError):
                    status = json.loads(payload)
        return status

    async def exec(self, name: str, argv: list[str], timeout_sec: float) -> ExecResult:
        obj = await self._require_running(name)
        started = time.monotonic()
        out = {_STDOUT: bytearray(), _STDERR: bytearray()}

        async def run() -> dict[str, Any]:
            async with self._exec_ws(obj, argv, stdin=False) as ws:
                return await self._collect(ws, out)

        try:
            status = await asyncio.wait_for(run(), timeout_sec)
        except TimeoutError:
            # Closing the stream is all the exec API offers; the process may go on until it ends.
            return ExecResult(None, out[_STDOUT].decode(errors="replace"), out[_STDERR].decode(errors="replace"),
                              True, time.monotonic() - started)
        return ExecResult(self._exit_code(status), out[_STDOUT].decode(errors="replace"),
                          out[_STDERR].decode(errors="replace"), False, time.monotonic() - started)

    # -------------------------------------------------------------------------------------- put_file

    async def put_file(self, name: str, dest_path: str, src_path: str) -> None:
        from openpods.runtimes.docker import check_dest_path, tar_stream

        check_dest_path(dest_path)
        if not os.path.isfile(src_path):
            raise FileNotFoundError(f"{src_path} is not a readable file")
        obj = await self._require_running(name)
        parent = posixpath.dirname(dest_path)
        if parent != "/":
            res = await self.exec(name, ["mkdir", "-p", parent], self._timeout)
            self._check_tool(res, "mkdir", dest_path)
        out = {_STDOUT: bytearray(), _STDERR: bytearray()}
        async with self._exec_ws(obj, ["tar", "-x", "-m", "-f", "-", "-C", parent], stdin=True) as ws:
            v5 = "v5" in str(getattr(ws, "_response", None) and ws._response.headers.get("Sec-WebSocket-Protocol"))
            collector = asyncio.create_task(self._collect(ws, out))
            sent = 0
            try:
                for chunk in tar_stream([], posixpath.basename(dest_path), src_path, chunk_bytes=self._chunk):
                    await ws.send_bytes(bytes([_STDIN]) + chunk)
                    sent += len(chunk)
                pad = (-sent) % _TAR_RECORD  # whole records, as tar reads them
                if pad:
                    await ws.send_bytes(bytes([_STDIN]) + b"\0" * pad)
                if v5:
                    await ws.send_bytes(bytes([_CLOSE, _STDIN]))
                status = await asyncio.wait_for(collector, self._timeout)
            finally:
                collector.cancel()
        res = ExecResult(self._exit_code(status), out[_STDOUT].decode(errors="replace"),
                         out[_STDERR].decode(errors="replace"), False, 0.0)
        self._check_tool(res, "tar", dest_path)

    @staticmethod
    def _check_tool(res: ExecResult, tool: str, dest_path: str) -> None:
        if res.exit_code == 0:
            return
        if res.exit_code in (126, 127):
            raise RuntimeErrorPermanent(f"uploads on Kubernetes need `{tool}` in the image: {res.stderr.strip()}")
        raise BadDestination(f"cannot write {dest_path}: {res.stderr.strip() or f'{tool} failed'}")

    # -------------------------------------------------------------------------------------- misc

    async def supports_gpus(self) -> bool:
        return self._gpus

    async def ping(self) -> bool:
        try:  # listing our namespace also proves the credentials and RBAC work
            core = await self._core()
            await self._call("ping", core.list_namespaced_pod, self.namespace, limit=1)
            return True
        except Exception:
            return False

    async def close(self) -> None:
        self._closed = True
        api, ws, self._api, self._ws = self._api, self._ws, None, None
        for c in (api, ws):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.close()


__all__ = ["KubernetesRuntime", "state_from_pod", "translate_status"]
