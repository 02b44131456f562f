"""API overhead: OpenPods endpoints vs. a bare FastAPI endpoint returning the same body, in the same run.

Both servers are uvicorn processes of their own on loopback (so the load generator, this process, does not
share a GIL with either). The bare server is a FastAPI app whose ``async def`` routes return the exact bytes
OpenPods answered for the same URL (fetched once at the start). Cases:

  health          GET /healthcheck (no token)
  get_pod         GET /v3/pods/<id>: token + permission check + one row (the site admin's token)
  list_pods       GET /v3/pods with 1,000 pods in the database (site admin: every pod of the tenant)
  list_pods_user  the same list for an ordinary user who holds READ on each of the 1,000 pods

Each case runs ``--rounds`` times, bare and OpenPods alternating (the order flips every round, so a change in
the machine's load hits both); the ratio is OpenPods / bare throughput, the median of the rounds' ratios (the
issue's target for get_pod and list_pods: >= 0.3). Also printed: each server's CPU time per request (from
/proc), whose ratio depends less on what else the machine is doing. Bounded: fixed durations / requests.

The load generator is wrk (one thread) when installed, else an httpx client in this process (which is slower
than the servers it measures, so it compresses the ratios towards 1).

Run: .venv/bin/python bench/bench_api.py [--rounds 5] [--seconds 2] [--concurrency 8] [--database URL]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

TARGETS = {"get_pod": 0.3, "list_pods": 0.3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_for(data_dir: Path, database_url: str) -> Any:
    from openpods.config import Settings

    return Settings(data_dir=data_dir, database_url=database_url, admin_password="bench", runtime="none",
                    proxy_enabled=False, import_starter_catalog=False)


def run_openpods(data_dir: str, database_url: str, port: int) -> None:
    import uvicorn

    from openpods.api.app import create_app
    from openpods.bootstrap import build_context

    ctx = build_context(settings_for(Path(data_dir), database_url), migrate=False)
    uvicorn.run(create_app(ctx), host="127.0.0.1", port=port, log_level="error", access_log=False)


def run_bare(bodies: dict[str, bytes], port: int) -> None:
    import uvicorn
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.get("/healthcheck")
    async def healthcheck() -> Response:
        return Response(bodies["health"], media_type="application/json")

    @app.get("/v3/pods")
    async def list_pods() -> Response:
        return Response(bodies["list_pods"], media_type="application/json")

    @app.get("/v3/pods/{pod_id}")
    async def get_pod(pod_id: str) -> Response:
        return Response(bodies["get_pod"], media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def start(target: Any, *args: Any) -> mp.process.BaseProcess:
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def wait_up(url: str, deadline_sec: float = 60) -> None:
    deadline = time.monotonic() + deadline_sec
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {deadline_sec}s")


def seed(ctx: Any, n: int) -> None:
    """``n`` pods (ids bench00000…) owned by admin; ``benchuser`` holds READ on each."""
    from openpods.store import repo
    from openpods.store.db import transaction
    from openpods.store.tables import Permission, Pod

    now = repo.utcnow()
    with transaction(ctx.sessions) as s:
        for i in range(n):
            pod_id = f"bench{i:05d}"
            s.add(Pod(tenant_id="default", pod_id=pod_id, image="localhost/openpods-test/http:latest",
                      description=f"benchmark pod {i}", environment_variables={"GREETING": "hello", "N": str(i)},
                      networking={"default": {"protocol": "http", "port": 5000, "url": f"{pod_id}.pods.localhost"}},
                      resources={"cpu_request": 250, "cpu_limit": 2000, "mem_request": 256, "mem_limit": 3072},
                      volume_mounts={}, status="STOPPED", status_since=now, creation_ts=now, update_ts=now,
                      status_requested="OFF"))
            s.add(Permission(object_type="pod", tenant_id="default", object_id=pod_id, username="admin",
                             level="ADMIN"))
            s.add(Permission(object_type="pod", tenant_id="default", object_id=pod_id, username="benchuser",
                             level="READ"))


async def measure(url: str, headers: dict[str, str], requests: int, concurrency: int) -> tuple[float, float]:
    """(requests/s, median latency in ms)."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client.get(url) for _ in range(concurrency)))  # warm up every connection
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                r = await client.get(url)
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return requests / elapsed, statistics.median(latencies) * 1000


def measure_wrk(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> tuple[float, float]:
    """(requests/s, median latency in ms) from wrk (one thread: a C load generator costs the servers far less
    CPU than Python clients on a 2-core machine)."""
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "30s"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses: \d+", out):
        raise RuntimeError(f"wrk saw errors from {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return rps, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1500, help="per round for health/get_pod; lists: 1/15")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--database", default="", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto",
                        help="load generator: wrk (apt-get install wrk) when installed, else httpx in this process")
    parser.add_argument("--seconds", type=float, default=2, help="per measurement, with wrk")
    args = parser.parse_args()

    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    from openpods.bootstrap import build_context, ensure_admin

    with tempfile.TemporaryDirectory() as tmp:
        database_url = args.database or f"sqlite:///{tmp}/openpods.db"
        ctx = build_context(settings_for(Path(tmp), database_url))
        ensure_admin(ctx, announce=False)
        seed(ctx, args.pods)
        if ctx.engine.dialect.name == "postgresql":  # planner statistics, as autovacuum keeps them
            with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
        admin = {"X-Tapis-Token": ctx.tokens.issue("default", "admin", ttl_sec=3600)["access_token"]}
        user = {"X-Tapis-Token": ctx.tokens.issue("default", "benchuser", ttl_sec=3600)["access_token"]}
        ctx.engine.dispose()

        op_port, bare_port = free_port(), free_port()
        procs = [start(run_openpods, tmp, database_url, op_port)]
        try:
            op = f"http://127.0.0.1:{op_port}"
            wait_up(op + "/healthcheck")
            cases = [("health", "/healthcheck", {}), ("get_pod", "/v3/pods/bench00042", admin),
                     ("list_pods", "/v3/pods", admin), ("list_pods_user", "/v3/pods", user)]
            bodies: dict[str, bytes] = {}
            for name, path, headers in cases:
                r = httpx.get(op + path, headers=headers, timeout=60)
                r.raise_for_status()
                bodies[name] = r.content
            assert bodies["list_pods"] == bodies["list_pods_user"], "both users see the same 1,000 pods"
            procs.append(start(run_bare, bodies, bare_port))
            bare = f"http://127.0.0.1:{bare_port}"
            wait_up(bare + "/healthcheck")

            pids = {"bare": procs[1].pid, "openpods": procs[0].pid}
            # Per round and side: (requests/s, median ms, server CPU microseconds per request).
            results: dict[str, dict[str, list[tuple[float, float, float]]]] = {
                n: {"bare": [], "openpods": []} for n, _, _ in cases}
            for rnd in range(args.rounds):
                for name, path, headers in cases:
                    n = args.requests if not name.startswith("list") else max(40, args.requests // 15)
                    order = [("bare", bare), ("openpods", op)]
                    for side, base in order if rnd % 2 == 0 else order[::-1]:
                        if client == "wrk":
                            # Warm the connections' path first (first requests of a list render it).
                            asyncio.run(measure(base + path, headers, args.concurrency, args.concurrency))
                        cpu0 = cpu_seconds(pids[side])
                        if client == "wrk":
                            rps, med = measure_wrk(base + path, headers, args.seconds, args.concurrency)
                            count = rps * max(1, round(args.seconds))
                        else:
                            rps, med = asyncio.run(measure(base + path, headers, n, args.concurrency))
                            count = n
                        cpu_us = (cpu_seconds(pids[side]) - cpu0) / count * 1e6
                        results[name][side].append((rps, med, cpu_us))
        finally:
            for proc in procs:
                proc.terminate()
                proc.join(10)

    db = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
    print(f"API vs. a bare FastAPI endpoint returning the same body ({db}, {args.pods} pods, client {client}, "
          f"concurrency {args.concurrency}, {args.rounds} rounds; body sizes: get_pod {len(bodies['get_pod'])} B, "
          f"list_pods {len(bodies['list_pods']) // 1024} KiB)")
    print("ratio = OpenPods / bare throughput, median over rounds of each round's ratio (the machine's load "
          "changes between rounds, less so within one); cpu = server CPU per request")
    print(f"{'case':<15} {'bare req/s':>10} {'OpenPods req/s':>14} {'bare cpu us':>11} {'OpenPods cpu us':>15} "
          f"{'cpu ratio':>9} {'ratio':>6} {'target':>12}")
    for name, sides in results.items():
        b, o = sides["bare"], sides["openpods"]
        ratio = statistics.median(ob[0] / bb[0] for ob, bb in zip(o, b, strict=True))
        b_cpu, o_cpu = statistics.median(x[2] for x in b), statistics.median(x[2] for x in o)
        target = TARGETS.get(name.removesuffix("_user"))
        verdict = "" if target is None else (f">= {target}" + (" met" if ratio >= target else " MISSED"))
        print(f"{name:<15} {statistics.median(x[0] for x in b):>10.0f} {statistics.median(x[0] for x in o):>14.0f} "
              f"{b_cpu:>11.0f} {o_cpu:>15.0f} {b_cpu / o_cpu:>9.2f} {ratio:>6.2f} {verdict:>12}")


if __name__ == "__main__":
    main()
