"""Benchmark: pod URLs through the whole stack (OpenPods + the Traefik it supervises + real containers).

Run: ``.venv/bin/python bench/bench_proxy.py [--pods 10] [--requests 4000] [--clients 4]``

Loopback only, bounded in time (every wait has a deadline). It starts a private Podman API service
(``isolated_podman`` of ``tests/integration/conftest.py``: own storage, own bridge network, the busybox test
images) and real OpenPods servers in threads (``ServerFactory`` of ``tests/conftest.py``). Every number is
printed next to its baseline measured in the same run, as a ratio:

1. **create → first 200 through the pod's URL** (baseline: the engine floor, a bare ``containers.run`` of the
   same image to its first HTTP answer, interleaved pod by pod), and **AVAILABLE → first 200** (target
   ≤ 150 ms p95), for each of ``--providers``: ``file`` (the one-machine default: routes pushed into Traefik's
   watched directory), ``http`` (Traefik polls ``/traefik-config`` every second: how the one-machine shape
   worked before, and the chart's ``traefik.routes=poll``) and ``sync`` (the chart's default: a second Traefik
   whose file provider is fed by ``openpods routes-sync`` long-polling ``/traefik-config``, in its own
   process). The URL is probed from the ``POST`` on (new TLS connection per probe).
2. **Throughput and latency through Traefik vs. directly**, and with Traefik's access log on (unbuffered and
   buffered; a second Traefik on the same routes): ``--requests`` GETs split over ``--clients`` processes
   (one keep-alive httpx client each), ``--rounds`` rounds, each in another order.
3. **Route updates with ``--config-pods`` pods** (rows inserted straight into the database): the time from a
   commit that changes one pod's port to ``/traefik-config`` serving the new config (baseline: a full render
   of every pod, what each change cost before), cached and conditional GETs, and the latency of an ordinary
   API call (``GET /v3/pods/<id>``) while pods change (baseline: the same call idle), for each of
   ``--config-databases``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib.util
import multiprocessing
import socket
import ssl
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
IMAGE = "localhost/openpods-test/http:latest"
SECRET_HEADER = "X-OpenPods-Proxy-Secret"
POD_DEADLINE_SEC = 120.0
ROUTE_DEADLINE_SEC = 30.0


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# ------------------------------------------------------------------------------------------ load generator


def _load_worker(
    url: str, host: str | None, cafile: str | None, count: int, start_at: float
) -> dict[str, Any]:
    """One client process: warm up, wait for ``start_at`` (wall clock), send ``count`` GETs one after the
    other on a keep-alive connection, return per-request latencies."""
    verify: Any = ssl.create_default_context(cafile=cafile) if cafile else False
    headers = {"Host": host} if host else {}
    extensions = {"sni_hostname": host} if host and url.startswith("https") else {}
    latencies: list[float] = []
    errors = 0
    with httpx.Client(verify=verify, timeout=10.0, trust_env=False) as client:
        for _ in range(20):
            client.get(url, headers=headers, extensions=extensions)
        while time.time() < start_at:
            time.sleep(0.001)
        began = time.time()
        for _ in range(count):
            t0 = time.perf_counter()
            try:
                response = client.get(url, headers=headers, extensions=extensions)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            errors += not ok
        ended = time.time()
    return {"latencies": latencies, "errors": errors, "began": began, "ended": ended}


def run_load(
    pool: concurrent.futures.Executor,
    clients: int,
    total: int,
    url: str,
    host: str | None,
    cafile: str | None,
) -> dict[str, Any]:
    per_client = max(1, total // clients)
    start_at = time.time() + 2.0  # every worker has warmed up by then
    futures = [pool.submit(_load_worker, url, host, cafile, per_client, start_at) for _ in range(clients)]
    results = [f.result(timeout=600) for f in futures]
    latencies = [x for r in results for x in r["latencies"]]
    window = max(r["ended"] for r in results) - min(r["began"] for r in results)
    return {
        "requests": len(latencies),
        "errors": sum(r["errors"] for r in results),
        "rps": len(latencies) / window,
        "p50": _pct(latencies, 50),
        "p95": _pct(latencies, 95),
        "p99": _pct(latencies, 99),
        "mean": statistics.fmean(latencies),
    }


# ------------------------------------------------------------------------------------------ phase 1 and 2


class ProxyBench:
    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self.http = srv.client("alice", timeout=60.0)
        settings = srv.settings
        self.https_port = int(settings.proxy_https_port)
        self.ca_file = Path(settings.data_dir) / "tls" / "ca.crt"
        self.ssl_context = ssl.create_default_context(cafile=str(self.ca_file))

    def host(self, pod_id: str) -> str:
        return f"{pod_id}.{self.srv.settings.pods_domain(self.srv.default_tenant)}"

    def status(self, pod_id: str) -> tuple[str, datetime, dict[str, Any]]:
        from sqlalchemy import select

        from openpods.store.tables import Pod

        with self.srv.ctx.sessions() as s:
            row = s.execute(
                select(Pod.status, Pod.status_since, Pod.host_ports).where(
                    Pod.tenant_id == self.srv.default_tenant, Pod.pod_id == pod_id
                )
            ).one()
        return row[0], row[1], dict(row[2] or {})

    def url_answers(
        self, pod_id: str, port: int | None = None, context: ssl.SSLContext | None = None
    ) -> bool:
        """One probe on a new connection (like a new browser): 200 from the pod's URL through Traefik."""
        host = self.host(pod_id)
        try:
            with httpx.Client(verify=context or self.ssl_context, trust_env=False) as client:
                response = client.get(
                    f"https://127.0.0.1:{port or self.https_port}/",
                    headers={"Host": host},
                    extensions={"sni_hostname": host},
                    timeout=2.0,
                )
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def create_to_url(self, pod_id: str) -> dict[str, float]:
        """Creates a pod and probes its URL from the POST on. Seconds from the POST to the first 200 through
        Traefik, to AVAILABLE (its ``status_since``), and AVAILABLE → first 200 (≤ 0: the URL answered no
        later than the status said AVAILABLE)."""
        body = {
            "pod_id": pod_id,
            "image": IMAGE,
            "networking": {"default": {"protocol": "http", "port": 5000}},
            "resources": {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128},
        }
        started_wall, started = time.time(), time.perf_counter()
        r = self.http.post("/v3/pods", json=body)
        r.raise_for_status()
        deadline = started + POD_DEADLINE_SEC
        answered: float | None = None
        while answered is None:
            if self.url_answers(pod_id):
                answered = time.perf_counter() - started
                break
            status, _, _ = self.status(pod_id)
            if status in ("ERROR", "COMPLETE") or time.perf_counter() > deadline:
                raise RuntimeError(f"pod {pod_id} is {status}; its URL did not answer")
            time.sleep(0.005)
        deadline = time.perf_counter() + POD_DEADLINE_SEC
        while True:
            status, since, _ = self.status(pod_id)
            if status == "AVAILABLE":
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"pod {pod_id} is {status}, not AVAILABLE")
            time.sleep(0.01)
        available = since.replace(tzinfo=UTC).timestamp() - started_wall
        return {
            "create_to_url": answered,
            "create_to_available": available,
            "available_to_url": answered - available,
        }


def bare_run(engine: Any) -> float:
    """The engine floor: seconds from ``containers.run`` of the same image to its first HTTP answer."""
    started = time.perf_counter()
    c = engine.client.containers.run(
        IMAGE,
        detach=True,
        ports={"5000/tcp": ("127.0.0.1", None)},
        labels={"openpods.bench": "bare"},
        mem_limit="128m",
    )
    try:
        c.reload()
        port = int(c.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"])
        deadline = started + POD_DEADLINE_SEC
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1, trust_env=False).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError("the bare container never answered")
            time.sleep(0.005)
    finally:
        c.remove(force=True, v=True)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p95": _pct(values, 95),
        "min": min(values),
        "max": max(values),
    }


def start_server(integration: ModuleType, factory: Any, engine: Any, **overrides: Any) -> Any:
    http_port, https_port = _free_port(), _free_port()
    srv = factory(
        **integration.container_settings(
            engine,
            roles={"api", "spawner", "health", "proxy"},
            proxy_enabled=True,
            proxy_http_port=http_port,
            proxy_https_port=https_port,
            proxy_bind_host="127.0.0.1",
            **overrides,
        )
    )
    srv.allow_image(IMAGE.rsplit(":", 1)[0])
    srv.add_user("alice")
    with socket.create_connection(("127.0.0.1", https_port), timeout=5):
        pass  # Traefik is up (OpenPods only logs when it is not)
    return srv


def phase_route_latency(
    args: argparse.Namespace, engine: Any, bench: ProxyBench, provider: str
) -> dict[str, Any]:
    print(
        f"\n[1] create -> first 200 through the URL, proxy_provider={provider}, {args.pods} pods, each after "
        f"a bare engine run of the same image (the floor)"
    )
    rows: list[dict[str, float]] = []
    for i in range(args.pods):
        floor = bare_run(engine)
        pod_id = f"b{provider[0]}{i}x{int(time.time() * 1000) % 100000}"
        row = bench.create_to_url(pod_id) | {"floor": floor, "pod_id": pod_id}  # type: ignore[operator]
        rows.append(row)
        print(
            f"    {pod_id}: floor {_ms(floor)}, create->AVAILABLE {_ms(row['create_to_available'])}, "
            f"create->200 {_ms(row['create_to_url'])}, AVAILABLE->200 {_ms(row['available_to_url'])}"
        )
    out = {
        k: _summary([r[k] for r in rows])
        for k in ("floor", "create_to_available", "create_to_url", "available_to_url")
    }
    out["pods"] = [r["pod_id"] for r in rows]
    f, c, a = out["floor"], out["create_to_url"], out["available_to_url"]
    print(f"    engine floor          median {_ms(f['median'])}, p95 {_ms(f['p95'])}")
    print(
        f"    create -> AVAILABLE   median {_ms(out['create_to_available']['median'])}, "
        f"p95 {_ms(out['create_to_available']['p95'])}"
    )
    print(
        f"    create -> first 200   median {_ms(c['median'])}, p95 {_ms(c['p95'])}; ratio to the floor "
        f"{c['median'] / f['median']:.2f} (median), {c['p95'] / f['p95']:.2f} (p95); target <= 1.2 x floor "
        f"+ 150 ms = {_ms(1.2 * f['median'] + 0.15)} / {_ms(1.2 * f['p95'] + 0.15)}: "
        f"{'met' if c['median'] <= 1.2 * f['median'] + 0.15 and c['p95'] <= 1.2 * f['p95'] + 0.15 else 'NOT met'}"
    )
    print(
        f"    AVAILABLE -> first 200 median {_ms(a['median'])}, p95 {_ms(a['p95'])}, max {_ms(a['max'])}; "
        f"target p95 <= 150 ms: {'met' if a['p95'] <= 0.15 else 'NOT met'}"
    )
    return out


class Standalone:
    """A second Traefik (own ports, own CA) on a copy of the server's routes file, e.g. with the access log on."""

    def __init__(self, srv: Any, tmp: Path, name: str, copy_routes: bool = True, **traefik: Any) -> None:
        import asyncio
        import shutil
        import threading

        from openpods.proxy.traefik import TraefikSettings, TraefikSupervisor, traefik_paths
        from openpods.services.proxy import routes_file, tls_names

        settings = TraefikSettings(
            data_dir=tmp / name,
            api_url="http://127.0.0.1:9",
            secret="bench",
            http_port=_free_port(),
            https_port=_free_port(),
            bind_host="127.0.0.1",
            tls_names=tls_names(srv.settings),
            provider="file",
            **traefik,
        )
        self.https_port = settings.https_port
        self.ca_file = settings.data_dir / "tls" / "ca.crt"
        self.access_log = traefik_paths(settings).access_log
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.supervisor = TraefikSupervisor(settings, tls_refresh_interval=None)
        asyncio.run_coroutine_threadsafe(self.supervisor.start(), self.loop).result(60)
        self.dynamic_dir = traefik_paths(settings).dynamic_dir
        if copy_routes:
            shutil.copy(routes_file(srv.settings, srv.ctx.proxy_secret), self.dynamic_dir / ".pods.tmp")
            (self.dynamic_dir / ".pods.tmp").rename(self.dynamic_dir / "pods.yml")

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.supervisor.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)


def phase_throughput(
    args: argparse.Namespace, srv: Any, bench: ProxyBench, target: str, tmp: Path
) -> dict[str, Any]:
    _, _, ports = bench.status(target)
    host = bench.host(target)
    paths: dict[str, tuple[str, str | None, str | None]] = {
        "traefik": (f"https://127.0.0.1:{bench.https_port}/", host, str(bench.ca_file)),
        "direct": (f"http://127.0.0.1:{ports['default']}/", None, None),
    }
    extra: list[Standalone] = []
    try:
        for name, kw in (
            ("log", {"access_log": True}),
            ("log-buffered", {"access_log": True, "access_log_buffer": 1000}),
        ):
            other = Standalone(srv, tmp, name, **kw)
            extra.append(other)
            context = ssl.create_default_context(cafile=str(other.ca_file))
            deadline = time.perf_counter() + ROUTE_DEADLINE_SEC
            while not bench.url_answers(target, other.https_port, context):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the {name} Traefik never routed {target}")
                time.sleep(0.05)
            paths[f"traefik+{name}"] = (f"https://127.0.0.1:{other.https_port}/", host, str(other.ca_file))
        print(
            f"\n[2] {args.requests} GETs x {args.rounds} rounds, {args.clients} client processes: Traefik "
            f"(HTTPS; access log off = the default, on, on with bufferingSize 1000) vs. the published port"
        )
        ctx = multiprocessing.get_context("spawn")
        results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in paths}
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.clients, mp_context=ctx) as pool:
            for round_no in range(args.rounds):
                kinds = list(paths)
                kinds = kinds[round_no % len(kinds) :] + kinds[: round_no % len(kinds)]  # no order bias
                for kind in kinds:
                    url, host_header, ca = paths[kind]
                    res = run_load(pool, args.clients, args.requests, url, host_header, ca)
                    results[kind].append(res)
                    print(
                        f"    round {round_no + 1} {kind:20s}: {res['rps']:8.0f} req/s  p50 {_ms(res['p50'])}"
                        f"  p95 {_ms(res['p95'])}  p99 {_ms(res['p99'])}  errors {res['errors']}"
                    )
    finally:
        for other in extra:
            with contextlib.suppress(Exception):
                other.stop()
    for other in extra:
        lines = 0
        if other.access_log.exists():
            with open(other.access_log, "rb") as fh:
                lines = sum(1 for _ in fh)
        print(f"    ({other.access_log.parent.parent.name}: {lines} access log lines written)")
    summary = {}
    for kind, rounds in results.items():
        summary[kind] = {
            "rps": statistics.median(r["rps"] for r in rounds),
            "p50": statistics.median(r["p50"] for r in rounds),
            "p95": statistics.median(r["p95"] for r in rounds),
            "p99": statistics.median(r["p99"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
        }
    t, d = summary["traefik"], summary["direct"]
    print(
        f"    median over rounds: Traefik {t['rps']:.0f} req/s (p50 {_ms(t['p50'])}), direct {d['rps']:.0f} "
        f"req/s (p50 {_ms(d['p50'])}); throughput ratio Traefik/direct {t['rps'] / d['rps']:.2f}"
    )
    for kind in ("traefik+log", "traefik+log-buffered"):
        x = summary[kind]
        print(
            f"    {kind}: {x['rps']:.0f} req/s (p50 {_ms(x['p50'])}); throughput ratio to Traefik without "
            f"access log {x['rps'] / t['rps']:.2f}"
        )
    return summary


class SyncedTraefik(Standalone):
    """The cluster shape on one machine: a second Traefik whose file provider directory is kept up to date by
    ``openpods routes-sync`` (its own process) long-polling the server's /traefik-config."""

    def __init__(self, srv: Any, tmp: Path) -> None:
        import subprocess
        import sys

        super().__init__(srv, tmp, "routes-sync", copy_routes=False)
        out = self.dynamic_dir / "pods.yml"
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from openpods.cli import app; app()", "routes-sync", "--out", str(out),
             "--api-url", srv.url(""), "--secret", srv.ctx.proxy_secret, "--log-level", "warning"])
        deadline = time.perf_counter() + 30
        while not out.exists():
            if time.perf_counter() > deadline or self.process.poll() is not None:
                raise RuntimeError("openpods routes-sync wrote no routes file")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        super().stop()


def phase_routes_and_throughput(
    args: argparse.Namespace, integration: ModuleType, factory: Any, tmp: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with integration.isolated_podman() as engine:
        # http first (the baseline shape), then file, whose server also serves the throughput phase.
        throughput_on = "file" if "file" in args.providers else args.providers[-1]
        for provider in sorted(args.providers, key=lambda p: p != "http"):
            # "sync": the server's own Traefik polls (http); the probes go through a second Traefik fed by
            # `openpods routes-sync` (the chart's default shape).
            srv = start_server(integration, factory, engine, proxy_provider="http" if provider == "sync" else provider)
            synced: SyncedTraefik | None = None
            try:
                bench = ProxyBench(srv)
                if provider == "sync":
                    synced = SyncedTraefik(srv, tmp)
                    bench.https_port = synced.https_port
                    bench.ssl_context = ssl.create_default_context(cafile=str(synced.ca_file))
                out[provider] = phase_route_latency(args, engine, bench, provider)
                if provider == throughput_on and not args.skip_throughput:
                    out["load"] = phase_throughput(args, srv, bench, out[provider]["pods"][0], tmp)
                for pod_id in out[provider]["pods"]:
                    bench.http.delete(f"/v3/pods/{pod_id}")
                deadline = time.perf_counter() + 60
                while bench.http.get("/v3/pods").json()["result"] and time.perf_counter() < deadline:
                    time.sleep(0.2)  # the next server starts on a quiet engine
            finally:
                if synced is not None:
                    synced.stop()
                srv.stop()  # one server per engine at a time; also: one per process (shared config cache)
    return out


# ------------------------------------------------------------------------------------------ phase 3


def _stanzas(i: int, pod_id: str, domain: str) -> dict[str, Any]:
    """The mix of bench/bench_traefik_render.py: http default; some auth, CORS, allow lists, a TCP stanza."""
    default: dict[str, Any] = {"protocol": "http", "port": 5000, "url": f"{pod_id}.{domain}"}
    if i % 3 == 0:
        default |= {
            "tapis_auth": True,
            "tapis_auth_response_headers": {"X-Username": "<<tapisusername>>"},
            "tapis_auth_allowed_users": ["*"],
        }
    if i % 5 == 0:
        default |= {
            "cors_allow_origins": ["https://ui.example.org"],
            "cors_allow_methods": ["GET", "POST"],
            "cors_max_age": 100,
        }
    if i % 7 == 0:
        default["ip_allow_list"] = ["10.0.0.0/8", "2001:db8::/32"]
    stanzas = {"default": default}
    if i % 4 == 0:
        stanzas["bolt"] = {"protocol": "tcp", "port": 7687, "url": f"{pod_id}-bolt.{domain}"}
    return stanzas


def insert_pods(srv: Any, count: int) -> None:
    from sqlalchemy import insert

    from openpods.store.tables import Pod

    tenant = srv.default_tenant
    domain = srv.settings.pods_domain(tenant)
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    rows = []
    for i in range(count):
        pod_id = f"cfg{i:05d}"
        stanzas = _stanzas(i, pod_id, domain)
        ts = base + timedelta(seconds=i)
        rows.append(
            {
                "tenant_id": tenant,
                "pod_id": pod_id,
                "image": IMAGE,
                "template": "",
                "description": "",
                "command": None,
                "arguments": None,
                "environment_variables": {},
                "status_requested": "ON",
                "volume_mounts": {},
                "time_to_stop_default": 43200,
                "time_to_stop_instance": None,
                "networking": stanzas,
                "resources": {},
                "compute_queue": "default",
                "modified_fields": [],
                "status": "AVAILABLE",
                "status_container": {},
                "status_since": ts,
                "instance_id": f"i{i}",
                "host_ports": {k: 20000 + (i * 2 + n) % 40000 for n, k in enumerate(stanzas)},
                "routes": stanzas,
                "proxy_errors": [],
                "time_to_stop_ts": None,
                "start_instance_ts": ts,
                "creation_ts": ts,
                "update_ts": ts,
                "revision": 1,
            }
        )
    with srv.ctx.sessions() as s, s.begin():
        for start in range(0, len(rows), 1000):
            s.execute(insert(Pod), rows[start : start + 1000])


def change_one_pod(srv: Any, i: int) -> None:
    """A change that matters to the proxy (a restarted pod gets a new host port), committed through the ORM
    like any controller write."""
    from openpods.store.tables import Pod

    with srv.ctx.sessions() as s, s.begin():
        pod = s.get(Pod, (srv.default_tenant, f"cfg{i:05d}"))
        pod.host_ports = {k: 10000 + (p + 7) % 50000 for k, p in pod.host_ports.items()}
        pod.update_ts = datetime.now(UTC).replace(tzinfo=None)


def old_full_render(srv: Any) -> float:
    """Baseline: what every change cost before (and still would without the route table): read every routed
    row, render every pod, ``json.dumps`` the result."""
    import json

    from sqlalchemy import select

    from openpods.domain.traefik_config import PodRoutes, render_dynamic_config
    from openpods.services.proxy import render_settings
    from openpods.store.tables import Pod

    started = time.perf_counter()
    with srv.ctx.sessions() as s:
        rows = s.execute(
            select(Pod.tenant_id, Pod.pod_id, Pod.routes, Pod.host_ports)
            .where(Pod.status == "AVAILABLE", Pod.status_requested == "ON")
            .order_by(Pod.creation_ts, Pod.tenant_id, Pod.pod_id)
        ).all()
    routes = [
        PodRoutes(
            t,
            p,
            r,
            {k: v.get("url", "") for k, v in r.items()},
            {k: f"127.0.0.1:{port}" for k, port in hp.items()},
        )
        for t, p, r, hp in rows
    ]
    result = render_dynamic_config(routes, render_settings(srv.settings, srv.ctx.proxy_secret))
    json.dumps(result.config, separators=(",", ":")).encode()
    return time.perf_counter() - started


def _api_probe_worker(base_url: str, headers: dict[str, str], seconds: float) -> list[tuple[float, float]]:
    """A client process: back-to-back ``GET /v3/pods/<id>`` for ``seconds``; (wall time, latency) pairs."""
    out: list[tuple[float, float]] = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0, trust_env=False) as client:
        end = time.time() + seconds
        while time.time() < end:
            t = time.perf_counter()
            client.get("/v3/pods/cfg00001").raise_for_status()
            out.append((time.time(), time.perf_counter() - t))
    return out


def _change_watcher(base_url: str, secret: str, etag: str, deadline_sec: float) -> float:
    """A client process: poll ``/traefik-config`` with If-None-Match (304 while unchanged) every 2 ms; the wall
    time of the first 200, i.e. of a new config being served."""
    headers = {SECRET_HEADER: secret, "If-None-Match": etag}
    with httpx.Client(base_url=base_url, timeout=30.0, trust_env=False) as client:
        end = time.time() + deadline_sec
        while time.time() < end:
            if client.get("/traefik-config", headers=headers).status_code == 200:
                return time.time()
            time.sleep(0.002)
    raise RuntimeError("a change never reached /traefik-config")


def control_run(srv: Any, base_url: str, headers: dict[str, str], changes: int) -> list[float]:
    """``GET /v3/pods/<id>`` latencies while the same kind of commits happen but the route table does nothing
    (its sync replaced by a no-op): the API's own noise on this machine and database, for comparison."""
    table = srv.ctx.proxy_config
    table.sync_once = lambda **_: False  # the server is closed right after this
    window = changes * 0.4 + 3.0
    mp = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=mp) as pool:
        pool.submit(time.sleep, 0).result()
        probing = pool.submit(_api_probe_worker, base_url, headers, window)
        time.sleep(0.5)
        start = time.time()
        for n in range(changes):
            change_one_pod(srv, 500 + n)
            time.sleep(0.4)
        end = time.time()
        samples = probing.result(window + 60)
    return [lat for ts, lat in samples if start <= ts <= end] or [float("nan")]


def phase_config(args: argparse.Namespace, tests_conftest: ModuleType, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backend in args.config_databases:
        factory = tests_conftest.ServerFactory(backend, tmp / f"config-{backend}")
        try:
            srv = factory(roles={"api"})  # no health loop: the rows have no containers behind them
            t0 = time.perf_counter()
            insert_pods(srv, args.config_pods)
            insert_seconds = time.perf_counter() - t0
            client = srv.client()
            headers = {SECRET_HEADER: srv.ctx.proxy_secret}
            table = srv.ctx.proxy_config

            # The inserted rows are seen by the periodic check (Core inserts wake nothing): wait for them.
            deadline = time.perf_counter() + 300
            while f"cfg{args.config_pods - 1:05d}".encode() not in (table.response() or (b"",))[0]:
                if time.perf_counter() > deadline:
                    raise RuntimeError("the route table never showed the inserted pods")
                time.sleep(0.05)

            from openpods.services.proxy import make_route_table

            fresh = make_route_table(srv.settings, srv.ctx.sessions, srv.ctx.proxy_secret)
            t = time.perf_counter()
            fresh.sync_once()
            build = time.perf_counter() - t  # what a (re)started process does once
            old = [old_full_render(srv) for _ in range(3)]

            def timed(
                extra: dict[str, str] | None = None,
                client: httpx.Client = client,
                headers: dict[str, str] = headers,
            ) -> tuple[float, httpx.Response]:
                t = time.perf_counter()
                response = client.get("/traefik-config", headers=headers | (extra or {}))
                return time.perf_counter() - t, response

            first_time, response = timed()
            body_bytes = len(response.content)
            config = response.json()
            routers = len(config.get("http", {}).get("routers", {})) + len(
                config.get("tcp", {}).get("routers", {})
            )
            cached = [timed()[0] for _ in range(args.config_repeats)]
            etag = response.headers["etag"]
            conditional = [timed({"If-None-Match": etag})[0] for _ in range(args.config_repeats)]

            # Clients run in other processes: the server's GIL is shared with nothing but the server.
            admin = srv.client("admin")
            base_url, admin_headers = str(admin.base_url), dict(admin.headers)
            window = 3.0 + args.config_changes * 0.5 + 10.0
            mp = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=mp) as pool:
                pool.submit(time.sleep, 0).result()  # both workers up before anything is timed
                pool.submit(time.sleep, 0).result()
                probing = pool.submit(_api_probe_worker, base_url, admin_headers, window)
                time.sleep(0.5)
                idle_from = time.time()
                time.sleep(3.0)
                idle_to = busy_from = time.time()
                changes: list[float] = []
                for n in range(args.config_changes):
                    published = table.response()
                    assert published is not None
                    watching = pool.submit(
                        _change_watcher, base_url, srv.ctx.proxy_secret, published[1], 30.0
                    )
                    time.sleep(0.3)  # the watcher is polling (304s) by now
                    committed = time.time()
                    change_one_pod(srv, 100 + n)
                    changes.append(watching.result(60) - committed)
                busy_to = time.time()
                samples = probing.result(window + 60)
            idle = [lat for ts, lat in samples if idle_from <= ts <= idle_to]
            busy = [lat for ts, lat in samples if busy_from <= ts <= busy_to]
            control = control_run(srv, base_url, admin_headers, args.config_changes)
            out[backend] = {
                "pods": args.config_pods,
                "insert": insert_seconds,
                "routers": routers,
                "bytes": body_bytes,
                "build": build,
                "old": statistics.median(old),
                "first": first_time,
                "cached": statistics.median(cached),
                "cached_p95": _pct(cached, 95),
                "conditional": statistics.median(conditional),
                "change": _summary(changes),
                "idle": _summary(idle),
                "busy": _summary(busy),
                "busy_p99": _pct(busy, 99),
                "idle_p99": _pct(idle, 99),
            }
            r = out[backend]
            c, i, b = r["change"], r["idle"], r["busy"]
            print(
                f"\n[3] route updates, {args.config_pods} pods, {backend}: {routers} routers, {body_bytes / 1e6:.1f} MB;"
                f" insert {insert_seconds:.1f} s"
            )
            print(
                f"    baseline: full render of every pod (each change, before) median {_ms(r['old'])}; "
                f"a restarted process builds the table once in {_ms(build)}"
            )
            print(
                f"    one change -> new config served by /traefik-config: median {_ms(c['median'])}, p95 "
                f"{_ms(c['p95'])}, max {_ms(c['max'])} ({args.config_changes} changes); ratio to the full render "
                f"{c['median'] / r['old']:.3f}; target <= 200 ms: {'met' if c['max'] <= 0.2 else 'NOT met'}"
            )
            print(
                f"    GET /traefik-config: first {_ms(first_time)}, cached median {_ms(r['cached'])} (p95 "
                f"{_ms(r['cached_p95'])}), If-None-Match (304) median {_ms(r['conditional'])}"
            )
            print(
                f"    GET /v3/pods/<id> back to back: idle median {_ms(i['median'])} / p99 {_ms(r['idle_p99'])} / "
                f"max {_ms(i['max'])} ({len(idle)} calls); while pods change: median {_ms(b['median'])} / p99 "
                f"{_ms(r['busy_p99'])} / max {_ms(b['max'])} ({len(busy)} calls); ratio max busy / max idle "
                f"{b['max'] / i['max']:.2f}; target max <= 50 ms: {'met' if b['max'] <= 0.05 else 'NOT met'}"
            )
            print(
                f"    control, the same commits with the route table idle: median {_ms(statistics.median(control))}"
                f" / p99 {_ms(_pct(control, 99))} / max {_ms(max(control))} ({len(control)} calls): what the"
                f" machine and database add without any route work"
            )
        finally:
            factory.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=10, help="pods for AVAILABLE -> URL (default 10)")
    parser.add_argument("--requests", type=int, default=4000, help="GETs per path and round (default 4000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes (default 4)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each in another order (default 4)")
    parser.add_argument(
        "--database",
        default="sqlite",
        choices=("sqlite", "postgres"),
        help="database of the server in phases 1-2 (default sqlite)",
    )
    parser.add_argument(
        "--config-pods", type=int, default=10000, help="pods for /traefik-config (default 10000)"
    )
    parser.add_argument("--config-repeats", type=int, default=20, help="timed cached calls (default 20)")
    parser.add_argument(
        "--config-databases",
        default="sqlite,postgres",
        help="comma list for phase 3 (default sqlite,postgres; PostgreSQL at 127.0.0.1:5432)",
    )
    parser.add_argument("--skip-containers", action="store_true", help="only phase 3")
    parser.add_argument("--skip-throughput", action="store_true", help="no phase 2")
    parser.add_argument(
        "--providers", default="file,http,sync",
        help="phase 1 route shapes (default file,http,sync): proxy_provider file or http, or sync (a Traefik "
             "fed by `openpods routes-sync`)"
    )
    parser.add_argument(
        "--config-changes", type=int, default=20, help="pod changes timed in phase 3 (default 20)"
    )
    args = parser.parse_args()
    args.config_databases = [b.strip() for b in args.config_databases.split(",") if b.strip()]
    args.providers = [b.strip() for b in args.providers.split(",") if b.strip()]

    tests_conftest = _load("openpods_bench_tests_conftest", REPO / "tests/conftest.py")
    integration = _load("openpods_bench_integration_conftest", REPO / "tests/integration/conftest.py")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="openpods-bench-proxy-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_containers:
            factory = tests_conftest.ServerFactory(args.database, tmp / "proxy")
            try:
                phase_routes_and_throughput(args, integration, factory, tmp)
            finally:
                with contextlib.suppress(Exception):
                    factory.close()
        phase_config(args, tests_conftest, tmp)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
