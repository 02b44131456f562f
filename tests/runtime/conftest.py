"""Fixtures for runtime tests against a REAL container engine.

Engine
------
``engine_url`` (session): ``$DOCKER_HOST`` when it is set (it must answer, else the tests fail), otherwise a
Podman API service started for this session by ``scripts/setup-podman.sh`` under a temporary directory (and
stopped at the end). Without ``DOCKER_HOST`` and without Podman the engine tests are skipped with the install
hint, unless ``OPENPODS_TEST_REQUIRE_ENGINE=1`` (CI), which turns that into a failure.

Images
------
``test_images`` (session) runs ``scripts/build-test-images.sh`` once (fast when the images exist; serialized
between pytest-xdist workers with a file lock). Against a real Docker engine the images are built with the
``docker`` CLI instead of ``podman``.

Containers
----------
``runtime`` (session) is a :class:`DockerRuntime` on the engine. ``tenant`` is a per-session random tenant id
with a hyphen (tenant ids may contain hyphens); ``make_spec(image_name, ...)`` builds specs for that tenant with
a fresh pod id and instance id. Every container of the session's tenant is removed at the end of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.constants
import pytest

from openpods.domain.container_spec import LABEL_TENANT, ContainerSpec, Ulimit, build_container_spec
from openpods.runtimes.docker import DockerRuntime
from openpods.runtimes.engine import install_hint, ping_engine

REPO = Path(__file__).resolve().parents[2]
IMAGE_PREFIX = "localhost/openpods-test"
TEST_ULIMITS = (Ulimit("nofile", 20000, 20000), Ulimit("nproc", 32768, 32768))


def image(name: str) -> str:
    return f"{IMAGE_PREFIX}/{name}:latest"


def _no_engine(reason: str) -> None:
    if os.environ.get("OPENPODS_TEST_REQUIRE_ENGINE", "") not in ("", "0", "false"):
        pytest.fail(f"{reason}\n{install_hint()}")
    pytest.skip(f"{reason} ({install_hint()})")


@pytest.fixture(scope="session")
def engine_url() -> Iterator[str]:
    url = os.environ.get("DOCKER_HOST", "").strip()
    if url:
        if url.startswith("unix://") and not ping_engine(url, timeout_sec=5):
            pytest.fail(f"DOCKER_HOST={url} does not answer GET /_ping")
        yield url
        return
    if shutil.which("podman") is None:
        _no_engine("no DOCKER_HOST and Podman is not installed")
    # A short path: AF_UNIX socket paths are limited to 107 bytes.
    workdir = tempfile.mkdtemp(prefix="openpods-podman-", dir="/tmp")
    env = {**os.environ, "OPENPODS_PODMAN_DIR": workdir}
    proc = subprocess.run(
        [str(REPO / "scripts/setup-podman.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/setup-podman.sh failed:\n{proc.stderr}")
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in proc.stdout.splitlines()
        if line.startswith("export ")
    )
    os.environ.setdefault("CONTAINERS_CONF", exports["CONTAINERS_CONF"])
    try:
        yield exports["DOCKER_HOST"]
    finally:
        pid_file = Path(workdir) / "podman-service.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)


def _ping_headers(url: str) -> dict[str, str]:
    api = docker.APIClient(base_url=url, version=docker.constants.MINIMUM_DOCKER_API_VERSION)
    try:
        res = api.get(f"{api.base_url}/_ping", timeout=10)
        res.raise_for_status()
        return dict(res.headers)
    finally:
        api.close()


def plain_client(url: str) -> docker.APIClient:
    """docker-py's low-level client, without version="auto" (Podman's /version takes most of a second)."""
    version = _ping_headers(url).get("Api-Version") or "auto"
    return docker.APIClient(base_url=url, version=version)


@pytest.fixture(scope="session")
def engine_is_podman(engine_url: str) -> bool:
    return "Libpod-Api-Version" in _ping_headers(engine_url)


@pytest.fixture(scope="session")
def test_images(engine_url: str, engine_is_podman: bool) -> None:
    env = {**os.environ, "DOCKER_HOST": engine_url}
    if not engine_is_podman:
        env["OPENPODS_IMAGE_BUILDER"] = "docker"
    lock_path = Path(tempfile.gettempdir()) / "openpods-test-images.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(
            [str(REPO / "scripts/build-test-images.sh")], env=env, capture_output=True, text=True, timeout=600
        )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-test-images.sh failed:\n{proc.stderr}")


@pytest.fixture(scope="session")
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def runtime(engine_url: str, test_images: None, tenant: str) -> Iterator[DockerRuntime]:
    rt = DockerRuntime(engine_url, default_ulimits=TEST_ULIMITS, pull_missing=True)
    try:
        yield rt
    finally:
        api = plain_client(engine_url)
        try:
            for c in api.containers(all=True, filters={"label": f"{LABEL_TENANT}={tenant}"}):
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_container(c["Id"], force=True, v=True)
            # The private networks of the session's pods (made by ensure_running, one per container).
            for n in api.networks(filters={"label": f"{LABEL_TENANT}={tenant}"}):
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_network(n["Id"])
        finally:
            api.close()
        asyncio.run(rt.close())


@pytest.fixture(scope="session")
def raw_api(engine_url: str) -> Iterator[docker.APIClient]:
    """A plain docker-py client for checks behind the runtime's back."""
    api = plain_client(engine_url)
    yield api
    api.close()


def new_pod_id() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_spec(tenant: str) -> Callable[..., ContainerSpec]:
    def _make(
        image_name: str,
        *,
        pod_id: str | None = None,
        instance_id: str | None = None,
        command: list[str] | None = None,
        arguments: list[str] | None = None,
        env: dict[str, str] | None = None,
        networking: dict[str, dict[str, Any]] | None = None,
        resources: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> ContainerSpec:
        return build_container_spec(
            tenant_id=tenant,
            pod_id=pod_id or new_pod_id(),
            instance_id=instance_id or uuid.uuid4().hex,
            image=image_name if "/" in image_name else image(image_name),
            command=command,
            arguments=arguments,
            env=env or {},
            networking=networking or {},
            resources=resources
            or {"cpu_request": 250, "cpu_limit": 1000, "mem_request": 64, "mem_limit": 256, "gpus": 0},
            **kwargs,
        )

    return _make
