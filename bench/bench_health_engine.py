"""The health pass at 2,000 pods against REAL Podman: a list of every container per pass (the baseline, the
behaviour before ``engine_events``) vs. the cache that the engine's event stream keeps up to date.

Setup: a private ``podman system service`` (own storage, own event log; ``isolated_podman`` of
tests/integration/conftest.py, which also builds the busybox test images) with ``--containers`` managed
containers of this bench's installation, and one pod row per container (SQLite by default). Starting 2,000
busybox containers is too heavy for a 2-core machine, and Podman lists created-but-not-started containers just
like running ones (the list cost is per container, whatever its state), so most containers are *created*
(pods in CREATING, with a deadline far away) and ``--running`` of them run (pods AVAILABLE). Every container is
labelled ``openpods.bench=health-engine`` and removed at exit (also on Ctrl-C / SIGTERM), with the engine.

Per mode (``list``: DockerRuntime(events=False); ``events``: DockerRuntime(events=True)), ``--rounds`` times:
  idle        a pass with nothing changed since the previous one
  +k          a pass after k containers changed behind OpenPods' back (``--changes``: half of them running
              containers killed, half of them created containers removed); k pods are decided and written.
              In ``events`` mode the pass starts once the k changes' events have arrived (Podman polls its event
              log about 4 times a second), so both modes see the same k changes; the cache inspects changed
              containers in the background as their events come, so most of those inspects are not in the pass
              (those still pending are).
Between rounds, untimed passes settle what the +k pass wrote. Printed: median / max per case, engine calls per
pass, the ratio list/events, and met / NOT met against the target (one pass <= 200 ms at 2,000 pods).

Run: .venv/bin/python bench/bench_health_engine.py [--containers 2000] [--running 60] [--changes 10]
         [--rounds 6] [--database URL] [--docker-host URL]
(``--docker-host``: an existing engine instead of a private one; only this bench's containers are touched.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from types import FrameType

import docker
import docker.constants
import docker.errors
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from openpods.bootstrap import build_context  # noqa: E402
from openpods.config import Settings  # noqa: E402
from openpods.controllers.health import Health, PassStats  # noqa: E402
from openpods.domain import status as st  # noqa: E402
from openpods.domain.container_spec import (  # noqa: E402
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_POD_ID,
    LABEL_TENANT,
    MANAGED_VALUE,
    container_name,
)
from openpods.runtimes.docker import DockerRuntime  # noqa: E402
from openpods.store import repo  # noqa: E402
from openpods.store.db import transaction  # noqa: E402
from openpods.store.tables import Pod  # noqa: E402
from support.module_loading import load_module  # noqa: E402

IMAGE = "localhost/openpods-test/busybox:latest"
BENCH_LABEL = "openpods.bench"
BENCH_VALUE = "health-engine"
TARGET_SEC = 0.200
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def client(url: str) -> docker.APIClient:
    probe = docker.APIClient(base_url=url, version=docker.constants.MINIMUM_DOCKER_API_VERSION)
    try:
        version = probe.get(f"{probe.base_url}/_ping", timeout=10).headers.get("Api-Version") or "auto"
    finally:
        probe.close()
    return docker.APIClient(base_url=url, version=version, timeout=300, max_pool_size=8)


def remove_bench_containers(api: docker.APIClient) -> int:
    ids = [c["Id"] for c in api.containers(all=True, filters={"label": f"{BENCH_LABEL}={BENCH_VALUE}"})]

    def rm(cid: str) -> None:
        with contextlib.suppress(docker.errors.APIError):
            api.remove_container(cid, force=True, v=True)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(rm, ids))
    return len(ids)


class Bench:
    def __init__(self, args: argparse.Namespace, url: str, tmp: Path) -> None:
        self.args, self.url = args, url
        database_url = args.database or f"sqlite:///{tmp}/openpods.db"
        self.ctx = build_context(Settings(
            data_dir=tmp, database_url=database_url, runtime="none", proxy_enabled=False,
            import_starter_catalog=False, health_full_pass_every=10**9, stuck_deadline_sec=10**7))
        self.api = client(url)
        self.names: list[str] = []
        self.running: list[str] = []
        self.created: list[str] = []

    def name(self, i: int) -> str:
        return container_name("default", f"hp{i:05d}", self.ctx.installation_id)

    def create_containers(self) -> None:
        n, r = self.args.containers, self.args.running
        t0 = time.monotonic()

        def make(i: int) -> None:
            labels = {LABEL_TENANT: "default", LABEL_POD_ID: f"hp{i:05d}", LABEL_INSTANCE: f"i{i}",
                      LABEL_INSTALLATION: self.ctx.installation_id, LABEL_MANAGED: MANAGED_VALUE,
                      BENCH_LABEL: BENCH_VALUE}
            self.api.create_container(IMAGE, name=self.name(i), command=SLEEPER, labels=labels,
                                      host_config=self.api.create_host_config(network_mode="none"))
            if i < r:
                self.api.start(self.name(i))

        with ThreadPoolExecutor(4) as pool:
            for done, _ in enumerate(pool.map(make, range(n)), 1):
                if done % 250 == 0:
                    log(f"{done}/{n} containers ({time.monotonic() - t0:.0f} s)")
        log(f"created {n} containers in {time.monotonic() - t0:.0f} s")
        self.names = [self.name(i) for i in range(n)]
        self.running, self.created = self.names[:r], self.names[r:]

    def seed(self) -> None:
        since = repo.utcnow() - timedelta(hours=1)
        with transaction(self.ctx.sessions) as s:
            for i in range(self.args.containers):
                pod_id = f"hp{i:05d}"
                running = i < self.args.running
                s.add(Pod(tenant_id="default", pod_id=pod_id, image=IMAGE, environment_variables={},
                          resources={"cpu_limit": 2000, "mem_limit": 3072},
                          networking={"default": {"protocol": "http", "port": 5000,
                                                  "url": f"{pod_id}.pods.localhost"}},
                          status=st.AVAILABLE if running else st.CREATING, status_requested=st.ON,
                          status_since=since, instance_id=f"i{i}", start_instance_ts=since if running else None,
                          time_to_stop_default=-1, creation_ts=since, update_ts=since,
                          status_container={"phase": "Running" if running else "Pending",
                                            "start_time": since.isoformat(), "message": ""}))
        if self.ctx.engine.dialect.name == "postgresql":
            with self.ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))

    async def settle(self, health: Health) -> None:
        """Untimed passes until one changes nothing, then past the list lag (recently changed pods are observed
        rather than trusted to the cache: that is part of the +k pass that follows, not of an idle pass)."""
        for _ in range(5):
            if (await health.pass_once(full=False)).changes == 0:
                break
        lag = getattr(self.ctx.runtime, "list_lag_sec", 0.0)
        if lag:
            await asyncio.sleep(lag + 0.2)
            await health.pass_once(full=False)

    def wait_for_engine(self, killed: list[str], removed: list[str]) -> None:
        """Until the engine itself reports the changes (a kill returns before the container is seen exited)."""
        deadline = time.monotonic() + 30
        for name in killed:
            while (self.api.inspect_container(name)["State"]["Status"] != "exited"
                   and time.monotonic() < deadline):
                time.sleep(0.02)
        for name in removed:
            while time.monotonic() < deadline:
                try:
                    self.api.inspect_container(name)
                except docker.errors.NotFound:
                    break
                time.sleep(0.02)

    async def wait_for_events(self, runtime: DockerRuntime, killed: list[str], removed: list[str]) -> None:
        """Until the cache has the changes' events: marked, or already inspected in the background."""
        cache = runtime.event_cache
        if cache is None:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            dirty = set(cache.cache.dirty())
            states = {c.name: c.state for c in cache.cache.snapshot()}
            if (all(n in dirty or states.get(n) == "exited" for n in killed)
                    and all(n in dirty or n not in states for n in removed)):
                return
            await asyncio.sleep(0.02)
        log("the cache did not see every change within 30 s")

    async def run_mode(self, events: bool) -> dict[str, list[PassStats]]:
        runtime = DockerRuntime(self.url, events=events, relist_sec=600)
        self.ctx.runtime = runtime
        try:
            if runtime.event_cache is not None:
                await runtime.list_managed()
                while not runtime.event_cache.fresh:
                    await asyncio.sleep(0.05)
            health = Health(self.ctx)
            await health.pass_once(full=True)  # warm up: reads every row
            await self.settle(health)
            out: dict[str, list[PassStats]] = {"idle": [], f"+{self.args.changes}": []}
            half = self.args.changes // 2
            for _ in range(self.args.rounds):
                out["idle"].append(await health.pass_once(full=False))
                kill, self.running = self.running[:half], self.running[half:]
                gone, self.created = self.created[:self.args.changes - half], self.created[self.args.changes - half:]
                for name in kill:
                    self.api.kill(name)
                for name in gone:
                    self.api.remove_container(name, force=True)
                await asyncio.to_thread(self.wait_for_engine, kill, gone)
                await self.wait_for_events(runtime, kill, gone)
                out[f"+{self.args.changes}"].append(await health.pass_once(full=False))
                await self.settle(health)
            return out
        finally:
            self.ctx.runtime = None
            await runtime.close()


def summary(passes: list[PassStats]) -> tuple[float, float]:
    return statistics.median(s.seconds for s in passes), max(s.seconds for s in passes)


@contextlib.contextmanager
def engine(args: argparse.Namespace) -> Iterator[str]:
    if args.docker_host:
        yield args.docker_host
        return
    integration = load_module("openpods_integration_conftest", REPO / "tests/integration/conftest.py")
    log("starting a private Podman service and building the test images")
    with integration.isolated_podman() as eng:
        yield eng.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=2000)
    parser.add_argument("--running", type=int, default=60, help="how many of them run (the rest are created)")
    parser.add_argument("--changes", type=int, default=10, help="containers changed before each +k pass")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--database", default="", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument("--docker-host", default="", help="use this engine instead of a private Podman")
    args = parser.parse_args()
    half = args.changes // 2
    # Each mode changes its own containers: 2 x rounds x changes in all.
    if 2 * half * args.rounds > args.running or 2 * (args.changes - half) * args.rounds > args.containers - args.running:
        parser.error("not enough containers for --rounds x --changes (raise --running)")

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, dict[str, list[PassStats]]] = {}
    with tempfile.TemporaryDirectory() as tmp, engine(args) as url:
        bench = Bench(args, url, Path(tmp))
        try:
            log(f"creating {args.containers} containers ({args.running} running) on {url}")
            bench.create_containers()
            bench.seed()
            for mode, events in (("list", False), ("events", True)):
                log(f"mode {mode}")
                results[mode] = asyncio.run(bench.run_mode(events))
        finally:
            log(f"removing {len(bench.names) or 'the'} bench containers")
            removed = remove_bench_containers(bench.api)
            log(f"removed {removed}")
            bench.api.close()
            bench.ctx.engine.dispose()
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, dict[str, list[PassStats]]]) -> None:
    db = "PostgreSQL" if args.database.startswith("postgresql") else "SQLite"
    print(f"Health pass, {args.containers} pods/containers ({args.running} running, the rest created), real Podman, "
          f"{db}; median / max of {args.rounds} passes")
    print(f"{'case':<10} {'mode':<7} {'median ms':>9} {'max ms':>8} {'engine calls':>12} {'decided':>7} "
          f"{'changes':>7} {'list/events':>11}")
    verdicts = []
    for case in results["list"]:
        base_med, _ = summary(results["list"][case])
        for mode in ("list", "events"):
            passes = results[mode][case]
            med, worst = summary(passes)
            ratio = f"{base_med / med:>10.1f}x" if mode == "events" else f"{'':>11}"
            print(f"{case:<10} {mode:<7} {med * 1000:>9.1f} {worst * 1000:>8.1f} "
                  f"{statistics.median(s.engine_calls for s in passes):>12.0f} "
                  f"{statistics.median(s.decided for s in passes):>7.0f} "
                  f"{statistics.median(s.changes for s in passes):>7.0f} {ratio}")
            if mode == "events":
                verdicts.append((case, worst))
    for case, worst in verdicts:
        verdict = "met" if worst <= TARGET_SEC else "NOT met"
        print(f"target: one pass <= 200 ms at {args.containers} pods ({case}, events, max {worst * 1000:.0f} ms): "
              f"{verdict}")


if __name__ == "__main__":
    main()
