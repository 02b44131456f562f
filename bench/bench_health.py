"""The health pass at 2,000 pods: incremental passes vs. a full pass (what every pass did before), same run.

The database rows are synthetic (2,000 AVAILABLE pods with running containers, SQLite by default) and the
engine is a fake at the runtime boundary whose list call returns 2,000 containers instantly, so the numbers are
OpenPods' own cost per pass: reading the pods table, diffing, deciding, writing. (A real engine's list call
comes on top: Podman's costs ~1.2 ms per container, see bench_pods.py.)

Cases, each ``--passes`` times (median and max):
  full              every pod row read and every pod decided (``pass_once(full=True)``; the baseline)
  incremental       nothing changed since the previous pass (the idle case)
  incremental+k     k containers vanished since the previous pass (k pods decided, k rows written)

Run: .venv/bin/python bench/bench_health.py [--pods 2000] [--passes 15] [--changes 20] [--database URL]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from openpods.bootstrap import build_context
from openpods.config import Settings
from openpods.controllers.health import Health, PassStats
from openpods.domain import status as st
from openpods.domain.container_spec import (
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
    MANAGED_VALUE,
    container_name,
)
from openpods.runtimes.base import ContainerState
from openpods.store import repo
from openpods.store.db import transaction
from openpods.store.tables import Pod


class ListOnlyRuntime:
    """The engine boundary: the list call returns ``containers``; removals just drop them."""

    def __init__(self) -> None:
        self.containers: dict[str, ContainerState] = {}

    async def list_managed(self) -> list[ContainerState]:
        return list(self.containers.values())

    async def remove(self, name: str, timeout_sec: float = 10) -> None:
        self.containers.pop(name, None)

    async def logs(self, name: str, max_bytes: int) -> str:
        return ""

    async def prune_networks(self, installation_id: str, keep: Any) -> list[str]:
        return []  # once-a-minute housekeeping, not what a pass costs


def seed(ctx: Any, runtime: ListOnlyRuntime, n: int) -> None:
    since = repo.utcnow() - timedelta(hours=1)
    with transaction(ctx.sessions) as s:
        for i in range(n):
            pod_id = f"hp{i:05d}"
            s.add(Pod(tenant_id="default", pod_id=pod_id, image="localhost/openpods-test/http:latest",
                      environment_variables={"A": "b"}, resources={"cpu_limit": 2000, "mem_limit": 3072},
                      networking={"default": {"protocol": "http", "port": 5000, "url": f"{pod_id}.pods.localhost"}},
                      status=st.AVAILABLE, status_requested=st.ON, status_since=since, instance_id=f"i{i}",
                      start_instance_ts=since, time_to_stop_default=-1, creation_ts=since, update_ts=since,
                      status_container={"phase": "Running", "start_time": since.isoformat(),
                                        "message": "Container is running."}))
            labels = {LABEL_TENANT: "default", LABEL_POD_ID: pod_id, LABEL_INSTANCE: f"i{i}",
                      LABEL_INSTALLATION: ctx.installation_id, LABEL_MANAGED: MANAGED_VALUE}
            name = container_name("default", pod_id, ctx.installation_id)
            runtime.containers[name] = ContainerState(name=name, labels=labels, state="running",
                                                      message="Up 1 hour")


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, list[PassStats]]:
    database_url = args.database or f"sqlite:///{tmp}/openpods.db"
    ctx = build_context(Settings(data_dir=tmp, database_url=database_url, runtime="none", proxy_enabled=False,
                                 import_starter_catalog=False, health_full_pass_every=10**9))
    runtime = ListOnlyRuntime()
    ctx.runtime = runtime
    seed(ctx, runtime, args.pods)
    if ctx.engine.dialect.name == "postgresql":  # planner statistics, as autovacuum keeps them
        with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    health = Health(ctx)
    await health.pass_once(full=True)  # warm up: the first pass reads everything
    results: dict[str, list[PassStats]] = {"full": [], "incremental": [], f"incremental+{args.changes}": []}
    rng = random.Random(1)
    for _ in range(args.passes):
        results["full"].append(await health.pass_once(full=True))
        await health.pass_once(full=False)  # reads the rows the full pass wrote (pods of the previous round)
        results["incremental"].append(await health.pass_once(full=False))
        for name in rng.sample(sorted(runtime.containers), min(args.changes, len(runtime.containers))):
            del runtime.containers[name]
        results[f"incremental+{args.changes}"].append(await health.pass_once(full=False))
    ctx.engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--changes", type=int, default=20, help="containers that vanish before a pass")
    parser.add_argument("--database", default="", help="database URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    db = "PostgreSQL" if args.database.startswith("postgresql") else "SQLite"
    base = statistics.median(s.seconds for s in results["full"])
    print(f"Health pass, {args.pods} pods with running containers ({db}, fake engine list; median / max of "
          f"{args.passes} passes)")
    print(f"{'case':<16} {'median ms':>9} {'max ms':>7} {'rows read':>9} {'decided':>7} {'changes':>7} "
          f"{'vs full':>7}")
    for name, passes in results.items():
        med = statistics.median(s.seconds for s in passes)
        print(f"{name:<16} {med * 1000:>9.1f} {max(s.seconds for s in passes) * 1000:>7.1f} "
              f"{statistics.median(s.loaded for s in passes):>9.0f} {statistics.median(s.decided for s in passes):>7.0f} "
              f"{statistics.median(s.changes for s in passes):>7.0f} {med / base:>7.2f}")
    print("target: one pass <= 200 ms at 2,000 pods")


if __name__ == "__main__":
    main()
