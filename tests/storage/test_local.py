"""openpods.storage.local.LocalStorage: layout, listing, streaming, zips, uploads, size limits, snapshots."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import stat
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openpods.storage.base import (
    AccessDenied,
    FileExists,
    FileInfo,
    IsADirectory,
    NotADirectory,
    ObjectNotFound,
    SizeLimitExceeded,
    SnapshotDestinationRequired,
    StorageBackend,
)
from openpods.storage.local import TEMP_PREFIX, LocalStorage
from openpods.storage.paths import PathNotFound, PathRejected

MB = 1024 * 1024
BIG = 10 * MB  # a size limit that never matters


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    s = LocalStorage(tmp_path / "data", fsync=False)
    s.create_volume("t1", "vol1")
    s.create_volume("t2", "secret")
    (tmp_path / "data" / "t2" / "volumes" / "secret" / "s.txt").write_text("other tenant's secret")
    return s


@pytest.fixture
def vol(storage: LocalStorage) -> Path:
    return Path(storage.object_root("volume", "t1", "vol1"))


def names_in(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def all_entries(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def put(
    storage: LocalStorage, path: str, data: bytes, *, limit: int = BIG, overwrite: bool = False
) -> FileInfo:
    return storage.write_file("t1", "vol1", path, [data], size_limit_bytes=limit, overwrite=overwrite)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def vm_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# ------------------------------------------------------------------------------------------- objects


def test_layout_and_lifecycle(storage: LocalStorage, tmp_path: Path) -> None:
    assert isinstance(storage, StorageBackend)
    root = tmp_path / "data"
    assert (root / "t1" / "volumes" / "vol1").is_dir()
    assert storage.exists("volume", "t1", "vol1")
    assert not storage.exists("volume", "t1", "nope")
    assert not storage.exists("snapshot", "t1", "vol1")
    with pytest.raises(FileExists):
        storage.create_volume("t1", "vol1")
    storage.create_volume("t1", "vol1", exist_ok=True)
    put(storage, "a/b.txt", b"x")
    assert storage.delete_volume("t1", "vol1") is True
    assert not (root / "t1" / "volumes" / "vol1").exists()
    assert storage.delete_volume("t1", "vol1") is False
    assert (root / "t2" / "volumes" / "secret" / "s.txt").exists()


def test_volume_dir_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        s = LocalStorage(tmp_path / "d", dir_mode=0o750, file_mode=0o640, fsync=False)
        s.create_volume("t", "v")
        info = s.write_file("t", "v", "a/b", [b"1"], size_limit_bytes=BIG, overwrite=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(s.object_root("volume", "t", "v")).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(Path(s.object_root("volume", "t", "v")) / "a").st_mode) == 0o750
    assert info.nativePermissions == "rw-r-----"


@pytest.mark.parametrize("bad", ["..", ".", "../t2", "a/b", "", "t1\x00", "-x", "a" * 300])
def test_bad_tenant_and_ids(storage: LocalStorage, bad: str) -> None:
    with pytest.raises(ValueError):
        storage.create_volume(bad, "vol")
    with pytest.raises(ValueError):
        storage.create_volume("t1", bad)
    with pytest.raises(ValueError):
        storage.list_files("volume", "t1", bad)
    with pytest.raises(ValueError):
        storage.list_files("pod", "t1", "vol1")  # type: ignore[arg-type]


def test_missing_object(storage: LocalStorage) -> None:
    with pytest.raises(ObjectNotFound):
        storage.list_files("volume", "t1", "nope")
    with pytest.raises(ObjectNotFound):
        storage.write_file("t1", "nope", "x", [b"1"], size_limit_bytes=BIG, overwrite=False)
    with pytest.raises(ObjectNotFound):
        storage.volume_usage_bytes("t1", "nope")
    with pytest.raises(FileNotFoundError):  # ObjectNotFound is one
        storage.open_file("snapshot", "t1", "nope", "x")


# ------------------------------------------------------------------------------------------- listing


def test_list_files(storage: LocalStorage, vol: Path) -> None:
    put(storage, "/data/b.csv", b"12345")
    put(storage, "/data/a.txt", b"")
    (vol / "data" / "sub").mkdir()
    os.symlink("a.txt", vol / "data" / "link")
    (vol / "top.bin").write_bytes(b"x" * 10)
    os.chmod(vol / "top.bin", 0o640)

    root = storage.list_files("volume", "t1", "vol1")
    assert [(f.name, f.type, f.path) for f in root] == [
        ("data", "dir", "/data"),
        ("top.bin", "file", "/top.bin"),
    ]
    top = root[1]
    assert top.size == 10 and top.nativePermissions == "rw-r-----"
    assert len(top.lastModified) == 20 and top.lastModified.endswith("Z") and top.lastModified[10] == "T"
    assert set(top.to_dict()) == {"path", "name", "type", "size", "lastModified", "nativePermissions"}

    data = storage.list_files("volume", "t1", "vol1", "/data")
    assert [(f.name, f.type) for f in data] == [
        ("a.txt", "file"),
        ("b.csv", "file"),
        ("link", "symbolic_link"),
        ("sub", "dir"),
    ]
    assert [f.path for f in data] == ["/data/a.txt", "/data/b.csv", "/data/link", "/data/sub"]
    assert storage.list_files("volume", "t1", "vol1", "data/") == data
    assert storage.list_files("volume", "t1", "vol1", "data/b.csv") == [data[1]]  # a file lists as itself
    assert storage.stat_path("volume", "t1", "vol1", "data/b.csv") == data[1]
    with pytest.raises(PathNotFound):
        storage.list_files("volume", "t1", "vol1", "nope")


def test_list_shows_special_files_as_other(storage: LocalStorage, vol: Path) -> None:
    os.mkfifo(vol / "fifo")
    assert [(f.name, f.type) for f in storage.list_files("volume", "t1", "vol1")] == [("fifo", "other")]


# ------------------------------------------------------------------------------------------- traversal

TRAVERSALS = [
    "../../../t2/volumes/secret/s.txt",
    "/../../../t2/volumes/secret/s.txt",
    "%2e%2e/%2e%2e/%2e%2e/t2/volumes/secret/s.txt",
    "..%2f..%2f..%2ft2%2fvolumes%2fsecret%2fs.txt",
    "%252e%252e/%252e%252e/x",
    "data/..\\..\\..\\x",
    "s.txt\x00.png",
    "x/../../y",
]


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_traversal_refused_everywhere(storage: LocalStorage, vol: Path, tmp_path: Path, bad: str) -> None:
    before = all_entries(tmp_path / "data")
    with pytest.raises(PathRejected):
        storage.list_files("volume", "t1", "vol1", bad)
    with pytest.raises(PathRejected):
        storage.open_file("volume", "t1", "vol1", bad)
    with pytest.raises(PathRejected):
        storage.zip_directory("volume", "t1", "vol1", bad)
    with pytest.raises(PathRejected):
        put(storage, bad, b"pwned", overwrite=True)
    with pytest.raises(PathRejected):
        storage.create_snapshot("t1", "snap", "vol1", bad, "x", size_limit_bytes=BIG)
    with pytest.raises(PathRejected):
        storage.host_path("volume", "t1", "vol1", bad)
    assert all_entries(tmp_path / "data") == before
    assert (tmp_path / "data" / "t2" / "volumes" / "secret" / "s.txt").read_text() == "other tenant's secret"


def test_absolute_paths_stay_inside(storage: LocalStorage, vol: Path) -> None:
    host = Path("/etc/passwd").read_bytes()
    with pytest.raises(PathNotFound):
        storage.open_file("volume", "t1", "vol1", "/etc/passwd")
    info = put(storage, "/etc/passwd", b"inside the volume")
    assert info.path == "/etc/passwd"
    assert (vol / "etc" / "passwd").read_bytes() == b"inside the volume"
    assert Path("/etc/passwd").read_bytes() == host
    f, size, name = storage.open_file("volume", "t1", "vol1", "/etc/passwd")
    with f:
        assert (f.read(), size, name) == (b"inside the volume", 17, "passwd")


def test_symlink_to_etc_planted_by_a_pod(storage: LocalStorage, vol: Path) -> None:
    host = Path("/etc/passwd").read_bytes()
    os.symlink("/etc", vol / "evil")  # `ln -s /etc /mnt/vol/evil` inside a container
    os.symlink("/etc/passwd", vol / "pw")
    listing = {f.name: f.type for f in storage.list_files("volume", "t1", "vol1")}
    assert listing == {"evil": "symbolic_link", "pw": "symbolic_link"}  # shown, not followed
    for path in ("evil", "evil/", "evil/passwd"):
        with pytest.raises(PathRejected):
            storage.list_files("volume", "t1", "vol1", path)
    for path in ("evil/passwd", "pw"):
        with pytest.raises(PathRejected):
            storage.open_file("volume", "t1", "vol1", path)
    with pytest.raises(PathRejected):
        storage.zip_directory("volume", "t1", "vol1", "evil")
    for path in ("evil/openpods-pwned", "pw"):
        with pytest.raises(PathRejected):
            put(storage, path, b"pwned", overwrite=True)
    assert not Path("/etc/openpods-pwned").exists()
    assert Path("/etc/passwd").read_bytes() == host
    with pytest.raises(PathRejected):
        storage.host_path("volume", "t1", "vol1", "evil")


def test_relative_symlink_to_other_tenant(storage: LocalStorage, vol: Path) -> None:
    (vol / "d").mkdir()
    os.symlink("../../../../t2/volumes/secret", vol / "d" / "up")
    assert (vol / "d" / "up" / "s.txt").exists()  # works on the host...
    with pytest.raises(PathRejected):
        storage.open_file("volume", "t1", "vol1", "d/up/s.txt")  # ...but not through the API
    with pytest.raises(PathRejected):
        storage.list_files("volume", "t1", "vol1", "d/up")
    with pytest.raises(PathRejected):
        put(storage, "d/up/new.txt", b"x")
    assert names_in(vol.parent.parent.parent / "t2" / "volumes" / "secret") == ["s.txt"]


def test_symlinks_inside_the_volume_work(storage: LocalStorage, vol: Path) -> None:
    put(storage, "real/file.txt", b"content")
    os.symlink("real", vol / "alias")  # a symlinked directory in the middle of the path
    os.symlink("file.txt", vol / "real" / "flink")  # a symlinked file
    f, size, name = storage.open_file("volume", "t1", "vol1", "alias/flink")
    with f:
        assert (f.read(), size, name) == (b"content", 7, "flink")
    assert [i.name for i in storage.list_files("volume", "t1", "vol1", "alias")] == ["file.txt", "flink"]
    info = put(storage, "alias/new.txt", b"n")
    assert info.path == "/real/new.txt"
    assert (vol / "real" / "new.txt").read_bytes() == b"n"


# ------------------------------------------------------------------------------------------- streaming


def test_open_file(storage: LocalStorage) -> None:
    put(storage, "d/f.bin", bytes(range(256)) * 100)
    f, size, name = storage.open_file("volume", "t1", "vol1", "/d/f.bin")
    with f:
        assert size == 25600 and name == "f.bin"
        assert f.read() == bytes(range(256)) * 100
    with pytest.raises(IsADirectory):
        storage.open_file("volume", "t1", "vol1", "d")
    with pytest.raises(PathRejected):
        storage.open_file("volume", "t1", "vol1", "")
    with pytest.raises(PathRejected):
        storage.open_file("volume", "t1", "vol1", "/")
    with pytest.raises(PathNotFound):
        storage.open_file("volume", "t1", "vol1", "d/missing")


def test_open_fifo_does_not_hang(storage: LocalStorage, vol: Path) -> None:
    os.mkfifo(vol / "fifo")
    with pytest.raises(PathRejected, match="regular"):
        storage.open_file("volume", "t1", "vol1", "fifo")


# ------------------------------------------------------------------------------------------- zips


def read_zip(chunks: Iterator[bytes]) -> zipfile.ZipFile:
    zf = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert zf.testzip() is None
    return zf


def test_zip_directory(storage: LocalStorage, vol: Path) -> None:
    put(storage, "proj/a.txt", b"A" * 1000)
    put(storage, "proj/src/b.py", b"print('b')\n")
    (vol / "proj" / "empty").mkdir()
    os.symlink("a.txt", vol / "proj" / "alink")  # inside: stored as the file's content
    os.symlink("src", vol / "proj" / "dirlink")  # link to a directory: skipped (no loops)
    os.symlink("/etc/passwd", vol / "proj" / "escape")  # outside: skipped, never read
    os.symlink("../../../../t2/volumes/secret/s.txt", vol / "proj" / "other")
    os.mkfifo(vol / "proj" / "fifo")  # skipped, no hang
    (vol / "proj" / "weird\\name").write_text("backslash")  # not a safe member name: skipped

    zf = read_zip(storage.zip_directory("volume", "t1", "vol1", "/proj"))
    names = sorted(zf.namelist())
    assert names == ["proj/", "proj/a.txt", "proj/alink", "proj/empty/", "proj/src/", "proj/src/b.py"]
    assert zf.read("proj/a.txt") == b"A" * 1000
    assert zf.read("proj/alink") == b"A" * 1000
    assert zf.read("proj/src/b.py") == b"print('b')\n"
    for name in names:
        assert not name.startswith("/") and ".." not in name.split("/") and "\\" not in name
    assert zf.getinfo("proj/empty/").is_dir()

    nested = read_zip(storage.zip_directory("volume", "t1", "vol1", "proj/src"))
    assert sorted(nested.namelist()) == ["src/", "src/b.py"]


def test_zip_of_directory_reached_through_an_internal_link(storage: LocalStorage, vol: Path) -> None:
    (vol / "weird\\dir").mkdir()
    (vol / "weird\\dir" / "f.txt").write_bytes(b"f")
    os.symlink("weird\\dir", vol / "alias")
    zf = read_zip(storage.zip_directory("volume", "t1", "vol1", "alias"))
    assert sorted(zf.namelist()) == ["download/", "download/f.txt"]


def test_zip_refusals(storage: LocalStorage) -> None:
    put(storage, "d/f", b"x")
    with pytest.raises(PathRejected):
        storage.zip_directory("volume", "t1", "vol1", "")  # not the whole volume
    with pytest.raises(PathRejected):
        storage.zip_directory("volume", "t1", "vol1", "/")
    with pytest.raises(NotADirectory):
        storage.zip_directory("volume", "t1", "vol1", "d/f")
    with pytest.raises(PathNotFound):
        storage.zip_directory("volume", "t1", "vol1", "nope")


def test_zip_streams_in_small_chunks_and_closes_early(storage: LocalStorage, vol: Path) -> None:
    (vol / "big").mkdir()
    with open(vol / "big" / "random.bin", "wb") as f:
        f.write(os.urandom(8 * MB))  # incompressible
    fds = open_fds()
    chunks = list(storage.zip_directory("volume", "t1", "vol1", "big"))
    assert len(chunks) > 4
    assert max(len(c) for c in chunks) < 3 * MB
    assert open_fds() == fds
    stream = storage.zip_directory("volume", "t1", "vol1", "big")
    next(stream)
    next(stream)
    stream.close()  # the client went away
    assert open_fds() == fds
    storage.zip_directory("volume", "t1", "vol1", "big")  # never iterated: nothing opened
    assert open_fds() == fds


# ------------------------------------------------------------------------------------------- uploads


def test_upload_creates_parents_and_reports(storage: LocalStorage, vol: Path) -> None:
    info = storage.write_file(
        "t1", "vol1", "/a/b/c/file.txt", iter([b"hel", b"", b"lo"]), size_limit_bytes=BIG, overwrite=False
    )
    assert (vol / "a" / "b" / "c" / "file.txt").read_bytes() == b"hello"
    assert (
        info.path == "/a/b/c/file.txt" and info.name == "file.txt" and info.size == 5 and info.type == "file"
    )
    assert names_in(vol / "a" / "b" / "c") == ["file.txt"]  # no temp file left


def test_upload_overwrite_flag(storage: LocalStorage, vol: Path) -> None:
    put(storage, "f.txt", b"original")
    with pytest.raises(FileExists):
        put(storage, "f.txt", b"new")
    assert (vol / "f.txt").read_bytes() == b"original"
    assert names_in(vol) == ["f.txt"]
    put(storage, "f.txt", b"new", overwrite=True)
    assert (vol / "f.txt").read_bytes() == b"new"
    assert names_in(vol) == ["f.txt"]


def test_upload_target_appearing_meanwhile_is_not_clobbered(storage: LocalStorage, vol: Path) -> None:
    with storage.begin_write("t1", "vol1", "race.txt", size_limit_bytes=BIG, overwrite=False) as up:
        up.write(b"upload")
        (vol / "race.txt").write_bytes(b"written by the pod")
        with pytest.raises(FileExists):
            up.commit()
    assert (vol / "race.txt").read_bytes() == b"written by the pod"
    assert names_in(vol) == ["race.txt"]


def test_upload_onto_directory_or_below_file(storage: LocalStorage, vol: Path) -> None:
    (vol / "dir").mkdir()
    with pytest.raises(IsADirectory):
        put(storage, "dir", b"x", overwrite=True)
    put(storage, "file", b"x")
    with pytest.raises(NotADirectory):
        put(storage, "file/below", b"x")
    with pytest.raises(PathRejected):
        put(storage, "/", b"x")
    assert names_in(vol) == ["dir", "file"]


def test_size_limit_refusal_leaves_nothing(storage: LocalStorage, vol: Path) -> None:
    put(storage, "existing.bin", b"e" * 400)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 100

    with pytest.raises(SizeLimitExceeded) as info:
        storage.write_file("t1", "vol1", "new/deep/big.bin", chunks(), size_limit_bytes=1000, overwrite=False)
    assert "size_limit" in str(info.value) and info.value.limit_bytes == 1000
    assert names_in(vol) == ["existing.bin"]  # no temp file, no half file, no parent dirs it made
    assert storage.volume_usage_bytes("t1", "vol1") == 400


def test_size_limit_refused_as_soon_as_exceeded(storage: LocalStorage, vol: Path) -> None:
    produced = []

    def chunks() -> Iterator[bytes]:
        for i in range(1000):
            produced.append(i)
            yield b"x" * 100

    with pytest.raises(SizeLimitExceeded):
        storage.write_file("t1", "vol1", "big.bin", chunks(), size_limit_bytes=550, overwrite=False)
    assert len(produced) == 6  # the 6th chunk would cross 550: refused before writing it
    assert names_in(vol) == []


def test_exactly_at_limit_is_allowed(storage: LocalStorage) -> None:
    put(storage, "a", b"x" * 600, limit=1000)
    put(storage, "b", b"x" * 400, limit=1000)
    with pytest.raises(SizeLimitExceeded):
        put(storage, "c", b"x", limit=1000)


def test_failed_overwrite_leaves_existing_file_untouched(storage: LocalStorage, vol: Path) -> None:
    put(storage, "keep.txt", b"precious" * 10)
    before = (vol / "keep.txt").stat()
    with pytest.raises(SizeLimitExceeded):
        storage.write_file(
            "t1", "vol1", "keep.txt", [b"y" * 500, b"y" * 500], size_limit_bytes=900, overwrite=True
        )
    assert (vol / "keep.txt").read_bytes() == b"precious" * 10
    assert (vol / "keep.txt").stat().st_ino == before.st_ino
    assert names_in(vol) == ["keep.txt"]


def test_overwrite_counts_the_replaced_file_once(storage: LocalStorage, vol: Path) -> None:
    put(storage, "f", b"a" * 800, limit=1000)
    put(storage, "f", b"b" * 900, limit=1000, overwrite=True)  # 900 after, not 800 + 900
    assert (vol / "f").read_bytes() == b"b" * 900


def test_failing_source_leaves_nothing(storage: LocalStorage, vol: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        storage.write_file("t1", "vol1", "p/q/r.txt", chunks(), size_limit_bytes=BIG, overwrite=False)
    assert names_in(vol) == []


def test_concurrent_uploads_share_the_limit(storage: LocalStorage, vol: Path) -> None:
    a = storage.begin_write("t1", "vol1", "a", size_limit_bytes=1000, overwrite=False)
    b = storage.begin_write("t1", "vol1", "b", size_limit_bytes=1000, overwrite=False)
    a.write(b"x" * 600)
    with pytest.raises(SizeLimitExceeded):
        b.write(b"x" * 600)
    a.commit()
    assert names_in(vol) == ["a"]
    assert storage.volume_usage_bytes("t1", "vol1") == 600


def test_upload_temp_file_not_counted_twice(storage: LocalStorage, vol: Path) -> None:
    with storage.begin_write("t1", "vol1", "f", size_limit_bytes=1000, overwrite=False) as up:
        up.write(b"x" * 500)
        assert [n for n in names_in(vol) if n.startswith(TEMP_PREFIX)]  # streaming to a temp file
        up.write(b"x" * 500)  # 1000 == limit: fine, even though the temp file is on disk
        up.commit()
    assert names_in(vol) == ["f"]


def test_write_file_refuses_async_iterables(storage: LocalStorage) -> None:
    async def agen() -> AsyncIterator[bytes]:
        yield b"x"

    with pytest.raises(TypeError, match="awrite_file"):
        storage.write_file("t1", "vol1", "x", agen(), size_limit_bytes=BIG, overwrite=False)  # type: ignore[arg-type]


async def test_awrite_file(storage: LocalStorage, vol: Path) -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(50):
            yield bytes([i]) * 50_000
            await asyncio.sleep(0)

    info = await storage.awrite_file(
        "t1", "vol1", "async/x.bin", body(), size_limit_bytes=BIG, overwrite=False
    )
    assert info.size == 2_500_000
    assert (vol / "async" / "x.bin").read_bytes() == b"".join(bytes([i]) * 50_000 for i in range(50))
    info = await storage.awrite_file(
        "t1", "vol1", "sync.bin", [b"a", b"b"], size_limit_bytes=BIG, overwrite=False
    )
    assert info.size == 2

    with pytest.raises(SizeLimitExceeded):
        await storage.awrite_file("t1", "vol1", "over/x", body(), size_limit_bytes=3 * MB, overwrite=False)
    assert names_in(vol) == ["async", "sync.bin"]


async def test_awrite_cancelled_leaves_nothing(storage: LocalStorage, vol: Path) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * (2 * MB)
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(
        storage.awrite_file("t1", "vol1", "c/d.bin", slow(), size_limit_bytes=BIG, overwrite=False)
    )
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names_in(vol) == []


# ------------------------------------------------------------------------------------------- usage


def test_usage(storage: LocalStorage, vol: Path) -> None:
    put(storage, "a/one", b"x" * 100)
    put(storage, "a/b/two", b"x" * 50)
    os.link(vol / "a" / "one", vol / "hard")  # same inode: counted once
    os.symlink("/usr/bin", vol / "link")  # never followed
    os.mkfifo(vol / "fifo")
    assert storage.volume_usage_bytes("t1", "vol1") == 150


# ------------------------------------------------------------------------------------------- snapshots


def mode_bits(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_snapshot_of_directory(storage: LocalStorage, vol: Path, tmp_path: Path) -> None:
    put(storage, "data/a.txt", b"a" * 10)
    put(storage, "data/sub/b.txt", b"b" * 20)
    (vol / "data" / "empty").mkdir()
    os.symlink("a.txt", vol / "data" / "inner-link")
    os.symlink("/etc", vol / "data" / "escape")  # copied as a link, never followed
    os.mkfifo(vol / "data" / "fifo")  # skipped
    os.chmod(vol / "data" / "a.txt", 0o755)

    size = storage.create_snapshot("t1", "snap1", "vol1", "/data", size_limit_bytes=BIG)
    snap = Path(storage.object_root("snapshot", "t1", "snap1"))
    assert snap == tmp_path / "data" / "t1" / "snapshots" / "snap1"
    assert size == 30 == storage.snapshot_usage_bytes("t1", "snap1")
    assert all_entries(snap) == ["a.txt", "empty", "escape", "inner-link", "sub", "sub/b.txt"]
    assert (snap / "sub" / "b.txt").read_bytes() == b"b" * 20
    assert os.readlink(snap / "escape") == "/etc"
    assert not (snap / "passwd").exists()
    assert os.path.getmtime(snap / "a.txt") == os.path.getmtime(vol / "data" / "a.txt")
    # read-only on disk
    assert mode_bits(snap / "a.txt") == 0o555
    assert mode_bits(snap / "sub" / "b.txt") & 0o222 == 0
    for d in (snap, snap / "sub", snap / "empty"):
        assert mode_bits(d) & 0o222 == 0
    # listing and reading through the API; the escaping link stays closed
    assert [f.name for f in storage.list_files("snapshot", "t1", "snap1")][:2] == ["a.txt", "empty"]
    with pytest.raises(PathRejected):
        storage.open_file("snapshot", "t1", "snap1", "escape/passwd")
    zf = read_zip(storage.zip_directory("snapshot", "t1", "snap1", "sub"))
    assert zf.read("sub/b.txt") == b"b" * 20
    # the source is unchanged
    assert mode_bits(vol / "data" / "sub" / "b.txt") & 0o200


def test_snapshot_of_whole_volume_into_destination(storage: LocalStorage) -> None:
    put(storage, "x.txt", b"x")
    put(storage, "d/y.txt", b"yy")
    assert storage.create_snapshot("t1", "snap2", "vol1", "/", "backup/today", size_limit_bytes=BIG) == 3
    listing = storage.list_files("snapshot", "t1", "snap2", "/backup/today")
    assert [f.path for f in listing] == ["/backup/today/d", "/backup/today/x.txt"]


def test_snapshot_of_single_file(storage: LocalStorage) -> None:
    put(storage, "conf/config.json", b'{"a": 1}')
    assert (
        storage.create_snapshot(
            "t1", "snap3", "vol1", "/conf/config.json", "saved/config.json", size_limit_bytes=BIG
        )
        == 8
    )
    f, size, name = storage.open_file("snapshot", "t1", "snap3", "saved/config.json")
    with f:
        assert (f.read(), size, name) == (b'{"a": 1}', 8, "config.json")
    snap = Path(storage.object_root("snapshot", "t1", "snap3"))
    assert mode_bits(snap / "saved" / "config.json") & 0o222 == 0


@pytest.mark.parametrize("dest", ["", "/", "//", "."])
def test_snapshot_of_single_file_needs_destination(storage: LocalStorage, dest: str) -> None:
    put(storage, "f.txt", b"x")
    with pytest.raises(SnapshotDestinationRequired, match="destination_path") as info:
        storage.create_snapshot("t1", "snap4", "vol1", "/f.txt", dest, size_limit_bytes=BIG)
    assert isinstance(info.value, ValueError)
    assert not storage.exists("snapshot", "t1", "snap4")


def test_snapshot_refusals(storage: LocalStorage, vol: Path, tmp_path: Path) -> None:
    put(storage, "d/big", b"x" * 2000)
    with pytest.raises(SizeLimitExceeded):
        storage.create_snapshot("t1", "s1", "vol1", "/d", size_limit_bytes=1000)
    assert not storage.exists("snapshot", "t1", "s1")
    with pytest.raises(SizeLimitExceeded):
        storage.create_snapshot("t1", "s1", "vol1", "/d/big", "big", size_limit_bytes=1000)
    assert not storage.exists("snapshot", "t1", "s1")
    with pytest.raises(PathNotFound):
        storage.create_snapshot("t1", "s1", "vol1", "/nope", size_limit_bytes=BIG)
    with pytest.raises(ObjectNotFound):
        storage.create_snapshot("t1", "s1", "novol", "/", size_limit_bytes=BIG)
    with pytest.raises(PathRejected):
        storage.create_snapshot("t1", "s1", "vol1", "/d", "../../escape", size_limit_bytes=BIG)
    os.symlink("/etc", vol / "etc-link")
    with pytest.raises(PathRejected):
        storage.create_snapshot("t1", "s1", "vol1", "/etc-link", size_limit_bytes=BIG)
    assert not (tmp_path / "data" / "t1" / "snapshots" / "s1").exists()
    # an unexpected, non-empty snapshot directory is never overwritten
    stray = tmp_path / "data" / "t1" / "snapshots" / "s2"
    stray.mkdir(parents=True)
    (stray / "keep").write_text("data of a lost row")
    with pytest.raises(FileExists):
        storage.create_snapshot("t1", "s2", "vol1", "/d", size_limit_bytes=BIG)
    assert (stray / "keep").read_text() == "data of a lost row"


def test_snapshot_size_limit_counts_during_copy(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-check can be outrun by a pod that writes while the copy runs; the copy itself also counts."""
    import openpods.storage.local as local

    put(storage, "d/a", b"x" * 600)
    put(storage, "d/b", b"x" * 600)
    monkeypatch.setattr(local, "_usage", lambda *a, **k: 0)
    with pytest.raises(SizeLimitExceeded):
        storage.create_snapshot("t1", "s1", "vol1", "/d", size_limit_bytes=1000)
    assert not storage.exists("snapshot", "t1", "s1")


def test_delete_snapshot(storage: LocalStorage) -> None:
    put(storage, "d/sub/f", b"x")
    storage.create_snapshot("t1", "s1", "vol1", "/d", size_limit_bytes=BIG)
    assert storage.delete_snapshot("t1", "s1") is True
    assert not storage.exists("snapshot", "t1", "s1")
    assert storage.delete_snapshot("t1", "s1") is False
    assert storage.exists("volume", "t1", "vol1")


def test_delete_falls_back_to_making_dirs_writable(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a non-root API user, rmtree of a read-only snapshot fails once; the backend then fixes the modes."""
    import shutil

    import openpods.storage.local as local

    put(storage, "d/sub/f", b"x")
    storage.create_snapshot("t1", "s1", "vol1", "/d", size_limit_bytes=BIG)
    snap = Path(storage.object_root("snapshot", "t1", "s1"))
    real_rmtree = shutil.rmtree
    calls = []

    def rmtree(path: str) -> None:
        calls.append(mode_bits(Path(path) / "sub"))
        if len(calls) == 1:
            raise PermissionError(13, "Permission denied")
        real_rmtree(path)

    monkeypatch.setattr(local.shutil, "rmtree", rmtree)
    assert storage.delete_snapshot("t1", "s1")
    assert calls[0] & 0o200 == 0 and calls[1] & 0o700 == 0o700
    assert not snap.exists()


def test_make_read_only_never_follows_links(storage: LocalStorage, vol: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    os.chmod(outside, 0o644)
    put(storage, "f", b"x")
    os.symlink(outside, vol / "link")
    storage.make_read_only("volume", "t1", "vol1")
    assert mode_bits(vol / "f") == 0o444
    assert mode_bits(outside) == 0o644


def test_permission_problems_become_access_denied(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a non-root service meets these (root ignores modes), so the refusal is simulated."""
    import openpods.storage.local as local

    put(storage, "d/f", b"x")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(local, "open_regular_file", denied)
    monkeypatch.setattr(local, "open_dirs", denied)
    for call in (
        lambda: storage.open_file("volume", "t1", "vol1", "d/f"),
        lambda: storage.list_files("volume", "t1", "vol1", "d"),
        lambda: next(storage.zip_directory("volume", "t1", "vol1", "d")),
        lambda: put(storage, "d/g", b"x"),
        lambda: storage.create_snapshot("t1", "s1", "vol1", "/d", size_limit_bytes=BIG),
        lambda: storage.create_snapshot("t1", "s1", "vol1", "/d/f", "f", size_limit_bytes=BIG),
    ):
        with pytest.raises(AccessDenied, match="permission denied"):
            call()
    assert not storage.exists("snapshot", "t1", "s1")


def test_unreadable_directories_are_fixed_before_delete(storage: LocalStorage, vol: Path) -> None:
    put(storage, "d/sub/f", b"x")
    os.chmod(vol / "d" / "sub", 0o000)  # what a pod's `chmod 000` leaves
    os.chmod(vol / "d", 0o500)
    storage._chmod_tree(str(vol), add=0o700, remove=0)
    assert mode_bits(vol / "d") == 0o700 and mode_bits(vol / "d" / "sub") == 0o700
    assert storage.delete_volume("t1", "vol1")


# ------------------------------------------------------------------------------------------- mounts, housekeeping


def test_host_path(storage: LocalStorage, vol: Path) -> None:
    assert storage.host_path("volume", "t1", "vol1") == str(vol)
    put(storage, "sub/f", b"x")
    assert storage.host_path("volume", "t1", "vol1", "/sub") == str(vol / "sub")
    with pytest.raises(PathNotFound):
        storage.host_path("volume", "t1", "vol1", "new/dir")
    assert storage.host_path("volume", "t1", "vol1", "new/dir", create=True) == str(vol / "new" / "dir")
    assert (vol / "new" / "dir").is_dir()
    storage.create_snapshot("t1", "s1", "vol1", "/", size_limit_bytes=BIG)
    with pytest.raises(PathNotFound):
        storage.host_path("snapshot", "t1", "s1", "created", create=True)  # snapshots are read-only
    with pytest.raises(ObjectNotFound):
        storage.host_path("volume", "t1", "nope")
    with pytest.raises(PathRejected):
        storage.host_path("volume", "t1", "vol1", "../../../t2/volumes/secret")


def test_find_unexpected_reports_and_never_deletes(storage: LocalStorage, tmp_path: Path) -> None:
    storage.create_volume("t1", "vol2")
    put(storage, "f", b"x")
    storage.create_snapshot("t1", "s1", "vol1", "/", size_limit_bytes=BIG)
    storage.create_snapshot("t1", "s2", "vol1", "/", size_limit_bytes=BIG)
    (tmp_path / "data" / "t1" / "volumes" / "stray.txt").write_text("?")
    report = storage.find_unexpected("t1", known_volume_ids=["vol1"], known_snapshot_ids={"s1"})
    base = tmp_path / "data" / "t1"
    assert report == sorted(
        [str(base / "snapshots" / "s2"), str(base / "volumes" / "stray.txt"), str(base / "volumes" / "vol2")]
    )
    for path in report:
        assert os.path.lexists(path)
    assert storage.find_unexpected("t1", ["vol1", "vol2", "stray.txt"], ["s1", "s2"]) == []
    assert storage.find_unexpected("nobody", [], []) == []
    assert storage.list_files("volume", "t1", "vol2") == []  # still usable


# ------------------------------------------------------------------------------------------- 1 GB, flat memory


async def test_one_gigabyte_upload_and_download_with_flat_memory(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")  # fsync on, as in production
    storage.create_volume("t1", "big")
    total = 1024 * MB
    chunk = 256 * 1024  # what a multipart parser hands over, roughly
    block = bytearray(os.urandom(chunk))
    expected = hashlib.sha256()
    baseline = vm_rss_bytes()
    peak = baseline

    async def body() -> AsyncIterator[bytes]:
        nonlocal peak
        for i in range(total // chunk):
            block[:8] = i.to_bytes(8, "little")  # every chunk different, made on the fly
            data = bytes(block)
            expected.update(data)
            if i % 64 == 0:
                peak = max(peak, vm_rss_bytes())
            yield data

    info = await storage.awrite_file(
        "t1", "big", "/data/one.gb", body(), size_limit_bytes=2 * total, overwrite=False
    )
    peak = max(peak, vm_rss_bytes())
    assert info.size == total
    assert storage.volume_usage_bytes("t1", "big") == total
    assert peak - baseline < 100 * MB, f"RSS grew by {(peak - baseline) / MB:.0f} MB during the upload"

    got = hashlib.sha256()
    f, size, name = await asyncio.to_thread(storage.open_file, "volume", "t1", "big", "/data/one.gb")
    assert (size, name) == (total, "one.gb")
    with f:
        for n in range(total // MB + 1):
            data = f.read(MB)
            if not data:
                break
            got.update(data)
            if n % 64 == 0:
                peak = max(peak, vm_rss_bytes())
    assert got.hexdigest() == expected.hexdigest()
    assert peak - baseline < 100 * MB, f"RSS grew by {(peak - baseline) / MB:.0f} MB during the download"

    # and over the limit: refused at the limit, nothing left, memory still flat
    with pytest.raises(SizeLimitExceeded):
        await storage.awrite_file(
            "t1", "big", "/data/two.gb", body(), size_limit_bytes=total + 64 * MB, overwrite=False
        )
    assert names_in(tmp_path / "data" / "t1" / "volumes" / "big" / "data") == ["one.gb"]
    assert peak - baseline < 100 * MB
