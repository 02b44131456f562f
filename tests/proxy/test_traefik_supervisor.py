"""Static config generation and TraefikSupervisor (with a real Traefik process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from openpods.domain.traefik_config import PodRoutes, render_dynamic_config
from openpods.proxy.tls import ensure_tls_material
from openpods.proxy.traefik import (
    SECRET_HEADER,
    AcmeSettings,
    TraefikError,
    TraefikSettings,
    TraefikSupervisor,
    find_traefik_binary,
    proxy_render_settings,
    render_static_config,
    render_tls_file_config,
    traefik_paths,
    write_config,
)

from .conftest import SECRET, FakeApi, HttpBackend, LoopThread, start_proxy, stop_proxy, wait_until


def settings(tmp_path: Path, **kw: object) -> TraefikSettings:
    base: dict[str, object] = {"data_dir": tmp_path, "api_url": "http://127.0.0.1:8000", "secret": "s3cret"}
    base.update(kw)
    return TraefikSettings(**base)  # type: ignore[arg-type]


# --- static config (pure) ------------------------------------------------------------------------------


def test_static_config(tmp_path: Path) -> None:
    config = render_static_config(settings(tmp_path, http_port=8080, https_port=8443), ping_port=9999)
    alias = {"aliasHeadersStrategy": "delete"}
    assert config["entryPoints"] == {
        "web": {"address": ":8080", "http": alias},
        "websecure": {"address": ":8443", "http": alias},
        "ping": {"address": "127.0.0.1:9999", "http": alias},
    }
    assert config["ping"] == {"entryPoint": "ping"}
    assert "api" not in config  # no dashboard, no API
    providers = config["providers"]
    assert providers["providersThrottleDuration"] == "200ms"
    assert providers["http"] == {
        "endpoint": "http://127.0.0.1:8000/traefik-config",
        "pollInterval": "1s",
        "pollTimeout": "5s",
        "headers": {SECRET_HEADER: "s3cret"},
    }
    assert providers["file"] == {"directory": str(tmp_path / "traefik" / "dynamic"), "watch": True}
    assert "accessLog" not in config  # off by default: it costs about a third of the throughput
    assert config["log"]["level"] == "INFO"
    assert config["global"] == {"checkNewVersion": False, "sendAnonymousUsage": False}
    assert "certificatesResolvers" not in config


def test_static_config_access_log_is_opt_in_and_can_be_buffered(tmp_path: Path) -> None:
    log_file = str(tmp_path / "traefik" / "access.log")
    on = render_static_config(settings(tmp_path, access_log=True), ping_port=1)
    assert on["accessLog"] == {"filePath": log_file}
    buffered = render_static_config(settings(tmp_path, access_log=True, access_log_buffer=500), ping_port=1)
    assert buffered["accessLog"] == {"filePath": log_file, "bufferingSize": 500}
    with pytest.raises(ValueError):
        settings(tmp_path, access_log_buffer=-1)


def test_static_config_file_provider_has_no_poll(tmp_path: Path) -> None:
    """provider=file: routes are pushed into the watched directory; Traefik polls nothing."""
    config = render_static_config(settings(tmp_path, provider="file"), ping_port=1)
    assert "http" not in config["providers"]
    assert config["providers"]["file"] == {"directory": str(tmp_path / "traefik" / "dynamic"), "watch": True}
    with pytest.raises(ValueError):
        settings(tmp_path, provider="kubernetes")


def test_static_config_bind_host_and_acme(tmp_path: Path) -> None:
    acme = AcmeSettings(email="ops@example.org", ca_server="https://acme.test/dir", resolver_name="le")
    config = render_static_config(
        settings(tmp_path, bind_host="::1", acme=acme, access_log=False, log_level="debug"), ping_port=1
    )
    assert config["entryPoints"]["web"]["address"] == "[::1]:8080"
    no_alias = render_static_config(settings(tmp_path, alias_headers_strategy=None), ping_port=1)
    assert "http" not in no_alias["entryPoints"]["web"]
    assert "accessLog" not in config
    assert config["log"]["level"] == "DEBUG"
    assert config["certificatesResolvers"] == {
        "le": {
            "acme": {
                "email": "ops@example.org",
                "storage": str(tmp_path / "traefik" / "acme.json"),
                "tlsChallenge": {},
                "caServer": "https://acme.test/dir",
            }
        }
    }
    render = proxy_render_settings(
        settings(tmp_path, acme=acme), forward_auth_url="http://127.0.0.1:8000/v3/pods/{pod_id_net}/auth"
    )
    assert render.cert_resolver == "le"
    assert render.https_redirect_port == 8443


@pytest.mark.parametrize(
    "kw",
    [
        {"http_port": 0},
        {"https_port": 70000},
        {"http_port": 9000, "https_port": 9000},
        {"api_url": "127.0.0.1:8000"},
        {"secret": ""},
        {"secret": "a\nb"},
        {"log_level": "LOUD"},
        {"alias_headers_strategy": "keep"},
        {"tls_cert_file": Path("/x.crt")},
    ],
)
def test_settings_validation(tmp_path: Path, kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        settings(tmp_path, **kw)


def test_write_config(tmp_path: Path) -> None:
    s = settings(tmp_path)
    material = ensure_tls_material(tmp_path / "tls")
    paths = write_config(s, material, ping_port=1234)
    static = yaml.safe_load(paths.static_config.read_text())
    assert static == render_static_config(s, ping_port=1234)
    assert stat.S_IMODE(paths.static_config.stat().st_mode) == 0o600  # holds the secret
    tls = yaml.safe_load(paths.tls_config.read_text())
    assert tls == render_tls_file_config(material)
    assert tls["tls"]["stores"]["default"]["defaultCertificate"] == {
        "certFile": str(material.cert_file),
        "keyFile": str(material.key_file),
    }
    assert material.fingerprint in paths.tls_config.read_text()
    # unchanged content is not rewritten (Traefik's file watcher would reload for nothing)
    before = paths.tls_config.stat().st_mtime_ns
    write_config(s, material, ping_port=1234)
    assert paths.tls_config.stat().st_mtime_ns == before


def test_find_traefik_binary() -> None:
    assert os.access(find_traefik_binary(), os.X_OK)


# --- supervisor with a real Traefik --------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi().start()
    yield fake
    fake.close()


def test_bad_binary_fails_cleanly(tmp_path: Path, api: FakeApi) -> None:
    loop = LoopThread()
    try:
        sup = TraefikSupervisor(settings(tmp_path, api_url=api.url, binary=str(tmp_path / "nope")))
        with pytest.raises(TraefikError):
            loop.run(sup.start())
        assert not sup.running
        loop.run(sup.stop())
    finally:
        loop.close()


def test_supervisor_restarts_killed_traefik_and_stops(tmp_path: Path, api: FakeApi) -> None:
    backend = HttpBackend("A")
    proxy = start_proxy(tmp_path, api)
    try:
        sup = proxy.supervisor
        render_settings = proxy_render_settings(
            proxy.settings, forward_auth_url=api.url + "/auth/{pod_id_net}"
        )
        api.config = render_dynamic_config(
            [
                PodRoutes(
                    "tacc",
                    "web",
                    {"default": {}},
                    {"default": "web.pods.localhost"},
                    {"default": backend.address},
                )
            ],
            render_settings,
        ).config
        wait_until(lambda: proxy.get("web.pods.localhost").status_code == 200, what="route")
        assert proxy.loop.run(sup.healthy())
        assert sup.restarts == 0
        first_pid = sup.pid
        assert first_pid is not None
        assert traefik_paths(proxy.settings).pid_file.read_text().strip() == str(first_pid)

        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: sup.restarts == 1 and sup.pid not in (None, first_pid), what="restart")
        assert proxy.loop.run(sup.healthy())
        wait_until(lambda: proxy.get("web.pods.localhost").status_code == 200, what="route after restart")
        assert api.bad_secret_polls == 0 and api.config_polls > 0
        second_pid = sup.pid
    finally:
        stop_proxy(proxy)
        backend.close()
    assert second_pid is not None
    assert not sup.running
    with pytest.raises(ProcessLookupError):
        os.kill(second_pid, 0)
    assert not traefik_paths(proxy.settings).pid_file.exists()


def test_stale_traefik_from_crashed_run_is_replaced(tmp_path: Path, api: FakeApi) -> None:
    old = start_proxy(tmp_path, api)
    old_pid = old.supervisor.pid
    assert old_pid is not None
    # Simulate a crash of the old supervisor: it stops supervising but its Traefik keeps running. Its loop
    # thread stays alive until the end: Traefik gets SIGTERM when the thread that started it exits.
    old.loop.run(abandon(old.supervisor))
    try:
        os.kill(old_pid, 0)  # still running
        new = start_proxy(tmp_path, api, ping_port=0)
        try:
            with pytest.raises(ProcessLookupError):
                os.kill(old_pid, 0)
            assert new.supervisor.pid not in (None, old_pid)
            assert new.loop.run(new.supervisor.healthy())
        finally:
            stop_proxy(new)
    finally:
        with_suppressed_kill(old_pid)
        old.loop.close()


async def abandon(supervisor: TraefikSupervisor) -> None:
    """Stop supervising without stopping Traefik, as a crashed parent would."""
    tasks, supervisor._tasks = supervisor._tasks, []
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def with_suppressed_kill(pid: int) -> None:
    """Clean-up guard: end the old Traefik if the test failed before the new supervisor did."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_secret_header_value_is_what_api_receives(tmp_path: Path, api: FakeApi) -> None:
    assert SECRET  # the fixtures use the same secret the fake API expects
    proxy = start_proxy(tmp_path, api)
    try:
        wait_until(lambda: api.config_polls >= 1, what="first poll")
        assert api.bad_secret_polls == 0
    finally:
        stop_proxy(proxy)


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_traefik_dies_with_the_thread_that_started_it(tmp_path: Path, api: FakeApi) -> None:
    proxy = start_proxy(tmp_path, api)
    pid = proxy.supervisor.pid
    assert pid is not None
    proxy.loop.run(abandon(proxy.supervisor))
    proxy.loop.close()  # the loop thread exits without stopping Traefik, as a killed parent would

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_until(gone, timeout=20, what="orphaned traefik to exit")
    finally:
        with_suppressed_kill(pid)
