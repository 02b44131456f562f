"""Path safety of every files endpoint, through HTTP against a real server.

Every kind of traversal -- ``..``, ``/../``, ``%2e%2e``, ``..%2f``, double encoding, NUL bytes (``%00``),
overlong UTF-8, backslashes (raw and ``%5c``), absolute paths -- is tried on ``list_volume_files`` (``?path=``),
``get_volume_contents``, ``upload_to_volume``, ``list_snapshot_files``, ``get_snapshot_contents`` and
``create_snapshot`` (``source_volume_path``). Symlinks planted in the volume (as a container that mounts it
would: ``ln -s /etc x``, a relative one into a sibling volume, one into another tenant, one climbing to ``/``)
are refused too. Each attack is aimed at a real canary outside the volume, and afterwards the host file system
is checked: nothing outside the volume was read (no canary in any answer) or written (no new file anywhere
under the data dir or in ``/etc``).

The requests are sent with ``http.client`` exactly as written: httpx and requests normalise ``..`` segments
away before sending, tapipy would too. Absolute paths are not an attack: ``/etc/passwd`` means
``<volume>/etc/passwd``.
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openpods.store.tables import Snapshot

UP = "../" * 24  # from any volume directory of the test servers up to "/"
ETC_PASSWD = Path("/etc/passwd").read_bytes()


@dataclass
class Env:
    srv: Any
    vol: str  # the attacker's volume (owner "attacker")
    victim: str  # a sibling volume of another user, same tenant
    snap: str  # a snapshot of the attacker's volume
    canaries: dict[str, bytes]  # path (absolute) -> content, outside the attacker's volume

    @property
    def storage(self) -> Path:
        return self.srv.settings.data_dir / "storage"

    def vol_dir(self, volume_id: str | None = None, tenant: str = "default") -> Path:
        return self.storage / tenant / "volumes" / (volume_id or self.vol)

    def snap_dir(self) -> Path:
        return self.storage / "default" / "snapshots" / self.snap


def raw(
    srv: Any,
    method: str,
    target: str,
    *,
    user: str = "attacker",
    body: bytes = b"",
    content_type: str | None = None,
) -> tuple[int, str, bytes]:
    """Sends ``target`` byte for byte (no normalisation, no re-encoding); returns (status, content-type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"localhost:{srv.port}")
        conn.putheader("X-Tapis-Token", srv.token(user))
        if content_type:
            conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def multipart(data: bytes, filename: str = "upload.bin") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def upload(
    srv: Any, volume_id: str, raw_path: str, data: bytes, *, user: str = "attacker", query: str = ""
) -> tuple[int, str, bytes]:
    body, ctype = multipart(data)
    return raw(
        srv,
        "POST",
        f"/v3/pods/volumes/{volume_id}/upload/{raw_path}{query}",
        user=user,
        body=body,
        content_type=ctype,
    )


def all_files(top: Path) -> dict[str, bytes | str]:
    """Every entry below ``top`` (not following links): file contents, link targets, 'dir'."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


def assert_refused(status: int, ctype: str, body: bytes, what: str) -> None:
    """A 400 with a message that says why (h11/uvicorn answer malformed request lines with a bare 400)."""
    assert status == 400, (what, status, body[:300])
    if ctype == "application/json":
        payload = json.loads(body)
        assert payload["status"] == "error", (what, payload)
        assert payload["message"], (what, payload)


def assert_nothing_leaked(env: Env, body: bytes) -> None:
    assert b"root:x:0:0" not in body
    for content in env.canaries.values():
        assert content not in body


@pytest.fixture(scope="module")
def env(make_module_server: Any) -> Iterator[Env]:
    srv = make_module_server(import_starter_catalog=False)
    for name in ("attacker", "victim"):
        srv.add_user(name)
    srv.add_user("victim", tenant="other")
    attacker, victim = srv.client("attacker"), srv.client("victim")
    vol, victim_vol, snap = "attackvol", "victimvol", "attacksnap"
    for client, volume_id in ((attacker, vol), (victim, victim_vol)):
        assert client.post("/v3/pods/volumes", json={"volume_id": volume_id}).status_code == 200
    assert (
        srv.client("victim", tenant="other")
        .post("/v3/pods/volumes", json={"volume_id": "othervol"})
        .status_code
        == 200
    )
    r = attacker.post(f"/v3/pods/volumes/{vol}/upload/data/inside.txt", files={"file": ("x", b"inside\n")})
    assert r.status_code == 200, r.text
    e = Env(srv=srv, vol=vol, victim=victim_vol, snap=snap, canaries={})
    canaries = {
        e.vol_dir(victim_vol) / "secret.txt": b"CANARY-sibling-volume-" + uuid.uuid4().hex.encode(),
        e.vol_dir("othervol", tenant="other") / "secret.txt": b"CANARY-other-tenant-"
        + uuid.uuid4().hex.encode(),
        e.storage / "secret.txt": b"CANARY-storage-root-" + uuid.uuid4().hex.encode(),
        srv.settings.data_dir / "secret.txt": b"CANARY-data-dir-" + uuid.uuid4().hex.encode(),
    }
    for path, content in canaries.items():
        path.write_bytes(content)
    e.canaries = {str(p): c for p, c in canaries.items()}
    r = attacker.post(
        "/v3/pods/snapshots", json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/"}
    )
    assert r.status_code == 200, r.text
    yield e


@pytest.fixture
def untouched(env: Env) -> Iterator[None]:
    """Whatever the test does, nothing outside the attacker's volume changes (data dir, /etc)."""
    data_dir = env.srv.settings.data_dir
    skip = str(env.vol_dir().relative_to(data_dir))

    def outside() -> dict[str, Any]:
        return {
            k: v
            for k, v in all_files(data_dir).items()
            if not k.startswith(skip + "/") and not k.endswith((".db", ".db-journal", ".db-wal", ".db-shm"))
        }

    before = outside()
    etc_before = sorted(os.listdir("/etc"))
    root_before = sorted(os.listdir("/"))
    yield
    assert outside() == before
    assert sorted(os.listdir("/etc")) == etc_before
    assert sorted(os.listdir("/")) == root_before
    assert Path("/etc/passwd").read_bytes() == ETC_PASSWD
    for path, content in env.canaries.items():
        assert Path(path).read_bytes() == content


# ------------------------------------------------------------------------------------------------ attack strings

# Path *segments* of a URL (contents/upload), exactly as sent on the wire. Each leads out of the volume once
# decoded (by the server: once; by a careless consumer: twice).
SEGMENT_ATTACKS = {
    "dotdot": UP + "etc/passwd",
    "dotdot-sibling": "../victimvol/secret.txt",
    "slash-dotdot-slash": "data/" + UP + "etc/passwd",
    "leading-slash-dotdot": "/" + UP + "etc/passwd",
    "dotdot-at-end": "data/..",
    "pct2e2e": "%2e%2e/" * 24 + "etc/passwd",
    "pct2E2E-upper": "%2E%2E/%2E%2E/victimvol/secret.txt",
    "dot-pct2e": ".%2e/.%2e/victimvol/secret.txt",
    "dotdot-pct2f": "..%2f" * 24 + "etc%2fpasswd",
    "all-encoded": "%2e%2e%2f" * 24 + "etc%2fpasswd",
    "double-encoded": "%252e%252e%252f" * 24 + "etc%252fpasswd",
    "double-encoded-dots": "%252e%252e/" * 24 + "etc/passwd",
    "nul": "data/inside.txt%00.png",
    "nul-dotdot": "..%00/victimvol/secret.txt",
    "backslash": "..\\" * 24 + "etc\\passwd",
    "backslash-encoded": "..%5c" * 24 + "etc%5cpasswd",
    "backslash-mixed": "data\\..\\..\\victimvol\\secret.txt",
}
# The same for the ``?path=`` query parameter (its value, as sent).
QUERY_ATTACKS = {
    "dotdot": UP.rstrip("/"),
    "dotdot-etc": UP + "etc",
    "dotdot-sibling": "../victimvol",
    "slash-dotdot-slash": "/data/" + UP + "etc",
    "dotdot-at-end": "data/..",
    "pct2e2e": "%2e%2e%2f%2e%2e%2f%2e%2e",
    "dotdot-pct2f": "..%2f..%2fvictimvol",
    "double-encoded": "%252e%252e%252f%252e%252e",
    "double-encoded-pct2f": "..%252f..%252fetc",
    "nul": "data%00",
    "nul-dotdot": "..%00",
    "backslash": "..\\..\\etc",
    "backslash-encoded": "..%5c..%5cetc",
}
# Overlong UTF-8 (``%c0%ae`` is a non-canonical '.'): the server decodes the URL once, and invalid UTF-8
# becomes U+FFFD, so these reach the files code as odd names that are not traversal. Contained: a read is a
# 404 (or a 400), an upload (if accepted) lands inside the volume.
OVERLONG = {
    "overlong-dot": "%c0%ae%c0%ae/" * 24 + "etc/passwd",
    "overlong-slash": "..%c0%af" * 24 + "etc/passwd",
    "overlong-dot-sibling": "%c0%ae%c0%ae/victimvol/secret.txt",
    "invalid-utf8": "%ff%fe/../victimvol/secret.txt",
}


def assert_no_listing(body: bytes) -> None:
    """A refused listing carries no result (a listing of a directory outside would show its names)."""
    payload = json.loads(body)
    assert payload["result"] in (None, "", []), payload


@pytest.mark.parametrize("attack", list(QUERY_ATTACKS.values()), ids=list(QUERY_ATTACKS))
@pytest.mark.parametrize("kind", ["volume", "snapshot"])
def test_list_files_path_traversal_refused(env: Env, untouched: None, kind: str, attack: str) -> None:
    object_id = env.vol if kind == "volume" else env.snap
    status, ctype, body = raw(env.srv, "GET", f"/v3/pods/{kind}s/{object_id}/list?path={attack}")
    assert_refused(status, ctype, body, attack)
    assert_nothing_leaked(env, body)
    assert_no_listing(body)


@pytest.mark.parametrize("attack", list(SEGMENT_ATTACKS.values()), ids=list(SEGMENT_ATTACKS))
@pytest.mark.parametrize("kind", ["volume", "snapshot"])
@pytest.mark.parametrize("zip_flag", ["", "?zip=true"])
def test_contents_path_traversal_refused(
    env: Env, untouched: None, kind: str, zip_flag: str, attack: str
) -> None:
    object_id = env.vol if kind == "volume" else env.snap
    status, ctype, body = raw(env.srv, "GET", f"/v3/pods/{kind}s/{object_id}/contents/{attack}{zip_flag}")
    assert_refused(status, ctype, body, attack)
    assert_nothing_leaked(env, body)


@pytest.mark.parametrize("attack", list(SEGMENT_ATTACKS.values()), ids=list(SEGMENT_ATTACKS))
@pytest.mark.parametrize("overwrite", ["", "?overwrite=true"])
def test_upload_path_traversal_refused(env: Env, untouched: None, overwrite: str, attack: str) -> None:
    # Aim at a fresh name next to the canary, and (with overwrite) at the canary itself.
    for target in (
        attack.replace("passwd", f"openpods-{uuid.uuid4().hex[:8]}").replace(
            "secret.txt", f"new-{uuid.uuid4().hex[:8]}.txt"
        ),
        attack,
    ):
        before = all_files(env.vol_dir())
        status, ctype, body = upload(
            env.srv, env.vol, target, b"PWNED by " + target.encode(), query=overwrite
        )
        assert_refused(status, ctype, body, target)
        assert all_files(env.vol_dir()) == before, target  # nothing written inside either


@pytest.mark.parametrize("attack", list(OVERLONG.values()), ids=list(OVERLONG))
def test_overlong_utf8_is_contained(env: Env, untouched: None, attack: str) -> None:
    srv, vol = env.srv, env.vol
    for kind, object_id in (("volume", vol), ("snapshot", env.snap)):
        for target in (
            f"/v3/pods/{kind}s/{object_id}/contents/{attack}",
            f"/v3/pods/{kind}s/{object_id}/contents/{attack}?zip=true",
            f"/v3/pods/{kind}s/{object_id}/list?path={attack}",
        ):
            status, _, body = raw(srv, "GET", target)
            assert status in (400, 404), (target, status, body[:200])
            assert_nothing_leaked(env, body)
    before = set(all_files(env.vol_dir()))
    status, _, body = upload(srv, vol, attack.replace("passwd", f"openpods-{uuid.uuid4().hex[:8]}"), b"odd")
    assert status in (200, 400), (status, body)
    created = set(all_files(env.vol_dir())) - before
    if status == 200:  # contained: the new entries are inside the volume, under U+FFFD names
        assert created and all("\ufffd" in name for name in created), created
        assert "\ufffd" in json.loads(body)["result"]
        for name in sorted(created, key=len, reverse=True):
            path = env.vol_dir() / name
            path.unlink() if path.is_file() else path.rmdir()
    else:
        assert created == set()


def test_traversal_in_snapshot_source_path_refused(env: Env, untouched: None) -> None:
    client = env.srv.client("attacker")
    for i, source in enumerate(
        [
            "/../victimvol",
            "/" + UP + "etc",
            "/data/../../victimvol",
            "/..",
            "/data/..",
            "/..\\victimvol",
            "/%2e%2e/victimvol",
            "/data%00",
            "/%252e%252e",
        ]
    ):
        snapshot_id = f"trav{i}snap"
        r = client.post(
            "/v3/pods/snapshots",
            json={"snapshot_id": snapshot_id, "source_volume_id": env.vol, "source_volume_path": source},
        )
        assert r.status_code == 400, (source, r.status_code, r.text)
        assert env.srv.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id) == []
        assert not (env.storage / "default" / "snapshots" / snapshot_id).exists()
    # The destination inside the snapshot is checked the same way.
    for i, dest in enumerate(["../../victimvol", "/" + UP + "etc", "a/../../b", "..\\x", "%2e%2e/x"]):
        snapshot_id = f"travd{i}snap"
        r = client.post(
            "/v3/pods/snapshots",
            json={
                "snapshot_id": snapshot_id,
                "source_volume_id": env.vol,
                "source_volume_path": "/data",
                "destination_path": dest,
            },
        )
        assert r.status_code == 400, (dest, r.status_code, r.text)
        assert env.srv.rows(Snapshot, tenant_id="default", snapshot_id=snapshot_id) == []
        assert not (env.storage / "default" / "snapshots" / snapshot_id).exists()


# ------------------------------------------------------------------------------------------------ absolute paths


def test_absolute_paths_stay_inside_the_volume(env: Env, untouched: None) -> None:
    srv, vol = env.srv, env.vol
    # Nothing called etc/passwd in the volume yet: 404, not the host's file.
    for target in ("/etc/passwd", "//etc/passwd", "etc/passwd"):
        status, _, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/contents/{target}")
        assert status == 404, (target, status, body)
        assert_nothing_leaked(env, body)
    status, _, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/list?path=/etc")
    assert status == 404, body
    # An upload to /etc/<name> lands in <volume>/etc/<name>.
    name = f"openpods-{uuid.uuid4().hex[:8]}"
    status, _, body = upload(srv, vol, f"/etc/{name}", b"inside the volume")
    assert status == 200, body
    assert json.loads(body)["result"] == f"/etc/{name}"
    assert (env.vol_dir() / "etc" / name).read_bytes() == b"inside the volume"
    assert not Path("/etc", name).exists()
    status, _, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/contents//etc/{name}")
    assert (status, body) == (200, b"inside the volume")
    status, _, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/list?path=/etc")
    assert status == 200 and [f["name"] for f in json.loads(body)["result"]] == [name]


def test_harmless_look_alikes_are_ordinary_names(env: Env, untouched: None) -> None:
    """``...``, ``..a``, ``a..`` and ``%20`` are file names, not traversal: they stay inside and work."""
    srv, vol = env.srv, env.vol
    for name in ("...", "..a", "a..", "x%20y"):
        status, _, body = upload(srv, vol, f"odd/{name}", name.encode())
        assert status == 200, (name, body)
    stored = sorted(os.listdir(env.vol_dir() / "odd"))
    assert stored == sorted(["...", "..a", "a..", "x y"])  # %20 was decoded once, by the server
    status, _, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/contents/odd/...")
    assert (status, body) == (200, b"...")


# ------------------------------------------------------------------------------------------------ symlinks


@pytest.fixture(scope="module")
def links(env: Env) -> dict[str, str]:
    """Symlinks as a container that mounts the volume would plant them (created on the host here; the
    integration tests plant them from a real pod)."""
    vdir = env.vol_dir()
    (vdir / "nest" / "deep").mkdir(parents=True)
    (vdir / "nest" / "ok.txt").write_bytes(b"ok\n")
    planted = {
        "etclink": "/etc",  # ln -s /etc etclink
        "pwlink": "/etc/passwd",
        "uplink": UP.rstrip("/"),  # relative, up to /
        "siblink": "../victimvol",  # relative, into a sibling volume of another user
        "sibfile": "../victimvol/secret.txt",
        "tenantlink": "../../../other/volumes/othervol",  # relative, into another tenant
        "storagelink": "../../..",  # the storage root itself
        "rootlink": "/",
        "selfup": ".",  # harmless: the volume itself
        "dangling": "/nonexistent/openpods",  # absolute, outside: refused like any other
        "missing": "data/missing.txt",  # dangling but inside: just not found
        "nest/deep/climb": "../../../victimvol/secret.txt",
        "nest/etc": "/etc",
        "nest/pw": "/etc/passwd",
        "internal": "data/inside.txt",  # stays inside: followed
    }
    for name, target in planted.items():
        os.symlink(target, vdir / name)
    return planted


ESCAPING = [
    "etclink",
    "pwlink",
    "uplink",
    "siblink",
    "sibfile",
    "tenantlink",
    "storagelink",
    "rootlink",
    "dangling",
    "nest/deep/climb",
    "nest/etc",
    "nest/pw",
]


def test_planted_symlinks_are_listed_not_followed(env: Env, links: dict[str, str], untouched: None) -> None:
    r = env.srv.client("attacker").get(f"/v3/pods/volumes/{env.vol}/list")
    assert r.status_code == 200, r.text
    types = {f["name"]: f["type"] for f in r.json()["result"]}
    for name in links:
        if "/" not in name:
            assert types[name] == "symbolic_link", (name, types)
    assert_nothing_leaked(env, r.content)


@pytest.mark.parametrize("link", ESCAPING)
def test_escaping_symlinks_refused_on_every_endpoint(
    env: Env, links: dict[str, str], untouched: None, link: str
) -> None:
    srv, vol = env.srv, env.vol
    for path in (link, f"{link}/", f"{link}/passwd", f"{link}/secret.txt", f"{link}/etc/passwd"):
        status, ctype, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/list?path={path}")
        assert_refused(status, ctype, body, f"list {path}")
        assert_nothing_leaked(env, body)
        assert_no_listing(body)
        for zip_flag in ("", "?zip=true"):
            status, ctype, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/contents/{path}{zip_flag}")
            assert status in (400, 404), (path, status, body[:200])  # 404: a dangling name below a file link
            assert_nothing_leaked(env, body)
    for path in (link, f"{link}/openpods-{uuid.uuid4().hex[:8]}", f"{link}/secret.txt", f"{link}/passwd"):
        for query in ("", "?overwrite=true"):
            status, ctype, body = upload(srv, vol, path, b"PWNED through " + link.encode(), query=query)
            assert status in (400, 409), (path, query, status, body)
    # The link itself is still there, unchanged.
    assert os.readlink(env.vol_dir() / link) == links[link]


def test_symlinks_inside_the_volume_are_followed(env: Env, links: dict[str, str], untouched: None) -> None:
    srv, vol = env.srv, env.vol
    status, _, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/contents/internal")
    assert (status, body) == (200, b"inside\n")
    status, _, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/list?path=selfup/data")
    assert status == 200 and [f["name"] for f in json.loads(body)["result"]] == ["inside.txt"]
    status, _, body = raw(srv, "GET", f"/v3/pods/volumes/{vol}/contents/missing")
    assert status == 404, body


def test_zip_of_a_directory_with_escaping_links_contains_none_of_their_targets(
    env: Env, links: dict[str, str], untouched: None
) -> None:
    import io
    import zipfile

    r = env.srv.client("attacker").get(f"/v3/pods/volumes/{env.vol}/contents/nest", params={"zip": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = sorted(zf.namelist())
        contents = b"".join(zf.read(n) for n in names)
    assert names == ["nest/", "nest/deep/", "nest/ok.txt"], names
    assert_nothing_leaked(env, contents)
    assert_nothing_leaked(env, r.content)


def test_snapshot_of_a_volume_with_escaping_links_copies_links_not_targets(
    env: Env, links: dict[str, str], untouched: None
) -> None:
    client = env.srv.client("attacker")
    snapshot_id = "linksnap"
    r = client.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snapshot_id, "source_volume_id": env.vol, "source_volume_path": "/"},
    )
    assert r.status_code == 200, r.text
    snap_dir = env.storage / "default" / "snapshots" / snapshot_id
    for name in ESCAPING:
        assert (snap_dir / name).is_symlink(), name  # copied as a link, its target never read
    # The snapshot's size counts only what is really inside the volume.
    assert r.json()["result"]["size"] <= 1
    for path in ESCAPING:
        for target in (path, f"{path}/passwd", f"{path}/secret.txt"):
            status, _, body = raw(env.srv, "GET", f"/v3/pods/snapshots/{snapshot_id}/contents/{target}")
            assert status in (400, 404), (target, status, body[:200])
            assert_nothing_leaked(env, body)
            status, _, body = raw(env.srv, "GET", f"/v3/pods/snapshots/{snapshot_id}/list?path={target}")
            assert status in (400, 404), (target, status, body[:200])
            assert_nothing_leaked(env, body)
    # A snapshot *of* an escaping link is refused, and leaves nothing.
    for i, source in enumerate(
        ["/etclink", "/siblink", "/sibfile", "/uplink/etc", "/nest/pw", "/tenantlink"]
    ):
        bad_id = f"linkbad{i}"
        r = client.post(
            "/v3/pods/snapshots",
            json={
                "snapshot_id": bad_id,
                "source_volume_id": env.vol,
                "source_volume_path": source,
                "destination_path": "copy",
            },
        )
        assert r.status_code == 400, (source, r.status_code, r.text)
        assert env.srv.rows(Snapshot, tenant_id="default", snapshot_id=bad_id) == []
        assert not (env.storage / "default" / "snapshots" / bad_id).exists()
    r = client.delete(f"/v3/pods/snapshots/{snapshot_id}")
    assert r.status_code == 200, r.text
    assert not snap_dir.exists()
