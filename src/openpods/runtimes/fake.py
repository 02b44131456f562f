"""An in-memory container engine and a :class:`Runtime` over it, for tests of everything above the runtime.

:class:`FakeEngine` plays the engine daemon: containers with labels, a state machine (created → running →
exited), interleaved logs, a small in-memory filesystem, and a main process and exec'd commands interpreted
by a tiny shell (:func:`run_argv`). :class:`FakeRuntime` honours the whole :class:`Runtime` contract over it;
several FakeRuntimes may share one engine, as controllers restarted after a crash share a real engine.

The shell understands what the contract tests and the controller tests need, nothing more: ``sh -c`` scripts
of ``;``-separated commands, with ``>&2`` to write to stderr; the commands ``echo [-n]``, ``exit N``,
``sleep N|infinity``, ``cat FILE…``, ``true``, ``false``, ``mkdir -p DIR…``, ``tar -x[m] -f - -C DIR`` (reads
stdin) and ``idle`` (runs until stopped). Anything else is "not found" (exit code 127).

Failure injection (the controllers' error paths):

- ``engine.fail_next(op, exc)``: the next call of runtime operation ``op`` (``ensure_running``, ``remove``,
  ``list_managed``, ``observe``, ``logs``, ``exec``, ``put_file``) raises ``exc`` instead;
- ``engine.unavailable = True``: every operation raises :class:`RuntimeUnavailable` (``ping`` answers False);
- ``engine.crash(name, exit_code, message)``: the container's main process dies now (e.g. an OOM kill);
- ``engine.drop_forwarding(name)``: the container keeps running, but its published host ports no longer reach
  it (what a start that the engine carried out only in part may leave); ``engine.answers(host_port)`` tells
  whether a host port reaches a running container, as a TCP client on the host would find out;
- ``engine.calls``: how many times each operation was called (to assert O(1) engine calls per pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import posixpath
import shlex
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from openpods.domain.container_spec import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    MANAGED_VALUE,
    ContainerSpec,
    published_ports_from_labels,
)
from openpods.runtimes.base import (
    BadDestination,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerState,
    ExecResult,
    ImageNotFound,
    Runtime,
    RuntimeFailure,
    RuntimeUnavailable,
    UnsupportedFeature,
)

TEST_IMAGE_PREFIX = "localhost/openpods-test"
# The default images mirror scripts/build-test-images.sh, so one contract suite runs on every backend.
DEFAULT_IMAGES: dict[str, list[str]] = {
    f"{TEST_IMAGE_PREFIX}/busybox:latest": ["idle"],
    f"{TEST_IMAGE_PREFIX}/http:latest": ["sh", "-c", "echo 'http: serving /www on port 5000'; idle"],
    f"{TEST_IMAGE_PREFIX}/echo:latest": ["sh", "-c", "echo 'echo: listening on port 7000'; idle"],
    f"{TEST_IMAGE_PREFIX}/exit0:latest": ["sh", "-c", "echo 'exit0: done'; exit 0"],
    f"{TEST_IMAGE_PREFIX}/exit1:latest": ["sh", "-c", "echo 'exit1: failing'; echo 'exit1: error on stderr' >&2; exit 1"],
}
_BASE_DIRS = ("/", "/bin", "/usr", "/usr/bin", "/etc", "/tmp", "/www", "/root", "/var", "/var/tmp", "/proc",
              "/sys", "/dev")
_BASE_FILES = {"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", "/www/index.html": b"hello from openpods\n",
               "/bin/busybox": b"\x7fELF"}
_LOG_MAX = 64 << 20


class ExitProgram(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Proc:
    """What a running program sees: the container's filesystem, stdin, and where its output goes."""

    container: FakeContainer
    out: Callable[[int, bytes], None]  # (stream 1|2, bytes)
    stdin: bytes = b""


@dataclass
class FakeContainer:
    name: str
    image: str
    argv: list[str]
    labels: dict[str, str]
    env: dict[str, str]
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port
    state: str = "created"
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    log: bytearray = field(default_factory=bytearray)
    dirs: set[str] = field(default_factory=lambda: set(_BASE_DIRS))
    files: dict[str, bytes] = field(default_factory=lambda: dict(_BASE_FILES))
    task: asyncio.Task[None] | None = None
    forwarded: bool = True  # its published host ports reach it

    def write_log(self, _stream: int, data: bytes) -> None:
        self.log += data
        if len(self.log) > _LOG_MAX:
            del self.log[: len(self.log) - _LOG_MAX]


# ------------------------------------------------------------------------------------------------ the shell


def _statements(script: str) -> list[list[str]]:
    lex = shlex.shlex(script, posix=True, punctuation_chars=";")
    lex.whitespace_split = True
    out: list[list[str]] = [[]]
    for tok in lex:
        if tok == ";":
            out.append([])
        else:
            out[-1].append(tok)
    return [s for s in out if s]


def _mkdirs(c: FakeContainer, path: str) -> str | None:
    """mkdir -p; returns an error message or None."""
    parts = [p for p in path.split("/") if p]
    cur = "/"
    for part in parts:
        cur = posixpath.join(cur, part)
        if cur in c.files:
            return f"mkdir: can't create directory '{cur}': Not a directory"
        c.dirs.add(cur)
    return None


def _tar_extract(c: FakeContainer, data: bytes, base: str) -> str | None:
    if base not in c.dirs:
        return f"tar: can't change directory to '{base}': No such file or directory"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        for member in tar:
            target = posixpath.normpath(posixpath.join(base, member.name))
            parent = posixpath.dirname(target)
            if parent in c.files:
                return f"tar: can't create '{target}': Not a directory"
            if parent not in c.dirs:
                return f"tar: can't create '{target}': No such file or directory"
            if member.isdir():
                if target in c.files:
                    return f"tar: can't create directory '{target}': File exists"
                c.dirs.add(target)
            elif member.isfile():
                if target in c.dirs:
                    return f"tar: can't remove old file '{target}': Is a directory"
                f = tar.extractfile(member)
                c.files[target] = f.read() if f else b""
    return None


async def run_argv(argv: list[str], proc: Proc) -> int:
    """Run one command line (no shell unless argv is ``sh -c …``); returns the exit code."""
    if not argv:
        return 0
    cmd, args = argv[0].rsplit("/", 1)[-1], argv[1:]
    c = proc.container
    if cmd == "sh":
        if len(args) >= 2 and args[0] == "-c":
            code = 0
            for stmt in _statements(args[1]):
                to = 1
                if stmt[-1] == ">&2":
                    stmt, to = stmt[:-1], 2
                sub = Proc(c, (lambda _s, d, to=to: proc.out(to, d)), proc.stdin)
                code = await run_argv(stmt, sub)
            return code
        proc.out(2, b"sh: only 'sh -c SCRIPT' is supported by the fake engine\n")
        return 2
    if cmd == "echo":
        newline = not (args and args[0] == "-n")
        text = " ".join(args[1:] if not newline else args)
        proc.out(1, (text + ("\n" if newline else "")).encode())
        return 0
    if cmd == "exit":
        raise ExitProgram(int(args[0]) if args else 0)
    if cmd in ("true", "false"):
        return 0 if cmd == "true" else 1
    if cmd == "sleep":
        await asyncio.sleep(3600 * 24 if args and args[0] == "infinity" else float(args[0] if args else 0))
        return 0
    if cmd == "idle":
        await asyncio.Event().wait()
        return 0
    if cmd == "cat":
        code = 0
        for path in args:
            if path in c.files:
                proc.out(1, c.files[path])
            else:
                proc.out(2, f"cat: can't open '{path}': No such file or directory\n".encode())
                code = 1
        return code
    if cmd == "mkdir":
        for path in (a for a in args if not a.startswith("-")):
            err = _mkdirs(c, path) if "-p" in args else None
            if err:
                proc.out(2, (err + "\n").encode())
                return 1
        return 0
    if cmd == "tar":
        if "-C" not in args or not any(a.startswith("-x") or a == "x" for a in args):
            proc.out(2, b"tar: the fake engine supports only 'tar -x -f - -C DIR'\n")
            return 1
        err = _tar_extract(c, proc.stdin, args[args.index("-C") + 1])
        if err:
            proc.out(2, (err + "\n").encode())
            return 1
        return 0
    proc.out(2, f"sh: {cmd}: not found\n".encode())
    return 127


# ------------------------------------------------------------------------------------------------ the engine


class FakeEngine:
    """The daemon side: containers by name. Shared by every FakeRuntime made on it."""

    def __init__(self, images: dict[str, list[str]] | None = None, *, gpus: bool = False) -> None:
        self.images: dict[str, list[str]] = dict(DEFAULT_IMAGES if images is None else images)
        self.containers: dict[str, FakeContainer] = {}
        self.gpus = gpus
        self.unavailable = False
        self.calls: Counter[str] = Counter()
        self._failures: dict[str, list[BaseException]] = {}
        self._next_port = 40000
        self.on_change: list[Callable[[FakeContainer], None]] = []  # e.g. a kubelet reporting pod status

    # --- failure injection

    def fail_next(self, op: str, exc: BaseException) -> None:
        self._failures.setdefault(op, []).append(exc)

    def check(self, op: str) -> None:
        self.calls[op] += 1
        if self.unavailable:
            raise RuntimeUnavailable(f"{op}: the fake engine is unavailable")
        queue = self._failures.get(op)
        if queue:
            raise queue.pop(0)

    def crash(self, name: str, exit_code: int = 137, message: str = "killed: out of memory (OOM)") -> None:
        c = self.containers[name]
        if c.task is not None:
            c.task.cancel()
        self._finish(c, exit_code, message)

    def drop_forwarding(self, name: str) -> None:
        self.containers[name].forwarded = False

    def answers(self, host_port: int) -> bool:
        return any(c.state == "running" and c.forwarded and host_port in c.ports.values()
                   for c in self.containers.values())

    # --- lifecycle

    def create(self, name: str, image: str, argv: list[str] | None, labels: dict[str, str],
               env: dict[str, str], ports: list[int]) -> FakeContainer:
        if image not in self.images:
            raise ImageNotFound(f"image {image} is not known to the fake engine")
        host_ports: dict[int, int] = {}
        for p in ports:
            self._next_port += 1
            host_ports[p] = self._next_port
        c = FakeContainer(name=name, image=image, argv=list(argv or self.images[image]), labels=dict(labels),
                          env=dict(env), ports=host_ports)
        self.containers[name] = c
        self._changed(c)
        return c

    def start(self, c: FakeContainer) -> None:
        if c.state != "created":
            return
        c.state = "running"
        c.started_at = datetime.now(UTC)
        c.message = "running"
        c.task = asyncio.get_running_loop().create_task(self._main(c), name=f"fake:{c.name}")
        self._changed(c)

    async def _main(self, c: FakeContainer) -> None:
        try:
            code = await run_argv(c.argv, Proc(c, c.write_log))
        except ExitProgram as exc:
            code = exc.code
        except asyncio.CancelledError:
            return
        except Exception as exc:  # the fake's own bug: make it visible as a crash
            c.write_log(2, f"fake engine: {exc!r}\n".encode())
            code = 255
        self._finish(c, code, "")

    def _finish(self, c: FakeContainer, code: int, message: str) -> None:
        if c.state == "exited":
            return
        c.state, c.exit_code, c.finished_at = "exited", code, datetime.now(UTC)
        c.message = f"exited with code {code}" + (f"; {message}" if message else "")
        self._changed(c)

    def remove(self, name: str) -> bool:
        c = self.containers.pop(name, None)
        if c is None:
            return False
        if c.task is not None:
            c.task.cancel()
        c.state = "missing"
        self._changed(c)
        return True

    def _changed(self, c: FakeContainer) -> None:
        for hook in self.on_change:
            hook(c)

    async def exec(self, c: FakeContainer, argv: list[str], stdin: bytes = b"", *,
                   max_bytes: int = 1 << 20) -> tuple[int, bytes, bytes]:
        out = {1: bytearray(), 2: bytearray()}

        def sink(stream: int, data: bytes) -> None:
            buf = out[stream]
            if len(buf) < max_bytes:
                buf += data[: max_bytes - len(buf)]

        try:
            code = await run_argv(list(argv), Proc(c, sink, stdin))
        except ExitProgram as exc:
            code = exc.code
        return code, bytes(out[1]), bytes(out[2])

    def state_of(self, c: FakeContainer, *, with_times: bool = True) -> ContainerState:
        state = c.state if c.state in ("created", "running", "exited") else "unknown"
        host_ports: dict[str, int] = {}
        if state == "running":
            host_ports = {stanza: c.ports[port] for stanza, port in published_ports_from_labels(c.labels).items()
                          if port in c.ports}
        return ContainerState(name=c.name, labels=dict(c.labels), state=state,  # type: ignore[arg-type]
                              exit_code=c.exit_code if state == "exited" else None,
                              started_at=c.started_at if with_times else None,
                              finished_at=c.finished_at if with_times and state == "exited" else None,
                              message=c.message, host_ports=host_ports)


# ------------------------------------------------------------------------------------------------ the runtime


def _decode_tail(data: bytes | bytearray, max_bytes: int) -> str:
    tail = bytes(data[-max_bytes:]) if max_bytes > 0 else b""
    skip = 0
    while skip < min(3, len(tail)) and (tail[skip] & 0xC0) == 0x80:
        skip += 1
    text = tail[skip:].decode("utf-8", errors="replace")
    encoded = text.encode()
    return encoded[-max_bytes:].decode("utf-8", errors="ignore") if len(encoded) > max_bytes else text


class FakeRuntime(Runtime):
    """:class:`Runtime` over a :class:`FakeEngine` (a new engine unless one is given)."""

    name = "fake"

    def __init__(self, engine: FakeEngine | None = None, *, exec_output_max_bytes: int = 1 << 20) -> None:
        self.engine = engine or FakeEngine()
        self._exec_max = exec_output_max_bytes
        self._closed = False

    def _check(self, op: str) -> None:
        if self._closed:
            raise RuntimeUnavailable("the runtime is closed")
        self.engine.check(op)

    async def ensure_running(self, spec: ContainerSpec) -> ContainerState:
        self._check("ensure_running")
        await asyncio.sleep(0)
        if spec.gpus and not self.engine.gpus:
            raise UnsupportedFeature(f"{spec.name}: the fake engine has no GPUs")
        c = self.engine.containers.get(spec.name)
        if c is not None and c.labels.get(LABEL_INSTANCE) != spec.instance_id:
            self.engine.remove(spec.name)
            c = None
        if c is None:
            argv = None
            if spec.command is not None:
                argv = [*spec.command, *(spec.args or [])]
            elif spec.args is not None:
                argv = list(spec.args)
            c = self.engine.create(spec.name, spec.image, argv, spec.labels, spec.env,
                                   [p.container_port for p in spec.ports if p.publish])
        if c.state == "created":
            self.engine.start(c)
            await asyncio.sleep(0)  # let a short program run, as a real engine would
        return self.engine.state_of(c)

    async def remove(self, name: str, timeout_sec: float = 10) -> None:
        self._check("remove")
        self.engine.remove(name)

    async def prune_networks(self, installation_id: str, keep: Collection[str]) -> list[str]:
        """The fake has no networks of its own (pods are isolated by construction); the call is counted."""
        self._check("prune_networks")
        return []

    async def list_managed(self) -> list[ContainerState]:
        self._check("list_managed")
        return [self.engine.state_of(c, with_times=False) for c in list(self.engine.containers.values())
                if c.labels.get(LABEL_MANAGED) == MANAGED_VALUE]

    async def observe(self, name: str) -> ContainerState:
        self._check("observe")
        c = self.engine.containers.get(name)
        return self.engine.state_of(c) if c is not None else ContainerState.missing(name)

    async def logs(self, name: str, max_bytes: int) -> str:
        self._check("logs")
        c = self.engine.containers.get(name)
        if c is None:
            raise ContainerNotFound(f"no container named {name}")
        return _decode_tail(c.log, max_bytes)

    def _running(self, name: str) -> FakeContainer:
        c = self.engine.containers.get(name)
        if c is None:
            raise ContainerNotFound(f"no container named {name}")
        if c.state != "running":
            raise ContainerNotRunning(f"container {name} is not running ({c.state})")
        return c

    async def exec(self, name: str, argv: list[str], timeout_sec: float) -> ExecResult:
        self._check("exec")
        c = self._running(name)
        started = time.monotonic()
        try:
            code, out, err = await asyncio.wait_for(self.engine.exec(c, argv, max_bytes=self._exec_max), timeout_sec)
        except TimeoutError:
            return ExecResult(None, "", "", True, time.monotonic() - started)
        return ExecResult(code, out.decode(errors="replace"), err.decode(errors="replace"), False,
                          time.monotonic() - started)

    async def put_file(self, name: str, dest_path: str, src_path: str) -> None:
        from openpods.runtimes.docker import check_dest_path

        check_dest_path(dest_path)
        with open(src_path, "rb") as f:  # FileNotFoundError as the contract says
            data = f.read()
        self._check("put_file")
        c = self._running(name)
        if dest_path in c.dirs:
            raise BadDestination(f"dest_path {dest_path} is an existing directory; give the full file path")
        err = _mkdirs(c, posixpath.dirname(dest_path))
        if err:
            raise BadDestination(f"cannot create {dest_path}: {err}")
        c.files[dest_path] = data

    async def supports_gpus(self) -> bool:
        return self.engine.gpus

    async def ping(self) -> bool:
        return not (self._closed or self.engine.unavailable)

    async def close(self) -> None:
        self._closed = True


async def stop_all(engine: FakeEngine) -> None:
    """Cancel every main process of ``engine`` (end of a test)."""
    for c in list(engine.containers.values()):
        if c.task is not None:
            c.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeFailure):
                await c.task


__all__ = ["DEFAULT_IMAGES", "FakeContainer", "FakeEngine", "FakeRuntime", "run_argv", "stop_all"]
