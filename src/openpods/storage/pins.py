"""Pinned bind-mount sources: a ``sub_path`` inside a volume, mounted so that no symlink can redirect it.

The attack (issue 9, item 1): a pod that shares a volume swaps a directory and a symlink inside it
(``renameat2(RENAME_EXCHANGE)``) while another pod with a ``sub_path`` mount of that directory starts. The
container engine resolves the bind source *by path* when it mounts, so whatever resolution OpenPods did before
is stale: the engine follows the symlink and mounts any host directory (the data dir's keys, ``/``) read-write.

The defence: OpenPods resolves the sub_path itself with :func:`openpods.storage.paths.open_pinned_dir`
(``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)``, or an ``O_NOFOLLOW`` walk), which gives a descriptor of the
very directory it checked, then bind-mounts that descriptor (``/proc/self/fd/<fd>``: a "magic link" the kernel
follows to the pinned dentry, never re-resolving a path) onto a fresh *pin point* under
``<data_dir>/pins/<owner>/``. That directory is root-only (0700) and outside every volume, so no pod can touch
any component of the pin point's path; the engine bind-mounts the pin point into the container. Once the
container has started, its mount namespace holds its own copy of the mount, and the pin is unmounted.

Crash safety: pin points live under a directory named after the owning process (pid, start time, random). A process
that finds pins of an owner that no longer runs unmounts them (``MNT_DETACH``) and removes the empty
directories (:meth:`MountPins.sweep`); a directory is only ever removed with ``rmdir``, so a pin that could not
be unmounted is never deleted *through*.

Needs CAP_SYS_ADMIN in the mount namespace the container engine uses (OpenPods running as root next to a
rootful Podman or Docker); :meth:`MountPins.available` tells.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct
import threading
import uuid
from pathlib import Path

from openpods.storage.paths import open_pinned_dir

log = logging.getLogger(__name__)

_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


class PinUnavailable(RuntimeError):
    """Pinned mounts cannot be made here (no CAP_SYS_ADMIN, or the engine does not share our mount namespace)."""


def _proc_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 :].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return None


def _mount_points_below(prefix: str) -> list[str]:
    """Mount points at or below ``prefix`` in this process's mount namespace, deepest first."""
    points: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].decode("utf-8", "surrogateescape")
            point = point.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
                "\\134", "\\"
            )
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                points.append(point)
    return sorted(set(points), key=len, reverse=True)


def _umount(point: str) -> None:
    if _libc.umount2(os.fsencode(point), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22,):  # EINVAL: not a mount point (already unmounted)
            raise OSError(err, os.strerror(err), point)


def engine_mount_namespace_matches(base_url: str | None) -> bool | None:
    """Whether the container engine behind the unix socket ``base_url`` runs in this process's mount namespace
    (so it sees the pins we mount). None when that cannot be told (tcp engines, no SO_PEERCRED, no /proc)."""
    if not base_url:
        base_url = os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"
    path = base_url.removeprefix("http+unix://").removeprefix("unix://")
    if path == base_url and not base_url.startswith("/"):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except (OSError, struct.error):
        return None


class PinSet:
    """The pins made for one container start; :meth:`release` unmounts them all (idempotent)."""

    def __init__(self, owner_dir: Path) -> None:
        self._dir = owner_dir
        self._points: list[str] = []

    def pin(self, root: str | os.PathLike[str], sub_path: str) -> str:
        """Resolve ``sub_path`` inside ``root`` without following any symlink and bind-mount it onto a new pin
        point; returns the pin point (the path to hand to the engine). Raises PathRejected / PathNotFound for
        the sub_path, PinUnavailable when mounting is not possible."""
        fd = open_pinned_dir(root, sub_path)
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            point = self._dir / uuid.uuid4().hex
            point.mkdir(mode=0o700)
            src = f"/proc/self/fd/{fd}".encode()
            if _libc.mount(src, os.fsencode(point), None, _MS_BIND, None) != 0:
                err = ctypes.get_errno()
                with contextlib.suppress(OSError):
                    point.rmdir()
                raise PinUnavailable(f"cannot bind-mount a pinned volume directory: {os.strerror(err)}")
            self._points.append(str(point))
            return str(point)
        finally:
            os.close(fd)

    @property
    def points(self) -> tuple[str, ...]:
        return tuple(self._points)

    def release(self) -> None:
        """Unmount every pin of this set and remove the pin points. A container already started keeps its own
        copy of the mount; a pin that cannot be unmounted stays (the next sweep retries)."""
        points, self._points = self._points, []
        for point in points:
            try:
                _umount(point)
                os.rmdir(point)
            except OSError as exc:
                log.warning("could not remove volume pin %s: %s", point, exc)


class MountPins:
    """Pin points under ``<base>/<pid>-<start time>/`` for this process (see the module doc)."""

    def __init__(self, base: str | os.PathLike[str]) -> None:
        self.base = Path(base)
        pid = os.getpid()
        # pid + start time tell whether the owner still runs; the random part keeps two MountPins of one
        # process (two servers in one test process) from sweeping each other's pins.
        self.owner = f"{pid}-{_proc_start_time(pid) or 'x'}-{uuid.uuid4().hex[:8]}"
        self._available: bool | None = None
        self._same_ns: dict[str | None, bool | None] = {}
        self._lock = threading.Lock()

    def _prepare(self) -> None:
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.base, 0o700)  # root-only: no component of a pin point's path is anyone else's

    def available(self, engine_base_url: str | None = None) -> tuple[bool, str]:
        """(True, "") when pins can be mounted here and the engine sees them; else (False, why)."""
        with self._lock:
            if engine_base_url not in self._same_ns:
                self._same_ns[engine_base_url] = engine_mount_namespace_matches(engine_base_url)
            if self._same_ns[engine_base_url] is False:
                return False, "the container engine runs in another mount namespace than OpenPods"
            if self._available is None:
                self._prepare()
                probe = PinSet(self.base / self.owner)
                try:
                    probe.pin(self.base, "")
                    self._available = True
                except (PinUnavailable, OSError):
                    self._available = False
                finally:
                    probe.release()
            if not self._available:
                return False, "OpenPods may not make bind mounts (it needs root with CAP_SYS_ADMIN)"
            return True, ""

    def new_set(self) -> PinSet:
        self._prepare()
        return PinSet(self.base / self.owner)

    def sweep(self) -> int:
        """Unmount and remove the pins of owners (processes) that no longer run, e.g. after a SIGKILL between
        pinning and starting a container. Returns how many pin points were removed."""
        removed = 0
        try:
            owners = os.listdir(self.base)
        except OSError:
            return 0
        for owner in owners:
            pid_s, _, rest = owner.partition("-")
            start = rest.partition("-")[0]
            if owner == self.owner or (pid_s.isdigit() and _proc_start_time(int(pid_s)) == start):
                continue
            odir = str(self.base / owner)
            for point in _mount_points_below(odir):
                with contextlib.suppress(OSError):
                    _umount(point)
            try:
                entries = os.listdir(odir)
            except OSError:
                continue
            for name in entries:
                path = os.path.join(odir, name)
                if _mount_points_below(path):
                    continue  # still mounted: never delete through a mount
                with contextlib.suppress(OSError):
                    os.rmdir(path)  # only empty directories: a pin point never holds files of its own
                    removed += 1
            with contextlib.suppress(OSError):
                os.rmdir(odir)
        return removed
