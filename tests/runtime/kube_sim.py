"""A Kubernetes API for tests: kmock's KubernetesEmulator (a stateful API server over real HTTP) plus the parts
a real cluster's nodes provide and the emulator does not: a kubelet that runs each created Pod on a
:class:`~openpods.runtimes.fake.FakeEngine` and reports its status through the API (PATCH …/status, as a
real kubelet does), the ``log`` subresource (``tailLines``, ``limitBytes``), and the ``exec`` subresource
(websocket, channel protocol v4/v5, stdin for uploads). Those are injected at the HTTP boundary; the client
side (kubernetes_asyncio in :class:`~openpods.runtimes.kubernetes.KubernetesRuntime`) is the real one.

The emulator does not filter lists by label selector, assign uids or garbage-collect dependents: the sim adds
uids (so ownerReferences are exercised), records each list call's selector, and the runtime filters again.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import aiohttp.web
import kmock
from kmock._internal import enums

from openpods.domain.k8s_manifests import CONTAINER, identity_from_metadata
from openpods.runtimes.fake import FakeContainer, FakeEngine

_SUB = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/(exec|log)$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?$")
RESOURCES = ("v1/pods", "v1/services", "v1/secrets", "networking.k8s.io/v1/networkpolicies",
             "v1/persistentvolumeclaims")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeSim(kmock.KubernetesEmulator):
    """KubernetesEmulator + a simulated kubelet on a FakeEngine (one per sim)."""

    def attach(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.list_calls: list[str] = []  # label selectors of pod list calls
        self.requests_seen: list[tuple[str, str]] = []  # (method, path) of every API call
        self.faults: list[tuple[str, re.Pattern[str], int]] = []  # (method, path regex, status): answered once
        self.hold_images: set[str] = set()  # images the kubelet never starts (pods stay ContainerCreating)
        self.pods_ns: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        engine.on_change.append(self._container_changed)
        for res in RESOURCES:
            self.resources[res] = {}

    # ---------------------------------------------------------------------------------------- API server

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
        return await super()._handle(request)

    def fail_next(self, method: str, path_regex: str, status: int) -> None:
        self.faults.append((method, re.compile(path_regex), status))

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.requests_seen.append((raw.method, raw.path))
        for fault in self.faults:
            if fault[0] == raw.method and fault[1].search(raw.path):
                self.faults.remove(fault)
                return aiohttp.web.json_response({"kind": "Status", "status": "Failure", "code": fault[2],
                                                  "message": f"injected {fault[2]}"}, status=fault[2])
        m = _SUB.match(raw.path)
        if m:
            ns, name, what = m.groups()
            return await (self._exec(raw, ns, name) if what == "exec" else self._log(raw, ns, name))
        pods = _PODS.match(raw.path)
        if pods and raw.method == "GET" and not pods.group(2) and raw.query.get("watch") != "true":
            self.list_calls.append(raw.query.get("labelSelector", ""))
        body = await raw.read()
        resp = await super().__call__(raw)
        if pods and resp.status < 300:
            ns, name = pods.groups()
            if raw.method == "POST" and body:
                self._kubelet_start(ns, json.loads(body))
            elif raw.method == "DELETE" and name:
                self.engine.remove(name)
        return resp

    def _pod(self, ns: str, name: str) -> dict[str, Any] | None:
        for (res, obj_ns, obj_name), obj in self.objects.items():
            if res.plural == "pods" and obj_ns == ns and obj_name == name and not obj.deleted:
                return obj.raw
        return None

    # ---------------------------------------------------------------------------------------- kubelet

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        if self._pod(ns, name) is None:
            return
        client = self.servers[0].client
        async with client.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", json={"status": status},
                                headers={"Content-Type": "application/merge-patch+json"}) as resp:
            await resp.read()

    def _kubelet_start(self, ns: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        name = meta["name"]
        container = (pod.get("spec") or {}).get("containers", [{}])[0]
        image = container.get("image", "")
        command = container.get("command")
        argv = [*command, *(container.get("args") or [])] if command else container.get("args")
        self.pods_ns[name] = ns
        if image not in self.engine.images:
            waiting = {"waiting": {"reason": "ErrImagePull", "message": f"image {image} not found"}}
            self._spawn(self._patch_status(ns, name, self._status("Pending", image, waiting)))
            return
        if image in self.hold_images:
            waiting = {"waiting": {"reason": "ContainerCreating"}}
            self._spawn(self._patch_status(ns, name, self._status("Pending", image, waiting)))
            return
        c = self.engine.create(name, image, argv, identity_from_metadata(meta), {}, [])
        c.labels["k8s.image"] = image

        async def start() -> None:
            await asyncio.sleep(0)
            if name in self.engine.containers:
                self.engine.start(c)

        self._spawn(start())

    @staticmethod
    def _status(phase: str, image: str, state: dict[str, Any]) -> dict[str, Any]:
        return {"phase": phase, "containerStatuses": [{"name": CONTAINER, "image": image, "imageID": "",
                                                        "ready": "running" in state, "restartCount": 0,
                                                        "state": state}]}

    def _container_changed(self, c: FakeContainer) -> None:
        ns = self.pods_ns.get(c.name)
        if ns is None or c.state not in ("running", "exited"):
            return
        image = c.labels.get("k8s.image", c.image)
        def iso(t):
            return (t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None)
        if c.state == "running":
            status = self._status("Running", image, {"running": {"startedAt": iso(c.started_at)}})
        else:
            reason = "Completed" if c.exit_code == 0 else "OOMKilled" if "OOM" in c.message else "Error"
            status = self._status("Succeeded" if c.exit_code == 0 else "Failed", image, {"terminated": {
                "exitCode": c.exit_code, "reason": reason, "startedAt": iso(c.started_at),
                "finishedAt": iso(c.finished_at)}})
        self._spawn(self._patch_status(ns, c.name, status))

    # ---------------------------------------------------------------------------------------- log

    async def _log(self, raw: aiohttp.web.BaseRequest, ns: str, name: str) -> aiohttp.web.StreamResponse:
        if self._pod(ns, name) is None:
            return aiohttp.web.json_response({"kind": "Status", "code": 404, "message": "pod not found"}, status=404)
        c = self.engine.containers.get(name)
        if c is None:
            return aiohttp.web.json_response({"kind": "Status", "code": 400,
                                              "message": f'container "{CONTAINER}" is waiting to start'},
                                             status=400)
        data = bytes(c.log)
        if "tailLines" in raw.query:
            n = int(raw.query["tailLines"])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        if "limitBytes" in raw.query:
            data = data[: int(raw.query["limitBytes"])]
        return aiohttp.web.Response(body=data, content_type="text/plain")

    # ---------------------------------------------------------------------------------------- exec

    async def _exec(self, raw: aiohttp.web.BaseRequest, ns: str, name: str) -> aiohttp.web.StreamResponse:
        if self._pod(ns, name) is None:
            return aiohttp.web.json_response({"kind": "Status", "code": 404, "message": "pod not found"}, status=404)
        c = self.engine.containers.get(name)
        if c is None or c.state != "running":
            return aiohttp.web.json_response({"kind": "Status", "code": 400,
                                              "message": "cannot exec into a container in a completed pod"},
                                             status=400)
        argv = raw.query.getall("command", [])
        ws = aiohttp.web.WebSocketResponse(protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"))
        await ws.prepare(raw)
        stdin = bytearray()
        if raw.query.get("stdin", "").lower() in ("true", "1", "t"):  # Go's ParseBool: the client sends "True"
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                    break
                if msg.data[0] == 255:  # v5: close stdin
                    break
                if msg.data[0] == 0:
                    stdin += msg.data[1:]
        code, out, err = await self.engine.exec(c, argv, bytes(stdin))
        if out:
            await ws.send_bytes(b"\x01" + out)
        if err:
            await ws.send_bytes(b"\x02" + err)
        if code == 0:
            status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        else:
            status = {"metadata": {}, "status": "Failure", "message": "command terminated with non-zero exit code",
                      "reason": "NonZeroExitCode",
                      "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        return ws

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
