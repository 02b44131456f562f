"""Benchmark: pods on a real container engine (Podman's Docker API, or any Docker engine).

Run: ``.venv/bin/python bench/bench_pods.py [--pods 20] [--health-sizes 50,200] [--intervals 2.0,0.5]``

1. **create → AVAILABLE latency** of the busybox HTTP test image, over ``--pods`` pods created one after another
   through the HTTP API, next to a bare engine run of the same image (docker-py ``containers.run(detach=True,
   ports=…)``) to its first HTTP answer, measured in the same run, interleaved. Printed: median and p95 of
   the bare run to first answer, of OpenPods to ``AVAILABLE`` and to the pod's first HTTP answer, and the
   ratios. Measured once per health interval of ``--intervals`` (the production default is 2.0 s).
2. **health pass** with ``--health-sizes`` running pods (the idle busybox image, 16 MiB): the duration of
   ``Health.pass_once()`` and its number of engine API calls (``PassStats.engine_calls``), which must not grow
   with the number of pods; plus one round of the log refresher (one logs call per running pod) for contrast.

The server runs in this process (``serve_async`` in a thread: API, spawner and health), on loopback only. The
engine is, by default, a private ``podman system service`` with its own storage and bridge network, started
and removed by this script (OpenPods' health loop removes every managed container it does not know, so a
benchmark must not share an engine with another OpenPods). ``--docker-host URL`` uses an existing engine
instead; nothing else may use it meanwhile. Every container is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.constants
import docker.errors
import httpx

from openpods.bootstrap import build_context
from openpods.bus.base import HEALTH, Wakeup
from openpods.config import Settings
from openpods.controllers.health import Health, PassStats
from openpods.domain.container_spec import LABEL_MANAGED
from openpods.runtimes.engine import ping_engine
from openpods.server import serve_async
from openpods.store.tables import Pod

REPO = Path(__file__).resolve().parents[1]
HTTP_IMAGE = "localhost/openpods-test/http:latest"
IDLE_IMAGE = "localhost/openpods-test/busybox:latest"
HELLO = "hello from openpods"
SMALL = {"cpu_request": 10, "cpu_limit": 500, "mem_request": 16, "mem_limit": 16}
HTTP_RESOURCES = {"cpu_request": 50, "cpu_limit": 1000, "mem_request": 32, "mem_limit": 128}
DEADLINE_SEC = 30 * 60  # the whole benchmark
RUN = f"b{uuid.uuid4().hex[:5]}"  # prefix of this run's pod ids


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def check_time(started: float) -> None:
    if time.monotonic() - started > DEADLINE_SEC:
        raise SystemExit(f"benchmark exceeded its {DEADLINE_SEC} s bound")


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


# ------------------------------------------------------------------------------------------------ engine


def _free_subnet() -> ipaddress.IPv4Network:
    taken = []
    for cmd in (["ip", "-o", "-4", "route", "show", "table", "all"], ["ip", "-o", "-4", "addr"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            for token in subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.split():
                with contextlib.suppress(ValueError):
                    if "/" in token or token.count(".") == 3:
                        taken.append(ipaddress.ip_network(token, strict=False))
    for _ in range(1000):
        a, b = uuid.uuid4().bytes[:2]
        net = ipaddress.ip_network(f"10.{128 + a % 120}.{b}.0/24")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet")


@contextlib.contextmanager
def private_podman() -> Iterator[str]:
    """A ``podman system service`` with its own storage and bridge network; yields its URL."""
    if shutil.which("podman") is None:
        raise SystemExit(
            "Podman is not installed (scripts/setup-podman.sh installs it), or pass --docker-host"
        )
    work = Path(tempfile.mkdtemp(prefix="opb-", dir="/tmp"))
    subnet, tag = _free_subnet(), uuid.uuid4().hex[:8]
    net = f"opb{tag}"
    (work / "net").mkdir()
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/storage"\nrunroot = "{work}/run"\n'
    )
    (work / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        f'[network]\nnetwork_config_dir = "{work}/net"\ndefault_network = "{net}"\n[engine]\nruntime = "runc"\n'
        f'events_logger = "file"\nevents_logfile_path = "{work}/events.log"\n'  # not the host-wide event log
    )
    (work / "net" / f"{net}.json").write_text(
        json.dumps(
            {
                "name": net,
                "id": uuid.uuid4().hex * 2,
                "driver": "bridge",
                "network_interface": net,
                "created": "2026-01-01T00:00:00Z",
                "subnets": [{"subnet": str(subnet), "gateway": str(next(subnet.hosts()))}],
                "ipv6_enabled": False,
                "internal": False,
                "dns_enabled": False,
                "ipam_options": {"driver": "host-local"},
            }
        )
    )
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(work / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
    }
    env.pop("DOCKER_HOST", None)
    url = f"unix://{work / 'podman.sock'}"
    with open(work / "service.log", "ab") as out:
        proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for(lambda: ping_engine(url, 2) or proc.poll() is not None, 60, "the podman service", 0.1)
        if proc.poll() is not None:
            raise SystemExit(f"podman system service failed:\n{(work / 'service.log').read_text()}")
        build = subprocess.run(
            [str(REPO / "scripts/build-test-images.sh")],
            env={**env, "DOCKER_HOST": url, "OPENPODS_IMAGE_BUILDER": "podman"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if build.returncode != 0:
            raise SystemExit(f"scripts/build-test-images.sh failed:\n{build.stderr}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)
        subprocess.run(
            ["podman", "rm", "-af", "-t", "0"], env=env, capture_output=True, timeout=300, check=False
        )
        shutil.rmtree(work, ignore_errors=True)


def engine_client(url: str) -> docker.DockerClient:
    probe = docker.APIClient(base_url=url, version=docker.constants.MINIMUM_DOCKER_API_VERSION)
    try:
        version = probe.get(f"{probe.base_url}/_ping", timeout=10).headers.get("Api-Version") or "auto"
    finally:
        probe.close()
    return docker.DockerClient(base_url=url, version=version, timeout=300, max_pool_size=16)


def remove_containers(client: docker.DockerClient, label: str, prefix: str = "") -> int:
    """Removes the containers with ``label`` (and, when given, a pod id label starting with ``prefix``)."""
    items = [
        item
        for item in client.api.containers(all=True, filters={"label": label})
        if not prefix or (item.get("Labels") or {}).get("openpods.pod_id", "").startswith(prefix)
    ]

    def rm(item: dict[str, Any]) -> None:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_container(item["Id"], force=True, v=True)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(rm, items))
    return len(items)


# ------------------------------------------------------------------------------------------------ server


class Server:
    """OpenPods (api + spawner + health) in a thread of this process."""

    def __init__(self, engine_url: str, data_dir: Path) -> None:
        with socket_port() as port:
            self.port = port
        self.settings = Settings(
            data_dir=data_dir,
            host="127.0.0.1",
            port=self.port,
            runtime="docker",
            docker_host=engine_url,
            start_podman_service=False,
            proxy_enabled=False,
            import_starter_catalog=False,
            admin_password="bench-admin",
            image_allow_list=[HTTP_IMAGE.rsplit(":", 1)[0], IDLE_IMAGE.rsplit(":", 1)[0]],
            mem_min=16,
            cpu_min=10,
        )
        self.ctx = build_context(self.settings)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="openpods-bench")

    def _run(self) -> None:
        async def main() -> None:
            self.loop, self.stop_event = asyncio.get_running_loop(), asyncio.Event()
            self.ready.set()
            await serve_async(self.settings, {"api", "spawner", "health"}, self.ctx, self.stop_event)

        asyncio.run(main())

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(30)
        wait_for(self._healthy, 60, "the OpenPods API", 0.05)
        token = self.ctx.tokens.issue(self.settings.default_tenant, "admin")["access_token"]
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"X-Tapis-Token": token},
            timeout=120,
            limits=httpx.Limits(max_connections=16),
        )

    def _healthy(self) -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://127.0.0.1:{self.port}/healthcheck", timeout=2).status_code == 200
        return False

    def stop(self) -> None:
        if self.loop is not None and self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(60)
        self.ctx.engine.dispose()

    # --- helpers
    def status(self, pod_id: str) -> str:
        return self.http.get(f"/v3/pods/{pod_id}").json()["result"]["status"]

    def statuses(self) -> dict[str, str]:
        return {p["pod_id"]: p["status"] for p in self.http.get("/v3/pods").json()["result"]}

    def host_port(self, pod_id: str) -> int:
        with self.ctx.sessions() as s:
            pod = s.get(Pod, (self.settings.default_tenant, pod_id))
            return int(pod.host_ports["default"])

    def create(self, pod_id: str, image: str, resources: dict[str, int]) -> None:
        r = self.http.post("/v3/pods", json={"pod_id": pod_id, "image": image, "resources": resources})
        if r.status_code != 200:
            raise RuntimeError(f"create_pod {pod_id}: {r.status_code} {r.text}")

    def delete(self, pod_id: str) -> None:
        self.http.delete(f"/v3/pods/{pod_id}")

    def set_health_interval(self, seconds: float) -> None:
        """The loop reads the setting before each wait; a wake-up makes it take effect now."""
        self.settings.health_interval_sec = seconds
        self.ctx.bus.publish(Wakeup(HEALTH))

    def pass_once(self) -> PassStats:
        return self.ctx.run_async(Health(self.ctx).pass_once(), 600)

    def list_call(self) -> float:
        """Seconds of the runtime's one list call (``list_managed``), the engine's share of a pass."""

        async def timed() -> float:
            started = time.perf_counter()
            await self.ctx.runtime.list_managed()
            return time.perf_counter() - started

        return self.ctx.run_async(timed(), 600)

    def log_refresh_round(self, pod_ids: list[str]) -> float:
        health = Health(self.ctx)

        async def round_() -> float:
            started = time.perf_counter()
            with self.ctx.sessions() as s:
                rows = [
                    (p.tenant_id, p.pod_id, p.instance_id)
                    for p in (s.get(Pod, (self.settings.default_tenant, pid)) for pid in pod_ids)
                ]
            for tenant_id, pod_id, instance in rows:
                await health.capture_logs(tenant_id, pod_id, instance)
            return time.perf_counter() - started

        return self.ctx.run_async(round_(), 600)


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def http_ok(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).text.strip() == HELLO
    except httpx.TransportError:
        return False


# ------------------------------------------------------------------------------------------------ part 1


def bare_run(client: docker.DockerClient) -> float:
    """Seconds from ``containers.run`` to the first HTTP answer of the container."""
    started = time.perf_counter()
    c = client.containers.run(
        HTTP_IMAGE,
        detach=True,
        ports={"5000/tcp": ("127.0.0.1", None)},
        labels={"openpods.bench": "bare"},
        mem_limit="128m",
    )
    c.reload()
    port = int(c.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"])
    wait_for(lambda: http_ok(port), 60, "the bare container's HTTP answer", 0.005)
    elapsed = time.perf_counter() - started
    c.remove(force=True, v=True)
    return elapsed


def openpods_run(srv: Server, client: docker.DockerClient) -> tuple[float, float, float]:
    """Seconds from ``POST /v3/pods`` to CREATING (the spawner's part done), to AVAILABLE (the health loop saw
    it running) and to the pod's first HTTP answer."""
    pod_id = f"{RUN}lat{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    creating: list[float] = []

    def available_yet() -> bool:
        status = srv.status(pod_id)
        if status in ("CREATING", "AVAILABLE") and not creating:
            creating.append(time.perf_counter() - started)
        return status == "AVAILABLE"

    srv.create(pod_id, HTTP_IMAGE, HTTP_RESOURCES)
    wait_for(available_yet, 120, f"{pod_id} AVAILABLE", 0.01)
    available = time.perf_counter() - started
    port = srv.host_port(pod_id)
    wait_for(lambda: http_ok(port), 60, f"{pod_id}'s HTTP answer", 0.005)
    answered = time.perf_counter() - started
    srv.delete(pod_id)
    wait_for(
        lambda: not client.api.containers(all=True, filters={"label": f"openpods.pod_id={pod_id}"}),
        120,
        f"{pod_id}'s container to go",
        0.05,
    )
    return creating[0], available, answered


def latency(
    srv: Server, client: docker.DockerClient, pods: int, interval: float, started: float
) -> dict[str, Any]:
    srv.set_health_interval(interval)
    bare_run(client)  # warm-up: image and network are in the page cache, the API's code paths are loaded
    openpods_run(srv, client)
    bare: list[float] = []
    creating: list[float] = []
    avail: list[float] = []
    answered: list[float] = []
    for i in range(pods):
        check_time(started)
        bare.append(bare_run(client))
        c, a, h = openpods_run(srv, client)
        creating.append(c)
        avail.append(a)
        answered.append(h)
        log(
            f"  interval {interval}s, pod {i + 1}/{pods}: bare {bare[-1]:.3f}s, CREATING {c:.3f}s, "
            f"AVAILABLE {a:.3f}s, HTTP {h:.3f}s"
        )
    return {"interval": interval, "bare": bare, "creating": creating, "available": avail, "http": answered}


# ------------------------------------------------------------------------------------------------ part 2


STALL_SEC = 90  # no pod became AVAILABLE for this long: report the stuck ones and go on


def create_many(srv: Server, count: int, prefix: str, started: float) -> tuple[list[str], dict[str, str]]:
    """Creates ``count`` idle pods and waits until they are AVAILABLE, or until none has become AVAILABLE for
    ``STALL_SEC``. Returns the ids and, for pods that never became AVAILABLE, their status and reason."""
    ids = [f"{prefix}{i:04d}" for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda pid: srv.create(pid, IDLE_IMAGE, SMALL), ids))
    best, last_progress = 0, time.monotonic()
    while True:
        check_time(started)
        st = srv.statuses()
        available = sum(1 for pid in ids if st.get(pid) == "AVAILABLE")
        if available == count:
            return ids, {}
        if available > best:
            best, last_progress = available, time.monotonic()
        if time.monotonic() - last_progress > STALL_SEC:
            stuck = {}
            for pid in ids:
                if st.get(pid) != "AVAILABLE":
                    pod = srv.http.get(f"/v3/pods/{pid}").json()["result"]
                    stuck[pid] = f"{pod['status']}: {(pod['status_container'] or {}).get('message', '')}"
            log(f"  {len(stuck)} pod(s) never became AVAILABLE: {stuck}")
            return ids, stuck
        time.sleep(1.0)


def measure_passes(srv: Server, runs: int) -> tuple[list[PassStats], list[float]]:
    """``runs`` health passes, and as many list calls alone (the engine's share)."""
    # Quiet the background loop (it finishes its current wait, then sleeps for an hour), then measure.
    srv.set_health_interval(3600)
    time.sleep(1.0)
    passes, lists = [], []
    for _ in range(runs):
        passes.append(srv.pass_once())
        lists.append(srv.list_call())
    return passes, lists


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=20, help="pods for the latency part (default 20)")
    parser.add_argument(
        "--intervals",
        default="2.0,0.5",
        help="health_interval_sec values for the latency part (default 2.0,0.5)",
    )
    parser.add_argument(
        "--health-sizes", default="50,200", help="running pods for the health part (default 50,200)"
    )
    parser.add_argument("--passes", type=int, default=10, help="health passes measured per size (default 10)")
    parser.add_argument(
        "--docker-host", default="", help="use this engine instead of a private Podman service"
    )
    args = parser.parse_args()
    intervals = [float(x) for x in args.intervals.split(",") if x]
    sizes = sorted(int(x) for x in args.health_sizes.split(",") if x)
    started = time.monotonic()

    with contextlib.ExitStack() as stack:
        if args.docker_host:
            url = args.docker_host
        else:
            log("starting a private Podman service and building the test images")
            url = stack.enter_context(private_podman())
        client = engine_client(url)
        stack.callback(client.close)
        stack.callback(
            lambda: log(
                f"removed {remove_containers(client, LABEL_MANAGED, RUN)} OpenPods and "
                f"{remove_containers(client, 'openpods.bench')} bare containers"
            )
        )
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="openpods-bench-")))
        srv = Server(url, data_dir / "data")
        srv.start()
        stack.callback(srv.stop)
        log(f"OpenPods on 127.0.0.1:{srv.port}, engine {url}")

        results = []
        for interval in intervals:
            log(f"latency: {args.pods} pods, health_interval_sec={interval}")
            results.append(latency(srv, client, args.pods, interval, started))

        passes: dict[int, list[PassStats]] = {}
        lists: dict[int, list[float]] = {}
        refresh: dict[int, float] = {}
        ids: list[str] = []
        stuck: dict[str, str] = {}
        for size in sizes:
            srv.set_health_interval(0.5)
            log(f"health: creating {size - len(ids)} more idle pods (to {size})")
            t0 = time.perf_counter()
            new_ids, new_stuck = create_many(srv, size - len(ids), f"{RUN}idle{size}x", started)
            ids += new_ids
            stuck.update(new_stuck)
            log(f"  {size - len(stuck)} of {size} pods AVAILABLE ({time.perf_counter() - t0:.1f}s)")
            passes[size], lists[size] = measure_passes(srv, args.passes)
            refresh[size] = srv.log_refresh_round([pid for pid in ids if pid not in stuck])

    print()
    print(
        f"create -> AVAILABLE, {args.pods} pods each, busybox httpd image ({HTTP_IMAGE}); seconds, median / p95"
    )
    print(
        f"{'health interval':>15} | {'bare run -> HTTP':>16} | {'OpenPods -> CREATING':>20} | "
        f"{'OpenPods -> AVAILABLE':>21} | {'OpenPods -> HTTP':>16} | ratio AVAILABLE/bare | ratio HTTP/bare"
    )
    for r in results:
        cells = []
        for key in ("bare", "creating", "available", "http"):
            cells.append(f"{statistics.median(r[key]):.3f} / {pct(r[key], 95):.3f}")
        bm, bp = statistics.median(r["bare"]), pct(r["bare"], 95)
        ratio_a = f"{statistics.median(r['available']) / bm:.2f} / {pct(r['available'], 95) / bp:.2f}"
        ratio_h = f"{statistics.median(r['http']) / bm:.2f} / {pct(r['http'], 95) / bp:.2f}"
        print(
            f"{r['interval']:>14}s | {cells[0]:>16} | {cells[1]:>20} | {cells[2]:>21} | {cells[3]:>16} | "
            f"{ratio_a:>20} | {ratio_h}"
        )
    print()
    print(f"health pass ({args.passes} passes each, steady state; idle busybox pods)")
    print(
        f"{'running pods':>12} | {'containers listed':>17} | {'pass median / max (ms)':>22} |"
        f" {'list call median (ms)':>21} | {'engine calls/pass':>17} | {'changes':>7} |"
        " log refresh round (s, 1 logs call per pod)"
    )
    for size in sizes:
        ps = passes[size]
        ms = [p.seconds * 1000 for p in ps]
        calls = sorted({p.engine_calls for p in ps})
        cell = f"{statistics.median(ms):.1f} / {max(ms):.1f}"
        print(
            f"{size:>12} | {ps[-1].containers:>17} | {cell:>22} | {statistics.median(lists[size]) * 1000:>21.1f} |"
            f" {','.join(map(str, calls)):>17} | {max(p.changes for p in ps):>7} | {refresh[size]:.2f}"
        )
    if stuck:
        print(f"\n{len(stuck)} pod(s) never became AVAILABLE (an OpenPods or engine problem, see above):")
        for pid, why in sorted(stuck.items()):
            print(f"  {pid}: {why}")
    print(f"\ntotal benchmark time: {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
