"""Starts and stops what a process runs, by role: the runtime and storage adapters, the spawner, the health
loop (with the log refresher and the snapshot scheduler), and the supervised Traefik."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from openpods.context import AppContext

log = logging.getLogger(__name__)


@dataclass
class Controllers:
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Any]] = field(default_factory=list)
    health: Any = None
    spawner: Any = None
    scheduler: Any = None

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                result = close()
                if asyncio.iscoroutine(result):
                    await result


def setup_storage(ctx: AppContext) -> None:
    from openpods.storage import loopfs
    from openpods.storage.local import LocalStorage

    if ctx.storage is None:
        mode = ctx.settings.volume_size_enforcement
        problem = loopfs.unavailable() if mode != "api" else ""
        if ctx.settings.runtime == "kubernetes" and mode != "api":
            # A loop mount made in this process's mount namespace is invisible to the kubelet, which would
            # mount the empty directory below it into pods: on Kubernetes the storage class enforces sizes.
            problem = "the kubernetes runtime mounts volumes from the shared claim, not from this process"
        if mode == "loop" and problem:
            raise SystemExit(f"volume_size_enforcement = loop is not possible here: {problem}")
        if mode == "auto" and problem:
            log.warning("volumes are plain directories: a pod can write past a volume's size_limit (only API "
                        "uploads are checked), because %s", problem)
        ctx.storage = LocalStorage(ctx.settings.data_dir / "storage", loop_volumes=mode != "api" and not problem)
    # Volume filesystems are mounted again before any pod can start (after a reboot, or a crash).
    mount_all = getattr(ctx.storage, "mount_volume_images", None)
    if mount_all is not None and loopfs.unavailable() == "":
        for problem in mount_all():
            log.error("%s", problem)


async def setup_runtime(ctx: AppContext, controllers: Controllers) -> None:
    """Connects to a Docker Engine API (Docker or Podman); starts `podman system service` when allowed and
    needed. Without an engine the service still runs and says why pods wait."""
    settings = ctx.settings
    if ctx.runtime is not None or settings.runtime == "none":
        if ctx.runtime is None:
            ctx.runtime_problem = "This site runs without a container runtime (runtime = none)."
        return
    if settings.runtime == "kubernetes":
        await setup_kubernetes_runtime(ctx, controllers)
        return
    from openpods.runtimes import engine
    from openpods.runtimes.docker import DockerRuntime

    url = await asyncio.to_thread(engine.find_engine_socket, settings.docker_host or None)
    if url is None and settings.start_podman_service and engine.podman_installed():
        sock = settings.data_dir / "run" / "podman.sock"
        try:
            proc = await asyncio.to_thread(engine.start_podman_service, sock, settings.data_dir / "run" /
                                           "containers.conf", default_ulimits=settings.default_ulimits)
            url = engine.socket_url(str(sock))
            if proc is not None:
                log.info("started podman system service on %s", url)
        except engine.EngineStartError as exc:
            log.error("could not start podman: %s", exc)
    if url is None:
        ctx.runtime_problem = engine.install_hint()
        log.error("%s", ctx.runtime_problem)
        return
    from openpods.domain.container_spec import parse_ulimit

    ctx.runtime = DockerRuntime(url, default_ulimits=[parse_ulimit(u) for u in settings.default_ulimits],
                                events=settings.engine_events, relist_sec=settings.engine_relist_sec,
                                events_lag_sec=settings.engine_events_lag_sec)
    controllers.closers.append(ctx.runtime.close)
    try:
        ctx.gpus_supported = await ctx.runtime.supports_gpus()
    except Exception:  # an engine that cannot answer now is asked again on the next start
        ctx.gpus_supported = False
    log.info("container engine: %s", url)


def kubernetes_runtime(ctx: AppContext) -> Any:
    """The KubernetesRuntime the ``kubernetes_*`` settings describe. Volumes: the claim (or NFS export) is
    mounted at <data_dir> in the OpenPods pods, so a volume's directory <data_dir>/storage/… is the sub-path
    storage/… of the claim, which is what each pod mounts."""
    from openpods.domain.k8s_manifests import KubeOptions
    from openpods.runtimes.kubernetes import KubernetesRuntime

    s = ctx.settings
    options = KubeOptions(
        namespace=s.kubernetes_namespace, run_as_non_root=s.kubernetes_run_as_non_root,
        run_as_user=s.kubernetes_run_as_user, storage_root=str(s.data_dir), storage_prefix="storage",
        storage_pvc=s.kubernetes_storage_pvc, storage_nfs_server=s.kubernetes_storage_nfs_server,
        storage_nfs_path=s.kubernetes_storage_nfs_path, proxy_pod_labels=dict(s.kubernetes_proxy_pod_labels),
        proxy_namespace=s.kubernetes_proxy_namespace,
        gpu_resource=s.kubernetes_gpu_resource, image_pull_policy=s.kubernetes_image_pull_policy,
        runtime_class_name=s.kubernetes_runtime_class,
    )
    return KubernetesRuntime(s.kubernetes_api_url or None, options=options, installation_id=ctx.installation_id,
                             kubeconfig=s.kubernetes_kubeconfig, context=s.kubernetes_context,
                             gpus=s.kubernetes_gpus, start_wait_sec=s.kubernetes_start_wait_sec)


async def setup_kubernetes_runtime(ctx: AppContext, controllers: Controllers) -> None:
    runtime = kubernetes_runtime(ctx)
    ctx.runtime = runtime
    controllers.closers.append(runtime.close)
    ctx.gpus_supported = await runtime.supports_gpus()
    if not await runtime.ping():  # pods wait in REQUESTED; operations retry until the API answers
        log.error("the Kubernetes API does not answer (namespace %s); pods wait until it does",
                  ctx.settings.kubernetes_namespace)
    log.info("container runtime: Kubernetes, namespace %s", ctx.settings.kubernetes_namespace)


async def wake_health_on_changes(ctx: AppContext, *, debounce_sec: float = 0.2) -> None:
    """With a runtime that can watch its containers (Kubernetes; Docker/Podman with ``engine_events``), wake the
    health loop when one changes, so a
    finished or failed pod is seen at once instead of at the next interval. Wake-ups only: the loop still
    lists (level-triggered), so a lost event costs at most one interval."""
    from openpods.bus.base import HEALTH, Wakeup

    changed = asyncio.Event()

    async def publisher() -> None:
        while True:
            await changed.wait()
            await asyncio.sleep(debounce_sec)  # one wake-up for a burst of events
            changed.clear()
            ctx.bus.publish(Wakeup(HEALTH))

    task = asyncio.create_task(publisher())
    try:
        await ctx.runtime.watch_managed(changed.set)
    finally:
        task.cancel()


async def start_proxy(ctx: AppContext, controllers: Controllers) -> None:
    """Runs Traefik as a supervised child process (restarted if it dies, stopped with us)."""
    from openpods.proxy.traefik import TraefikError, TraefikSupervisor
    from openpods.services.proxy import routes_file, traefik_settings

    path = routes_file(ctx.settings, ctx.proxy_secret)
    if ctx.settings.proxy_provider == "file":
        # Push: the route table writes every change into Traefik's watched directory. Written once before
        # Traefik starts, so it never comes up with the routes of a previous run.
        ctx.proxy_config.file_path = path
        await asyncio.to_thread(ctx.proxy_config.sync_once, force=True)
    else:
        with contextlib.suppress(FileNotFoundError):  # left by a file-provider run: would route stale ports
            path.unlink()
    supervisor = TraefikSupervisor(traefik_settings(ctx.settings, ctx.proxy_secret))
    try:
        await supervisor.start()
    except (TraefikError, OSError) as exc:
        log.error("Traefik could not start; pods will have no URLs until it does: %s", exc)
        return
    controllers.closers.append(supervisor.stop)
    log.info("Traefik on :%s (HTTP) and :%s (HTTPS/TLS)", ctx.settings.proxy_http_port,
             ctx.settings.proxy_https_port)


async def storage_housekeeping(ctx: AppContext) -> None:
    """On start and then periodically: remove the temporary files of uploads that a killed process left (in
    volumes, and the spool of uploads into pods)."""
    from openpods.storage import spool

    while True:
        try:
            removed = await asyncio.to_thread(ctx.storage.clean_upload_leftovers)
            removed += await asyncio.to_thread(spool.remove_stale, spool.spool_dir(ctx.settings.data_dir))
            if removed:
                log.info("removed %d temporary upload files left by interrupted uploads", removed)
        except Exception:
            log.exception("storage housekeeping failed; retrying later")
        await asyncio.sleep(ctx.settings.storage_housekeeping_interval_sec)


async def start_controllers(ctx: AppContext, roles: Iterable[str]) -> Controllers:
    roles = set(roles)
    controllers = Controllers()
    ctx.loop = asyncio.get_running_loop()
    setup_storage(ctx)
    if roles & {"api", "health"}:
        controllers.tasks.append(asyncio.create_task(storage_housekeeping(ctx), name="storage-housekeeping"))
    if roles & {"api", "spawner", "health"}:
        await setup_runtime(ctx, controllers)
    if "proxy" in roles and ctx.settings.proxy_enabled:
        await start_proxy(ctx, controllers)
    if ctx.proxy_config is not None and ("api" in roles or ctx.proxy_config.file_path is not None):
        # Keeps the routes up to date off the request path (served by /traefik-config, pushed to the file).
        controllers.tasks.append(asyncio.create_task(
            ctx.proxy_config.run(ctx.settings.proxy_sync_interval_sec), name="proxy-routes"))
    if "spawner" in roles:
        from openpods.controllers.spawner import Spawner

        controllers.spawner = Spawner(ctx)
        controllers.tasks.append(asyncio.create_task(controllers.spawner.run(), name="spawner"))
    if "health" in roles:
        from openpods.controllers.leader import LeaseTimes, run_as_leader

        # Singletons: with several health processes only the leader runs them (see controllers/leader.py).
        times = LeaseTimes(ctx.settings.leader_lease_sec, ctx.settings.leader_renew_sec,
                           ctx.settings.leader_retry_sec)
        controllers.tasks.append(asyncio.create_task(
            run_as_leader(ctx.engine, "health", lambda: _start_singletons(ctx, controllers), times),
            name="health-leader"))
    return controllers


def _start_singletons(ctx: AppContext, controllers: Controllers) -> list[asyncio.Task[None]]:
    """The health loop, the log refresher and the snapshot scheduler (two schedulers would copy the same
    scheduled run at once)."""
    from openpods.controllers.health import Health, LogRefresher
    from openpods.controllers.snapshots import SnapshotScheduler

    controllers.health = Health(ctx)
    refresher = LogRefresher(ctx, controllers.health)
    controllers.scheduler = SnapshotScheduler(ctx)
    tasks = [asyncio.create_task(controllers.health.run(), name="health"),
             asyncio.create_task(refresher.run(), name="log-refresher"),
             asyncio.create_task(controllers.scheduler.run(), name="snapshots")]
    if ctx.runtime is not None and hasattr(ctx.runtime, "watch_managed"):
        tasks.append(asyncio.create_task(wake_health_on_changes(ctx), name="runtime-watch"))
    return tasks
