"""Volumes and snapshots mounted into REAL containers, driven through the HTTP API.

- A pod writes into its mounted volume; the files show in ``list_volume_files`` and download; they survive a
  restart of the pod and its deletion.
- A snapshot mounted into another pod is read-only there: writes fail inside the container.
- Symlinks planted by a pod (``ln -s /etc``, relative ones climbing out to a sibling volume or to ``/``) are
  refused by every files endpoint, by snapshots and by ``sub_path`` mounts; nothing outside the volume is read
  or written (checked on the host).

One server per module (its health loop owns the session's private engine), one database backend: the
database side of volumes and snapshots is covered by ``tests/api``.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

DB_BACKENDS = "one"
BUSYBOX = "busybox"
# The idle loop of the busybox image, so the pods stop at once on SIGTERM.
IDLE = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
ETC_PASSWD = Path("/etc/passwd").read_bytes()


def wait_for(check: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, (
            f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})"
        )
        time.sleep(0.2)


def vdir(env: Any, volume_id: str) -> Path:
    return env.srv.settings.data_dir / "storage" / env.tenant / "volumes" / volume_id


def sdir(env: Any, snapshot_id: str) -> Path:
    return env.srv.settings.data_dir / "storage" / env.tenant / "snapshots" / snapshot_id


def make_volume(env: Any, volume_id: str, **fields: Any) -> None:
    r = env.http.post("/v3/pods/volumes", json={"volume_id": volume_id, **fields})
    assert r.status_code == 200, r.text


def files(env: Any, volume_id: str, path: str = "") -> dict[str, dict[str, Any]]:
    r = env.http.get(f"/v3/pods/volumes/{volume_id}/list", params={"path": path} if path else {})
    assert r.status_code == 200, r.text
    return {f["name"]: f for f in r.json()["result"]}


def shell_pod(env: Any, pod_id: str, script: str, mounts: dict[str, Any]) -> None:
    """A busybox pod that runs ``script`` once and then idles."""
    env.create(pod_id, BUSYBOX, command=["sh", "-c", f"{script}\n{IDLE}"], volume_mounts=mounts)


def gone(env: Any, pod_id: str) -> bool:
    return not env.containers(pod_id)


# ------------------------------------------------------------------------------------------------ data lives on


def test_pod_writes_into_its_volume_and_the_data_outlives_the_pod(
    module_pod_server: Any, new_id: Any
) -> None:
    env = module_pod_server
    vol, pod_id = new_id("vol"), new_id("pod")
    make_volume(env, vol)
    script = (
        "date >> /mnt/data/boots.log\n"
        "mkdir -p /mnt/data/results\n"
        'echo "result of $HOSTNAME" > /mnt/data/results/out.txt\n'
        "head -c 2097152 /dev/zero > /mnt/data/results/zeros.bin"
    )
    shell_pod(env, pod_id, script, {vol: {"type": "tapisvolume", "mount_path": "/mnt/data"}})
    env.wait_status(pod_id, "AVAILABLE")
    # The container sees a bind mount of the volume's directory, read-write.
    [container] = env.containers(pod_id)
    mounts = env.engine.inspect(container.id)["Mounts"]
    [mount] = [m for m in mounts if m["Destination"] == "/mnt/data"]
    assert Path(mount["Source"]).resolve() == vdir(env, vol).resolve()
    assert mount["RW"] is True

    # Visible through the files API, and downloadable.
    wait_for(
        lambda: (
            "zeros.bin" in files(env, vol, "results")
            and files(env, vol, "results")["zeros.bin"]["size"] == 2 * 1024 * 1024
        ),
        what="the pod's files",
    )
    listing = files(env, vol)
    assert listing["boots.log"]["type"] == "file" and listing["results"]["type"] == "dir"
    out = env.http.get(f"/v3/pods/volumes/{vol}/contents/results/out.txt")
    assert out.status_code == 200 and out.content.startswith(b"result of ")
    archive = env.http.get(f"/v3/pods/volumes/{vol}/contents/results")
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert sorted(zf.namelist()) == ["results/", "results/out.txt", "results/zeros.bin"]
        assert zf.read("results/zeros.bin") == b"\0" * (2 * 1024 * 1024)
    # size is current: what the pod wrote counts (2 MiB + a few bytes → 3 MB rounded up).
    assert env.http.get(f"/v3/pods/volumes/{vol}").json()["result"]["size"] == 3
    # Files uploaded through the API are seen by the pod.
    r = env.http.post(
        f"/v3/pods/volumes/{vol}/upload/inbox/from-api.txt", files={"file": ("f", b"from the API\n")}
    )
    assert r.status_code == 200, r.text
    seen = env.exec_ok(pod_id, ["cat", "/mnt/data/inbox/from-api.txt"])
    assert seen["exit_code"] == 0 and seen["stdout"] == "from the API\n"

    # A restart: a new container, same volume; the script runs again and appends.
    first_container = container.id
    r = env.action(pod_id, "restart")
    assert r.status_code == 200, r.text

    def restarted() -> bool:
        current = env.containers(pod_id)
        return bool(current) and current[0].id != first_container and env.get(pod_id)["status"] == "AVAILABLE"

    wait_for(restarted, what="the restarted pod")
    wait_for(
        lambda: env.http.get(f"/v3/pods/volumes/{vol}/contents/boots.log").content.count(b"\n") == 2,
        what="a second line in boots.log",
    )
    assert env.http.get(f"/v3/pods/volumes/{vol}/contents/inbox/from-api.txt").content == b"from the API\n"

    # Delete the pod: the container goes, the data stays.
    assert env.http.delete(f"/v3/pods/{pod_id}").status_code == 200
    wait_for(lambda: gone(env, pod_id), what="the pod's container to be removed")
    assert env.http.get(f"/v3/pods/volumes/{vol}/contents/results/out.txt").content.startswith(b"result of ")
    assert set(files(env, vol)) == {"boots.log", "inbox", "results"}
    # A new pod mounting it sees everything.
    again = new_id("pod")
    shell_pod(env, again, "true", {vol: {"type": "tapisvolume", "mount_path": "/data"}})
    env.wait_status(again, "AVAILABLE")
    ls = env.exec_ok(again, ["ls", "/data/results"])
    assert ls["stdout"].split() == ["out.txt", "zeros.bin"]
    assert env.http.delete(f"/v3/pods/{again}").status_code == 200


def test_stopped_pod_no_longer_blocks_deleting_its_volume(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    vol, pod_id = new_id("vol"), new_id("pod")
    make_volume(env, vol)
    shell_pod(env, pod_id, "echo hi > /v/hi.txt", {vol: {"type": "tapisvolume", "mount_path": "/v"}})
    env.wait_status(pod_id, "AVAILABLE")
    r = env.http.delete(f"/v3/pods/volumes/{vol}")
    assert r.status_code == 409, r.text
    assert pod_id in r.json()["message"]
    assert vdir(env, vol).is_dir()
    assert env.action(pod_id, "stop").status_code == 200
    env.wait_status(pod_id, "STOPPED")
    wait_for(lambda: gone(env, pod_id), what="the stopped pod's container to go")
    r = env.http.delete(f"/v3/pods/volumes/{vol}")
    assert r.status_code == 200, r.text
    assert not vdir(env, vol).exists()


def test_sub_path_mounts_only_that_directory(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    vol, pod_id = new_id("vol"), new_id("pod")
    make_volume(env, vol)
    for path, data in (("shared/a.txt", b"a"), ("private/secret.txt", b"secret")):
        r = env.http.post(f"/v3/pods/volumes/{vol}/upload/{path}", files={"file": ("f", data)})
        assert r.status_code == 200, r.text
    shell_pod(
        env,
        pod_id,
        "echo from-pod > /work/b.txt",
        {vol: {"type": "tapisvolume", "mount_path": "/work", "sub_path": "shared"}},
    )
    env.wait_status(pod_id, "AVAILABLE")
    ls = env.exec_ok(pod_id, ["ls", "-a", "/work"])
    assert sorted(ls["stdout"].split()) == [".", "..", "a.txt", "b.txt"]
    up = env.exec_ok(pod_id, ["cat", "/work/../private/secret.txt"])
    assert up["exit_code"] != 0
    wait_for(lambda: (vdir(env, vol) / "shared" / "b.txt").exists(), what="b.txt in the volume")
    assert env.http.delete(f"/v3/pods/{pod_id}").status_code == 200


# ------------------------------------------------------------------------------------------------ snapshots


def test_a_mounted_snapshot_is_read_only_in_the_container(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    vol, snap, writer, reader = new_id("vol"), new_id("snap"), new_id("pod"), new_id("pod")
    make_volume(env, vol)
    shell_pod(
        env,
        writer,
        "mkdir -p /mnt/data/data && echo original > /mnt/data/data/file.txt",
        {vol: {"type": "tapisvolume", "mount_path": "/mnt/data"}},
    )
    env.wait_status(writer, "AVAILABLE")
    wait_for(lambda: (vdir(env, vol) / "data" / "file.txt").exists(), what="the writer's file")
    r = env.http.post(
        "/v3/pods/snapshots",
        json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/data"},
    )
    assert r.status_code == 200, r.text
    before = sorted(str(p.relative_to(sdir(env, snap))) for p in sdir(env, snap).rglob("*"))

    # The reader mounts the snapshot, and the volume read-write at another path.
    mounts = {
        snap: {"type": "tapissnapshot", "mount_path": "/snap"},
        vol: {"type": "tapisvolume", "mount_path": "/out"},
    }
    shell_pod(env, reader, "true", mounts)
    env.wait_status(reader, "AVAILABLE")
    [container] = env.containers(reader)
    [snap_mount] = [m for m in env.engine.inspect(container.id)["Mounts"] if m["Destination"] == "/snap"]
    assert snap_mount["RW"] is False
    assert env.exec_ok(reader, ["cat", "/snap/data/file.txt"])["stdout"] == "original\n"

    attempts = {
        "create": "echo x > /snap/new.txt",
        "append": "echo x >> /snap/data/file.txt",
        "truncate": ": > /snap/data/file.txt",
        "mkdir": "mkdir /snap/newdir",
        "remove": "rm -f /snap/data/file.txt",
        "rename": "mv /snap/data/file.txt /snap/data/moved.txt",
        "chmod": "chmod 777 /snap/data/file.txt",
        "symlink": "ln -s /etc /snap/etc",
        "touch": "touch /snap/data/file.txt",
    }
    for what, script in attempts.items():
        result = env.exec_ok(reader, ["sh", "-c", script])
        assert result["exit_code"] != 0, (what, result)
        assert "read-only" in (result["stderr"] + result["stdout"]).lower(), (what, result)
    # The same pod can write to its volume mount (the refusals above are the snapshot's, not the pod's).
    assert env.exec_ok(reader, ["sh", "-c", "echo ok > /out/reader-was-here"])["exit_code"] == 0

    after = sorted(str(p.relative_to(sdir(env, snap))) for p in sdir(env, snap).rglob("*"))
    assert after == before
    assert (sdir(env, snap) / "data" / "file.txt").read_bytes() == b"original\n"
    assert env.http.get(f"/v3/pods/snapshots/{snap}/contents/data/file.txt").content == b"original\n"
    # Deleting a snapshot that a running pod mounts needs force.
    r = env.http.delete(f"/v3/pods/snapshots/{snap}")
    assert r.status_code == 409, r.text
    for pod_id in (writer, reader):
        assert env.http.delete(f"/v3/pods/{pod_id}").status_code == 200


# ------------------------------------------------------------------------------------------------ planted links


def test_symlinks_planted_by_a_pod_lead_nowhere(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    vol, sibling, pod_id = new_id("vol"), new_id("vol"), new_id("pod")
    make_volume(env, vol)
    make_volume(env, sibling)
    canary = b"CANARY-" + uuid.uuid4().hex.encode()
    r = env.http.post(f"/v3/pods/volumes/{sibling}/upload/secret.txt", files={"file": ("s", canary)})
    assert r.status_code == 200, r.text
    outside = env.srv.settings.data_dir / f"outside-{uuid.uuid4().hex[:8]}.txt"
    outside.write_bytes(canary)
    # Inside the container the volume is /mnt/data; on the host it is <data>/storage/<tenant>/volumes/<id>.
    # Relative links are resolved by the host against the host path: "../<sibling>" is the sibling volume.
    script = "\n".join(
        [
            "cd /mnt/data",
            "ln -s /etc etclink",
            "ln -s /etc/passwd pwlink",
            "ln -s / rootlink",
            f"ln -s ../{sibling} siblink",
            f"ln -s ../{sibling}/secret.txt sibfile",
            "ln -s " + "../" * 20 + "etc uplink",
            f"ln -s ../../../../{outside.name} outfile",
            "mkdir -p d && echo ok > d/ok.txt && ln -s /etc d/etc && ln -s ../../" + sibling + " d/sib",
            "echo planted > ready",
        ]
    )
    shell_pod(env, pod_id, script, {vol: {"type": "tapisvolume", "mount_path": "/mnt/data"}})
    env.wait_status(pod_id, "AVAILABLE")
    wait_for(lambda: (vdir(env, vol) / "ready").exists(), what="the pod to plant its links")
    assert (vdir(env, vol) / "sibfile").resolve() == (vdir(env, sibling) / "secret.txt").resolve()
    assert (vdir(env, vol) / "outfile").resolve() == outside.resolve()
    etc_listing = sorted(os.listdir("/etc"))
    sibling_before = sorted(os.listdir(vdir(env, sibling)))

    listing = files(env, vol)
    for name in ("etclink", "pwlink", "rootlink", "siblink", "sibfile", "uplink", "outfile"):
        assert listing[name]["type"] == "symbolic_link", (name, listing[name])
    http = env.http
    escaping = ["etclink", "pwlink", "rootlink", "siblink", "sibfile", "uplink", "outfile", "d/etc", "d/sib"]
    for link in escaping:
        for path in (link, f"{link}/passwd", f"{link}/secret.txt", f"{link}/etc/passwd"):
            r = http.get(f"/v3/pods/volumes/{vol}/list", params={"path": path})
            assert r.status_code in (400, 404), (path, r.status_code, r.text)
            assert r.json()["result"] in (None, "", [])
            for params in ({}, {"zip": "true"}):
                r = http.get(f"/v3/pods/volumes/{vol}/contents/{path}", params=params)
                assert r.status_code in (400, 404), (path, params, r.status_code)
                assert b"root:x:0:0" not in r.content and canary not in r.content
        for path in (f"{link}/openpods-pwned-{uuid.uuid4().hex[:6]}", link, f"{link}/secret.txt"):
            for params in ({}, {"overwrite": "true"}):
                r = http.post(
                    f"/v3/pods/volumes/{vol}/upload/{path}", files={"file": ("p", b"PWNED")}, params=params
                )
                assert r.status_code in (400, 409), (path, params, r.status_code, r.text)
    # The zip of a directory with escaping links holds only what is really inside.
    r = http.get(f"/v3/pods/volumes/{vol}/contents/d")
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["d/", "d/ok.txt"]
    # A snapshot copies the links as links, never their targets; reading through them is refused there too.
    snap = new_id("snap")
    r = http.post(
        "/v3/pods/snapshots", json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/"}
    )
    assert r.status_code == 200, r.text
    for link in escaping:
        assert (sdir(env, snap) / link).is_symlink(), link
        r = http.get(f"/v3/pods/snapshots/{snap}/contents/{link}/passwd")
        assert r.status_code in (400, 404) and b"root:x:0:0" not in r.content
        r = http.get(f"/v3/pods/snapshots/{snap}/contents/{link}")
        assert r.status_code in (400, 404) and canary not in r.content
    r = http.post(
        "/v3/pods/snapshots",
        json={
            "snapshot_id": new_id("snap"),
            "source_volume_id": vol,
            "source_volume_path": "/etclink",
            "destination_path": "etc",
        },
    )
    assert r.status_code == 400, r.text

    # Nothing outside was written.
    assert sorted(os.listdir("/etc")) == etc_listing
    assert Path("/etc/passwd").read_bytes() == ETC_PASSWD
    assert sorted(os.listdir(vdir(env, sibling))) == sibling_before
    assert (vdir(env, sibling) / "secret.txt").read_bytes() == canary
    assert outside.read_bytes() == canary
    assert env.http.delete(f"/v3/pods/{pod_id}").status_code == 200


def test_a_sub_path_through_a_planted_link_is_never_mounted(module_pod_server: Any, new_id: Any) -> None:
    """A pod plants ``ln -s /etc etclink`` in its volume; a second pod asks to mount ``sub_path: etclink``: it
    must not get the host's /etc (the pod fails with a message instead)."""
    env = module_pod_server
    vol, sibling, planter = new_id("vol"), new_id("vol"), new_id("pod")
    make_volume(env, vol)
    make_volume(env, sibling)
    script = f"cd /mnt/data && ln -s /etc etclink && ln -s ../{sibling} siblink && echo done > ready"
    shell_pod(env, planter, script, {vol: {"type": "tapisvolume", "mount_path": "/mnt/data"}})
    env.wait_status(planter, "AVAILABLE")
    wait_for(lambda: (vdir(env, vol) / "ready").exists(), what="the links")
    for link in ("etclink", "siblink"):
        victim = new_id("pod")
        r = env.http.post(
            "/v3/pods",
            json={
                "pod_id": victim,
                "image": f"localhost/openpods-test/{BUSYBOX}:latest",
                "resources": {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128},
                "volume_mounts": {vol: {"type": "tapisvolume", "mount_path": "/x", "sub_path": link}},
            },
        )
        if r.status_code in (400, 403):
            continue  # refused up front: fine
        assert r.status_code == 200, r.text
        pod = env.wait_status(victim, "ERROR", "AVAILABLE")
        if pod["status"] == "AVAILABLE":  # only acceptable if /x is not the link's target
            ls = env.exec_ok(victim, ["ls", "/x"])["stdout"].split()
            assert "passwd" not in ls and "hostname" not in ls, ls
            pytest.fail(f"pod with sub_path {link!r} started; /x holds {ls}")
        message = json.dumps(pod["status_container"])
        assert link in message or "outside" in message, pod["status_container"]
        assert not env.containers(victim) or all(c.status != "running" for c in env.containers(victim))
        assert env.http.delete(f"/v3/pods/{victim}").status_code == 200
    assert env.http.delete(f"/v3/pods/{planter}").status_code == 200


# ------------------------------------------------------------------------------------------------ templates


def test_a_template_does_not_lend_access_to_a_volume(module_pod_server: Any, new_id: Any) -> None:
    """A user without any permission on another user's volume writes a template that mounts it and starts a
    pod from it. The pod must not see the volume's data (issue 6: creating a pod checks USER on every volume
    it mounts)."""
    env = module_pod_server
    vol, template_id, pod_id = new_id("vol"), new_id("tpl"), new_id("pod")
    make_volume(env, vol)
    canary = b"CANARY-" + uuid.uuid4().hex.encode()
    r = env.http.post(f"/v3/pods/volumes/{vol}/upload/private.txt", files={"file": ("p", canary)})
    assert r.status_code == 200, r.text
    env.srv.add_user("mallory")
    mallory = env.srv.client("mallory")
    assert mallory.get(f"/v3/pods/volumes/{vol}").status_code == 404  # no access at all
    assert mallory.post("/v3/pods/templates", json={"template_id": template_id}).status_code == 200
    tag = mallory.post(
        f"/v3/pods/templates/{template_id}/tags",
        json={
            "commit_message": "borrow a volume",
            "pod_definition": {
                "image": f"localhost/openpods-test/{BUSYBOX}:latest",
                "command": ["sh", "-c", IDLE],
                "resources": {"cpu_request": 50, "cpu_limit": 500, "mem_request": 32, "mem_limit": 128},
                "volume_mounts": {vol: {"type": "tapisvolume", "mount_path": "/loot"}},
            },
        },
    )
    if tag.status_code in (403, 404):
        return
    assert tag.status_code == 200, tag.text
    r = mallory.post("/v3/pods", json={"pod_id": pod_id, "template": template_id})
    if r.status_code in (403, 404):
        return
    assert r.status_code == 200, r.text
    pod = wait_for(
        lambda: (lambda p: p if p["status"] in ("AVAILABLE", "ERROR") else None)(
            mallory.get(f"/v3/pods/{pod_id}").json()["result"]
        ),
        what="mallory's pod to start or fail",
    )
    loot = mallory.post(f"/v3/pods/{pod_id}/exec", json={"commands": ["cat", "/loot/private.txt"]})
    stolen = loot.status_code == 200 and canary.decode() in json.dumps(loot.json()["result"])
    mallory.delete(f"/v3/pods/{pod_id}")
    assert not stolen, (
        f"mallory read volume {vol} (no permission on it) through a pod from her own template; "
        f"pod status {pod['status']}"
    )
    assert pod["status"] == "ERROR"
