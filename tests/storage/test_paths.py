"""openpods.storage.paths: every kind of traversal is refused or contained."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openpods.storage import paths
from openpods.storage.paths import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    PathNotFound,
    PathRejected,
    clean_parts,
    open_directory,
    open_dirs,
    open_regular_file,
    resolve_inside,
    safe_extract_path,
    safe_zip_member_name,
)


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """<tmp>/data/t1/volumes/vol (the root under test), a neighbour volume, and a secret outside."""
    root = tmp_path / "data" / "t1" / "volumes" / "vol"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file.txt").write_text("inside")
    other = tmp_path / "data" / "t2" / "volumes" / "other"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("other tenant")
    sibling = tmp_path / "data" / "t1" / "volumes" / "vol2"  # shares the root's name as a prefix
    sibling.mkdir(parents=True)
    (sibling / "s.txt").write_text("sibling")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    return {"root": root, "other": other, "sibling": sibling, "outside": outside}


# ------------------------------------------------------------------------------------------- lexical


@pytest.mark.parametrize(
    ("user_path", "parts"),
    [
        ("", ()),
        ("/", ()),
        ("//", ()),
        (".", ()),
        ("./", ()),
        ("a", ("a",)),
        ("/a/b", ("a", "b")),
        ("a//b/", ("a", "b")),
        ("./a/./b", ("a", "b")),
        ("...", ("...",)),
        ("a..b/..c/d..", ("a..b", "..c", "d..")),
        ("a%20b.txt", ("a%20b.txt",)),  # harmless escapes stay literal
        ("50%off", ("50%off",)),  # not an escape at all
        ("100%", ("100%",)),
        ("café/naïve.txt", ("café", "naïve.txt")),
        ("/etc/passwd", ("etc", "passwd")),  # absolute means relative to the volume root
        ("~/x", ("~", "x")),
    ],
)
def test_clean_parts_accepts(user_path: str, parts: tuple[str, ...]) -> None:
    assert clean_parts(user_path) == parts


@pytest.mark.parametrize(
    ("user_path", "why"),
    [
        ("..", "'..'"),
        ("../x", "'..'"),
        ("/../x", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        ("a/b/../../..", "'..'"),
        ("%2e%2e/x", "%2e"),
        ("%2E%2E/x", "%2E"),
        (".%2e/x", "%2e"),
        ("..%2fx", "%2f"),
        ("x/..%2f..%2fetc", "%2f"),
        ("a%2fb", "%2f"),
        ("a%2Fb", "%2F"),
        ("a%5cb", "%5c"),
        ("%252e%252e/x", "double"),
        ("%%32%65%%32%65/x", "%2e"),  # decodes to an encoded dot: caught on the second check
        ("%25", "double"),
        ("a%00b", "%00"),
        ("a%0ab", "%0a"),
        ("%c0%ae%c0%ae/x", "%c0"),  # overlong UTF-8 for '.'
        ("%e2%80%ae", "%e2"),
        ("a\x00b", "NUL"),
        ("\x00", "NUL"),
        ("a\nb", "control"),
        ("a\rb", "control"),
        ("a\tb", "control"),
        ("a\x1bb", "control"),
        ("a\x7fb", "control"),
        ("a\x85b", "control"),  # C1 control
        ("a\\b", "backslash"),
        ("..\\x", "backslash"),
        ("\\etc\\passwd", "backslash"),
        ("a/\udc80", "Unicode"),  # lone surrogate
    ],
)
def test_clean_parts_rejects(user_path: str, why: str) -> None:
    with pytest.raises(PathRejected) as info:
        clean_parts(user_path)
    assert why.lower() in str(info.value).lower()
    assert isinstance(info.value, ValueError)


def test_length_limits() -> None:
    assert clean_parts("a" * MAX_NAME_BYTES) == ("a" * MAX_NAME_BYTES,)
    with pytest.raises(PathRejected, match="longer than 255"):
        clean_parts("a" * (MAX_NAME_BYTES + 1))
    with pytest.raises(PathRejected, match="longer than 255"):
        clean_parts("é" * 128)  # 256 UTF-8 bytes
    ok = "/".join(["abcdefg"] * (MAX_PATH_BYTES // 8))
    assert len(clean_parts(ok)) == MAX_PATH_BYTES // 8
    with pytest.raises(PathRejected, match="too long"):
        clean_parts("a/" * (MAX_PATH_BYTES // 2 + 1))


def test_non_string_and_field_name() -> None:
    with pytest.raises(PathRejected):
        clean_parts(b"x")  # type: ignore[arg-type]
    with pytest.raises(PathRejected, match=r"^sub_path"):
        clean_parts("../x", what="sub_path")


def test_messages_are_readable_and_truncated() -> None:
    with pytest.raises(PathRejected) as info:
        clean_parts("x" * 1000 + "/../y")
    assert len(str(info.value)) < 400


# ------------------------------------------------------------------------------------------- resolution


def test_resolve_plain_paths(layout: dict[str, Path]) -> None:
    root = layout["root"]
    assert resolve_inside(root, "dir/file.txt") == root / "dir" / "file.txt"
    assert resolve_inside(root, "/dir/file.txt", must_exist=True) == root / "dir" / "file.txt"
    assert resolve_inside(root, "") == root
    assert resolve_inside(root, "/") == root
    assert resolve_inside(root, "new/deeper/file") == root / "new" / "deeper" / "file"


def test_absolute_path_stays_inside(layout: dict[str, Path]) -> None:
    root = layout["root"]
    assert resolve_inside(root, "/etc/passwd") == root / "etc" / "passwd"
    with pytest.raises(PathNotFound):
        resolve_inside(root, "/etc/passwd", must_exist=True)


@pytest.mark.parametrize("user_path", ["", "/", ".", "//./"])
def test_allow_root(layout: dict[str, Path], user_path: str) -> None:
    with pytest.raises(PathRejected, match="root"):
        resolve_inside(layout["root"], user_path, allow_root=False)


def test_must_exist(layout: dict[str, Path]) -> None:
    with pytest.raises(PathNotFound, match="nope"):
        resolve_inside(layout["root"], "dir/nope", must_exist=True)
    assert isinstance(PathNotFound("x"), FileNotFoundError)


def test_symlink_to_etc_is_rejected(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink("/etc", root / "evil")  # what `ln -s /etc evil` in a pod leaves on the host
    for p in ("evil", "evil/passwd", "/evil/", "dir/../evil"):
        with pytest.raises(PathRejected):
            resolve_inside(root, p)


def test_relative_symlink_to_other_tenant_is_rejected(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink("../../../../t2/volumes/other", root / "dir" / "up")
    assert (root / "dir" / "up" / "secret.txt").exists()  # the link does work on the host
    with pytest.raises(PathRejected, match="outside"):
        resolve_inside(root, "dir/up/secret.txt")
    with pytest.raises(PathRejected, match="outside"):
        resolve_inside(root, "dir/up")


def test_symlink_to_sibling_with_common_prefix_is_rejected(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink("../vol2", root / "sib")
    with pytest.raises(PathRejected):
        resolve_inside(root, "sib/s.txt")


def test_symlinked_file_outside_is_rejected(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink(layout["outside"] / "passwd", root / "pw")
    with pytest.raises(PathRejected):
        resolve_inside(root, "pw")


def test_dangling_symlinks(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink("/nonexistent-openpods-target", root / "dangling-out")
    os.symlink("dir/not-yet", root / "dangling-in")
    with pytest.raises(PathRejected):
        resolve_inside(root, "dangling-out")  # writing through it would create a file outside
    assert resolve_inside(root, "dangling-in") == root / "dir" / "not-yet"


def test_symlink_loop(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    with pytest.raises((PathNotFound, PathRejected)):
        resolve_inside(root, "loop1/x", must_exist=True)


def test_symlink_inside_is_followed(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink("dir", root / "alias")  # a symlinked directory in the middle of a path
    os.symlink("file.txt", root / "dir" / "flink")
    assert resolve_inside(root, "alias/file.txt", must_exist=True) == root / "dir" / "file.txt"
    assert resolve_inside(root, "alias/flink", must_exist=True) == root / "dir" / "file.txt"


def test_symlink_to_root_with_allow_root(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink(".", root / "self")
    assert resolve_inside(root, "self") == root
    with pytest.raises(PathRejected):
        resolve_inside(root, "self", allow_root=False)


def test_root_given_through_symlink(layout: dict[str, Path], tmp_path: Path) -> None:
    link_root = tmp_path / "rootlink"
    os.symlink(layout["root"], link_root)
    assert resolve_inside(link_root, "dir/file.txt", must_exist=True) == layout["root"] / "dir" / "file.txt"
    os.symlink("/etc", layout["root"] / "evil")
    with pytest.raises(PathRejected):
        resolve_inside(link_root, "evil/passwd")


def test_message_does_not_reveal_link_target(layout: dict[str, Path]) -> None:
    os.symlink(layout["outside"], layout["root"] / "x")
    with pytest.raises(PathRejected) as info:
        resolve_inside(layout["root"], "x/passwd")
    assert str(layout["outside"]) not in str(info.value)


# ------------------------------------------------------------------------------------------- race-safe open


def test_open_regular_file(layout: dict[str, Path]) -> None:
    fd, st, real = open_regular_file(layout["root"], "/dir/file.txt")
    try:
        assert os.read(fd, 100) == b"inside"
        assert st.st_size == 6
        assert real == layout["root"] / "dir" / "file.txt"
        assert os.get_blocking(fd)
    finally:
        os.close(fd)


def test_open_regular_file_refusals(layout: dict[str, Path]) -> None:
    root = layout["root"]
    with pytest.raises(IsADirectoryError):
        open_regular_file(root, "dir")
    with pytest.raises(PathRejected):
        open_regular_file(root, "")
    with pytest.raises(PathNotFound):
        open_regular_file(root, "dir/missing")
    os.mkfifo(root / "fifo")  # would block a plain open() forever
    with pytest.raises(PathRejected, match="not a regular file"):
        open_regular_file(root, "fifo")
    os.symlink(layout["outside"] / "passwd", root / "pw")
    with pytest.raises(PathRejected):
        open_regular_file(root, "pw")


def test_open_refuses_a_symlink_swapped_in_after_the_check(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate the race: the check saw a real file, then the container replaced it with a symlink."""
    root = layout["root"]
    checked = root / "dir" / "file.txt"
    real_resolve = paths.resolve_inside

    def resolve_then_swap(*args: object, **kwargs: object) -> Path:
        result = real_resolve(*args, **kwargs)  # type: ignore[arg-type]
        checked.unlink()
        os.symlink(layout["outside"] / "passwd", checked)
        return result

    monkeypatch.setattr(paths, "resolve_inside", resolve_then_swap)
    with pytest.raises(PathRejected, match="changed"):
        open_regular_file(root, "dir/file.txt")


def test_open_refuses_a_directory_swapped_for_a_symlink(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = layout["root"]
    real_resolve = paths.resolve_inside

    def resolve_then_swap(*args: object, **kwargs: object) -> Path:
        result = real_resolve(*args, **kwargs)  # type: ignore[arg-type]
        os.rename(root / "dir", root / "dir-old")
        os.symlink(layout["outside"], root / "dir")
        (layout["outside"] / "file.txt").write_text("outside!")
        return result

    monkeypatch.setattr(paths, "resolve_inside", resolve_then_swap)
    with pytest.raises(PathRejected, match="changed"):
        open_regular_file(root, "dir/file.txt")


def test_open_dirs_walks_without_following(layout: dict[str, Path]) -> None:
    root = layout["root"]
    os.symlink(layout["outside"], root / "out")
    with pytest.raises(PathRejected):
        open_dirs(str(root), ("out",))
    with pytest.raises(NotADirectoryError):
        open_dirs(str(root), ("dir", "file.txt", "x"))
    with pytest.raises(PathNotFound):
        open_dirs(str(root), ("nope",))


def test_open_dirs_creates(layout: dict[str, Path]) -> None:
    root = layout["root"]
    created: list[tuple[str, ...]] = []
    fd = open_dirs(str(root), ("dir", "n1", "n2"), create=True, mode=0o750, created=created)
    os.close(fd)
    assert created == [("dir", "n1"), ("dir", "n1", "n2")]
    assert (root / "dir" / "n1" / "n2").is_dir()
    assert (root / "dir" / "n1").stat().st_mode & 0o777 == 0o750
    os.symlink(layout["outside"], root / "out")
    with pytest.raises(PathRejected):
        open_dirs(str(root), ("out", "x"), create=True)
    assert not (layout["outside"] / "x").exists()


def test_open_directory(layout: dict[str, Path]) -> None:
    fd = open_directory(layout["root"], "dir")
    try:
        assert sorted(os.listdir(fd)) == ["file.txt", "sub"]
    finally:
        os.close(fd)
    with pytest.raises(NotADirectoryError):
        open_directory(layout["root"], "dir/file.txt")


# ------------------------------------------------------------------------------------------- zip names


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("a.txt", "a.txt"),
        ("dir/a.txt", "dir/a.txt"),
        ("dir//a.txt", "dir/a.txt"),
        ("./dir/./a.txt", "dir/a.txt"),
        ("dir/", "dir/"),
        ("dir/sub/", "dir/sub/"),
        ("...", "..."),
    ],
)
def test_zip_member_name_ok(name: str, clean: str) -> None:
    assert safe_zip_member_name(name) == clean


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a/..",
        "C:\\x",
        "C:x",
        "c:/x",
        "a\\b",
        "..\\..\\x",
        "",
        "/",
        ".",
        "./",
        "a\x00b",
        "a\nb",
    ],
)
def test_zip_member_name_rejected(name: str) -> None:
    with pytest.raises(PathRejected):
        safe_zip_member_name(name)


def test_safe_extract_path(layout: dict[str, Path]) -> None:
    root = layout["root"]
    assert safe_extract_path(root, "dir/new.txt") == root / "dir" / "new.txt"
    os.symlink(layout["outside"], root / "out")
    with pytest.raises(PathRejected):
        safe_extract_path(root, "out/passwd")  # a zip cannot ride a planted symlink out
    with pytest.raises(PathRejected):
        safe_extract_path(root, "../../x")
