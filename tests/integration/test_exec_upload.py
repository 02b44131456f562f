"""exec_pod_commands and upload_to_pod against real containers: timeouts really enforced, fail_on_non_success
really stopping the run, complete result records, action logs; a 100 MB streamed upload that lands intact while
the memory of this process (which runs the server) stays flat; clear 400/403/404/409 errors."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

# Engine-bound behaviour; the database does little here: one backend keeps CI fast.
DB_BACKENDS = "one"


@pytest.fixture(scope="module")
def idle_pod(module_pod_server: Any) -> str:
    """A running busybox pod (idle shell loop) shared by the tests of this module."""
    env = module_pod_server
    pod_id = f"exec{uuid.uuid4().hex[:10]}"
    env.create(pod_id, "busybox")
    env.wait_status(pod_id, "AVAILABLE")
    return pod_id


def _results(r: Any) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return r.json()["result"]["execution_results"]


# ------------------------------------------------------------------------------------------------ exec


def test_exec_results_carry_command_output_exit_code_and_duration(
    module_pod_server: Any, idle_pod: str
) -> None:
    env = module_pod_server
    r = env.exec(
        idle_pod,
        [["sh", "-c", "echo out; echo err >&2; exit 3"], ["echo", "second"]],
        fail_on_non_success=False,
    )
    body = r.json()
    results = _results(r)
    assert body["result"]["total_commands"] == 2
    assert body["result"]["successful_commands"] == 1
    first, second = results
    assert first["command"] == "sh -c echo out; echo err >&2; exit 3"
    assert first["stdout"] == "out\n"
    assert first["stderr"] == "err\n"
    assert first["exit_code"] == 3
    assert first["success"] is False
    assert isinstance(first["duration_sec"], int | float) and first["duration_sec"] >= 0
    assert first["timestamp"]
    assert second["stdout"] == "second\n" and second["exit_code"] == 0 and second["success"] is True
    # A flat list of strings is ONE command (argv), as in the user guide.
    [only] = _results(env.exec(idle_pod, ["echo", "a", "b"]))
    assert only["stdout"] == "a b\n"


def test_exec_command_timeout_is_enforced(module_pod_server: Any, idle_pod: str) -> None:
    env = module_pod_server
    started = time.monotonic()
    r = env.exec(idle_pod, [["sleep", "30"], ["echo", "after"]], command_timeout=2, fail_on_non_success=False)
    elapsed = time.monotonic() - started
    results = _results(r)
    # Returned long before the command would have ended by itself.
    assert elapsed < 25, f"exec took {elapsed:.1f}s: command_timeout=2 not enforced"
    timed_out = results[0]
    assert timed_out["exit_code"] is None
    assert isinstance(timed_out["success"], str) and "timeout" in timed_out["success"].lower()
    assert timed_out["duration_sec"] < 25
    # With fail_on_non_success=False the run goes on after a timed-out command.
    assert len(results) == 2 and results[1]["stdout"] == "after\n"
    # The timed-out process was killed, not left running in the container.
    ps = env.exec_ok(idle_pod, ["ps", "-o", "pid,args"])
    assert "sleep 30" not in ps["stdout"], ps["stdout"]


def test_exec_command_timeout_with_fail_on_non_success_stops_the_run(
    module_pod_server: Any, idle_pod: str
) -> None:
    env = module_pod_server
    r = env.exec(idle_pod, [["sleep", "30"], ["echo", "after"]], command_timeout=1)
    results = _results(r)
    assert len(results) == 1
    assert "command timeout" in r.json()["message"].lower()


def test_exec_total_timeout_is_enforced(module_pod_server: Any, idle_pod: str) -> None:
    env = module_pod_server
    marker = f"/tmp/total-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    r = env.exec(
        idle_pod,
        [["sleep", "2"], ["sleep", "30"], ["touch", marker]],
        total_timeout=4,
        command_timeout=60,
        fail_on_non_success=False,
    )
    elapsed = time.monotonic() - started
    results = _results(r)
    assert elapsed < 25, f"exec took {elapsed:.1f}s: total_timeout=4 not enforced"
    assert len(results) == 2, results
    assert results[0]["exit_code"] == 0
    assert results[1]["exit_code"] is None and "timeout" in str(results[1]["success"]).lower()
    assert "total timeout" in r.json()["message"].lower()
    # The command after the total timeout never ran.
    check = env.exec_ok(idle_pod, ["ls", "/tmp"])
    assert marker.rsplit("/", 1)[1] not in check["stdout"]


def test_fail_on_non_success_stops_the_run(module_pod_server: Any, idle_pod: str) -> None:
    env = module_pod_server
    tag = uuid.uuid4().hex[:8]
    commands = [["touch", f"/tmp/a-{tag}"], ["false"], ["touch", f"/tmp/b-{tag}"]]
    r = env.exec(idle_pod, commands, fail_on_non_success=True)
    results = _results(r)
    assert [res["exit_code"] for res in results] == [0, 1]
    assert "fail_on_non_success" in r.json()["message"]
    listing = env.exec_ok(idle_pod, ["ls", "/tmp"])["stdout"]
    assert f"a-{tag}" in listing
    assert f"b-{tag}" not in listing  # never executed

    # Without it, every command runs.
    tag2 = uuid.uuid4().hex[:8]
    commands = [["touch", f"/tmp/a-{tag2}"], ["false"], ["touch", f"/tmp/b-{tag2}"]]
    results = _results(env.exec(idle_pod, commands, fail_on_non_success=False))
    assert [res["exit_code"] for res in results] == [0, 1, 0]
    listing = env.exec_ok(idle_pod, ["ls", "/tmp"])["stdout"]
    assert f"b-{tag2}" in listing


def test_exec_of_a_missing_program_is_a_result_not_an_error(module_pod_server: Any, idle_pod: str) -> None:
    env = module_pod_server
    r = env.exec(idle_pod, ["no-such-program-here"])
    [result] = _results(r)
    assert result["success"] is False
    assert result["exit_code"] not in (0, None)


def test_exec_writes_an_action_log_entry(module_pod_server: Any, idle_pod: str) -> None:
    env = module_pod_server
    password = env.http.get(f"/v3/pods/{idle_pod}/credentials").json()["result"]["user_password"]
    assert password
    # The user passes a secret value as an argument: the records and the action log never show it.
    r = env.exec(idle_pod, [["echo", password], ["sh", "-c", f"echo {password} >&2"]])
    results = _results(r)
    for result in results:
        assert password not in result["command"]
        assert password not in result["stdout"] and password not in result["stderr"]
    assert "********" in results[0]["stdout"]
    entries = env.logs(idle_pod)["action_logs"]
    assert any(f"'{env.user}' executed 2 of 2 commands" in line for line in entries), entries
    assert not any(password in line for line in entries)
    assert not any(password in row["message"] for row in env.action_log_rows(idle_pod))


def test_exec_needs_a_running_pod_and_admin(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    pod_id = new_id("off")
    env.create(pod_id, "busybox", status_requested="OFF")
    assert env.get(pod_id)["status"] == "STOPPED"
    r = env.exec(pod_id, ["echo", "hi"])
    assert r.status_code == 409, r.text

    env.srv.add_user("bob")
    env.srv.add_user("carol")
    other = env.srv.client("bob")
    assert other.post(f"/v3/pods/{pod_id}/exec", json={"commands": ["id"]}).status_code == 404
    grant = env.http.post(f"/v3/pods/{pod_id}/permissions", json={"user": "bob", "level": "USER"})
    assert grant.status_code == 200, grant.text
    assert other.post(f"/v3/pods/{pod_id}/exec", json={"commands": ["id"]}).status_code == 403
    assert (
        env.srv.client("carol")
        .post(f"/v3/pods/{pod_id}/upload_to_pod", files={"file": ("x", b"x")}, data={"dest_path": "/tmp/x"})
        .status_code
        == 404
    )


# ------------------------------------------------------------------------------------------------ upload


def _vmrss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class _RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _vmrss_bytes()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, _vmrss_bytes())
            time.sleep(0.02)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def test_upload_100_mb_streams_and_lands_intact(module_pod_server: Any, idle_pod: str) -> None:
    env = module_pod_server
    size = 100 * 1024 * 1024
    chunk = 1024 * 1024
    digest = hashlib.sha256()
    boundary = uuid.uuid4().hex
    dest = f"/data/up-{boundary[:8]}/big.bin"  # parent directories are created

    def body() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="dest_path"\r\n\r\n{dest}\r\n').encode()
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(size // chunk):
            data = os.urandom(chunk)
            digest.update(data)
            yield data
        yield f"\r\n--{boundary}--\r\n".encode()

    # Warm up the code path (imports, connection pools) so that the measurement sees the upload itself.
    warm = env.upload(idle_pod, "/tmp/warm.bin", b"x" * 1024)
    assert warm.status_code == 200, warm.text

    baseline = _vmrss_bytes()
    sampler = _RssSampler()
    sampler.start()
    try:
        r = env.http.post(
            f"/v3/pods/{idle_pod}/upload_to_pod",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=600,
        )
    finally:
        peak = sampler.stop()
    assert r.status_code == 200, r.text
    assert r.json()["result"]["size"] == size
    growth = peak - baseline
    assert growth < 40 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB during a 100 MiB upload"

    result = env.exec_ok(idle_pod, ["sha256sum", dest])
    assert result["exit_code"] == 0, result
    assert result["stdout"].split()[0] == digest.hexdigest()
    entries = env.logs(idle_pod)["action_logs"]
    assert any(f"uploaded a file of {size} bytes to {dest}" in line for line in entries)


def test_upload_replaces_a_file_and_reports_its_size(module_pod_server: Any, idle_pod: str) -> None:
    env = module_pod_server
    path = f"/tmp/replace-{uuid.uuid4().hex[:8]}.txt"
    assert env.upload(idle_pod, path, b"first version\n").status_code == 200
    r = env.upload(idle_pod, path, b"second\n")
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"dest_path": path, "size": 7}
    assert env.exec_ok(idle_pod, ["cat", path])["stdout"] == "second\n"


@pytest.mark.parametrize(
    "dest_path",
    [
        "relative/file.txt",  # not absolute
        "/tmp/../etc/evil",  # '..'
        "/tmp/dir/",  # names a directory
        "/tmp",  # an existing directory
        "/etc/passwd/below-a-file",  # a parent that is a file
        "",  # missing
    ],
)
def test_upload_bad_dest_path_is_400(module_pod_server: Any, idle_pod: str, dest_path: str) -> None:
    env = module_pod_server
    r = env.upload(idle_pod, dest_path, b"data")
    assert r.status_code == 400, r.text
    assert "dest_path" in r.text
    # Nothing was changed: /etc/passwd is still a file.
    assert "root:x:0:0" in env.exec_ok(idle_pod, ["cat", "/etc/passwd"])["stdout"]


def test_upload_without_a_file_part_is_400(module_pod_server: Any, idle_pod: str) -> None:
    env = module_pod_server
    r = env.http.post(
        f"/v3/pods/{idle_pod}/upload_to_pod", data={"dest_path": "/tmp/x"}, files={"other": ("x", b"x")}
    )
    assert r.status_code == 400, r.text


def test_upload_to_a_pod_that_is_not_running_is_409(module_pod_server: Any, new_id: Any) -> None:
    env = module_pod_server
    stopped = new_id("stopped")
    env.create(stopped, "busybox", status_requested="OFF")
    r = env.upload(stopped, "/tmp/x.txt", b"data")
    assert r.status_code == 409, r.text

    finished = new_id("finished")
    env.create(finished, "exit0")
    env.wait_status(finished, "COMPLETE")
    r = env.upload(finished, "/tmp/x.txt", b"data")
    assert r.status_code == 409, r.text
