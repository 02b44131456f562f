"""The storage backend interface: volume and snapshot files.

A backend keeps, per tenant, one directory tree per volume and one per snapshot. The local backend
(:mod:`openpods.storage.local`) puts them at ``<root>/<tenant>/volumes/<id>`` and
``<root>/<tenant>/snapshots/<id>``; a shared-filesystem backend for Kubernetes implements the same contract.

Conventions of every method
===========================

- ``kind`` is ``"volume"`` or ``"snapshot"``; ``tenant`` and object ids must match :data:`NAME_RE` (a bad one
  is a ``ValueError``, never a path).
- User paths go through :mod:`openpods.storage.paths` and follow its rules: ``"/data"`` and ``"data"`` mean
  the same thing, relative to the object's root; anything that would reach outside raises
  :class:`~openpods.storage.paths.PathRejected`.
- Methods are **blocking** (filesystem I/O). The API calls them in a worker thread
  (``anyio.to_thread.run_sync`` / ``starlette.concurrency.run_in_threadpool``); the iterators returned by
  :meth:`StorageBackend.zip_directory` and the file object of :meth:`StorageBackend.open_file` are read in a
  thread too (Starlette's ``StreamingResponse`` does that for sync iterators). :meth:`StorageBackend.awrite_file`
  is the async entry point for uploads.
- The database is the source of truth for which objects exist. A backend never deletes a directory because a
  row is missing: :meth:`StorageBackend.find_unexpected` only reports.

Errors and the HTTP status they should map to
=============================================

- ``PathRejected`` (a ``ValueError``): bad or escaping user path -> 400.
- ``SnapshotDestinationRequired`` (a ``ValueError``): single-file snapshot source without a destination_path
  -> 400.
- ``NotADirectory`` / ``IsADirectory``: a file where a directory is needed, or the other way round -> 400.
- ``PathNotFound`` / ``ObjectNotFound`` (both ``FileNotFoundError``): path, or the volume's/snapshot's
  directory, does not exist -> 404.
- ``FileExists`` (a ``FileExistsError``): the target exists and ``overwrite`` is false -> 409.
- ``SizeLimitExceeded``: the object would grow over its ``size_limit`` -> 413 (or 400, Tapis style); the
  message says by how much.
- ``AccessDenied`` (a ``PermissionError``): file modes forbid the service to read or write a path (changed
  from inside a pod) -> 409; only possible when the service does not run as root.
"""

from __future__ import annotations

import asyncio
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal

from openpods.storage.paths import PathNotFound, PathRejected

__all__ = [
    "KINDS",
    "NAME_RE",
    "AccessDenied",
    "FileExists",
    "FileInfo",
    "IsADirectory",
    "Kind",
    "NotADirectory",
    "ObjectNotFound",
    "PathNotFound",
    "PathRejected",
    "SizeLimitExceeded",
    "SnapshotDestinationRequired",
    "StorageBackend",
    "StorageError",
    "UploadSession",
    "check_kind",
    "check_name",
    "format_mtime",
]

Kind = Literal["volume", "snapshot"]
KINDS: tuple[Kind, ...] = ("volume", "snapshot")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
"""Tenant ids and object ids as the storage layer accepts them: one path segment, never ``.``/``..``."""

UPLOAD_CHUNK_BYTES = 1 << 20
"""Async uploads are handed to the worker thread in batches of at least this many bytes."""


# ------------------------------------------------------------------------------------------- errors


class StorageError(Exception):
    """Base class of the storage errors below (``PathRejected``/``PathNotFound`` come from ``paths``)."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The volume's or snapshot's directory does not exist."""

    def __init__(self, kind: str, tenant: str, object_id: str) -> None:
        super().__init__(f"The {kind} {object_id!r} has no storage directory (tenant {tenant!r}).")
        self.kind, self.tenant, self.object_id = kind, tenant, object_id

    def __str__(self) -> str:
        return str(self.args[0])


class FileExists(StorageError, FileExistsError):
    """The target already exists and overwriting was not asked for."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "File exists."


class NotADirectory(StorageError, NotADirectoryError):
    """A directory was needed (listing below it, zipping it, a parent of an upload) but a file is there."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "Not a directory."


class IsADirectory(StorageError, IsADirectoryError):
    """A file was needed (download, upload target, snapshot of a file) but a directory is there."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "Is a directory."


class SizeLimitExceeded(StorageError):
    """The operation would make the object larger than its ``size_limit``. Nothing was left behind."""

    def __init__(self, what: str, limit_bytes: int, needed_bytes: int) -> None:
        mb = 1024 * 1024
        super().__init__(
            f"{what} refused: it would need at least {needed_bytes} bytes ({needed_bytes / mb:.1f} MB), over the "
            f"size_limit of {limit_bytes} bytes ({limit_bytes / mb:.1f} MB)."
        )
        self.limit_bytes, self.needed_bytes = limit_bytes, needed_bytes


class StorageUnavailable(StorageError, LookupError):
    """The backend cannot do this now (e.g. no loop device free for a volume's filesystem, or a volume's
    filesystem that cannot be mounted); the message says why. Maps to 503; a LookupError so that starting a
    pod that mounts such a volume is refused with the message, like a missing volume."""


class AccessDenied(StorageError, PermissionError):
    """The file modes (changed from inside a pod, typically) forbid the service to read or write a path. Only
    happens when the service does not run as root. Nothing was left behind."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"{where} cannot be accessed by the service (permission denied); fix its permissions from a pod "
            "and try again."
        )
        self.where = where

    def __str__(self) -> str:
        return str(self.args[0])


class SnapshotDestinationRequired(ValueError):
    """A snapshot of a single file needs a non-empty ``destination_path`` (the name of the copy)."""


def check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'volume' or 'snapshot', not {kind!r}.")
    return kind  # type: ignore[return-value]


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} is not a valid storage name.")
    return value


# ------------------------------------------------------------------------------------------- file info


def format_mtime(ts: float) -> str:
    """``lastModified`` format of the Tapis FileModel: ``%Y-%m-%dT%H:%M:%SZ`` in UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symbolic_link"
    return "other"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One entry of a files listing: the Tapis ``FileModel``.

    ``path`` is relative to the volume/snapshot root and starts with ``/`` (``/data/x.csv``); ``type`` is
    ``file``, ``dir``, ``symbolic_link`` or ``other``; ``size`` is the entry's own size in bytes (``lstat``:
    a symlink's size is the length of its target, a directory's is what the filesystem reports);
    ``lastModified`` is ``%Y-%m-%dT%H:%M:%SZ`` UTC; ``nativePermissions`` looks like ``rwxr-xr-x``.
    """

    path: str
    name: str
    type: str
    size: int
    lastModified: str
    nativePermissions: str

    @classmethod
    def from_stat(cls, path: str, name: str, st: Any) -> FileInfo:
        return cls(
            path=path,
            name=name,
            type=file_type(st.st_mode),
            size=int(st.st_size),
            lastModified=format_mtime(st.st_mtime),
            nativePermissions=stat.filemode(st.st_mode)[1:],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- uploads


class UploadSession(ABC):
    """An upload in progress, from :meth:`StorageBackend.begin_write`.

    Bytes go to a temporary file in the target's directory. :meth:`write` refuses (``SizeLimitExceeded``,
    after aborting) *before* writing a chunk that would take the volume over its limit; :meth:`commit` checks
    again and renames the temporary file over the target atomically; :meth:`abort` (also done on any error
    and by ``__exit__`` when not committed) deletes the temporary file and any directories the upload made.
    """

    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> FileInfo: ...

    @abstractmethod
    def abort(self) -> None:
        """Idempotent; never raises for cleanup problems."""

    @property
    @abstractmethod
    def written(self) -> int: ...

    def __enter__(self) -> UploadSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # after a commit this does nothing


# ------------------------------------------------------------------------------------------- backend


class StorageBackend(ABC):
    """Volume and snapshot storage. Every method is blocking; see the module docstring."""

    # --- objects

    @abstractmethod
    def create_volume(self, tenant: str, volume_id: str, *, exist_ok: bool = False,
                      size_limit_bytes: int | None = None) -> None:
        """Make the volume's empty directory (and the tenant's directories). ``FileExists`` if it already
        exists and ``exist_ok`` is false (it may hold data of an object whose row was lost: look first)."""

    @abstractmethod
    def delete_volume(self, tenant: str, volume_id: str) -> bool:
        """Delete the volume's directory and everything in it, without following symlinks. Returns whether
        there was anything to delete. Checking that no pod mounts it is the caller's job."""

    @abstractmethod
    def exists(self, kind: Kind, tenant: str, object_id: str) -> bool:
        """Whether the object's directory exists."""

    @abstractmethod
    def usage_bytes(self, kind: Kind, tenant: str, object_id: str) -> int:
        """Current size of the object: the sum of ``st_size`` of its regular files, walked without following
        symlinks; hard links count once; directories and symlinks count 0. ``ObjectNotFound`` if missing.
        Directories the service may not read (possible only when it does not run as root) are not counted."""

    def volume_usage_bytes(self, tenant: str, volume_id: str) -> int:
        return self.usage_bytes("volume", tenant, volume_id)

    def snapshot_usage_bytes(self, tenant: str, snapshot_id: str) -> int:
        return self.usage_bytes("snapshot", tenant, snapshot_id)

    # --- reading

    @abstractmethod
    def list_files(self, kind: Kind, tenant: str, object_id: str, path: str = "") -> list[FileInfo]:
        """List a directory (not recursive), sorted by name; ``""``/``"/"`` is the root. Symlinks are listed
        as ``symbolic_link`` and not followed. If ``path`` names a file, the answer is that one file.
        ``PathRejected``, ``PathNotFound``, ``ObjectNotFound``."""

    @abstractmethod
    def stat_path(self, kind: Kind, tenant: str, object_id: str, path: str) -> FileInfo:
        """The :class:`FileInfo` of one path (after resolving symlinks that stay inside)."""

    @abstractmethod
    def open_file(self, kind: Kind, tenant: str, object_id: str, path: str) -> tuple[BinaryIO, int, str]:
        """Open a regular file for streaming: ``(binary file object, size in bytes, file name)``; the caller
        closes the file object. ``path`` must not be the root. ``IsADirectory`` for a directory (zip it
        instead); ``PathRejected`` for a FIFO/socket/device or an escaping path; ``PathNotFound``."""

    @abstractmethod
    def zip_directory(self, kind: Kind, tenant: str, object_id: str, path: str) -> Iterator[bytes]:
        """Stream a zip of the directory ``path`` (not the root: Tapis refuses a download of the whole
        volume), in chunks, never holding more than small buffers.

        Validation happens when this is called (``PathRejected``, ``PathNotFound``, ``NotADirectory``); the
        returned iterator then yields the archive. Members are named ``<dirname>/<relative path>`` and pass
        :func:`~openpods.storage.paths.safe_zip_member_name` (entries whose names do not are skipped).
        Directories get entries (so empty ones survive). Symlinks are never followed out of the object: a link
        to a regular file inside the object is stored as that file's content under the link's name; links to
        directories, escaping links, FIFOs, sockets and devices are skipped, and so is what the service may not
        read (when not running as root). Close the iterator to stop early.
        """

    # --- writing

    @abstractmethod
    def begin_write(
        self, tenant: str, volume_id: str, path: str, *, size_limit_bytes: int, overwrite: bool
    ) -> UploadSession:
        """Start an upload to ``path`` in a volume (see :class:`UploadSession`).

        Checks up front: ``path`` is not the root and stays inside (``PathRejected``); the target is not a
        directory (``IsADirectory``); it does not exist unless ``overwrite`` (``FileExists``); the parents are
        directories (``NotADirectory``; missing ones are created). The size rule: the upload is refused as soon
        as ``usage - size of the file it replaces + bytes written (+ other uploads in flight to the same
        volume)`` would exceed ``size_limit_bytes``."""

    def write_file(
        self,
        tenant: str,
        volume_id: str,
        path: str,
        chunks: Iterable[bytes],
        *,
        size_limit_bytes: int,
        overwrite: bool,
    ) -> FileInfo:
        """Blocking upload from an iterable of byte chunks; returns the new file's :class:`FileInfo`.

        Streams to a temporary file in the same directory, counting bytes, and renames it into place at the
        end. On ``SizeLimitExceeded``, ``FileExists`` or any error (including one raised by ``chunks``)
        nothing is left: no temporary file, no partial target, an existing target untouched, and no parent
        directory that the upload created. For an async source use :meth:`awrite_file`."""
        if hasattr(chunks, "__aiter__"):
            raise TypeError("write_file takes a sync iterable; use `await backend.awrite_file(...)`.")
        with self.begin_write(
            tenant, volume_id, path, size_limit_bytes=size_limit_bytes, overwrite=overwrite
        ) as upload:
            for chunk in chunks:
                if chunk:
                    upload.write(chunk)
            return upload.commit()

    async def awrite_file(
        self,
        tenant: str,
        volume_id: str,
        path: str,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        *,
        size_limit_bytes: int,
        overwrite: bool,
    ) -> FileInfo:
        """Async form of :meth:`write_file`, for a request body: ``chunks`` may be async or sync. Blocking work
        runs in worker threads, in batches of at least :data:`UPLOAD_CHUNK_BYTES`; cancellation (a client
        that disconnects) aborts the upload and leaves nothing behind."""
        upload = await asyncio.to_thread(
            self.begin_write, tenant, volume_id, path, size_limit_bytes=size_limit_bytes, overwrite=overwrite
        )
        try:
            buffer = bytearray()

            async def flush() -> None:
                if buffer:
                    data = bytes(buffer)
                    buffer.clear()
                    await asyncio.to_thread(upload.write, data)

            if isinstance(chunks, AsyncIterable):
                async for chunk in chunks:
                    buffer += chunk
                    if len(buffer) >= UPLOAD_CHUNK_BYTES:
                        await flush()
            else:
                for chunk in chunks:
                    buffer += chunk
                    if len(buffer) >= UPLOAD_CHUNK_BYTES:
                        await flush()
            await flush()
            return await asyncio.to_thread(upload.commit)
        except BaseException:
            upload.abort()  # quick, and must run even when cancelled
            raise

    # --- snapshots

    @abstractmethod
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
        """Copy ``source_path`` of the source volume into ``<snapshot root>/<destination_path>`` and make the
        snapshot read-only on disk; returns the snapshot's size in bytes.

        A directory source copies its *contents* (``copytree(src, dst, dirs_exist_ok=True)``, as Tapis does);
        a file source is copied to ``destination_path``, which must then name the copy
        (``SnapshotDestinationRequired`` if it is empty or ``/``). Symlinks are copied as symlinks (their
        targets are never followed or read); FIFOs, sockets and devices are skipped; modes (minus write bits)
        and mtimes are kept. ``SizeLimitExceeded`` if the copy would exceed ``size_limit_bytes``. On any
        failure the snapshot directory is removed again, so nothing partial remains. ``FileExists`` if the
        snapshot directory already exists with content."""

    def snapshot_copy_state(self, tenant: str, snapshot_id: str) -> str:
        """For a snapshot whose row says CREATING: ``copying`` (a live process is copying it), ``complete``
        (the copy is in place; only the row was not updated) or ``absent`` (no copy runs; anything partial
        has been removed). Backends that cannot tell a running copy answer from what exists."""
        return "complete" if self.exists("snapshot", tenant, snapshot_id) else "absent"

    @abstractmethod
    def delete_snapshot(self, tenant: str, snapshot_id: str) -> bool:
        """Delete the snapshot's directory (read-only bits notwithstanding); returns whether it existed."""

    @abstractmethod
    def make_read_only(self, kind: Kind, tenant: str, object_id: str) -> None:
        """Remove the write bits (``chmod a-w``) of every directory and regular file of the object. This
        protects against accidental writes by unprivileged processes; root ignores it, so mounts of snapshots
        must also be read-only."""

    # --- mounts and housekeeping

    @abstractmethod
    def host_path(
        self, kind: Kind, tenant: str, object_id: str, sub_path: str = "", *, create: bool = False
    ) -> str:
        """Absolute host path to bind-mount for the object (or ``sub_path`` inside it, resolved safely: the
        answer is a real, symlink-free path inside the object). ``ObjectNotFound`` if the object is missing;
        a missing ``sub_path`` is created as a directory when ``create`` (volumes only), otherwise
        ``PathNotFound``.

        Mount it with a mechanism that does not follow symlinks in the source, or accept that a container
        racing to replace a directory with a symlink between this call and the mount could redirect it;
        mounting the object's root (``sub_path=""``) has no such window."""

    def resize_volume(self, tenant: str, volume_id: str, size_limit_bytes: int, *, offline_ok: bool = True) -> None:
        """Apply a new size limit where the backend enforces it itself (a volume's own filesystem); the caller
        has checked that the content fits. ``offline_ok``: no pod mounts the volume, so it may be unmounted
        meanwhile; otherwise only an online grow is tried (``StorageUnavailable`` when that is impossible)."""
        del tenant, volume_id, size_limit_bytes, offline_ok  # directories have no size of their own

    def volume_limit_enforced(self, tenant: str, volume_id: str) -> bool:
        """Whether writes by pods are held to the size limit (not only API uploads)."""
        return False

    def clean_upload_leftovers(self, *, min_age_sec: float = 0.0) -> int:
        """Remove what uploads of dead processes left behind; returns how many files. Backends whose uploads
        leave nothing have nothing to do."""
        return 0

    @abstractmethod
    def find_unexpected(
        self, tenant: str, known_volume_ids: Iterable[str], known_snapshot_ids: Iterable[str]
    ) -> list[str]:
        """Report (never delete) entries of the tenant's volume and snapshot directories that match no known
        id: absolute paths, sorted. An operator decides what to do with them."""
