"""Benchmark: render the Traefik dynamic config for 1,000 and 10,000 pods.

Run: ``.venv/bin/python bench/bench_traefik_render.py [--runs 7]``

Prints, per size, the median render time, the median time of ``json.dumps`` of the same *input* (the
baseline: the least work any renderer must do is look at every field once) and their ratio, plus the time to
serialise the rendered config (what the ``/traefik-config`` endpoint added on top before the route table).

Then what one change costs with the route table (``services.proxy.RouteTable``, on a SQLite database of the
same pods): re-rendering the one changed pod and assembling the body from the cached fragments, against the
full render + ``json.dumps`` (the baseline: what every change cost before), as a ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from openpods.domain.traefik_config import PodRoutes, ProxyRenderSettings, render_dynamic_config

SETTINGS = ProxyRenderSettings(
    forward_auth_url="http://127.0.0.1:8000/v3/pods/{pod_id_net}/auth?tenant={tenant_id}",
    https_redirect_port=8443,
)


def make_pods(count: int) -> list[PodRoutes]:
    """A realistic mix: every pod has an http ``default``; some have auth, CORS, allow lists, extra stanzas."""
    pods = []
    for i in range(count):
        pod_id = f"pod{i}"
        default: dict[str, Any] = {"protocol": "http", "port": 5000}
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
        stanzas: dict[str, Any] = {"default": default}
        if i % 4 == 0:
            stanzas["bolt"] = {"protocol": "tcp", "port": 7687}
        if i % 10 == 0:
            stanzas["db"] = {"protocol": "postgres", "port": 5432}
        if i % 11 == 0:
            stanzas["internal"] = {"protocol": "local_only", "port": 9000}
        hostnames = {
            k: f"{pod_id}.pods.localhost" if k == "default" else f"{pod_id}-{k}.pods.localhost"
            for k in stanzas
        }
        backends = {k: f"127.0.0.1:{10000 + (i * 4 + n) % 50000}" for n, k in enumerate(stanzas)}
        pods.append(PodRoutes(("tacc", "dev", "a2cps")[i % 3], pod_id, stanzas, hostnames, backends))
    return pods


def median_time(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median is reported)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000, 10_000], help="numbers of pods")
    args = parser.parse_args()

    print(
        f"{'pods':>7} {'stanzas':>8} {'render ms':>10} {'baseline ms':>12} {'ratio':>6} {'dumps out ms':>13}"
    )
    for size in args.sizes:
        pods = make_pods(size)
        plain = [asdict(p) for p in pods]
        stanzas = sum(len(p.stanzas) for p in pods)
        result = render_dynamic_config(pods, SETTINGS)
        assert not result.errors, result.errors
        render_s = median_time(lambda pods=pods: render_dynamic_config(pods, SETTINGS), args.runs)
        base_s = median_time(lambda plain=plain: json.dumps(plain), args.runs)
        out_s = median_time(lambda cfg=result.config: json.dumps(cfg), args.runs)
        print(
            f"{size:>7} {stanzas:>8} {render_s * 1000:>10.1f} {base_s * 1000:>12.1f} "
            f"{render_s / base_s:>6.2f} {out_s * 1000:>13.1f}"
        )
    print(f"\n{'pods':>7} {'full render+dumps ms':>21} {'one change ms':>14} {'ratio':>7}")
    for size in args.sizes:
        full_s, change_s = incremental(size, args.runs)
        print(f"{size:>7} {full_s * 1000:>21.1f} {change_s * 1000:>14.2f} {change_s / full_s:>7.3f}")


def incremental(size: int, runs: int) -> tuple[float, float]:
    """(full render + json.dumps, one pod's change through the route table), medians in seconds."""
    import tempfile
    from datetime import datetime, timedelta
    from pathlib import Path

    from sqlalchemy import insert

    from openpods.bootstrap import build_context
    from openpods.config import Settings
    from openpods.services.proxy import make_route_table
    from openpods.store.tables import Pod

    pods = make_pods(size)
    with tempfile.TemporaryDirectory(prefix="openpods-bench-render-") as tmp:
        ctx = build_context(
            Settings(data_dir=Path(tmp), runtime="none", proxy_enabled=False, import_starter_catalog=False)
        )
        base = datetime(2026, 1, 1)
        rows = []
        for i, pod in enumerate(pods):
            routes = {k: {**v, "url": pod.hostnames[k]} for k, v in pod.stanzas.items()}
            ts = base + timedelta(seconds=i)
            rows.append(
                {
                    "tenant_id": pod.tenant_id,
                    "pod_id": pod.pod_id,
                    "image": "img",
                    "status": "AVAILABLE",
                    "status_requested": "ON",
                    "status_since": ts,
                    "creation_ts": ts,
                    "update_ts": ts,
                    "networking": routes,
                    "routes": routes,
                    "revision": 1,
                    "host_ports": {k: int(v.rsplit(":", 1)[1]) for k, v in pod.backends.items()},
                }
            )
        with ctx.sessions() as s, s.begin():
            s.execute(insert(Pod), rows)
        table = make_route_table(ctx.settings, ctx.sessions, ctx.proxy_secret)
        table.sync_once()
        full_s = median_time(lambda: json.dumps(render_dynamic_config(pods, SETTINGS).config), runs)
        times = []
        for n in range(runs):
            pod = pods[(n * 37) % size]
            with ctx.sessions() as s, s.begin():
                row = s.get(Pod, (pod.tenant_id, pod.pod_id))
                row.host_ports = {k: p + 1 for k, p in row.host_ports.items()}
            start = time.perf_counter()
            assert table.sync_once(keys=[(pod.tenant_id, pod.pod_id)])
            times.append(time.perf_counter() - start)
        ctx.engine.dispose()
    return full_s, statistics.median(times)


if __name__ == "__main__":
    main()
