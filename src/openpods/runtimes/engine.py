"""Finding a container engine (Docker or Podman) on this machine, and starting Podman's API service.

Typical use by ``openpods serve``::

    url = find_engine_socket(settings.docker_host or None)
    if url is None and settings.start_podman_service and podman_installed():
        proc = start_podman_service(data_dir / "podman.sock", data_dir / "containers.conf")
        url = f"unix://{data_dir / 'podman.sock'}"
    if url is None:
        print(install_hint())   # pods wait in REQUESTED with this reason

The Podman service is started in its own session so it survives a crash of OpenPods; the next start finds its
socket answering and reuses it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_ULIMITS = ("nofile=20000:20000", "nproc=32768:32768")
# AF_UNIX paths are limited to 108 bytes including the terminating NUL on Linux.
_UNIX_PATH_MAX = 107


class EngineStartError(RuntimeError):
    """``podman system service`` could not be started or did not answer in time."""


def socket_url(path_or_url: str) -> str:
    """``/run/x.sock`` -> ``unix:///run/x.sock``; URLs (``unix://``, ``tcp://``, ``http(s)://``, ``ssh://``) are
    returned unchanged."""
    if "://" in path_or_url:
        return path_or_url
    return f"unix://{os.path.abspath(path_or_url)}"


def ping_engine(url: str, timeout_sec: float = 2.0) -> bool:
    """True when ``GET /_ping`` on the engine at ``url`` (``unix://`` path or ``tcp://``/``http://`` host:port)
    answers 200. Never raises. TLS and SSH URLs are not probed and answer False."""
    parsed = urlparse(socket_url(url))
    try:
        if parsed.scheme in ("unix", "http+unix"):
            path = parsed.path or parsed.netloc
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: object = path
        elif parsed.scheme in ("tcp", "http"):
            if not parsed.hostname:
                return False
            sock = socket.socket(
                socket.AF_INET6 if ":" in parsed.hostname else socket.AF_INET, socket.SOCK_STREAM
            )
            target = (parsed.hostname, parsed.port or 2375)
        else:
            return False
        with sock:
            sock.settimeout(timeout_sec)
            sock.connect(target)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status = b""
            while b"\r\n" not in status and len(status) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                status += chunk
        parts = status.split(b" ", 2)
        return len(parts) >= 2 and parts[1] == b"200"
    except (OSError, ValueError):
        return False


def candidate_sockets() -> list[str]:
    """Well-known engine socket paths on this machine, most likely first (whether or not they exist)."""
    uid = os.getuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    home = Path.home()
    paths = [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/podman/podman.sock",
        "/var/run/podman/podman.sock",
        f"{xdg}/podman/podman.sock",
        f"{xdg}/docker.sock",
        f"/run/user/{uid}/podman/podman.sock",
        str(home / ".docker/run/docker.sock"),  # Docker Desktop
        str(home / ".local/share/containers/podman/machine/podman.sock"),
        "/tmp/openpods-podman/podman.sock",  # scripts/setup-podman.sh's default
    ]
    return list(dict.fromkeys(paths))


def find_engine_socket(configured: str | None = None, *, timeout_sec: float = 1.0) -> str | None:
    """The Docker Engine API URL to use, or None when no engine can be found.

    Order: ``configured`` (a URL or a socket path; returned as a URL without probing, since it is an explicit
    choice), then ``$DOCKER_HOST`` (likewise), then the first of :func:`candidate_sockets` that answers
    ``GET /_ping``. A socket file that exists but does not answer is skipped.
    """
    if configured:
        return socket_url(configured)
    env = os.environ.get("DOCKER_HOST", "").strip()
    if env:
        return socket_url(env)
    for path in candidate_sockets():
        if os.path.exists(path) and ping_engine(f"unix://{path}", timeout_sec):
            return f"unix://{path}"
    return None


def podman_installed() -> bool:
    return shutil.which("podman") is not None


def _runc_path() -> str | None:
    found = shutil.which("runc")
    if found:
        return found
    for p in ("/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"):
        if os.access(p, os.X_OK):
            return p
    return None


def containers_conf_text(
    default_ulimits: Sequence[str] = DEFAULT_ULIMITS, *, use_runc: bool | None = None
) -> str:
    """A containers.conf for Podman: default ulimits that a root without CAP_SYS_RESOURCE may set, and runc as
    the OCI runtime when it is installed (crun fails on hybrid cgroups on our machines)."""
    if use_runc is None:
        use_runc = _runc_path() is not None
    ulimits = ", ".join(f'"{u}"' for u in default_ulimits)
    text = f"[containers]\ndefault_ulimits = [{ulimits}]\n"
    if use_runc:
        text += '\n[engine]\nruntime = "runc"\n'
    return text


def write_containers_conf(
    path: str | os.PathLike[str], default_ulimits: Sequence[str] = DEFAULT_ULIMITS
) -> Path:
    """Write :func:`containers_conf_text` to ``path`` atomically, unless the file already has that content."""
    target = Path(path)
    text = containers_conf_text(default_ulimits)
    if target.exists() and target.read_text() == text:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target


def start_podman_service(
    socket_path: str | os.PathLike[str],
    containers_conf_path: str | os.PathLike[str],
    *,
    default_ulimits: Sequence[str] = DEFAULT_ULIMITS,
    timeout_sec: float = 30.0,
    log_path: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes] | None:
    """Start ``podman system service --time=0 unix://<socket_path>`` and wait until it answers ``_ping``.

    - Returns None (and starts nothing) when the socket already answers.
    - Writes ``containers_conf_path`` (see :func:`write_containers_conf`) when it does not exist, and runs the
      service with ``CONTAINERS_CONF`` pointing to it.
    - The service runs in its own session (a crash of the caller does not take it down); its output goes to
      ``log_path`` (default: ``<socket_path>.log``). Stop it with ``proc.terminate()``.
    - Raises EngineStartError when podman is not installed, the socket path is too long for AF_UNIX, or the
      service exits or does not answer within ``timeout_sec`` (the process is then terminated).
    """
    sock = Path(socket_path).absolute()
    url = f"unix://{sock}"
    if len(str(sock).encode()) > _UNIX_PATH_MAX:
        raise EngineStartError(f"socket path {sock} is longer than {_UNIX_PATH_MAX} bytes (AF_UNIX limit)")
    if ping_engine(url):
        return None
    podman = shutil.which("podman")
    if podman is None:
        raise EngineStartError(install_hint())
    conf = Path(containers_conf_path).absolute()
    if not conf.exists():
        write_containers_conf(conf, default_ulimits)
    sock.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # a stale socket file of a dead service
    log_file = Path(log_path) if log_path else sock.with_name(sock.name + ".log")
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [podman, "system", "service", "--time=0", url],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        if ping_engine(url, timeout_sec=1.0):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    tail = ""
    with contextlib.suppress(OSError):
        tail = log_file.read_text(errors="replace")[-2000:]
    raise EngineStartError(
        f"podman system service did not answer on {url} within {timeout_sec:g} s"
        f" (exit code {proc.returncode}); log {log_file}:\n{tail}"
    )


def install_hint() -> str:
    """What to do when no container engine is available, in plain words."""
    if podman_installed():
        return (
            "No container engine answers. Podman is installed but its API service is not running: start it with "
            "`podman system service --time=0 unix:///run/podman/podman.sock &` (or scripts/setup-podman.sh), "
            "or let `openpods serve` start it (OPENPODS_START_PODMAN_SERVICE=true), or point "
            "OPENPODS_DOCKER_HOST / DOCKER_HOST at a Docker Engine API socket."
        )
    return (
        "No container engine found. Install Podman (Debian/Ubuntu: `apt-get install -y podman runc`, or run "
        "scripts/setup-podman.sh) or Docker Engine (https://docs.docker.com/engine/install/), then restart "
        "OpenPods, or point OPENPODS_DOCKER_HOST / DOCKER_HOST at a Docker Engine API socket. Pods stay in "
        "REQUESTED until an engine is available."
    )
