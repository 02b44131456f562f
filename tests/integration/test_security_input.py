"""Issue 9 against REAL containers:

- Image digests: an engine resolves ``name@sha256:<digest>`` to whatever image has that digest, whatever the name
  says (Podman runs ``echo@<digest of http>`` as the http image). A digest that no allowlist entry names is
  admitted only when the engine shows it belongs to an allowed name:tag -- at the API and again at spawn time.
- Volume size limits hold for pods: with ``volume_size_enforcement = "loop"`` a volume is its own filesystem, a
  pod writing past ``size_limit`` gets ENOSPC, the API reports the volume full, raising the limit lets the
  running pod write more, and deleting the volume removes its filesystem.

One server per test (the loop test needs its own settings), one database backend.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from openpods.storage import loopfs

DB_BACKENDS = "one"
PREFIX = "localhost/openpods-test"
IDLE = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
MB = 1024 * 1024


def digest_of(env: Any, name: str) -> str:
    """The content digest of a local test image, as the engine reports it."""
    info = env.engine.client.api.inspect_image(f"{PREFIX}/{name}:latest")
    digests = [d.partition("@")[2] for d in info["RepoDigests"] if d.startswith(f"{PREFIX}/{name}@")]
    assert digests, info["RepoDigests"]
    return digests[0]


def refused(r: Any) -> list[str]:
    assert r.status_code == 400, r.text
    messages = r.json()["message"]
    assert any(m.startswith("image:") for m in messages), messages
    return messages


def test_digest_of_another_image_is_refused_at_the_api(pod_server: Any, new_id: Any) -> None:
    env = pod_server()  # every test image is allowlisted by name, without a tag (so: any tag)
    http_digest, echo_digest = digest_of(env, "http"), digest_of(env, "echo")
    for image in (f"{PREFIX}/echo@{http_digest}", f"{PREFIX}/echo:latest@{http_digest}",
                  f"{PREFIX}/echo:v9@{echo_digest}"):
        pod_id = new_id("pod")
        r = env.http.post("/v3/pods", json={"pod_id": pod_id, "image": image, "status_requested": "OFF"})
        messages = refused(r)
        assert "digest" in " ".join(messages)
        assert env.http.get(f"/v3/pods/{pod_id}").status_code == 404
    # The digest of the named image itself, confirmed by the engine, runs.
    pod_id = new_id("pod")
    env.create(pod_id, f"{PREFIX}/http@{http_digest}", networking={"default": {"protocol": "http", "port": 5000}})
    env.wait_status(pod_id, "AVAILABLE")
    assert "hello from openpods" in env.fetch(pod_id)
    pod_id = new_id("pod")
    env.create(pod_id, f"{PREFIX}/http:latest@{http_digest}",
               networking={"default": {"protocol": "http", "port": 5000}})
    env.wait_status(pod_id, "AVAILABLE")


def test_digest_is_checked_again_at_spawn_time(pod_server: Any, new_id: Any) -> None:
    env = pod_server()
    http_digest = digest_of(env, "http")
    pinned = f"{PREFIX}/echo@{http_digest}"
    admin = env.srv.client("admin")
    # An admin pins exactly this reference: it is admitted, and it runs (as the http image: that is what it is).
    r = admin.post("/v3/pods/images", json={"image": pinned, "tenants": ["**"]})
    assert r.status_code == 200, r.text
    pod_id = new_id("pod")
    env.create(pod_id, pinned, command=["sh", "-c", IDLE])
    env.wait_status(pod_id, "AVAILABLE")
    assert env.action(pod_id, "stop").status_code == 200
    env.wait_status(pod_id, "STOPPED")
    # The pin goes; the entry "echo" (any tag) does not vouch for the digest of another image.
    assert admin.delete(f"/v3/pods/images/{pinned}").status_code == 200
    assert env.action(pod_id, "start").status_code == 200
    pod = env.wait_status(pod_id, "ERROR", "AVAILABLE")
    assert pod["status"] == "ERROR", pod
    assert "digest" in pod["status_container"]["message"], pod["status_container"]
    assert not [c for c in env.containers(pod_id) if c.status == "running"]


# ------------------------------------------------------------------------------------------------ volume limits


def _vdir(env: Any, volume_id: str) -> Path:
    return env.srv.settings.data_dir / "storage" / env.tenant / "volumes" / volume_id


def _umount_below(root: Path) -> None:
    """Whatever a failed test left mounted under ``root`` (loop devices are few; never leak one)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _dd(env: Any, pod_id: str, mb: int) -> str:
    result = env.exec_ok(pod_id, ["sh", "-c", f"dd if=/dev/zero of=/data/fill bs=1M count={mb} 2>&1; echo rc=$?"])
    return result["stdout"] + result["stderr"]


@pytest.mark.skipif(bool(loopfs.unavailable()), reason=f"loop filesystems unavailable: {loopfs.unavailable()}")
def test_pod_cannot_write_past_its_volume_size_limit(pod_server: Any, new_id: Any) -> None:
    env = pod_server(volume_size_enforcement="loop")
    try:
        _check_volume_limit(env, new_id)
    finally:
        _umount_below(env.srv.settings.data_dir)


def _check_volume_limit(env: Any, new_id: Any) -> None:
    vol = new_id("vol")
    r = env.http.post("/v3/pods/volumes", json={"volume_id": vol, "size_limit": 8})
    assert r.status_code == 200, r.text
    assert [f["name"] for f in env.http.get(f"/v3/pods/volumes/{vol}/list").json()["result"]] == []
    pod_id = new_id("pod")
    env.create(pod_id, "busybox", command=["sh", "-c", IDLE],
               volume_mounts={vol: {"type": "tapisvolume", "mount_path": "/data"}})
    env.wait_status(pod_id, "AVAILABLE")

    # 20 MB into an 8 MB volume: the write stops at the limit.
    out = _dd(env, pod_id, 20)
    assert "No space left on device" in out and "rc=0" not in out, out
    assert os.path.ismount(_vdir(env, vol))  # the volume is its own filesystem
    written = (_vdir(env, vol) / "fill").stat().st_size
    assert 8 * MB <= written < 10 * MB, written
    volume = env.http.get(f"/v3/pods/volumes/{vol}").json()["result"]
    assert 8 <= volume["size"] <= 10, volume  # the API reports the volume full
    # An API upload into the full volume is refused as over the limit, not a server error.
    r = env.http.post(f"/v3/pods/volumes/{vol}/upload/more.bin", files={"file": ("more.bin", b"m" * MB)})
    assert r.status_code == 413, r.text

    # Raising the limit grows the filesystem: under the running pod where the kernel allows an online grow
    # (CAP_SYS_RESOURCE), else the API says to stop the pods first, and then it works.
    assert env.exec_ok(pod_id, ["rm", "/data/fill"])["exit_code"] == 0
    r = env.http.put(f"/v3/pods/volumes/{vol}", json={"size_limit": 24})
    if r.status_code == 409:
        assert "stop" in r.text, r.text
        assert env.action(pod_id, "stop").status_code == 200
        env.wait_status(pod_id, "STOPPED")
        r = env.http.put(f"/v3/pods/volumes/{vol}", json={"size_limit": 24})
        assert r.status_code == 200, r.text
        assert env.action(pod_id, "start").status_code == 200
        env.wait_status(pod_id, "AVAILABLE")
    assert r.status_code == 200, r.text
    out = _dd(env, pod_id, 20)
    assert "rc=0" in out, out
    assert "No space left" in _dd(env, pod_id, 30)
    # Lowering it below what the volume holds is refused.
    r = env.http.put(f"/v3/pods/volumes/{vol}", json={"size_limit": 10})
    assert r.status_code == 400 and "size_limit" in r.text, r.text

    # Deleting pod and volume removes the filesystem.
    assert env.http.delete(f"/v3/pods/{pod_id}").status_code == 200
    r = env.http.delete(f"/v3/pods/volumes/{vol}", params={"force": "true"})
    assert r.status_code == 200, r.text
    assert not _vdir(env, vol).exists()
    images = env.srv.settings.data_dir / "storage" / env.tenant / "volume-images"
    assert not list(images.glob(f"{vol}.*"))
