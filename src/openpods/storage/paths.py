"""The one place where user-supplied paths are turned into filesystem paths inside a root.

Every files endpoint (list, contents, upload), every snapshot copy and every bind-mount ``sub_path`` goes
through this module. Nothing else in OpenPods joins a user string onto a volume or snapshot directory.

Contract
========

A *user path* is the string a client sent, **after** the web framework decoded the URL once (Starlette
does). It is interpreted relative to the root, the way the Tapis API does: ``"/data/x"`` and ``"data/x"``
both mean ``<root>/data/x``; ``""`` and ``"/"`` mean the root itself. Repeated slashes and ``.`` segments
are collapsed.

Refused with :class:`PathRejected` (a ``ValueError``; HTTP 400), with a message that says why:

- a ``..`` segment anywhere (even one that would stay inside, such as ``a/../b``: there is no legitimate use);
- NUL bytes and every other control character (Unicode category ``Cc``: U+0000-U+001F, U+007F-U+009F);
- backslashes (a Windows separator, and a classic traversal trick);
- a percent-escape that decodes to something dangerous: ``.``, ``/``, ``\\``, ``%`` (double encoding such as
  ``%252e``), a control character or a non-ASCII byte (overlong UTF-8 such as ``%c0%ae``). The path is
  decoded once more and the decoded form is checked again. Harmless escapes (``%20``) are kept literally: a
  file may really be called ``a%20b``;
- a path longer than :data:`MAX_PATH_BYTES` or a segment longer than :data:`MAX_NAME_BYTES` (UTF-8 bytes), or
  a string that is not valid Unicode text;
- a path that, once symbolic links are resolved, leads outside the root. Links whose target stays inside the
  root are followed (the returned path is the real, link-free one). This covers links made by a container
  that mounts the volume (``ln -s /etc x``, ``ln -s ../../other-tenant x``): their targets are resolved on the
  host, where they must still land inside the root.

:func:`resolve_inside` answers with the real path. Because a container can swap a directory for a symlink
between that check and the use of the path, the ``open_*`` functions do not open the returned path by name:
they walk from the root one segment at a time, each opened with ``O_NOFOLLOW`` relative to its parent's file
descriptor, so any symlink that appears after the check makes the open fail (``PathRejected``), and they
re-check ``/proc/self/fd`` after opening. Regular files are opened with ``O_NONBLOCK`` and checked with
``fstat``, so a FIFO or a device node planted in a volume can neither hang nor leak anything.

:func:`safe_zip_member_name` and :func:`safe_extract_path` do the same for names inside zip archives
(zip-slip).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import stat
import unicodedata
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "PathNotFound",
    "PathRejected",
    "clean_parts",
    "display_path",
    "fd_path",
    "is_inside",
    "open_directory",
    "open_dirs",
    "open_pinned_dir",
    "open_regular_file",
    "real_root",
    "relative_parts",
    "resolve_inside",
    "safe_extract_path",
    "safe_zip_member_name",
]

MAX_PATH_BYTES = 4096
"""Longest accepted user path, in UTF-8 bytes (Linux PATH_MAX)."""
MAX_NAME_BYTES = 255
"""Longest accepted path segment, in UTF-8 bytes (Linux NAME_MAX)."""

_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRejected(ValueError):
    """A user path that is malformed or would reach outside its root. The message is safe to show to the
    client (it never reveals where a symlink points)."""


class PathNotFound(FileNotFoundError):
    """A valid user path that does not exist (HTTP 404)."""

    def __init__(self, user_path: str) -> None:
        super().__init__(f"Path {user_path!r} does not exist.")
        self.user_path = user_path

    def __str__(self) -> str:
        return str(self.args[0])


# ------------------------------------------------------------------------------------------- lexical checks


def _check_chars(text: str, shown: str, what: str) -> None:
    if "\x00" in text:
        raise PathRejected(f"{what} {shown} contains a NUL byte.")
    for ch in text:
        if unicodedata.category(ch) == "Cc":
            raise PathRejected(f"{what} {shown} contains a control character ({ch!r}).")
    if "\\" in text:
        raise PathRejected(f"{what} {shown} contains a backslash; use '/' as the separator.")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise PathRejected(f"{what} {shown} is not valid Unicode text.") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise PathRejected(f"{what} is too long ({len(encoded)} bytes; at most {MAX_PATH_BYTES}).")


def _check_escapes(text: str, shown: str, what: str) -> None:
    for match in _ESCAPE_RE.finditer(text):
        byte = int(match.group(1), 16)
        if byte == 0x25:
            raise PathRejected(f"{what} {shown} is double percent-encoded ({match.group(0)}).")
        if byte in (0x2E, 0x2F, 0x5C) or byte < 0x20 or byte >= 0x7F:
            raise PathRejected(
                f"{what} {shown} contains the percent-encoded character {match.group(0)}, which is not "
                "allowed (encoded dots, separators and control characters are refused)."
            )


def _split(text: str, shown: str, what: str) -> tuple[str, ...]:
    parts: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise PathRejected(f"{what} {shown} contains a '..' segment; paths must stay inside the volume.")
        if len(segment.encode("utf-8")) > MAX_NAME_BYTES:
            raise PathRejected(f"{what} {shown} has a segment longer than {MAX_NAME_BYTES} bytes.")
        parts.append(segment)
    return tuple(parts)


def clean_parts(user_path: str, *, what: str = "path") -> tuple[str, ...]:
    """Validate ``user_path`` lexically and return its segments (``()`` for the root).

    Applies every check of the module docstring except symlink resolution; ``what`` names the field in
    messages (e.g. ``"sub_path"``)."""
    if not isinstance(user_path, str):
        raise PathRejected(f"{what} must be a string.")
    shown = repr(user_path) if len(user_path) <= 200 else repr(user_path[:200] + "...")
    _check_chars(user_path, shown, what)
    _check_escapes(user_path, shown, what)
    parts = _split(user_path, shown, what)
    # Decode once and check again: whatever a later consumer might decode must be just as clean.
    decoded = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), user_path)
    if decoded != user_path:
        _check_chars(decoded, shown, what)
        _check_escapes(decoded, shown, what)
        _split(decoded, shown, what)
    return parts


# ------------------------------------------------------------------------------------------- resolution


def real_root(root: str | os.PathLike[str]) -> str:
    """The canonical absolute form of ``root`` (symlinks in the root's own path resolved)."""
    try:
        return os.path.realpath(os.fspath(root))
    except OSError as exc:
        raise PathNotFound(os.fspath(root)) from exc


def is_inside(root_real: str, candidate: str) -> bool:
    """True when ``candidate`` (an absolute, already resolved path) is ``root_real`` or below it."""
    if candidate == root_real:
        return True
    prefix = root_real if root_real.endswith(os.sep) else root_real + os.sep
    return candidate.startswith(prefix)


def resolve_inside(
    root: str | os.PathLike[str], user_path: str, *, must_exist: bool = False, allow_root: bool = True
) -> Path:
    """Resolve ``user_path`` inside ``root`` and return the real (symlink-free, absolute) path.

    Raises :class:`PathRejected` for anything the module docstring lists, or when the result is the root
    itself and ``allow_root`` is false; :class:`PathNotFound` when ``must_exist`` and nothing is there.
    A symlink loop is reported as not found. Does not create anything.

    The answer is only as good as the moment it was computed; to open what it names, use
    :func:`open_regular_file`, :func:`open_directory` or :func:`open_dirs`, which are race-safe.
    """
    parts = clean_parts(user_path)
    root_real = real_root(root)
    if not parts:
        if not allow_root:
            raise PathRejected("path must name something inside the volume, not the volume's root.")
        if must_exist and not os.path.isdir(root_real):
            raise PathNotFound(user_path)
        return Path(root_real)
    try:
        real = os.path.realpath(os.path.join(root_real, *parts))
    except OSError as exc:  # e.g. ENAMETOOLONG through links, EACCES on a component: never a 500
        raise PathRejected(f"path {user_path!r} cannot be resolved ({exc.strerror}).") from None
    if not is_inside(root_real, real):
        raise PathRejected(f"path {user_path!r} leads outside the volume through a symbolic link.")
    if real == root_real and not allow_root:
        raise PathRejected("path must name something inside the volume, not the volume's root.")
    if must_exist:
        try:
            os.stat(real)  # follows nothing in a real path, except an unresolvable loop
        except OSError:
            raise PathNotFound(user_path) from None
    return Path(real)


def relative_parts(root_real: str, real: str | os.PathLike[str]) -> tuple[str, ...]:
    """Segments of ``real`` below ``root_real`` (both resolved). Raises ``PathRejected`` if outside."""
    real = os.fspath(real)
    if not is_inside(root_real, real):
        raise PathRejected("path leads outside the volume.")
    rel = os.path.relpath(real, root_real)
    return () if rel == "." else tuple(rel.split(os.sep))


def display_path(parts: Sequence[str]) -> str:
    """How a path is shown to clients: relative to the volume root, starting with ``/``."""
    return "/" + "/".join(parts)


# ------------------------------------------------------------------------------------------- race-safe open


def fd_path(fd: int) -> str | None:
    """Where the kernel says ``fd`` points (``/proc/self/fd``), or None where /proc is unavailable."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target.removesuffix(" (deleted)")


def _recheck(fd: int, root_real: str) -> None:
    where = fd_path(fd)
    if where is not None and not is_inside(root_real, where):
        os.close(fd)
        raise PathRejected("path leads outside the volume.")


def _raced(exc: OSError) -> PathRejected:
    return PathRejected(
        f"path changed while it was being opened (a symbolic link or a non-directory is in the way): "
        f"{exc.strerror}."
    )


def open_dirs(
    root_real: str,
    parts: Sequence[str],
    *,
    create: bool = False,
    mode: int = 0o755,
    created: list[tuple[str, ...]] | None = None,
) -> int:
    """Open the directory ``root_real/parts...`` by walking from ``root_real`` with ``O_NOFOLLOW`` at every
    step, and return its file descriptor (the caller closes it).

    With ``create``, missing directories are made (``mode``, then ``chmod`` so the umask does not apply) and
    the segments of each one made are appended to ``created``. A segment that is a symlink or a file raises
    :class:`PathRejected` (``NotADirectoryError`` when the segment is a plain file); a missing one without
    ``create`` raises :class:`PathNotFound`; one this process may not open raises ``PermissionError``."""
    fd = os.open(root_real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(parts):
            made = False
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise PathNotFound(display_path(parts[: i + 1])) from None
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass  # made concurrently: fine, opened below like any other
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except PermissionError:
                    raise
                except OSError as exc:
                    raise _raced(exc) from None
                if made:
                    os.fchmod(nfd, mode)
                    if created is not None:
                        created.append(tuple(parts[: i + 1]))
            except NotADirectoryError:
                st = os.lstat(name, dir_fd=fd)
                if stat.S_ISLNK(st.st_mode):
                    raise PathRejected("path changed while it was being opened (a symbolic link).") from None
                where = display_path(parts[: i + 1])
                raise NotADirectoryError(f"{where} is a file, not a directory.") from None
            except PermissionError:
                raise  # the modes forbid it: not a traversal attempt
            except OSError as exc:  # ELOOP: a symlink appeared after resolution
                raise _raced(exc) from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    _recheck(fd, root_real)
    return fd


def open_directory(root: str | os.PathLike[str], user_path: str, *, allow_root: bool = True) -> int:
    """Resolve ``user_path`` (must exist, must be a directory) and open it race-safely; returns an fd.

    Raises ``PathRejected``, ``PathNotFound`` or ``NotADirectoryError``."""
    root_real = real_root(root)
    real = resolve_inside(root_real, user_path, must_exist=True, allow_root=allow_root)
    parts = relative_parts(root_real, real)
    if not os.path.isdir(real):
        raise NotADirectoryError(f"{display_path(parts)} is not a directory.")
    return open_dirs(root_real, parts)


def open_regular_file(root: str | os.PathLike[str], user_path: str) -> tuple[int, os.stat_result, Path]:
    """Resolve ``user_path`` (must exist) and open it read-only, race-safely.

    Returns ``(fd, fstat result, real path)``. Only regular files are opened: a directory raises
    ``IsADirectoryError``; a FIFO, socket or device node raises :class:`PathRejected` (it is opened with
    ``O_NONBLOCK`` so a FIFO cannot hang the caller; the flag is cleared before returning)."""
    root_real = real_root(root)
    real = resolve_inside(root_real, user_path, must_exist=True, allow_root=False)
    parts = relative_parts(root_real, real)
    parent = open_dirs(root_real, parts[:-1])
    try:
        try:
            fd = os.open(
                parts[-1],
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=parent,
            )
        except FileNotFoundError:
            raise PathNotFound(user_path) from None
        except PermissionError:
            raise
        except OSError as exc:
            raise _raced(exc) from None
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{display_path(parts)} is a directory.")
        if not stat.S_ISREG(st.st_mode):
            raise PathRejected(f"{display_path(parts)} is not a regular file (a FIFO, socket or device).")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    _recheck(fd, root_real)
    return fd, st, real


# ------------------------------------------------------------------------------------------- pinned resolution

# openat2(2) (Linux 5.6+): resolution flags the kernel enforces for every component at once.
_OPENAT2_NR = {"x86_64": 437, "aarch64": 437, "arm64": 437, "ppc64le": 437, "s390x": 437, "riscv64": 437}
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_PIN_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None = None
_openat2_works: bool | None = None  # None: not tried yet


def _openat2(dir_fd: int, rel: str) -> int | None:
    """``openat2(dir_fd, rel, O_PATH|O_DIRECTORY, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|...)``; None when the
    kernel (or a seccomp filter) does not offer openat2, or renames keep racing it, so the caller walks."""
    global _libc, _openat2_works
    nr = _OPENAT2_NR.get(platform.machine())
    if nr is None or _openat2_works is False:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(_PIN_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    for _ in range(3):
        fd = _libc.syscall(nr, dir_fd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            _openat2_works = True
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    else:
        # RESOLVE_BENEATH gives up with EAGAIN whenever any rename raced the lookup, which a pod renaming in a
        # loop could force forever: the O_NOFOLLOW walk is just as strict and has no such failure.
        return None
    if err in (errno.ENOSYS, errno.EPERM) and not _openat2_works:
        _openat2_works = False  # not available here (old kernel, seccomp): use the O_NOFOLLOW walk
        return None
    raise OSError(err, os.strerror(err), rel)


def open_pinned_dir(root: str | os.PathLike[str], user_path: str, *, what: str = "sub_path") -> int:
    """Open the directory ``user_path`` inside ``root`` so that NO component can be a symbolic link, and return
    an ``O_PATH`` descriptor of it (the caller closes it). The descriptor pins that very directory: renaming or
    swapping names afterwards does not change what it refers to, so a bind mount of ``/proc/self/fd/<fd>``
    mounts exactly the directory checked here (see :mod:`openpods.storage.pins`).

    Uses ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` where the kernel has it, else walks one
    segment at a time with ``O_NOFOLLOW``. Unlike :func:`resolve_inside`, a symlink is refused even when its
    target stays inside the root: between a check and the mount it could be swapped for one that does not.
    Raises :class:`PathRejected` (malformed, a symlink or a file in the way, outside the root),
    :class:`PathNotFound` (missing)."""
    parts = clean_parts(user_path, what=what)
    root_real = real_root(root)
    try:
        root_fd = os.open(root_real, _PIN_FLAGS)
    except OSError:
        raise PathNotFound("/") from None
    try:
        if not parts:
            return os.dup(root_fd)
        rel = "/".join(parts)
        try:
            fd = _openat2(root_fd, rel)
        except FileNotFoundError:
            raise PathNotFound(display_path(parts)) from None
        except OSError as exc:  # ELOOP (a symlink), EXDEV (escape), ENOTDIR (a file), EAGAIN (a rename race)
            raise PathRejected(
                f"{what} {display_path(parts)!r} is not a plain directory inside the volume "
                f"(a symbolic link or a file is in the way: {exc.strerror})."
            ) from None
        if fd is None:
            fd = os.dup(root_fd)
            try:
                for i, name in enumerate(parts):
                    try:
                        nfd = os.open(name, _PIN_FLAGS, dir_fd=fd)
                    except FileNotFoundError:
                        raise PathNotFound(display_path(parts[: i + 1])) from None
                    except OSError as exc:  # ENOTDIR: a symlink (O_NOFOLLOW|O_DIRECTORY) or a file; ELOOP
                        raise PathRejected(
                            f"{what} {display_path(parts[: i + 1])!r} is not a plain directory inside the volume "
                            f"(a symbolic link or a file is in the way: {exc.strerror})."
                        ) from None
                    os.close(fd)
                    fd = nfd
            except BaseException:
                os.close(fd)
                raise
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise PathRejected(f"{what} {display_path(parts)!r} is not a directory.")
    except BaseException:
        os.close(fd)
        raise
    _recheck(fd, root_real)
    return fd


# ------------------------------------------------------------------------------------------- zip names


def safe_zip_member_name(name: str) -> str:
    """Validate a zip member name (for writing and for extraction) and return its clean form.

    The clean form is relative, uses ``/``, has no empty or ``.`` segments, and keeps one trailing ``/`` for
    directory entries. Refused with :class:`PathRejected`: absolute names, drive letters (``C:``),
    backslashes, ``..`` segments, control characters, over-long names, and names that are empty once cleaned.
    """
    if not isinstance(name, str):
        raise PathRejected("zip member name must be a string.")
    shown = repr(name) if len(name) <= 200 else repr(name[:200] + "...")
    _check_chars(name, shown, "zip member name")
    if name.startswith("/"):
        raise PathRejected(f"zip member name {shown} is absolute.")
    if _DRIVE_RE.match(name):
        raise PathRejected(f"zip member name {shown} starts with a drive letter.")
    parts = _split(name, shown, "zip member name")
    if not parts:
        raise PathRejected(f"zip member name {shown} is empty.")
    return "/".join(parts) + ("/" if name.endswith("/") else "")


def safe_extract_path(root: str | os.PathLike[str], member_name: str) -> Path:
    """Where a zip member may be extracted below ``root``: the member name is checked with
    :func:`safe_zip_member_name` and then resolved with :func:`resolve_inside` (so a symlink already in
    ``root`` cannot redirect the extraction). Extract with ``O_NOFOLLOW | O_EXCL``."""
    return resolve_inside(root, safe_zip_member_name(member_name), allow_root=False)
