"""Volumes as their own loop-mounted ext4 filesystem (LocalStorage(loop_volumes=True)): the size limit holds for
any writer, the filesystem is mounted again after a reboot or crash (``mount_volume_images``), a volume whose
filesystem is not mounted is never used through the directory below it, and deleting removes everything.

Needs root and loop devices (skipped otherwise, with the reason); every test unmounts what it mounted."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from openpods.storage import loopfs
from openpods.storage.base import SizeLimitExceeded, StorageUnavailable
from openpods.storage.local import LocalStorage

MB = 1024 * 1024
pytestmark = pytest.mark.skipif(bool(loopfs.unavailable()), reason=f"no loop filesystems: {loopfs.unavailable()}")


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(str(tmp_path))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def test_writes_stop_at_the_limit_for_any_writer(root: Path) -> None:
    s = LocalStorage(root, fsync=False, loop_volumes=True)
    s.create_volume("t1", "vol", size_limit_bytes=4 * MB)
    path = Path(s.host_path("volume", "t1", "vol"))
    assert os.path.ismount(path)
    assert s.list_files("volume", "t1", "vol") == []  # no lost+found
    assert s.volume_limit_enforced("t1", "vol")
    # A process writing directly (as a pod does) gets ENOSPC just past the limit.
    written = 0
    with pytest.raises(OSError) as exc, open(path / "fill", "wb") as fh:
        while written < 16 * MB:
            fh.write(b"x" * 65536)
            fh.flush()
            os.fsync(fh.fileno())
            written += 65536
    assert exc.value.errno == errno.ENOSPC
    assert 4 * MB <= os.path.getsize(path / "fill") <= 4 * MB + 512 * 1024
    # An API upload gets the size limit error (413), not an I/O error (500).
    os.unlink(path / "fill")
    with pytest.raises(SizeLimitExceeded):
        s.write_file("t1", "vol", "big.bin", iter([b"y" * MB] * 8), size_limit_bytes=64 * MB, overwrite=False)
    assert s.list_files("volume", "t1", "vol") == []


def test_remounted_on_start_and_never_used_unmounted(root: Path) -> None:
    s = LocalStorage(root, fsync=False, loop_volumes=True)
    s.create_volume("t1", "vol", size_limit_bytes=4 * MB)
    path = s.object_root("volume", "t1", "vol")
    (Path(path) / "kept.txt").write_text("data")
    loopfs.unmount(path)  # a reboot, or a crash before the mount
    assert not os.path.ismount(path) and os.listdir(path) == []

    # The next start mounts it again; the data is there.
    again = LocalStorage(root, fsync=False, loop_volumes=True)
    assert again.mount_volume_images() == []
    assert os.path.ismount(path)
    assert [f.name for f in again.list_files("volume", "t1", "vol")] == ["kept.txt"]

    # Any use of an unmounted volume mounts it first; if that fails, the use fails (a pod would otherwise
    # write into the directory below, past the limit).
    loopfs.unmount(path)
    assert again.host_path("volume", "t1", "vol") == os.path.realpath(path) and os.path.ismount(path)
    loopfs.unmount(path)
    image = Path(again._image_path("t1", "vol"))
    image.write_bytes(b"not a filesystem")
    with pytest.raises(StorageUnavailable):
        again.host_path("volume", "t1", "vol")
    assert not os.path.ismount(path)


def test_resize_and_delete(root: Path) -> None:
    s = LocalStorage(root, fsync=False, loop_volumes=True)
    s.create_volume("t1", "vol", size_limit_bytes=4 * MB)
    path = s.object_root("volume", "t1", "vol")
    (Path(path) / "a.bin").write_bytes(b"a" * (3 * MB))
    s.resize_volume("t1", "vol", 12 * MB)
    assert 12 * MB <= loopfs.usable_bytes(path) <= 12 * MB + 512 * 1024
    s.resize_volume("t1", "vol", 6 * MB)
    assert 6 * MB <= loopfs.usable_bytes(path) <= 6 * MB + 512 * 1024
    assert (Path(path) / "a.bin").read_bytes() == b"a" * (3 * MB)
    assert s.delete_volume("t1", "vol")
    assert not os.path.exists(path) and not os.path.exists(s._image_path("t1", "vol"))


def test_plain_directories_without_a_limit_or_without_loop(root: Path) -> None:
    s = LocalStorage(root, fsync=False, loop_volumes=False)
    s.create_volume("t1", "plain", size_limit_bytes=4 * MB)
    assert not os.path.ismount(s.object_root("volume", "t1", "plain"))
    assert not s.volume_limit_enforced("t1", "plain")
