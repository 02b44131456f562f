"""Spool files of uploads into pods: ``<data_dir>/spool``, one locked temporary file per upload in progress.

An upload into a container needs the whole file before it can be sent (the archive API wants its size first),
so the API writes it here once. Each file is held under an exclusive ``flock`` for as long as its upload runs;
a file whose lock is free belongs to a process that died (SIGKILL, a crash) and :func:`remove_stale` deletes
it. Several API processes may share the directory (a shared data dir): the lock, not the age, decides."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from openpods.storage.local import _remove_if_unlocked

PREFIX = ".openpods-upload-"


def spool_dir(data_dir: Path) -> Path:
    return data_dir / "spool"


def new_locked_file(directory: Path) -> tuple[int, str]:
    """A new empty file (fd, path), created 0600 and locked by this process until the fd is closed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=PREFIX, dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and private: nobody else can hold it yet
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path


def remove_stale(directory: Path) -> int:
    """Delete the spool files no live upload holds; returns how many."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    try:
        for name in os.listdir(dir_fd):
            if not name.startswith(PREFIX):
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if _remove_if_unlocked(dir_fd, name, st):
                removed += 1
    finally:
        os.close(dir_fd)
    return removed
