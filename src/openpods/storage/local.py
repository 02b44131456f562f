"""Local-directory storage backend: ``<root>/<tenant>/volumes/<id>`` and ``<root>/<tenant>/snapshots/<id>``.

Every walk of an object's tree is done by file descriptor: a directory is opened with ``O_NOFOLLOW`` relative to
its parent's descriptor and checked to be the directory that was listed, so a container that mounts the volume
and swaps a directory for a symlink mid-walk cannot make this module read, measure, copy, chmod or zip anything
outside the object. User paths are resolved only by :mod:`openpods.storage.paths`.

Blocking I/O throughout; see :mod:`openpods.storage.base` for how the API calls it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import secrets
import shutil
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from openpods.storage import loopfs
from openpods.storage.base import (
    AccessDenied,
    FileExists,
    FileInfo,
    IsADirectory,
    Kind,
    NotADirectory,
    ObjectNotFound,
    SizeLimitExceeded,
    SnapshotDestinationRequired,
    StorageBackend,
    StorageUnavailable,
    UploadSession,
    check_kind,
    check_name,
)
from openpods.storage.paths import (
    PathNotFound,
    PathRejected,
    clean_parts,
    display_path,
    is_inside,
    open_dirs,
    open_regular_file,
    relative_parts,
    resolve_inside,
    safe_zip_member_name,
)

__all__ = ["TEMP_PREFIX", "LocalStorage"]

TEMP_PREFIX = ".openpods-upload-"
"""Name prefix of the temporary file an upload streams into (in the target's directory)."""
_TEMP_RE = re.compile(r"^\.openpods-upload-[0-9a-f]{16}\.part$")


def is_upload_temp(name: str) -> bool:
    """An upload's temporary file: never listed, measured, copied or zipped; a leftover of a killed process is
    removed by :meth:`LocalStorage.clean_upload_leftovers`. (A file a pod names so is hidden too.)"""
    return bool(_TEMP_RE.match(name))

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_SUBDIR = {"volume": "volumes", "snapshot": "snapshots"}


@contextlib.contextmanager
def _translated(where: str | None = None) -> Iterator[None]:
    """Turn the builtin errors of the path helpers into the storage errors of :mod:`base`; with ``where`` (the
    path as shown to the client), a ``PermissionError`` becomes :class:`AccessDenied`."""
    try:
        yield
    except (NotADirectory, IsADirectory, AccessDenied):
        raise
    except NotADirectoryError as exc:
        raise NotADirectory(str(exc)) from None
    except IsADirectoryError as exc:
        raise IsADirectory(str(exc)) from None
    except PermissionError:
        if where is None:
            raise
        raise AccessDenied(where) from None


def _refuse_upload_temp(path: str) -> None:
    if any(is_upload_temp(part) for part in path.split("/")):
        raise PathNotFound(path)


# ------------------------------------------------------------------------------------------- fd-based walk


@dataclass(slots=True)
class _Entry:
    parts: tuple[str, ...]  # relative to the top of the walk
    st: os.stat_result  # lstat
    parent_fd: int  # valid only until the walk moves on

    @property
    def name(self) -> str:
        return self.parts[-1]


def _names(fd: int, *, hidden: bool = False) -> list[str]:
    """The entries of a directory, upload temporaries left out unless ``hidden``."""
    with os.scandir(fd) as it:
        names = (entry.name for entry in it)
        return sorted((n for n in names if hidden or not is_upload_temp(n)), reverse=True)  # pop(): ascending


def _walk(top_fd: int, *, max_depth: int, strict: bool = False, hidden: bool = False) -> Iterator[_Entry]:
    """Depth-first, pre-order, names in ascending order; never follows a symlink. A directory is entered only
    if the directory opened (``O_NOFOLLOW``, relative to its parent) is the one ``lstat`` saw; entries that
    vanish are skipped, and so are directories this process may not read -- unless ``strict``, which raises
    :class:`AccessDenied` for those. At most ``max_depth`` levels are descended; open descriptors are bounded by
    the depth."""
    stack: list[tuple[int, tuple[str, ...], list[str]]] = []
    fd = os.dup(top_fd)
    try:
        stack.append((fd, (), _names(fd, hidden=hidden)))
    except BaseException:
        os.close(fd)
        raise
    try:
        while stack:
            fd, parts, names = stack[-1]
            if not names:
                os.close(fd)
                stack.pop()
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            child = (*parts, name)
            yield _Entry(child, st, fd)
            if not stat.S_ISDIR(st.st_mode) or len(child) >= max_depth:
                continue
            try:
                cfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except PermissionError:
                if strict:
                    raise AccessDenied(display_path(child)) from None
                continue
            except OSError:
                continue
            try:
                cst = os.fstat(cfd)
                if (cst.st_dev, cst.st_ino) != (st.st_dev, st.st_ino):
                    raise OSError(errno.ESTALE, "directory replaced during walk")
                listing = _names(cfd, hidden=hidden)
            except OSError as exc:
                os.close(cfd)
                if strict and isinstance(exc, PermissionError):
                    raise AccessDenied(display_path(child)) from None
                continue
            stack.append((cfd, child, listing))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _usage(top_fd: int, *, max_depth: int, exclude: frozenset[tuple[int, int]] = frozenset()) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for entry in _walk(top_fd, max_depth=max_depth):
        st = entry.st
        if not stat.S_ISREG(st.st_mode):
            continue
        key = (st.st_dev, st.st_ino)
        if key in exclude:
            continue
        if st.st_nlink > 1:
            if key in seen:
                continue
            seen.add(key)
        total += st.st_size
    return total


def _open_child_file(
    parent_fd: int, name: str, expect: os.stat_result | None = None
) -> tuple[int, os.stat_result]:
    """Open a regular file below ``parent_fd`` without following links or blocking; ``OSError`` otherwise."""
    fd = os.open(name, _FILE_READ_FLAGS, dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if expect is not None and (st.st_dev, st.st_ino) != (expect.st_dev, expect.st_ino):
            raise OSError(errno.ESTALE, "file replaced")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _remove_if_unlocked(parent_fd: int, name: str, expect: os.stat_result) -> bool:
    """Unlink ``name`` if it is still the file ``expect`` and no process holds its upload lock."""
    try:
        fd = os.open(name, _FILE_READ_FLAGS, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        if not os.path.samestat(os.fstat(fd), expect):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # an upload in progress
        os.unlink(name, dir_fd=parent_fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    """Make a finished copy durable before it is renamed into place (files, then their directories)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        with contextlib.suppress(OSError):
            _fsync_dir(dirpath)


def _chmod_nofollow(dir_fd: int | None, name: str, fmt: int, adjust: Callable[[int], int]) -> None:
    """chmod ``name`` (relative to ``dir_fd``) if it is of type ``fmt``, never following a symlink and without
    needing read permission on it: an ``O_PATH`` descriptor pins the inode and ``/proc/self/fd`` reaches it.
    Best effort: errors are ignored (the caller's next step reports what still fails)."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        new = adjust(st.st_mode)
        if stat.S_IFMT(st.st_mode) != fmt or new == stat.S_IMODE(st.st_mode):
            return
        try:
            os.chmod(f"/proc/self/fd/{fd}", new)
        except FileNotFoundError:  # no /proc: open it for real (needs read permission)
            flags = _DIR_FLAGS if fmt == stat.S_IFDIR else _FILE_READ_FLAGS
            rfd = os.open(name, flags, dir_fd=dir_fd)
            try:
                if os.path.samestat(os.fstat(rfd), st):
                    os.fchmod(rfd, new)
            finally:
                os.close(rfd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- zip streaming


class _Sink(io.RawIOBase):
    """A write-only, non-seekable stream that keeps what was written until :meth:`drain`."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._buf += b
        return len(b)

    def drain(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    t = time.gmtime(mtime)
    if t.tm_year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    if t.tm_year > 2107:
        return (2107, 12, 31, 23, 59, 58)
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


# ------------------------------------------------------------------------------------------- uploads


class _LocalUpload(UploadSession):
    def __init__(
        self,
        storage: LocalStorage,
        key: tuple[str, str],
        root_real: str,
        parts: tuple[str, ...],
        *,
        size_limit_bytes: int,
        overwrite: bool,
    ) -> None:
        self._storage = storage
        self._key = key
        self._root_real = root_real
        self._parts = parts
        self._limit = size_limit_bytes
        self._overwrite = overwrite
        self._written = 0
        self._done = False
        # write/commit/abort may come from different threads (an async caller cancelled while a worker thread
        # still writes): serialize them so a descriptor is never closed, or reused, under a running write.
        self._mutex = threading.RLock()
        self._created: list[tuple[str, ...]] = []
        self._parent_fd: int | None = None
        self._fd: int | None = None
        self.inode: tuple[int, int] = (-1, -1)
        self._tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}.part"
        try:
            with _translated():
                self._parent_fd = open_dirs(
                    root_real, parts[:-1], create=True, mode=storage.dir_mode, created=self._created
                )
            existing = self._target_stat()
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode):
                    raise IsADirectory(
                        f"{display_path(parts)} is a directory; it cannot be overwritten by a file."
                    )
                if not overwrite:
                    raise FileExists(f"{display_path(parts)} already exists (set overwrite to replace it).")
            self._fd = os.open(
                self._tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                storage.file_mode,
                dir_fd=self._parent_fd,
            )
            os.fchmod(self._fd, storage.file_mode)
            # Held while the upload lives: a temporary whose lock is free belongs to a process that died.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(self._fd)
            self.inode = (st.st_dev, st.st_ino)
            storage._register(self)
            self._base = storage._usage_excluding_uploads(key, root_real)
            self._replaced = self._replaced_size()
            if self._base - self._replaced > self._limit:
                raise SizeLimitExceeded("Upload", self._limit, self._base - self._replaced)
        except BaseException:
            self.abort()
            raise

    @property
    def key(self) -> tuple[str, str]:
        return self._key

    @property
    def written(self) -> int:
        return self._written

    def _target_stat(self) -> os.stat_result | None:
        try:
            return os.stat(self._parts[-1], dir_fd=self._parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _replaced_size(self) -> int:
        st = self._target_stat() if self._overwrite else None
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0

    def _projected(self, extra: int) -> int:
        others = self._storage._inflight_bytes(self._key, exclude=self)
        return self._base - self._replaced + self._written + extra + others

    def write(self, chunk: bytes) -> None:
        with self._mutex:
            self._write(chunk)

    def _write(self, chunk: bytes) -> None:  # a PermissionError cannot happen here: the file is open
        if self._done or self._fd is None:
            raise ValueError("upload already finished")
        try:
            projected = self._projected(len(chunk))
            if projected > self._limit:
                raise SizeLimitExceeded("Upload", self._limit, projected)
            view = memoryview(chunk)
            while view:
                try:
                    n = os.write(self._fd, view)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the volume's own filesystem is full
                        raise SizeLimitExceeded("Upload", self._limit, projected) from None
                    raise
                view = view[n:]
            self._written += len(chunk)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> FileInfo:
        with self._mutex, _translated(display_path(self._parts)):
            return self._commit()

    def _commit(self) -> FileInfo:
        if self._done or self._fd is None or self._parent_fd is None:
            raise ValueError("upload already finished")
        name = self._parts[-1]
        try:
            if self._storage.fsync:
                os.fsync(self._fd)
            with self._storage._volume_lock(self._key):
                # Exact re-check: other uploads may have completed meanwhile.
                self._base = self._storage._usage_excluding_uploads(self._key, self._root_real)
                self._replaced = self._replaced_size()
                projected = self._projected(0)
                if projected > self._limit:
                    raise SizeLimitExceeded("Upload", self._limit, projected)
                self._place(name)
            if self._storage.fsync:
                os.fsync(self._parent_fd)
            st = os.stat(name, dir_fd=self._parent_fd, follow_symlinks=False)
            info = FileInfo.from_stat(display_path(self._parts), name, st)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._created.clear()
        self._close()
        return info

    def _place(self, name: str) -> None:
        pfd = self._parent_fd
        if self._overwrite:
            try:
                os.rename(self._tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except IsADirectoryError:
                raise IsADirectory(f"{display_path(self._parts)} is a directory.") from None
            return
        try:
            os.link(self._tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileExistsError:
            raise FileExists(
                f"{display_path(self._parts)} already exists (set overwrite to replace it)."
            ) from None
        except OSError:  # no hard links on this filesystem: check, then rename
            if self._target_stat() is not None:
                raise FileExists(f"{display_path(self._parts)} already exists.") from None
            os.rename(self._tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            return
        os.unlink(self._tmp, dir_fd=pfd)

    def _close(self) -> None:
        self._storage._unregister(self)
        for attr in ("_fd", "_parent_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, None)

    def abort(self) -> None:
        with self._mutex:
            self._abort()

    def _abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._parent_fd is not None and self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=self._parent_fd)
        self._close()
        for parts in reversed(self._created):  # directories this upload made, if still empty
            try:
                pfd = open_dirs(self._root_real, parts[:-1])
            except (OSError, PathRejected):
                continue
            try:
                os.rmdir(parts[-1], dir_fd=pfd)
            except OSError:
                pass
            finally:
                os.close(pfd)
        self._created.clear()


# ------------------------------------------------------------------------------------------- the backend


class LocalStorage(StorageBackend):
    """Volumes and snapshots as directories under ``root``.

    ``dir_mode``/``file_mode`` are applied exactly (no umask) to what the API creates; ``fsync`` makes uploads
    durable before they are renamed into place; ``zip_compresslevel`` is the deflate level of zip downloads
    (1 = fast); ``max_depth`` bounds how deep walks go (deeper entries are not counted, copied or zipped).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        dir_mode: int = 0o755,
        file_mode: int = 0o644,
        fsync: bool = True,
        zip_compresslevel: int = 1,
        max_depth: int = 512,
        loop_volumes: bool = False,
    ) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = Path(os.path.realpath(root))
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self.fsync = fsync
        self.zip_compresslevel = zip_compresslevel
        self.max_depth = max_depth
        self.loop_volumes = loop_volumes  # each new volume its own filesystem (see openpods.storage.loopfs)
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._uploads: dict[tuple[str, str], set[_LocalUpload]] = {}

    # --- layout

    def object_root(self, kind: Kind, tenant: str, object_id: str) -> str:
        """``<root>/<tenant>/<volumes|snapshots>/<id>`` (whether or not it exists)."""
        check_kind(kind)
        check_name(tenant, "tenant")
        check_name(object_id, f"{kind} id")
        return os.path.join(self.root, tenant, _SUBDIR[kind], object_id)

    def _existing_root(self, kind: Kind, tenant: str, object_id: str) -> str:
        path = self.object_root(kind, tenant, object_id)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise ObjectNotFound(kind, tenant, object_id) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ObjectNotFound(kind, tenant, object_id)
        if kind == "volume":
            self._ensure_mounted(tenant, object_id, path)
        return path

    def _ensure_mounted(self, tenant: str, volume_id: str, path: str) -> None:
        """A volume with its own filesystem is used only mounted: the directory below it is not the volume
        (writes there would escape the limit and hide the data)."""
        image = self._image_path(tenant, volume_id)
        if not os.path.exists(image) or loopfs.is_mounted(path):
            return
        try:
            loopfs.mount(image, path, self.dir_mode)
        except OSError as exc:
            raise StorageUnavailable(f"The filesystem of volume {volume_id!r} is not mounted and could not be "
                                     f"mounted: {exc}") from None

    def _open_root(self, kind: Kind, tenant: str, object_id: str) -> tuple[str, int]:
        path = self._existing_root(kind, tenant, object_id)
        try:
            return path, os.open(path, _DIR_FLAGS)
        except OSError:
            raise ObjectNotFound(kind, tenant, object_id) from None

    # --- upload bookkeeping (in-process; other processes are covered by the re-walk at commit)

    def _volume_lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def _register(self, upload: _LocalUpload) -> None:
        with self._lock:
            self._uploads.setdefault(upload.key, set()).add(upload)

    def _unregister(self, upload: _LocalUpload) -> None:
        with self._lock:
            uploads = self._uploads.get(upload.key)
            if uploads is not None:
                uploads.discard(upload)
                if not uploads:
                    del self._uploads[upload.key]

    def _inflight_bytes(self, key: tuple[str, str], *, exclude: _LocalUpload) -> int:
        with self._lock:
            return sum(u.written for u in self._uploads.get(key, ()) if u is not exclude)

    def _usage_excluding_uploads(self, key: tuple[str, str], root_real: str) -> int:
        with self._lock:
            inodes = frozenset(u.inode for u in self._uploads.get(key, ()))
        fd = os.open(root_real, _DIR_FLAGS)
        try:
            return _usage(fd, max_depth=self.max_depth, exclude=inodes)
        finally:
            os.close(fd)

    # --- objects

    def create_volume(self, tenant: str, volume_id: str, *, exist_ok: bool = False,
                      size_limit_bytes: int | None = None) -> None:
        path = self._create_object("volume", tenant, volume_id, exist_ok=exist_ok)
        if not (self.loop_volumes and size_limit_bytes) or loopfs.is_mounted(path):
            return
        image = self._image_path(tenant, volume_id)
        try:
            os.makedirs(os.path.dirname(image), mode=0o700, exist_ok=True)
            loopfs.make_image(image, size_limit_bytes)
            loopfs.mount(image, path, self.dir_mode)
            if loopfs.usable_bytes(path) < size_limit_bytes:  # what ext4 keeps back shows only once mounted
                loopfs.resize_offline(image, path, size_limit_bytes, self.dir_mode)
        except OSError as exc:
            with contextlib.suppress(OSError):
                loopfs.unmount(path)
            with contextlib.suppress(OSError):
                os.unlink(image)
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise StorageUnavailable(f"The volume's filesystem could not be made: {exc}") from None

    def _image_path(self, tenant: str, volume_id: str) -> str:
        """The filesystem image of a volume that has its own (``<root>/<tenant>/volume-images/<id>.ext4``)."""
        check_name(tenant, "tenant")
        check_name(volume_id, "volume id")
        return os.path.join(self.root, tenant, "volume-images", f"{volume_id}.ext4")

    def volume_limit_enforced(self, tenant: str, volume_id: str) -> bool:
        return os.path.exists(self._image_path(tenant, volume_id))

    def resize_volume(self, tenant: str, volume_id: str, size_limit_bytes: int, *, offline_ok: bool = True) -> None:
        image = self._image_path(tenant, volume_id)
        if not os.path.exists(image):
            return
        path = self._existing_root("volume", tenant, volume_id)
        try:
            loopfs.mount(image, path, self.dir_mode)
            usable = loopfs.usable_bytes(path)
            if size_limit_bytes <= usable <= size_limit_bytes + max(size_limit_bytes // 50, 512 * 1024):
                return
            if usable < size_limit_bytes and not offline_ok:
                loopfs.grow(image, path, size_limit_bytes)  # online: the filesystem stays mounted in pods
            elif offline_ok:
                loopfs.resize_offline(image, path, size_limit_bytes, self.dir_mode)
        except OSError as exc:
            raise StorageUnavailable(f"The volume's filesystem could not be resized: {exc}") from None

    def mount_volume_images(self) -> list[str]:
        """Mount every volume filesystem that is not mounted (after a reboot, or a crash between creating and
        mounting); returns the problems (one per volume that could not be mounted)."""
        problems: list[str] = []
        try:
            tenants = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return problems
        for tenant in tenants:
            base = os.path.join(self.root, tenant, "volume-images")
            try:
                images = sorted(n for n in os.listdir(base) if n.endswith(".ext4"))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in images:
                volume_id = name.removesuffix(".ext4")
                path = self.object_root("volume", tenant, volume_id)
                if not os.path.isdir(path):  # the volume was deleted; the image is what a crash left
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(base, name))
                    continue
                try:
                    loopfs.mount(os.path.join(base, name), path, self.dir_mode)
                except OSError as exc:
                    problems.append(f"volume {tenant}/{volume_id}: {exc}")
        return problems

    def _create_object(self, kind: Kind, tenant: str, object_id: str, *, exist_ok: bool) -> str:
        path = self.object_root(kind, tenant, object_id)
        parent = os.path.dirname(path)
        os.makedirs(parent, mode=self.dir_mode, exist_ok=True)
        try:
            os.mkdir(path, self.dir_mode)
        except FileExistsError:
            if exist_ok and stat.S_ISDIR(os.lstat(path).st_mode):
                return path
            raise FileExists(f"The {kind} directory for {object_id!r} already exists.") from None
        os.chmod(path, self.dir_mode)
        return path

    def exists(self, kind: Kind, tenant: str, object_id: str) -> bool:
        try:
            self._existing_root(kind, tenant, object_id)
        except ObjectNotFound:
            return False
        return True

    def delete_volume(self, tenant: str, volume_id: str) -> bool:
        path = self.object_root("volume", tenant, volume_id)
        image = self._image_path(tenant, volume_id)
        if os.path.exists(image):
            self._rmtree_contents(path)  # the data goes even if a lazy unmount keeps the filesystem a while
            loopfs.unmount(path)
        existed = self._delete_object("volume", tenant, volume_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(image)
            existed = True
        return existed

    def _rmtree_contents(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for name in os.listdir(path):
                child = os.path.join(path, name)
                if os.path.isdir(child) and not os.path.islink(child):
                    self._rmtree(child)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(child)

    def delete_snapshot(self, tenant: str, snapshot_id: str) -> bool:
        self._remove_abandoned_partial(self._partial_root(tenant, snapshot_id))
        return self._delete_object("snapshot", tenant, snapshot_id)

    def _delete_object(self, kind: Kind, tenant: str, object_id: str) -> bool:
        path = self.object_root(kind, tenant, object_id)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)  # a stray file or symlink: remove the entry itself, never its target
            return True
        self._rmtree(path)
        return True

    def _rmtree(self, path: str) -> None:
        """``shutil.rmtree`` (fd-based, symlink-attack safe); if it fails (read-only directories of a snapshot,
        when not running as root), give directories back their owner's write bit and try once more."""
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        except OSError:
            self._chmod_tree(path, add=0o700, remove=0)
            shutil.rmtree(path)

    def _chmod_tree(self, path: str, *, add: int, remove: int, files: bool = False) -> None:
        """Change the mode of the directory ``path``, of every directory below it and (``files``) of every
        regular file. Never follows a symlink; works on directories this process cannot read yet (each one is
        fixed before the walk enters it)."""

        def adjust(mode: int) -> int:
            return (stat.S_IMODE(mode) | add) & ~remove

        _chmod_nofollow(None, path, stat.S_IFDIR, adjust)
        top = os.open(path, _DIR_FLAGS)
        try:
            for entry in _walk(top, max_depth=self.max_depth):  # pre-order: a directory before its content
                fmt = stat.S_IFMT(entry.st.st_mode)
                if fmt == stat.S_IFDIR or (files and fmt == stat.S_IFREG):
                    _chmod_nofollow(entry.parent_fd, entry.name, fmt, adjust)
        finally:
            os.close(top)

    def make_read_only(self, kind: Kind, tenant: str, object_id: str) -> None:
        path = self._existing_root(kind, tenant, object_id)
        self._chmod_tree(path, add=0, remove=0o222, files=True)

    def usage_bytes(self, kind: Kind, tenant: str, object_id: str) -> int:
        _, fd = self._open_root(kind, tenant, object_id)
        try:
            return _usage(fd, max_depth=self.max_depth)
        finally:
            os.close(fd)

    # --- reading

    def list_files(self, kind: Kind, tenant: str, object_id: str, path: str = "") -> list[FileInfo]:
        _refuse_upload_temp(path)
        root = self._existing_root(kind, tenant, object_id)
        root_real = os.path.realpath(root)
        real = resolve_inside(root_real, path, must_exist=True)
        parts = relative_parts(root_real, real)
        if not os.path.isdir(real):
            return [self._stat_parts(root_real, parts)]
        with _translated(display_path(parts)):
            fd = open_dirs(root_real, parts)
        try:
            infos = []
            for name in sorted(_names(fd)):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                infos.append(FileInfo.from_stat(display_path((*parts, name)), name, st))
            return infos
        finally:
            os.close(fd)

    def _stat_parts(self, root_real: str, parts: tuple[str, ...]) -> FileInfo:
        if not parts:
            return FileInfo.from_stat("/", "", os.stat(root_real))
        with _translated(display_path(parts)):
            pfd = open_dirs(root_real, parts[:-1])
        try:
            st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise PathNotFound(display_path(parts)) from None
        finally:
            os.close(pfd)
        return FileInfo.from_stat(display_path(parts), parts[-1], st)

    def stat_path(self, kind: Kind, tenant: str, object_id: str, path: str) -> FileInfo:
        _refuse_upload_temp(path)
        root_real = os.path.realpath(self._existing_root(kind, tenant, object_id))
        real = resolve_inside(root_real, path, must_exist=True)
        return self._stat_parts(root_real, relative_parts(root_real, real))

    def open_file(self, kind: Kind, tenant: str, object_id: str, path: str) -> tuple[BinaryIO, int, str]:
        root = self._existing_root(kind, tenant, object_id)
        parts = clean_parts(path)
        _refuse_upload_temp(path)
        with _translated(display_path(parts)):
            fd, st, _ = open_regular_file(root, path)
        return os.fdopen(fd, "rb"), st.st_size, parts[-1]

    def zip_directory(self, kind: Kind, tenant: str, object_id: str, path: str) -> Iterator[bytes]:
        root_real = os.path.realpath(self._existing_root(kind, tenant, object_id))
        real = resolve_inside(root_real, path, must_exist=True, allow_root=False)
        parts = relative_parts(root_real, real)
        if not os.path.isdir(real):
            raise NotADirectory(f"{display_path(parts)} is not a directory.")
        return self._zip_stream(root_real, parts)

    def _zip_stream(self, root_real: str, parts: tuple[str, ...]) -> Iterator[bytes]:
        with _translated(display_path(parts)):
            top_fd = open_dirs(root_real, parts)
        walk = _walk(top_fd, max_depth=self.max_depth)
        sink = _Sink()
        try:
            zf = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
            try:
                top = safe_zip_member_name(parts[-1])
            except PathRejected:  # reached through a symlink whose target has an unsafe name
                top = "download"
            zf.mkdir(self._zinfo(top + "/", os.fstat(top_fd)))
            for entry in walk:
                try:
                    name = safe_zip_member_name("/".join((top, *entry.parts)))
                except PathRejected:
                    continue
                mode = entry.st.st_mode
                if stat.S_ISDIR(mode):
                    zf.mkdir(self._zinfo(name + "/", entry.st))
                elif stat.S_ISREG(mode):
                    try:
                        fd, st = _open_child_file(entry.parent_fd, entry.name, entry.st)
                    except OSError:
                        continue
                    yield from self._zip_member(zf, sink, name, fd, st)
                elif stat.S_ISLNK(mode):
                    opened = self._open_internal_link(root_real, (*parts, *entry.parts))
                    if opened is not None:
                        yield from self._zip_member(zf, sink, name, *opened)
                data = sink.drain()
                if data:
                    yield data
            zf.close()
            yield sink.drain()
        finally:
            walk.close()
            os.close(top_fd)

    @staticmethod
    def _open_internal_link(root_real: str, link_parts: tuple[str, ...]) -> tuple[int, os.stat_result] | None:
        """The regular file a symlink points to, if it is inside the object; None for anything else."""
        target = os.path.realpath(os.path.join(root_real, *link_parts))
        if not is_inside(root_real, target) or target == root_real:
            return None
        try:
            fd, st, _ = open_regular_file(root_real, display_path(relative_parts(root_real, target)))
        except (OSError, PathRejected):
            return None
        return fd, st

    def _zinfo(self, name: str, st: os.stat_result) -> zipfile.ZipInfo:
        zinfo = zipfile.ZipInfo(name, date_time=_zip_time(st.st_mtime))
        zinfo.external_attr = (stat.S_IMODE(st.st_mode) | stat.S_IFMT(st.st_mode)) << 16
        if name.endswith("/"):
            zinfo.external_attr |= 0x10  # MS-DOS directory flag
            zinfo.CRC = zinfo.compress_size = zinfo.file_size = 0
        else:
            zinfo.compress_type = zipfile.ZIP_DEFLATED
            zinfo._compresslevel = self.zip_compresslevel
        return zinfo

    def _zip_member(
        self, zf: zipfile.ZipFile, sink: _Sink, name: str, fd: int, st: os.stat_result
    ) -> Iterator[bytes]:
        try:
            with zf.open(self._zinfo(name, st), "w", force_zip64=True) as dest:
                while True:
                    data = os.read(fd, _CHUNK)
                    if not data:
                        break
                    dest.write(data)
                    out = sink.drain()
                    if out:
                        yield out
        finally:
            os.close(fd)

    # --- writing

    def begin_write(
        self, tenant: str, volume_id: str, path: str, *, size_limit_bytes: int, overwrite: bool
    ) -> UploadSession:
        if size_limit_bytes < 0:
            raise ValueError("size_limit_bytes must be >= 0.")
        root_real = os.path.realpath(self._existing_root("volume", tenant, volume_id))
        real = resolve_inside(root_real, path, allow_root=False)
        parts = relative_parts(root_real, real)
        with _translated(display_path(parts)):
            return _LocalUpload(
                self,
                (tenant, volume_id),
                root_real,
                parts,
                size_limit_bytes=size_limit_bytes,
                overwrite=overwrite,
            )

    # --- snapshots

    def create_snapshot(
        self,
        tenant: str,
        snapshot_id: str,
        source_volume_id: str,
        source_path: str,
        destination_path: str = "",
        *,
        size_limit_bytes: int,
    ) -> int:
        src_root = os.path.realpath(self._existing_root("volume", tenant, source_volume_id))
        dest_parts = clean_parts(destination_path, what="destination_path")
        src_real = resolve_inside(src_root, source_path, must_exist=True)
        src_parts = relative_parts(src_root, src_real)
        is_dir = os.path.isdir(src_real)
        if not is_dir and not dest_parts:
            raise SnapshotDestinationRequired(
                "destination_path is required when source_volume_path is a single file: it names the copy "
                "inside the snapshot (for example 'config.json')."
            )
        final = self.object_root("snapshot", tenant, snapshot_id)
        os.makedirs(os.path.dirname(final), mode=self.dir_mode, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(final).st_mode) or os.listdir(final):
                raise FileExists(f"The snapshot directory for {snapshot_id!r} already exists.")
        # The copy goes to a hidden directory, locked while it fills, and is renamed into place only when
        # complete: a process killed mid-copy leaves no half snapshot under the snapshot's name, and the lock
        # tells the recovery that nobody copies any more (see snapshot_copy_state).
        snap_root = self._partial_root(tenant, snapshot_id)
        lock_fd = self._claim_partial(snap_root, snapshot_id)
        try:
            with _translated():
                if is_dir:
                    copied = self._copy_tree(src_root, src_parts, snap_root, dest_parts, size_limit_bytes)
                else:
                    copied = self._copy_single(src_root, source_path, snap_root, dest_parts, size_limit_bytes)
            os.chmod(snap_root, self.dir_mode)
            self._chmod_tree(snap_root, add=0, remove=0o222, files=True)
            if self.fsync:
                _fsync_tree(snap_root)
            os.rename(snap_root, final)  # atomic; replaces an empty directory of that name
            if self.fsync:
                _fsync_dir(os.path.dirname(final))
            return copied
        except BaseException:
            self._rmtree(snap_root)
            raise
        finally:
            os.close(lock_fd)

    def _partial_root(self, tenant: str, snapshot_id: str) -> str:
        """Where a snapshot's copy is made (ids never start with '.', so no snapshot has this name)."""
        final = self.object_root("snapshot", tenant, snapshot_id)
        return os.path.join(os.path.dirname(final), f".partial-{snapshot_id}")

    def _claim_partial(self, path: str, snapshot_id: str) -> int:
        """Create ``path`` (removing an abandoned one) and return a descriptor holding its lock."""
        for _ in range(2):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not self._remove_abandoned_partial(path):
                    raise FileExists(f"Snapshot {snapshot_id!r} is being copied by another process.") from None
                continue
            fd = os.open(path, _DIR_FLAGS)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FileExists(f"Snapshot {snapshot_id!r} is being copied by another process.") from None
            return fd
        raise FileExists(f"Snapshot {snapshot_id!r} is being copied by another process.")

    def _remove_abandoned_partial(self, path: str) -> bool:
        """Remove a partial copy whose lock is free (its process died); False while a copy holds it."""
        try:
            fd = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            return True
        except OSError:  # not a directory: a stray entry
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._rmtree(path)  # while holding the lock: no copy can claim it meanwhile
            return True
        finally:
            os.close(fd)

    def snapshot_copy_state(self, tenant: str, snapshot_id: str) -> str:
        """``copying`` (a live process holds the copy's lock), ``complete`` (the snapshot's directory is in
        place) or ``absent`` (nothing, or only an abandoned partial copy, which is removed)."""
        if self.exists("snapshot", tenant, snapshot_id):
            return "complete"
        return "absent" if self._remove_abandoned_partial(self._partial_root(tenant, snapshot_id)) else "copying"

    def _copy_single(
        self, src_root: str, source_path: str, snap_root: str, dest_parts: tuple[str, ...], limit: int
    ) -> int:
        try:
            fd, st, _ = open_regular_file(src_root, source_path)
        except PermissionError:
            raise AccessDenied(display_path(clean_parts(source_path))) from None
        try:
            if st.st_size > limit:
                raise SizeLimitExceeded("Snapshot", limit, st.st_size)
            parent = os.path.join(snap_root, *dest_parts[:-1])
            self._makedirs_private(snap_root, dest_parts[:-1])
            return self._copy_fd(fd, st, os.path.join(parent, dest_parts[-1]), limit, already=0)
        finally:
            os.close(fd)

    def _makedirs_private(self, snap_root: str, parts: tuple[str, ...]) -> None:
        path = snap_root
        for name in parts:
            path = os.path.join(path, name)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
                os.chmod(path, self.dir_mode)

    def _copy_tree(
        self,
        src_root: str,
        src_parts: tuple[str, ...],
        snap_root: str,
        dest_parts: tuple[str, ...],
        limit: int,
    ) -> int:
        try:
            src_fd = open_dirs(src_root, src_parts)
        except PermissionError:
            raise AccessDenied(display_path(src_parts)) from None
        try:
            needed = _usage(src_fd, max_depth=self.max_depth)
            if needed > limit:
                raise SizeLimitExceeded("Snapshot", limit, needed)
            self._makedirs_private(snap_root, dest_parts)
            dest = os.path.join(snap_root, *dest_parts)
            copied = 0
            dirs: list[tuple[str, os.stat_result]] = []
            for entry in _walk(src_fd, max_depth=self.max_depth, strict=True):
                target = os.path.join(dest, *entry.parts)
                mode = entry.st.st_mode
                if stat.S_ISDIR(mode):
                    os.mkdir(target, 0o700)
                    dirs.append((target, entry.st))
                elif stat.S_ISREG(mode):
                    try:
                        fd, st = _open_child_file(entry.parent_fd, entry.name, entry.st)
                    except PermissionError:
                        raise AccessDenied(display_path((*src_parts, *entry.parts))) from None
                    except OSError:
                        continue  # vanished or replaced while copying
                    try:
                        copied += self._copy_fd(fd, st, target, limit, already=copied)
                    finally:
                        os.close(fd)
                elif stat.S_ISLNK(mode):
                    try:
                        link = os.readlink(entry.name, dir_fd=entry.parent_fd)
                    except OSError:
                        continue
                    os.symlink(link, target)  # copied as a link; its target is never read
                    with contextlib.suppress(OSError, NotImplementedError):
                        os.utime(
                            target, ns=(entry.st.st_atime_ns, entry.st.st_mtime_ns), follow_symlinks=False
                        )
            for target, st in reversed(dirs):  # after their content, so mtimes stick
                os.chmod(target, stat.S_IMODE(st.st_mode) & 0o777 | 0o700)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
            return copied
        finally:
            os.close(src_fd)

    def _copy_fd(self, src: int, st: os.stat_result, target: str, limit: int, *, already: int) -> int:
        """Copy an open regular file to a new file ``target``; ``SizeLimitExceeded`` once ``already`` plus the
        bytes copied exceed ``limit``."""
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        total = 0
        try:
            use_range = hasattr(os, "copy_file_range")
            while True:
                n = 0
                if use_range:
                    try:
                        n = os.copy_file_range(src, dst, _CHUNK * 8)
                    except OSError as exc:
                        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                            raise
                        use_range = False
                        continue
                else:
                    data = os.read(src, _CHUNK)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(dst, view) :]
                    n = len(data)
                if n == 0:
                    break
                total += n
                if already + total > limit:
                    raise SizeLimitExceeded("Snapshot", limit, already + total)
            os.fchmod(dst, stat.S_IMODE(st.st_mode) & 0o777 | 0o400)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
        return total

    # --- mounts and housekeeping

    def host_path(
        self, kind: Kind, tenant: str, object_id: str, sub_path: str = "", *, create: bool = False
    ) -> str:
        root_real = os.path.realpath(self._existing_root(kind, tenant, object_id))
        parts = clean_parts(sub_path, what="sub_path")
        if not parts:
            return root_real
        real = resolve_inside(root_real, sub_path)
        if not os.path.lexists(real):
            if not (create and kind == "volume"):
                raise PathNotFound(sub_path)
            with _translated(display_path(parts)):
                os.close(
                    open_dirs(root_real, relative_parts(root_real, real), create=True, mode=self.dir_mode)
                )
            real = resolve_inside(root_real, sub_path, must_exist=True)
        return str(real)

    def find_unexpected(
        self, tenant: str, known_volume_ids: Iterable[str], known_snapshot_ids: Iterable[str]
    ) -> list[str]:
        check_name(tenant, "tenant")
        found: list[str] = []
        for kind, known in (("volumes", set(known_volume_ids)), ("snapshots", set(known_snapshot_ids))):
            base = os.path.join(self.root, tenant, kind)
            try:
                names = os.listdir(base)
            except (FileNotFoundError, NotADirectoryError):
                continue
            # Names with a leading '.' are this module's own (a snapshot's copy in progress), never an object.
            found.extend(os.path.join(base, name) for name in names if name not in known and name[:1] != ".")
        return sorted(found)

    def clean_upload_leftovers(self, *, min_age_sec: float = 0.0) -> int:
        """Remove the temporary files of uploads whose process died (their lock is free) and that were not
        modified for ``min_age_sec``, in every volume; returns how many. Safe while other processes upload."""
        removed = 0
        now = time.time()
        try:
            tenants = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return 0
        for tenant in tenants:
            base = os.path.join(self.root, tenant, _SUBDIR["volume"])
            try:
                volumes = sorted(os.listdir(base))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for volume_id in volumes:
                try:
                    top = os.open(os.path.join(base, volume_id), _DIR_FLAGS)
                except OSError:
                    continue
                try:
                    for entry in _walk(top, max_depth=self.max_depth, hidden=True):
                        if (stat.S_ISREG(entry.st.st_mode) and is_upload_temp(entry.name)
                                and now - entry.st.st_mtime >= min_age_sec
                                and _remove_if_unlocked(entry.parent_fd, entry.name, entry.st)):
                            removed += 1
                finally:
                    os.close(top)
        return removed

