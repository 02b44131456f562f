"""Benchmark: pod URLs through the whole stack (OpenPods + the Traefik it supervises + real containers).

Run: ``.venv/bin/python bench/bench_proxy.py [--pods 10] [--requests 4000] [--clients 4]``

Loopback only, bounded in time (every wait has a deadline; a full run takes about a minute and a half). It
starts a private Podman API service (``isolated_podman`` of ``tests/integration/conftest.py``: own storage,
own bridge network, the busybox test images) and real OpenPods servers in threads (``ServerFactory`` of
``tests/conftest.py``), and measures:

1. **AVAILABLE → URL answering**: ``--pods`` pods are created one after the other; for each, the time from its
   ``status_since`` as it turned ``AVAILABLE`` (stamped by the health loop) to the first 200 from
   ``https://<pod>.pods.localhost:<port>/`` through Traefik (polled every 10 ms). Median, p95, max.
2. **Throughput and latency through Traefik vs. directly**: the same busybox HTTP pod, ``--requests`` GETs of
   ``/`` split over ``--clients`` processes (one keep-alive httpx client each, so the load generator is not
   bound by one GIL), once via HTTPS through Traefik (TLS verified against OpenPods' CA) and once via plain
   HTTP to the pod's published port; ``--rounds`` alternating rounds. Requests/s, p50/p95/p99 latency, ratio.
3. **/traefik-config for ``--config-pods`` pods**: rows inserted straight into a fresh database (a realistic
   mix of stanzas), then the endpoint timed over HTTP: the first call (query + render + JSON), cached calls
   (nothing changed) and calls right after one pod changed (re-render), for each of ``--config-databases``.
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

    def url_answers(self, client: httpx.Client, pod_id: str) -> bool:
        host = self.host(pod_id)
        try:
            response = client.get(
                f"https://127.0.0.1:{self.https_port}/",
                headers={"Host": host},
                extensions={"sni_hostname": host},
                timeout=2.0,
            )
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def available_to_url(self, pod_id: str) -> float:
        """Creates a pod and returns seconds from its AVAILABLE timestamp to the first 200 via Traefik."""
        body = {
            "pod_id": pod_id,
            "image": IMAGE,
            "networking": {"default": {"protocol": "http", "port": 5000}},
            "resources": {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128},
        }
        r = self.http.post("/v3/pods", json=body)
        r.raise_for_status()
        deadline = time.monotonic() + POD_DEADLINE_SEC
        while True:
            status, since, _ = self.status(pod_id)
            if status == "AVAILABLE":
                break
            if status in ("ERROR", "COMPLETE") or time.monotonic() > deadline:
                raise RuntimeError(f"pod {pod_id} is {status}, not AVAILABLE")
            time.sleep(0.01)
        available_at = since.replace(tzinfo=UTC).timestamp()
        deadline = time.monotonic() + ROUTE_DEADLINE_SEC
        # A new connection per probe (Traefik picks the router per request, but keep it like a new browser).
        while True:
            with httpx.Client(verify=self.ssl_context, trust_env=False) as client:
                if self.url_answers(client, pod_id):
                    return time.time() - available_at
            if time.monotonic() > deadline:
                raise RuntimeError(f"pod {pod_id}: URL did not answer within {ROUTE_DEADLINE_SEC}s")
            time.sleep(0.01)


def phase_routes_and_throughput(
    args: argparse.Namespace, integration: ModuleType, factory: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with integration.isolated_podman() as engine:
        http_port, https_port = _free_port(), _free_port()
        srv = factory(
            **integration.container_settings(
                engine,
                roles={"api", "spawner", "health", "proxy"},
                proxy_enabled=True,
                proxy_http_port=http_port,
                proxy_https_port=https_port,
                proxy_bind_host="127.0.0.1",
            )
        )
        try:
            srv.allow_image(IMAGE.rsplit(":", 1)[0])
            srv.add_user("alice")
            bench = ProxyBench(srv)
            with socket.create_connection(("127.0.0.1", https_port), timeout=5):
                pass  # Traefik is up (OpenPods only logs when it is not)

            print(f"\n[1] AVAILABLE -> URL answering, {args.pods} pods (one after the other)")
            times: list[float] = []
            pods: list[str] = []
            for i in range(args.pods):
                pod_id = f"bench{i}{int(time.time() * 1000) % 100000}"
                pods.append(pod_id)
                seconds = bench.available_to_url(pod_id)
                times.append(seconds)
                print(f"    {pod_id}: {_ms(seconds)}")
            out["route"] = {
                "n": len(times),
                "median": statistics.median(times),
                "p95": _pct(times, 95),
                "min": min(times),
                "max": max(times),
            }
            r = out["route"]
            print(
                f"    median {_ms(r['median'])}, p95 {_ms(r['p95'])}, min {_ms(r['min'])}, max {_ms(r['max'])}"
            )

            target = pods[0]
            _, _, ports = bench.status(target)
            direct_url = f"http://127.0.0.1:{ports['default']}/"
            traefik_url = f"https://127.0.0.1:{https_port}/"
            print(
                f"\n[2] {args.requests} GETs x {args.rounds} rounds, {args.clients} client processes: "
                f"Traefik (HTTPS) vs. the published port (HTTP)"
            )
            ctx = multiprocessing.get_context("spawn")
            results: dict[str, list[dict[str, Any]]] = {"traefik": [], "direct": []}
            with concurrent.futures.ProcessPoolExecutor(max_workers=args.clients, mp_context=ctx) as pool:
                for round_no in range(args.rounds):
                    for kind in ("traefik", "direct"):
                        if kind == "traefik":
                            res = run_load(
                                pool,
                                args.clients,
                                args.requests,
                                traefik_url,
                                bench.host(target),
                                str(bench.ca_file),
                            )
                        else:
                            res = run_load(pool, args.clients, args.requests, direct_url, None, None)
                        results[kind].append(res)
                        print(
                            f"    round {round_no + 1} {kind:8s}: {res['rps']:8.0f} req/s  p50 {_ms(res['p50'])}"
                            f"  p95 {_ms(res['p95'])}  p99 {_ms(res['p99'])}  errors {res['errors']}"
                        )
            summary = {}
            for kind, rounds in results.items():
                summary[kind] = {
                    "rps": statistics.median(r["rps"] for r in rounds),
                    "p50": statistics.median(r["p50"] for r in rounds),
                    "p95": statistics.median(r["p95"] for r in rounds),
                    "p99": statistics.median(r["p99"] for r in rounds),
                    "errors": sum(r["errors"] for r in rounds),
                    "requests": sum(r["requests"] for r in rounds),
                }
            out["load"] = summary
            t, d = summary["traefik"], summary["direct"]
            print(
                f"    median over rounds: Traefik {t['rps']:.0f} req/s (p50 {_ms(t['p50'])}), direct "
                f"{d['rps']:.0f} req/s (p50 {_ms(d['p50'])}); throughput ratio Traefik/direct "
                f"{t['rps'] / d['rps']:.2f}, p50 latency ratio {t['p50'] / d['p50']:.2f}"
            )
        finally:
            srv.stop()  # before the engine goes; also: one server per process at a time (shared config cache)
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


def touch_one_pod(srv: Any, i: int) -> None:
    from openpods.store.tables import Pod

    with srv.ctx.sessions() as s, s.begin():
        pod = s.get(Pod, (srv.default_tenant, f"cfg{i:05d}"))
        pod.description = f"changed {time.time()}"
        pod.update_ts = datetime.now(UTC).replace(tzinfo=None)


def api_latency_during_render(srv: Any, render: Any, repeats: int) -> tuple[list[float], list[float]]:
    """Latency of an ordinary API call (GET one pod) when idle, and while /traefik-config re-renders after a
    change (the render runs in the API process: does it slow everything else down?)."""
    client = srv.client("admin")

    def one() -> float:
        t = time.perf_counter()
        client.get("/v3/pods/cfg00001").raise_for_status()
        return time.perf_counter() - t

    idle = [one() for _ in range(repeats)]
    busy: list[float] = []
    for n in range(3):
        touch_one_pod(srv, 100 + n)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(render)
            time.sleep(0.05)
            while not future.done():
                busy.append(one())
            future.result()
    return idle, busy or [float("nan")]


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

            def timed(
                client: httpx.Client = client, headers: dict[str, str] = headers
            ) -> tuple[float, httpx.Response]:
                t = time.perf_counter()
                response = client.get("/traefik-config", headers=headers)
                elapsed = time.perf_counter() - t
                response.raise_for_status()
                return elapsed, response

            first, response = timed()
            config = response.json()
            routers = len(config.get("http", {}).get("routers", {})) + len(
                config.get("tcp", {}).get("routers", {})
            )
            cached = [timed()[0] for _ in range(args.config_repeats)]
            changed = []
            for n in range(max(3, args.config_repeats // 4)):
                touch_one_pod(srv, n)
                changed.append(timed()[0])
            api_idle, api_busy = api_latency_during_render(srv, lambda: timed()[0], args.config_repeats)
            empty_factory_srv = factory(roles={"api"})  # baseline: the same endpoint with no pods
            empty_client = empty_factory_srv.client()
            base = []
            for _ in range(args.config_repeats):
                t = time.perf_counter()
                empty_client.get(
                    "/traefik-config", headers={SECRET_HEADER: empty_factory_srv.ctx.proxy_secret}
                )
                base.append(time.perf_counter() - t)
            out[backend] = {
                "pods": args.config_pods,
                "insert": insert_seconds,
                "first": first,
                "cached": statistics.median(cached),
                "cached_p95": _pct(cached, 95),
                "changed": statistics.median(changed),
                "empty": statistics.median(base),
                "bytes": len(response.content),
                "routers": routers,
                "api_idle": api_idle,
                "api_busy": api_busy,
            }
            r = out[backend]
            print(
                f"\n[3] /traefik-config, {args.config_pods} pods, {backend}: {routers} routers, "
                f"{r['bytes'] / 1e6:.1f} MB; first {_ms(r['first'])}, cached median {_ms(r['cached'])} "
                f"(p95 {_ms(r['cached_p95'])}), after one pod changed {_ms(r['changed'])}; empty DB "
                f"{_ms(r['empty'])}; insert {r['insert']:.1f} s"
            )
            print(
                f"    GET /v3/pods/<id> (another API call) idle: median {_ms(statistics.median(api_idle))}; "
                f"while /traefik-config re-renders: median {_ms(statistics.median(api_busy))}, "
                f"max {_ms(max(api_busy))}"
            )
        finally:
            factory.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=10, help="pods for AVAILABLE -> URL (default 10)")
    parser.add_argument("--requests", type=int, default=4000, help="GETs per path and round (default 4000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
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
    args = parser.parse_args()
    args.config_databases = [b.strip() for b in args.config_databases.split(",") if b.strip()]

    tests_conftest = _load("openpods_bench_tests_conftest", REPO / "tests/conftest.py")
    integration = _load("openpods_bench_integration_conftest", REPO / "tests/integration/conftest.py")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="openpods-bench-proxy-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_containers:
            factory = tests_conftest.ServerFactory(args.database, tmp / "proxy")
            try:
                phase_routes_and_throughput(args, integration, factory)
            finally:
                with contextlib.suppress(Exception):
                    factory.close()
        phase_config(args, tests_conftest, tmp)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
