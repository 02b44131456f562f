"""A volume as its own filesystem: an ext4 image file (sparse: it takes only the space written) loop-mounted on
the volume's directory. The kernel then enforces the size limit for everyone who writes, pods included
(``ENOSPC``), and the directory -- the path the containers bind-mount -- stays where it was.

Needs root (``mount``), util-linux and e2fsprogs; :func:`unavailable` says why not. Every step is idempotent so
a killed process redoes it: an image without a mount is mounted again on start (after ``e2fsck -p``), a volume
directory without an image is a plain directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess

_TOOLS = ("mkfs.ext4", "dumpe2fs", "e2fsck", "resize2fs", "mount", "umount", "losetup", "findmnt")
_MIB = 1024 * 1024
_MAX_TRIES = 6


class LoopError(OSError):
    """A step failed; the message says which and what the tool answered."""


def unavailable() -> str:
    """Why volumes cannot be loop filesystems here ('' when they can)."""
    if os.geteuid() != 0:
        return "not running as root (mounting needs it)"
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (util-linux, e2fsprogs)"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop devices are not available)"
    return ""


def _run(*argv: str, ok: tuple[int, ...] = (0,)) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoopError(f"{argv[0]} failed: {exc}") from None
    if done.returncode not in ok:
        raise LoopError(f"{' '.join(argv[:2])} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _free_bytes(image: str) -> int:
    """Free space of the filesystem in ``image`` as a file system user sees it (no mount needed)."""
    out = _run("dumpe2fs", "-h", image)
    fields = dict(re.findall(r"^([A-Za-z ]+):\s+(\d+)$", out, re.MULTILINE))
    return int(fields["Free blocks"]) * int(fields["Block size"])


def make_image(image: str, capacity_bytes: int) -> None:
    """Create ``image`` holding an empty ext4 filesystem with at least ``capacity_bytes`` free (the image is a
    little larger than that: ext4's own metadata). Replaces a partial image of an earlier attempt."""
    size = capacity_bytes
    for _ in range(_MAX_TRIES):
        with open(image, "wb") as fh:
            fh.truncate(size)
        # -m 0: no blocks reserved for root (pods run as root); lazy init keeps creation fast and sparse.
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", image)
        free = _free_bytes(image)
        if free >= capacity_bytes:
            return
        size += capacity_bytes - free + 64 * 1024
    raise LoopError(f"could not size a filesystem with {capacity_bytes} free bytes")


def is_mounted(path: str) -> bool:
    return os.path.ismount(path)


def mount(image: str, path: str, dir_mode: int) -> None:
    """Mount ``image`` on the directory ``path`` (no device files, no setuid); idempotent."""
    if is_mounted(path):
        return
    with contextlib.suppress(LoopError):  # repair what a crash left; a failing check shows at mount
        _run("e2fsck", "-p", image, ok=(0, 1))
    _run("mount", "-t", "ext4", "-o", "loop,nodev,nosuid", image, path)
    os.chmod(path, dir_mode)
    with contextlib.suppress(OSError):  # empty on a new filesystem; users never asked for it
        os.rmdir(os.path.join(path, "lost+found"))


def unmount(path: str) -> None:
    """Unmount ``path`` if it is a mount point; lazily when busy (a pod being removed), so the image can go."""
    if not is_mounted(path):
        return
    try:
        _run("umount", path)
    except LoopError:
        _run("umount", "-l", path)


def _device(path: str) -> str:
    return _run("findmnt", "-n", "-o", "SOURCE", "--mountpoint", path).strip()


def usable_bytes(path: str) -> int:
    """What files can hold on the mounted filesystem: used plus available to writers (ext4 keeps some blocks
    back for its own metadata; they are not counted)."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize


def grow(image: str, path: str, capacity_bytes: int) -> None:
    """Grow the mounted filesystem (online) until files can hold at least ``capacity_bytes``."""
    usable = usable_bytes(path)
    if usable >= capacity_bytes:
        return
    size = os.path.getsize(image)
    for _ in range(_MAX_TRIES):
        size += capacity_bytes - usable + 64 * 1024
        with open(image, "r+b") as fh:
            fh.truncate(size)
        device = _device(path)
        _run("losetup", "-c", device)
        _run("resize2fs", device)
        usable = usable_bytes(path)
        if usable >= capacity_bytes:
            return
    raise LoopError(f"could not grow the filesystem of {path} to {capacity_bytes} bytes")


def resize_offline(image: str, path: str, capacity_bytes: int, dir_mode: int) -> None:
    """Resize the filesystem so that files can hold about ``capacity_bytes`` (at least that much): unmount,
    check, resize, mount again. The caller makes sure nothing uses it and, for a shrink, that the content fits.
    (Growing a mounted ext4 needs CAP_SYS_RESOURCE, which containers often lack: see :func:`grow`.)"""
    slack = max(capacity_bytes // 50, 512 * 1024)  # close enough: at most 2 % (or 512 KiB) above the limit
    for _ in range(_MAX_TRIES):
        usable = usable_bytes(path)
        if capacity_bytes <= usable <= capacity_bytes + slack:
            return
        # Metadata grows a little with the size: step by the difference, and check again.
        target = (os.path.getsize(image) + capacity_bytes - usable + slack // 2) // 4096 * 4096
        unmount(path)
        try:
            # 1 = errors corrected (e.g. the lost+found we remove, recreated); 4 and up: a real problem
            _run("e2fsck", "-f", "-p", image, ok=(0, 1))
            if target > os.path.getsize(image):
                with open(image, "r+b") as fh:
                    fh.truncate(target)
                _run("resize2fs", image)
            else:
                _run("resize2fs", image, f"{target // 1024}K")
                with open(image, "r+b") as fh:
                    fh.truncate(target)
        finally:
            mount(image, path, dir_mode)
    if usable_bytes(path) >= capacity_bytes:
        return
    raise LoopError(f"could not resize the filesystem of {path} to {capacity_bytes} bytes")
