"""DockerRuntime against a real engine (Podman's Docker-compatible API on our machines; see conftest.py).

The pure helpers at the top need no engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import docker
import pytest

from openpods.domain.container_spec import LABEL_INSTANCE, LABEL_MANAGED, MountSpec, Ulimit
from openpods.runtimes import RUNTIMES, make_runtime, runtime_class
from openpods.runtimes.base import (
    BadDestination,
    ContainerNotFound,
    ContainerNotRunning,
    ImageNotFound,
    RuntimeUnavailable,
    UnsupportedFeature,
)
from openpods.runtimes.docker import (
    DockerRuntime,
    FrameParser,
    _decode_tail,
    check_dest_path,
    parse_engine_time,
    read_k8s_log_tail,
    state_from_inspect,
    state_from_list_item,
    tar_stream,
)
from openpods.runtimes.engine import (
    containers_conf_text,
    find_engine_socket,
    ping_engine,
    socket_url,
    start_podman_service,
)

HTTP = {"default": {"protocol": "http", "port": 5000}}


async def wait_for(probe, *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``probe`` (sync or async) until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


async def wait_exited(runtime: DockerRuntime, name: str):
    async def probe():
        st = await runtime.observe(name)
        return st if st.state == "exited" else None

    return await wait_for(probe, what=f"{name} to exit")


def http_get(port: int, path: str = "/") -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def tcp_echo(port: int, payload: bytes) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(payload)
            data = b""
            while len(data) < len(payload):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return None


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


# ------------------------------------------------------------------------------------------ pure helpers


def test_parse_engine_time() -> None:
    t = parse_engine_time("2024-05-01T12:34:56.123456789Z")
    assert t is not None and t.isoformat() == "2024-05-01T12:34:56.123456+00:00"
    t = parse_engine_time("2024-05-01T14:34:56.5+02:00")
    assert t is not None and t.isoformat() == "2024-05-01T12:34:56.500000+00:00"
    assert parse_engine_time("0001-01-01T00:00:00Z") is None
    assert parse_engine_time("") is None
    assert parse_engine_time("garbage") is None


def test_state_from_list_item_maps_ports_by_label() -> None:
    item = {
        "Names": ["/openpods-a-b-p1"],
        "Labels": {"openpods.port.default": "5000", "openpods.port.db": "5432", LABEL_MANAGED: "true"},
        "State": "running",
        "Status": "Up 3 seconds",
        "Ports": [
            {"IP": "127.0.0.1", "PrivatePort": 5000, "PublicPort": 41000, "Type": "tcp"},
            {"IP": "127.0.0.1", "PrivatePort": 5432, "PublicPort": 41001, "Type": "tcp"},
            {"PrivatePort": 9999, "Type": "tcp"},
        ],
    }
    st = state_from_list_item(item)
    assert st.name == "openpods-a-b-p1"
    assert st.state == "running"
    assert st.host_ports == {"default": 41000, "db": 41001}
    exited = state_from_list_item({**item, "State": "exited", "Status": "Exited (137) 2 minutes ago"})
    assert exited.state == "exited" and exited.exit_code == 137 and exited.host_ports == {}
    assert state_from_list_item({**item, "State": "paused"}).state == "unknown"


def test_state_from_inspect() -> None:
    info = {
        "Name": "/x",
        "Config": {"Labels": {"openpods.port.default": "5000"}},
        "State": {
            "Status": "exited",
            "ExitCode": 1,
            "OOMKilled": True,
            "Error": "",
            "StartedAt": "2024-05-01T12:00:01.5Z",
            "FinishedAt": "2024-05-01T12:00:01.4Z",  # Podman: may precede StartedAt
        },
        "NetworkSettings": {"Ports": {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "40000"}]}},
    }
    st = state_from_inspect(info)
    assert st.state == "exited" and st.exit_code == 1
    assert "out of memory" in st.message
    assert st.finished_at == st.started_at
    assert st.host_ports == {}  # only reported while running
    running = state_from_inspect({**info, "State": {**info["State"], "Status": "running"}})
    assert running.host_ports == {"default": 40000} and running.exit_code is None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "relative/file",
        "/",
        "/tmp/",
        "/tmp/../etc/passwd",
        "/tmp/./x",
        "//x",
        "/a//b",
        "/a\nb",
        "/" + "x" * 300,
    ],
)
def test_check_dest_path_rejects(bad: str) -> None:
    with pytest.raises(BadDestination):
        check_dest_path(bad)
    assert issubclass(BadDestination, ValueError)


def test_check_dest_path_accepts() -> None:
    assert check_dest_path("/data/dir/file name.txt") == "/data/dir/file name.txt"


def test_tar_stream_is_a_valid_archive(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    payload = os.urandom(3000)
    src.write_bytes(payload)
    data = b"".join(tar_stream(["a", "a/b"], "a/b/f.bin", str(src), chunk_bytes=1000))
    assert len(data) % tarfile.BLOCKSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
        assert [(m.name, m.isdir()) for m in members] == [("a", True), ("a/b", True), ("a/b/f.bin", False)]
        assert members[2].mode == 0o644 and members[0].mode == 0o755
        assert tf.extractfile(members[2]).read() == payload  # type: ignore[union-attr]


def test_decode_tail_respects_byte_budget() -> None:
    data = ("é" * 10 + "end").encode()
    for n in range(0, len(data) + 2):
        text = _decode_tail(data, n)
        assert len(text.encode()) <= n
    assert _decode_tail(data, 5) == "éend"  # never starts in the middle of a character
    assert _decode_tail(b"\xff\xfeok", 4).endswith("ok")


def test_frame_parser_handles_split_frames_and_tty_streams() -> None:
    got: list[tuple[int, bytes]] = []
    parser = FrameParser(lambda stream, payload: got.append((stream, bytes(payload))))
    data = b"\x01\0\0\0\0\0\0\x04out\n" + b"\x02\0\0\0\0\0\0\x04err\n" + b"\x01\0\0\0\0\0\0\0"
    for i in range(len(data)):  # byte by byte
        parser.feed(data[i : i + 1])
    assert got == [(1, b"out\n"), (2, b"err\n"), (1, b"")]
    raw: list[tuple[int, bytes]] = []
    tty = FrameParser(lambda stream, payload: raw.append((stream, bytes(payload))))
    tty.feed(b"plain tty output\n")
    tty.feed(b"more")
    assert b"".join(p for _, p in raw) == b"plain tty output\nmore" and {s for s, _ in raw} == {1}


def test_read_k8s_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    ts = "2026-01-01T00:00:00.000000001+00:00"
    lines = [f"{ts} stdout F line {i:05d}" for i in range(2000)]
    lines[1000:1002] = [f"{ts} stderr P part-a-", f"{ts} stderr F part-b"]
    log.write_text("\n".join(lines) + "\n" + f"{ts} stdout F still being writ")
    full = read_k8s_log_tail(str(log), 10**9, block_bytes=97)
    expected = "".join(
        ("part-a-part-b\n" if i == 1000 else "" if i == 1001 else f"line {i:05d}\n") for i in range(2000)
    )
    assert full.decode() == expected
    for n in (1, 11, 500, 5000):
        assert read_k8s_log_tail(str(log), n, block_bytes=64).decode() == expected[-n:]
    log.write_text('{"log":"json-file format","stream":"stdout"}\n')
    with pytest.raises(ValueError):
        read_k8s_log_tail(str(log), 100)


def test_registry_is_lazy() -> None:
    assert set(RUNTIMES) == {"docker"}
    assert runtime_class("docker") is DockerRuntime
    with pytest.raises(ValueError, match="unknown runtime"):
        make_runtime("kubernetes-not-yet")


def test_containers_conf_text() -> None:
    text = containers_conf_text(["nofile=1024:1024"], use_runc=True)
    assert 'default_ulimits = ["nofile=1024:1024"]' in text and 'runtime = "runc"' in text
    assert "runc" not in containers_conf_text(use_runc=False)


def test_find_engine_socket_prefers_configured_then_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    assert find_engine_socket("/some/where.sock") == "unix:///some/where.sock"
    assert find_engine_socket(None) == "tcp://127.0.0.1:1"
    assert socket_url("unix:///x.sock") == "unix:///x.sock"
    assert ping_engine("unix:///nonexistent/openpods.sock") is False
    assert ping_engine("tcp://127.0.0.1:1") is False


async def test_unreachable_engine_is_unavailable(tmp_path: Path, make_spec) -> None:
    rt = DockerRuntime(f"unix://{tmp_path}/nothing.sock")
    try:
        assert await rt.ping() is False
        with pytest.raises(RuntimeUnavailable) as err:
            await rt.ensure_running(make_spec("busybox"))
        assert err.value.temporary
        with pytest.raises(RuntimeUnavailable):
            await rt.list_managed()
    finally:
        await rt.close()
    assert await rt.ping() is False


# ------------------------------------------------------------------------------------------ engine discovery


def test_find_engine_socket_probes_known_paths(engine_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ping_engine(engine_url)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    if engine_url.startswith("unix://"):
        path = engine_url.removeprefix("unix://")
        monkeypatch.setattr("openpods.runtimes.engine.candidate_sockets", lambda: ["/nonexistent.sock", path])
        assert find_engine_socket(None) == engine_url
    monkeypatch.setattr("openpods.runtimes.engine.candidate_sockets", lambda: ["/nonexistent.sock"])
    assert find_engine_socket(None) is None


def test_start_podman_service(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    import shutil

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    if engine_url.startswith("unix://"):  # an answering socket is reused, nothing is started
        assert (
            start_podman_service(engine_url.removeprefix("unix://"), "/nonexistent/containers.conf") is None
        )
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="op-svc-", dir="/tmp"))
    try:
        proc = start_podman_service(d / "podman.sock", d / "containers.conf", timeout_sec=60)
        assert proc is not None
        try:
            assert ping_engine(f"unix://{d}/podman.sock")
            assert "default_ulimits" in (d / "containers.conf").read_text()
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------ lifecycle


async def test_ping(runtime: DockerRuntime) -> None:
    assert await runtime.ping() is True


async def test_ensure_running_is_idempotent_and_replaces_other_instances(
    runtime: DockerRuntime, make_spec
) -> None:
    spec = make_spec("http", networking=HTTP)
    first = await runtime.ensure_running(spec)
    assert first.state == "running", first
    assert first.name == spec.name and spec.name.startswith("openpods-t-")
    assert first.instance_id == spec.instance_id and first.pod_id == spec.labels["openpods.pod_id"]
    assert set(first.host_ports) == {"default"}
    again = await runtime.ensure_running(spec)
    assert again.state == "running"
    assert again.started_at == first.started_at and again.host_ports == first.host_ports

    # concurrent calls for the same spec converge on one container
    both = await asyncio.gather(runtime.ensure_running(spec), runtime.ensure_running(spec))
    assert {s.started_at for s in both} == {first.started_at}

    new_instance = make_spec("http", pod_id=spec.labels["openpods.pod_id"], networking=HTTP)
    replaced = await runtime.ensure_running(new_instance)
    assert replaced.state == "running"
    assert replaced.labels[LABEL_INSTANCE] == new_instance.instance_id != spec.instance_id
    assert replaced.started_at != first.started_at
    mine = [c for c in await runtime.list_managed() if c.name == spec.name]
    assert len(mine) == 1 and mine[0].instance_id == new_instance.instance_id
    await runtime.remove(spec.name, timeout_sec=2)


async def test_created_container_of_same_instance_is_started(
    runtime: DockerRuntime, make_spec, raw_api: docker.APIClient
) -> None:
    spec = make_spec("busybox")
    raw_api.create_container(
        spec.image,
        name=spec.name,
        labels=spec.labels,
        host_config=raw_api.create_host_config(
            ulimits=[
                docker.types.Ulimit(name="nofile", soft=1024, hard=1024),
                docker.types.Ulimit(name="nproc", soft=1000, hard=1000),
            ]
        ),
    )
    assert (await runtime.observe(spec.name)).state == "created"
    st = await runtime.ensure_running(spec)
    assert st.state == "running"
    await runtime.remove(spec.name, timeout_sec=2)


async def test_http_pod_serves_on_its_published_port(runtime: DockerRuntime, make_spec) -> None:
    spec = make_spec(
        "http",
        networking={
            "default": {"protocol": "http", "port": 5000},
            "inside": {"protocol": "local_only", "port": 5001},
        },
    )
    st = await runtime.ensure_running(spec)
    assert set(st.host_ports) == {"default"}  # local_only is not published
    body = await wait_for(lambda: http_get(st.host_ports["default"]), what="HTTP answer")
    assert "hello from openpods" in body
    observed = await runtime.observe(spec.name)
    assert observed.host_ports == st.host_ports
    assert observed.started_at is not None and observed.finished_at is None
    await runtime.remove(spec.name, timeout_sec=5)


async def test_list_managed_is_one_call_with_host_ports(
    runtime: DockerRuntime, make_spec, raw_api: docker.APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = make_spec("http", networking=HTTP)
    echo = make_spec("echo", networking={"default": {"protocol": "tcp", "port": 7000}})
    await asyncio.gather(runtime.ensure_running(http), runtime.ensure_running(echo))
    # an unmanaged container is not listed
    unmanaged = f"unmanaged-{uuid.uuid4().hex[:8]}"
    raw_api.create_container(
        http.image, name=unmanaged, labels={"openpods.tenant": http.labels["openpods.tenant"]}
    )
    try:
        api = runtime._api()
        calls: list[str] = []
        original = api.request

        def counting(method, url, *args, **kwargs):
            calls.append(f"{method} {url}")
            return original(method, url, *args, **kwargs)

        monkeypatch.setattr(api, "request", counting)
        listed = await runtime.list_managed()
        monkeypatch.undo()
        assert len(calls) == 1, calls
        by_name = {c.name: c for c in listed}
        assert unmanaged not in by_name
        assert by_name[http.name].state == "running" and set(by_name[http.name].host_ports) == {"default"}
        assert by_name[echo.name].host_ports.keys() == {"default"}
        assert all(c.labels.get(LABEL_MANAGED) == "true" for c in listed)

        body = await wait_for(lambda: http_get(by_name[http.name].host_ports["default"]), what="HTTP answer")
        assert "hello from openpods" in body
        port = by_name[echo.name].host_ports["default"]
        assert await wait_for(lambda: tcp_echo(port, b"ping\n") == b"ping\n", what="echo")
        assert tcp_echo(port, b"second connection\n") == b"second connection\n"
    finally:
        raw_api.remove_container(unmanaged, force=True)
        await asyncio.gather(runtime.remove(http.name, 2), runtime.remove(echo.name, 2))


async def test_exit_codes_and_logs_kept(runtime: DockerRuntime, make_spec) -> None:
    ok, bad = make_spec("exit0"), make_spec("exit1")
    await asyncio.gather(runtime.ensure_running(ok), runtime.ensure_running(bad))
    st_ok, st_bad = await wait_exited(runtime, ok.name), await wait_exited(runtime, bad.name)
    assert st_ok.exit_code == 0 and st_bad.exit_code == 1
    assert st_bad.finished_at is not None and st_bad.started_at is not None
    assert "code 1" in st_bad.message
    listed = {c.name: c for c in await runtime.list_managed()}
    assert listed[ok.name].state == "exited" and listed[ok.name].exit_code == 0
    assert listed[bad.name].exit_code == 1
    logs = await runtime.logs(bad.name, 10_000)
    assert "exit1: failing" in logs and "exit1: error on stderr" in logs
    assert "exit0: done" in await runtime.logs(ok.name, 10_000)

    # a finished instance is final: ensure_running does not restart it
    again = await runtime.ensure_running(bad)
    assert again.state == "exited" and again.started_at == st_bad.started_at
    await asyncio.gather(runtime.remove(ok.name, 1), runtime.remove(bad.name, 1))


@pytest.mark.parametrize("path", ["default", "engine-api-only"])
async def test_logs_are_bounded_to_the_tail(
    runtime: DockerRuntime, make_spec, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "engine-api-only":  # no direct reading of Podman's log file: GET /containers/{id}/logs only
        monkeypatch.setattr(runtime, "_local_engine", False)
    spec = make_spec("chatty")
    await runtime.ensure_running(spec)

    async def done():
        return "chatty: end of output" in await runtime.logs(spec.name, 4096)

    await wait_for(done, what="chatty output")
    tail = await runtime.logs(spec.name, 64 * 1024)
    assert len(tail.encode()) <= 64 * 1024 and len(tail.encode()) > 60 * 1024
    assert tail.endswith("chatty: end of output\n")
    assert "chatty: start" not in tail
    small = await runtime.logs(spec.name, 10)
    assert small == "of output\n"
    everything = await runtime.logs(spec.name, 10 * 1024 * 1024)
    assert everything.startswith("chatty: start\n") and everything.endswith("chatty: end of output\n")
    assert len(everything.encode()) > 4_000_000
    await runtime.remove(spec.name, timeout_sec=5)
    with pytest.raises(ContainerNotFound):
        await runtime.logs(spec.name, 100)


async def test_missing_image(runtime: DockerRuntime, make_spec) -> None:
    spec = make_spec(f"localhost/openpods-test/does-not-exist-{uuid.uuid4().hex[:6]}:latest")
    with pytest.raises(ImageNotFound) as err:
        await runtime.ensure_running(spec)
    assert "does-not-exist" in err.value.message and not err.value.temporary
    assert (await runtime.observe(spec.name)).state == "missing"
    # a registry that cannot be reached: one pull is tried, its failure is reported as ImageNotFound
    remote = make_spec("openpods-no-such-registry.invalid/nothing/here:1.0")
    with pytest.raises(ImageNotFound, match="pull"):
        await runtime.ensure_running(remote)
    assert (await runtime.observe(remote.name)).state == "missing"


async def test_command_args_env_resources_ulimits_mounts(
    runtime: DockerRuntime, make_spec, raw_api: docker.APIClient, tmp_path: Path
) -> None:
    (tmp_path / "hello.txt").write_text("from the host\n")
    spec = make_spec(
        "busybox",
        command=["sh", "-c"],
        arguments=[
            'echo "arg=$0 env=$MY_SECRET"; cat /mnt/host/hello.txt; ulimit -n; exec sleep 600',
            "first",
        ],
        env={"MY_SECRET": "s3cret-value"},
        resources={"cpu_request": 500, "cpu_limit": 1500, "mem_request": 64, "mem_limit": 128, "gpus": 0},
        mounts=[MountSpec(source=str(tmp_path), target="/mnt/host", read_only=True)],
        ulimits=[Ulimit("nofile", 4096, 4096)],
    )
    assert "s3cret-value" not in str(spec.labels)
    await runtime.ensure_running(spec)
    text = await wait_for(lambda: _if_contains(runtime.logs(spec.name, 10_000), "4096"), what="ulimit output")
    assert "arg=first env=s3cret-value" in text and "from the host" in text
    hc = raw_api.inspect_container(spec.name)["HostConfig"]
    assert hc["NanoCpus"] == 1_500_000_000
    assert hc["Memory"] == 128 * 1024 * 1024 and hc["MemoryReservation"] == 64 * 1024 * 1024
    assert hc["RestartPolicy"]["Name"] in ("", "no")
    ulimits = {u["Name"].lower().removeprefix("rlimit_"): (u["Soft"], u["Hard"]) for u in hc["Ulimits"]}
    assert ulimits["nofile"] == (4096, 4096) and ulimits["nproc"] == (32768, 32768)
    r = await runtime.exec(spec.name, ["sh", "-c", "echo x > /mnt/host/new.txt"], 10)
    assert r.exit_code != 0 and not (tmp_path / "new.txt").exists()  # read-only mount
    with pytest.raises(BadDestination, match="read-only"):
        await runtime.put_file(spec.name, "/mnt/host/sub/new.txt", str(tmp_path / "hello.txt"))
    await runtime.remove(spec.name, timeout_sec=0)


async def _if_contains(coro, needle: str) -> str | None:
    text = await coro
    return text if needle in text else None


async def test_gpus_refused_when_unsupported(runtime: DockerRuntime, make_spec) -> None:
    if await runtime.supports_gpus():
        pytest.skip("this engine has a GPU runtime")
    spec = make_spec("busybox", resources={"cpu_limit": 1000, "mem_limit": 128, "gpus": 1})
    with pytest.raises(UnsupportedFeature, match="GPU"):
        await runtime.ensure_running(spec)
    assert (await runtime.observe(spec.name)).state == "missing"


async def test_remove_is_idempotent(runtime: DockerRuntime, make_spec) -> None:
    spec = make_spec("http", networking=HTTP)
    await runtime.ensure_running(spec)
    t0 = time.monotonic()
    await runtime.remove(spec.name, timeout_sec=10)
    assert time.monotonic() - t0 < 9, "SIGTERM should stop the http image at once"
    assert (await runtime.observe(spec.name)).state == "missing"
    await runtime.remove(spec.name, timeout_sec=1)
    await runtime.remove("openpods-never-existed-x", timeout_sec=1)


# ------------------------------------------------------------------------------------------ exec


@pytest.fixture
async def idle(runtime: DockerRuntime, make_spec):
    spec = make_spec("busybox")
    st = await runtime.ensure_running(spec)
    assert st.state == "running"
    yield spec.name
    await runtime.remove(spec.name, timeout_sec=1)


async def test_exec_exit_codes_and_output(runtime: DockerRuntime, idle: str) -> None:
    r = await runtime.exec(idle, ["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (3, "out\n", "err\n", False)
    assert r.duration_sec >= 0
    r = await runtime.exec(idle, ["echo", "fast"], 10)
    assert r.exit_code == 0 and r.stdout == "fast\n"
    big = await runtime.exec(idle, ["sh", "-c", "yes 0123456789 | head -c 3000000"], 20)
    assert big.exit_code == 0 and len(big.stdout) == 1 << 20  # capped at exec_output_max_bytes
    missing = await runtime.exec(idle, ["/no/such/binary"], 10)
    assert missing.exit_code in (126, 127) and not missing.timed_out


async def test_exec_timeout_is_enforced(runtime: DockerRuntime, idle: str) -> None:
    t0 = time.monotonic()
    r = await runtime.exec(idle, ["sh", "-c", "echo started; sleep 47; echo never"], 1.0)
    elapsed = time.monotonic() - t0
    assert r.timed_out and r.exit_code is None
    assert elapsed < 10 and r.duration_sec >= 1.0
    assert "started" in r.stdout and "never" not in r.stdout

    async def gone():
        ps = await runtime.exec(idle, ["ps", "-o", "pid,args"], 10)
        return "sleep 47" not in ps.stdout

    await wait_for(gone, timeout=10, what="the timed-out process to be killed")

    # a process that closed its output but keeps running has not finished
    r = await runtime.exec(idle, ["sh", "-c", "exec >/dev/null 2>&1; sleep 46"], 1.0)
    assert r.timed_out and r.exit_code is None


async def test_exec_needs_a_running_container(runtime: DockerRuntime, make_spec) -> None:
    spec = make_spec("exit0")
    await runtime.ensure_running(spec)
    await wait_exited(runtime, spec.name)
    with pytest.raises(ContainerNotRunning):
        await runtime.exec(spec.name, ["true"], 5)
    with pytest.raises(ContainerNotFound):
        await runtime.exec("openpods-never-existed-x", ["true"], 5)
    with pytest.raises(ContainerNotRunning):
        await runtime.put_file(spec.name, "/tmp/x", __file__)
    await runtime.remove(spec.name, 1)


# ------------------------------------------------------------------------------------------ put_file


async def test_put_file_streams_a_large_file_with_flat_memory(
    runtime: DockerRuntime, idle: str, tmp_path: Path
) -> None:
    size = 100 * 1024 * 1024
    src = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    md5 = hashlib.md5()
    with open(src, "wb") as f:
        for i in range(size // len(block)):
            chunk = block[:-8] + i.to_bytes(8, "big")
            f.write(chunk)
            md5.update(chunk)
    del block, chunk

    # Peak RSS of this process during the upload: reset the high-water mark, or sample it as a fallback.
    peak = [rss_kib()]
    stop = threading.Event()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        hwm = True
    except OSError:
        hwm = False

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], rss_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    before = rss_kib()
    sampler.start()
    try:
        await runtime.put_file(idle, "/data/nested/deeper/big.bin", str(src))
    finally:
        stop.set()
        sampler.join()
    growth_kib = (rss_kib("VmHWM") if hwm else peak[0]) - before
    print(f"peak RSS growth during a 100 MiB upload: {growth_kib} KiB (high-water mark: {hwm})")
    assert growth_kib < 40 * 1024, f"RSS grew by {growth_kib} KiB while uploading 100 MiB"

    r = await runtime.exec(
        idle, ["sh", "-c", "wc -c < /data/nested/deeper/big.bin; md5sum /data/nested/deeper/big.bin"], 60
    )
    assert r.exit_code == 0, r
    lines = r.stdout.split()
    assert int(lines[0]) == size and lines[1] == md5.hexdigest()
    r = await runtime.exec(
        idle, ["stat", "-c", "%a %U", "/data/nested/deeper", "/data/nested/deeper/big.bin"], 10
    )
    assert r.stdout.split("\n")[:2] == ["755 root", "644 root"]


async def test_put_file_keeps_existing_dirs_and_replaces_files(
    runtime: DockerRuntime, idle: str, tmp_path: Path
) -> None:
    src = tmp_path / "a.txt"
    src.write_text("first\n")
    await runtime.put_file(idle, "/tmp/up/a.txt", str(src))
    src.write_text("second version\n")
    await runtime.put_file(idle, "/tmp/up/a.txt", str(src))
    r = await runtime.exec(idle, ["sh", "-c", "cat /tmp/up/a.txt; stat -c %a /tmp"], 10)
    assert r.stdout == "second version\n1777\n"  # /tmp's sticky mode is untouched
    await runtime.put_file(idle, "/top-level.txt", str(src))
    assert (await runtime.exec(idle, ["cat", "/top-level.txt"], 10)).stdout == "second version\n"


async def test_put_file_bad_destinations(runtime: DockerRuntime, idle: str, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("x")
    for dest, why in [
        ("relative.txt", "absolute"),
        ("/tmp/../etc/x", "normalized"),
        ("/tmp/", "directory"),
        ("/tmp", "directory"),
        ("/www/index.html/below-a-file", "not a directory"),
    ]:
        with pytest.raises(BadDestination, match=why):
            await runtime.put_file(idle, dest, str(src))
    with pytest.raises(FileNotFoundError):
        await runtime.put_file(idle, "/tmp/x", str(tmp_path / "missing"))
    with pytest.raises(ContainerNotFound):
        await runtime.put_file("openpods-never-existed-x", "/tmp/x", str(src))


def test_scripts_are_idempotent(engine_url: str, engine_is_podman: bool, test_images: None) -> None:
    """Running the image script again is fast and rebuilds nothing."""
    env = {**os.environ, "DOCKER_HOST": engine_url}
    if not engine_is_podman:
        env["OPENPODS_IMAGE_BUILDER"] = "docker"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(Path(__file__).resolve().parents[2] / "scripts/build-test-images.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "present" in proc.stderr and time.monotonic() - t0 < 30


def test_a_container_half_removed_by_podman_counts_as_gone() -> None:
    """Podman 4.3 answers inspect of a container whose removal is under way with a 500 "no such container";
    treated as an error, the health loop could never confirm the container is gone and replace it."""
    import docker as docker_sdk
    from requests import Response

    from openpods.runtimes.docker import DockerRuntime

    class Api:
        def __init__(self, status: int, message: str) -> None:
            self.status, self.message = status, message

        def inspect_container(self, name: str) -> dict:
            response = Response()
            response.status_code = self.status
            raise docker_sdk.errors.APIError("inspect", response=response, explanation=self.message)

    half_gone = Api(500, "container f79d does not exist in database: no such container")
    assert DockerRuntime._inspect_or_none(half_gone, "c") is None  # type: ignore[arg-type]
    with pytest.raises(docker_sdk.errors.APIError):
        DockerRuntime._inspect_or_none(Api(500, "database is locked"), "c")  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("iptables"), reason="needs root and iptables")
def test_the_bridge_isolation_rule_is_moved_back_above_a_jump_put_on_top() -> None:
    """netavark inserts its NETAVARK_FORWARD jump (accepting a pod subnet) at the top of FORWARD when it sets a
    network up: our DROP between pod bridges must end up first again (it is re-checked after every start)."""
    from openpods.runtimes.docker import ensure_bridge_isolation_rule, isolation_rule_host_lock

    ours = ["-A", "FORWARD", "-i", "opb+", "-o", "opb+", "-j", "DROP"]
    above = ["FORWARD", "-i", "opbtestnone", "-j", "ACCEPT"]  # matches no interface: harmless while it exists

    def forward_rules() -> list[list[str]]:
        out = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True, check=True)
        return [line.split() for line in out.stdout.splitlines() if line.startswith("-A FORWARD ")]

    assert ensure_bridge_isolation_rule()
    with isolation_rule_host_lock():  # other workers start containers meanwhile: they wait for us
        subprocess.run(["iptables", "-w", "-I", "FORWARD", "1", *above[1:]], check=True)
        first = forward_rules()[0]
    try:
        assert first != ours
        assert ensure_bridge_isolation_rule()
        rules = forward_rules()
        assert rules[0] == ours and rules.count(ours) == 1
    finally:
        subprocess.run(["iptables", "-w", "-D", *above], check=True)
