"""The pinned resolver (paths.open_pinned_dir) and pinned bind mounts (storage.pins), on the real kernel."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openpods.storage import paths
from openpods.storage.paths import PathNotFound, PathRejected, fd_path, open_pinned_dir, resolve_inside
from openpods.storage.pins import MountPins, _mount_points_below

_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    root = tmp_path / "vol"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "marker").write_text("inside")
    (root / "file").write_text("x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "marker").write_text("OUTSIDE")
    os.symlink(str(tmp_path / "outside"), root / "out")  # escapes
    os.symlink("a", root / "inlink")  # stays inside, still refused: it could be swapped
    return root


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both code paths: openat2 where the kernel has it, the O_NOFOLLOW walk otherwise."""
    if request.param == "walk":
        monkeypatch.setattr(paths, "_openat2_works", False)
    return request.param


def test_pinned_dir_opens_plain_directories(vol: Path, mode: str) -> None:
    for sub, want in (("a/b", vol / "a" / "b"), ("/a/b/", vol / "a" / "b"), ("", vol), ("/", vol)):
        fd = open_pinned_dir(vol, sub)
        try:
            assert fd_path(fd) == str(want)
        finally:
            os.close(fd)


@pytest.mark.parametrize("sub", ["out", "out/x", "inlink", "inlink/b", "file", "a/../a", "a/\x00", "%2e%2e"])
def test_pinned_dir_refuses_symlinks_files_and_traversal(vol: Path, mode: str, sub: str) -> None:
    with pytest.raises(PathRejected):
        os.close(open_pinned_dir(vol, sub))


def test_pinned_dir_missing(vol: Path, mode: str) -> None:
    with pytest.raises(PathNotFound):
        open_pinned_dir(vol, "a/nope")


def test_pinned_dir_keeps_pointing_at_the_checked_directory_after_a_swap(vol: Path, mode: str) -> None:
    """The descriptor pins the directory, not its name: swapping in a symlink afterwards changes nothing."""
    fd = open_pinned_dir(vol, "a/b")
    try:
        os.symlink(str(vol.parent / "outside"), vol / "a" / "evil")
        _exchange(str(vol / "a" / "b"), str(vol / "a" / "evil"))  # now a/b is the symlink to outside
        assert os.path.islink(vol / "a" / "b")
        with open(f"/proc/self/fd/{fd}/marker") as f:
            assert f.read() == "inside"
    finally:
        os.close(fd)


def test_resolve_inside_turns_oserror_from_realpath_into_a_rejection(vol: Path, monkeypatch) -> None:
    real = os.path.realpath

    def boom(path: str, *a, **k) -> str:
        if str(path).endswith("a/b"):
            raise OSError(36, "File name too long")
        return real(path, *a, **k)

    monkeypatch.setattr(os.path, "realpath", boom)
    with pytest.raises(PathRejected):
        resolve_inside(str(vol), "a/b")


# ------------------------------------------------------------------------------------------- pinned mounts


def _can_mount(tmp_path: Path) -> bool:
    ok, _ = MountPins(tmp_path / "probe").available()
    return ok


@pytest.fixture
def pins(tmp_path: Path) -> MountPins:
    if not _can_mount(tmp_path):
        pytest.skip("bind mounts need root with CAP_SYS_ADMIN")
    return MountPins(tmp_path / "pins")


def test_pin_mounts_the_checked_directory_and_release_unmounts(vol: Path, pins: MountPins) -> None:
    pinset = pins.new_set()
    point = pinset.pin(vol, "a/b")
    try:
        assert Path(point, "marker").read_text() == "inside"
        assert oct(os.stat(pins.base).st_mode & 0o777) == "0o700"  # nobody else can touch the pin's path
        # A swap after pinning does not change what the pin shows.
        os.symlink(str(vol.parent / "outside"), vol / "a" / "evil")
        _exchange(str(vol / "a" / "b"), str(vol / "a" / "evil"))
        assert Path(point, "marker").read_text() == "inside"
    finally:
        pinset.release()
    assert not os.path.exists(point)
    assert _mount_points_below(str(pins.base)) == []
    assert (vol / "a" / "evil" / "marker").read_text() == "inside"  # the data was never touched


def test_pin_refuses_a_symlinked_sub_path(vol: Path, pins: MountPins) -> None:
    pinset = pins.new_set()
    with pytest.raises(PathRejected):
        pinset.pin(vol, "out")
    assert pinset.points == ()


def test_pin_under_a_racing_swap_never_shows_the_outside(vol: Path, pins: MountPins) -> None:
    """Another process (the attacking pod) swaps a/b with a symlink to the outside directory as fast as it can;
    every pin made meanwhile either is refused or shows the inside directory."""
    os.symlink(str(vol.parent / "outside"), vol / "a" / "evil")
    swapper = subprocess.Popen(
        [sys.executable, "-c",
         "import ctypes, sys\nlibc = ctypes.CDLL(None)\na, b = sys.argv[1].encode(), sys.argv[2].encode()\n"
         "while True:\n    libc.renameat2(-100, a, -100, b, 2)\n",
         str(vol / "a" / "b"), str(vol / "a" / "evil")]
    )
    seen = {"inside": 0, "refused": 0}
    try:
        for _ in range(3000):
            pinset = pins.new_set()
            try:
                point = pinset.pin(vol, "a/b")
            except (PathRejected, PathNotFound):
                seen["refused"] += 1
                continue
            try:
                content = Path(point, "marker").read_text()
                assert content == "inside", "a pin followed the swapped-in symlink"
                seen["inside"] += 1
            finally:
                pinset.release()
            if seen["inside"] >= 50 and seen["refused"] >= 50:
                break
    finally:
        swapper.kill()
        swapper.wait()
    assert seen["inside"] > 0 and seen["refused"] > 0, seen  # both states were really hit


def test_sweep_unmounts_pins_of_a_killed_process(vol: Path, tmp_path: Path) -> None:
    if not _can_mount(tmp_path):
        pytest.skip("bind mounts need root with CAP_SYS_ADMIN")
    base = tmp_path / "pins"
    code = (
        "import os, sys\n"
        "from openpods.storage.pins import MountPins\n"
        f"p = MountPins({str(base)!r}).new_set()\n"
        f"print(p.pin({str(vol)!r}, 'a/b'), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    point = proc.stdout.strip()
    assert proc.returncode == -9 and point, proc.stderr
    assert _mount_points_below(point) == [point]  # left mounted by the SIGKILL
    survivor = MountPins(base)
    mine = survivor.new_set()
    own_point = mine.pin(vol, "a")
    try:
        assert survivor.sweep() == 1
        assert not os.path.exists(point)
        assert _mount_points_below(str(base)) == [own_point]  # a live owner's pins are left alone
        assert (vol / "a" / "b" / "marker").read_text() == "inside"
    finally:
        mine.release()


def test_engine_mount_namespace_check(tmp_path: Path) -> None:
    """The peer of a unix socket in this mount namespace is recognised; tcp engines cannot be told."""
    import socket

    from openpods.storage.pins import engine_mount_namespace_matches

    path = str(tmp_path / "engine.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        assert engine_mount_namespace_matches(f"unix://{path}") is True
    assert engine_mount_namespace_matches("tcp://127.0.0.1:2375") is None
    assert engine_mount_namespace_matches(f"unix://{tmp_path}/missing.sock") is None
