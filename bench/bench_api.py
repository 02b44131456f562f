"""API overhead: OpenPods endpoints vs. a bare ASGI endpoint, both served by uvicorn on loopback in this run.

Prints requests/second and latency (median, p95) for:
  bare      a minimal ASGI app answering a fixed JSON body (the baseline)
  health    GET /healthcheck (no token)
  get_pod   GET /v3/pods/<id> (token verification + permission check + one row)
  list_pods GET /v3/pods with 1,000 pods in the database (SQLite)
and each one's ratio to the baseline. Bounded: a fixed number of requests per case.

Run: .venv/bin/python bench/bench_api.py [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from openpods.api.app import create_app
from openpods.bootstrap import build_context, ensure_admin
from openpods.config import Settings
from openpods.store import repo
from openpods.store.db import transaction
from openpods.store.tables import Permission, Pod


async def bare_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"result":"","status":"success"}'})


def serve(app, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


async def measure(url: str, headers: dict[str, str], requests: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        await client.get(url)  # warm up
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                r = await client.get(url)
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return requests / elapsed, latencies


def seed_pods(ctx, n: int) -> None:
    now = repo.utcnow()
    with transaction(ctx.sessions) as s:
        for i in range(n):
            pod_id = f"bench{i:05d}"
            s.add(Pod(tenant_id="default", pod_id=pod_id, image="localhost/x", networking={"default": {
                "protocol": "http", "port": 5000, "url": f"{pod_id}.pods.localhost"}}, resources={},
                status="STOPPED", status_since=now, creation_ts=now, update_ts=now, status_requested="OFF"))
            s.add(Permission(object_type="pod", tenant_id="default", object_id=pod_id, username="admin",
                             level="ADMIN"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pods", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), admin_password="bench", port=18765, runtime="none",
                            proxy_enabled=False, import_starter_catalog=False)
        ctx = build_context(settings)
        ensure_admin(ctx, announce=False)
        seed_pods(ctx, args.pods)
        serve(bare_app, 18764)
        serve(create_app(ctx), 18765)
        token = ctx.tokens.issue("default", "admin")["access_token"]
        auth = {"X-Tapis-Token": token}
        cases = [
            ("bare", "http://127.0.0.1:18764/", {}),
            ("health", "http://127.0.0.1:18765/healthcheck", {}),
            ("get_pod", "http://127.0.0.1:18765/v3/pods/bench00042", auth),
            ("list_pods", "http://127.0.0.1:18765/v3/pods", auth),
        ]
        results = {}
        for name, url, headers in cases:
            n = args.requests if name != "list_pods" else max(50, args.requests // 20)
            rps, lat = asyncio.run(measure(url, headers, n, args.concurrency))
            lat.sort()
            results[name] = (rps, statistics.median(lat) * 1000, lat[int(len(lat) * 0.95) - 1] * 1000, n)
        base = results["bare"][0]
        print(f"{'case':<10} {'requests':>8} {'req/s':>9} {'median ms':>10} {'p95 ms':>8} {'x slower than bare':>19}")
        for name, (rps, med, p95, n) in results.items():
            print(f"{name:<10} {n:>8} {rps:>9.0f} {med:>10.2f} {p95:>8.2f} {base / rps:>19.1f}")
        print(f"(list_pods lists {args.pods} pods; concurrency {args.concurrency}; SQLite)")


if __name__ == "__main__":
    main()
