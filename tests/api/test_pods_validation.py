"""Bad input to create_pod and update_pod: each is HTTP 400 with ``message`` a list of strings naming the field,
and nothing is stored. Duplicate ids are 409. Valid edge values are accepted (so the bounds are exactly where
the spec puts them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from openpods.store.tables import ActionLog, Permission, Pod, PodSecret

IMAGE = "localhost/openpods-test/http"


@pytest.fixture(scope="module")
def env(server: Any) -> Any:
    server.allow_image(IMAGE)
    server.add_user("alice")
    return server


def db_state(server: Any) -> dict[str, Any]:
    """Row counts of everything a create could write, and the newest action log id (the module's server is
    used by one test at a time)."""
    with server.session() as s:
        last_action = s.scalar(select(func.max(ActionLog.id)))
    return {
        "pods": server.count(Pod),
        "secrets": server.count(PodSecret),
        "grants": server.count(Permission, object_type="pod"),
        "actions": server.count(ActionLog),
        "last_action": last_action,
    }


def pod_state(server: Any, pod_id: str) -> dict[str, Any]:
    """Every stored row of one pod."""
    return {
        "pod": server.rows(Pod, pod_id=pod_id),
        "secret": server.rows(PodSecret, pod_id=pod_id),
        "grants": server.rows(Permission, object_type="pod", object_id=pod_id),
        "actions": server.rows(ActionLog, object_type="pod", object_id=pod_id),
    }


def assert_400_naming(r: httpx.Response, field: str) -> list[str]:
    assert r.status_code == 400, (field, r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == "error"
    assert body["result"] is None
    messages = body["message"]
    assert isinstance(messages, list) and messages, messages
    assert all(isinstance(m, str) and m for m in messages), messages
    assert any(field in m for m in messages), (field, messages)
    return messages


def stanza(**fields: Any) -> dict[str, Any]:
    return {"default": {"protocol": "http", "port": 8000, **fields}}


# (id, extra body fields, field the message must name); a value None removes the field from the body.
CREATE_CASES: list[tuple[str, dict[str, Any], str]] = [
    # pod_id
    ("pod_id-uppercase", {"pod_id": "MyPod"}, "pod_id"),
    ("pod_id-hyphen", {"pod_id": "my-pod"}, "pod_id"),
    ("pod_id-underscore", {"pod_id": "my_pod"}, "pod_id"),
    ("pod_id-dot", {"pod_id": "my.pod"}, "pod_id"),
    ("pod_id-digit-first", {"pod_id": "1pod"}, "pod_id"),
    ("pod_id-too-short", {"pod_id": "ab"}, "pod_id"),
    ("pod_id-too-long", {"pod_id": "a" * 65}, "pod_id"),
    ("pod_id-empty", {"pod_id": ""}, "pod_id"),
    ("pod_id-missing", {"pod_id": None}, "pod_id"),
    ("pod_id-int", {"pod_id": 12345}, "pod_id"),
    ("pod_id-non-ascii", {"pod_id": "podé"}, "pod_id"),
    ("pod_id-reserved-volumes", {"pod_id": "volumes"}, "pod_id"),
    ("pod_id-reserved-templates", {"pod_id": "templates"}, "pod_id"),
    ("pod_id-reserved-images", {"pod_id": "images"}, "pod_id"),
    ("pod_id-reserved-snapshots", {"pod_id": "snapshots"}, "pod_id"),
    ("pod_id-reserved-healthcheck", {"pod_id": "healthcheck"}, "pod_id"),
    # unknown fields
    ("unknown-top-level", {"foo": 1}, "foo"),
    ("unknown-in-stanza", {"networking": stanza(bogus=True)}, "bogus"),
    ("unknown-in-resources", {"resources": {"cpus": 1}}, "cpus"),
    ("unknown-in-volume-mount", {"volume_mounts": {"vol": {"type": "pvc", "volume_id": "x"}}}, "volume_id"),
    # wrong types
    ("port-as-text", {"networking": stanza(port="8000/tcp")}, "port"),  # "8000" is read as 8000 (tests/compat)
    ("env-value-int", {"environment_variables": {"A": 1}}, "environment_variables"),
    ("env-not-dict", {"environment_variables": ["A=1"]}, "environment_variables"),
    ("command-not-list", {"command": "sleep 100"}, "command"),
    ("command-items-int", {"command": ["sleep", 100]}, "command"),
    ("arguments-not-list", {"arguments": "-v"}, "arguments"),
    ("description-int", {"description": 5}, "description"),
    ("tts-default-text", {"time_to_stop_default": "5 minutes"}, "time_to_stop_default"),
    ("resources-text", {"resources": {"cpu_limit": "1000m"}}, "cpu_limit"),
    ("networking-list", {"networking": [{"port": 80}]}, "networking"),
    ("tapis_auth-string", {"networking": stanza(tapis_auth="yes")}, "tapis_auth"),
    # image
    ("image-not-allowlisted", {"image": "localhost/openpods-test/notallowed"}, "image"),
    ("image-invalid-reference", {"image": "Not A Valid Image"}, "image"),
    ("image-missing-without-template", {"image": None}, "image"),
    ("image-empty-without-template", {"image": ""}, "image"),
    # description
    ("description-256", {"description": "x" * 256}, "description"),
    ("description-non-ascii", {"description": "héllo wörld"}, "description"),
    # time_to_stop_*
    ("tts-default-0", {"time_to_stop_default": 0}, "time_to_stop_default"),
    ("tts-default-299", {"time_to_stop_default": 299}, "time_to_stop_default"),
    ("tts-default-minus-5", {"time_to_stop_default": -5}, "time_to_stop_default"),
    ("tts-instance-0", {"time_to_stop_instance": 0}, "time_to_stop_instance"),
    ("tts-instance-299", {"time_to_stop_instance": 299}, "time_to_stop_instance"),
    ("tts-instance-minus-5", {"time_to_stop_instance": -5}, "time_to_stop_instance"),
    # networking
    ("port-9", {"networking": stanza(port=9)}, "port"),
    ("port-70000", {"networking": stanza(port=70000)}, "port"),
    ("port-0", {"networking": stanza(port=0)}, "port"),
    ("protocol-udp", {"networking": stanza(protocol="udp")}, "protocol"),
    ("tapis_auth-on-tcp", {"networking": stanza(protocol="tcp", tapis_auth=True)}, "tapis_auth"),
    ("tapis_auth-on-postgres", {"networking": stanza(protocol="postgres", tapis_auth=True)}, "tapis_auth"),
    ("ip-allow-star", {"networking": stanza(ip_allow_list=["*"])}, "ip_allow_list"),
    ("ip-allow-300", {"networking": stanza(ip_allow_list=["300.1.1.1"])}, "ip_allow_list"),
    ("ip-allow-bad-cidr", {"networking": stanza(ip_allow_list=["10.0.0.0/33"])}, "ip_allow_list"),
    ("ip-allow-hostname", {"networking": stanza(ip_allow_list=["example.org"])}, "ip_allow_list"),
    ("five-stanzas", {"networking": {f"net{i}": {"port": 8000 + i} for i in range(5)}}, "networking"),
    ("stanza-key-uppercase", {"networking": {"Bolt": {"port": 7687}}}, "networking"),
    ("stanza-key-hyphen", {"networking": {"my-net": {"port": 7687}}}, "networking"),
    ("stanza-key-too-short", {"networking": {"ab": {"port": 7687}}}, "networking"),
    ("cors-max-age", {"networking": stanza(cors_max_age=-1)}, "cors_max_age"),
    ("return-path-relative", {"networking": stanza(tapis_auth_return_path="nope")}, "tapis_auth_return_path"),
    (
        "response-header-crlf",
        {"networking": stanza(tapis_auth_response_headers={"X-A": "a\r\nB: c"})},
        "tapis_auth_response_headers",
    ),
    # what the proxy could not route is refused here (once it was accepted, then dropped at render time)
    ("cors-origin-without-scheme", {"networking": stanza(cors_allow_origins=["example.org"])}, "cors_allow_origins"),
    ("cors-origin-with-path", {"networking": stanza(cors_allow_origins=["https://a.org/x"])}, "cors_allow_origins"),
    ("cors-method-not-a-token", {"networking": stanza(cors_allow_methods=["GET,POST"])}, "cors_allow_methods"),
    (
        "response-header-host",
        {"networking": stanza(tapis_auth=True, tapis_auth_response_headers={"Host": "evil"})},
        "tapis_auth_response_headers",
    ),
    ("ip-allow-zone-id", {"networking": stanza(ip_allow_list=["fe80::1%eth0"])}, "ip_allow_list"),
    # resources
    ("cpu-100", {"resources": {"cpu_request": 100}}, "cpu_request"),
    ("cpu-7000", {"resources": {"cpu_limit": 7000}}, "cpu_limit"),
    ("mem-100000", {"resources": {"mem_limit": 100000}}, "mem_limit"),
    ("mem-100", {"resources": {"mem_request": 100}}, "mem_request"),
    ("gpus-5", {"resources": {"gpus": 5}}, "gpus"),
    ("gpus-negative", {"resources": {"gpus": -1}}, "gpus"),
    ("cpu-request-over-limit", {"resources": {"cpu_request": 3000, "cpu_limit": 2000}}, "cpu_request"),
    ("mem-request-over-limit", {"resources": {"mem_request": 4096, "mem_limit": 1024}}, "mem_request"),
    # others
    ("status_requested-MAYBE", {"status_requested": "MAYBE"}, "status_requested"),
    ("status_requested-lowercase", {"status_requested": "on"}, "status_requested"),
    ("compute_queue-unknown", {"compute_queue": "gpuqueue"}, "compute_queue"),
    ("compute_queue-invalid", {"compute_queue": "GPU-Q"}, "compute_queue"),
    ("env-name-invalid", {"environment_variables": {"1BAD": "x"}}, "environment_variables"),
    ("env-name-equals", {"environment_variables": {"A=B": "x"}}, "environment_variables"),
    (
        "volume-mount-unknown-volume",
        {"volume_mounts": {"nosuchvolume": {"type": "tapisvolume"}}},
        "volume_mounts",
    ),
    ("volume-mount-bad-type", {"volume_mounts": {"vol": {"type": "nfs"}}}, "type"),
    (
        "volume-mount-relative-path",
        {"volume_mounts": {"vol": {"type": "pvc", "mount_path": "data"}}},
        "mount_path",
    ),
    (
        "volume-mount-dotdot",
        {"volume_mounts": {"vol": {"type": "pvc", "mount_path": "/a/../etc"}}},
        "mount_path",
    ),
]


@pytest.mark.parametrize(
    ("extra", "field"), [(c[1], c[2]) for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES]
)
def test_create_pod_bad_input(
    env: Any, new_id: Callable[[str], str], extra: dict[str, Any], field: str
) -> None:
    body: dict[str, Any] = {"pod_id": new_id("pod"), "image": IMAGE, **extra}
    body = {k: v for k, v in body.items() if v is not None}
    before = db_state(env)
    assert_400_naming(env.client("alice").post("/v3/pods", json=body), field)
    assert db_state(env) == before


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"pod_id": "abcpod", "image": ', "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b'"a string"', "application/json"),
        (b"null", "application/json"),
        (b"pod_id=abc", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00garbage", "application/json"),
    ],
)
def test_create_pod_malformed_body(env: Any, content: bytes, content_type: str) -> None:
    before = db_state(env)
    r = env.client("alice").post("/v3/pods", content=content, headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == "error"
    assert isinstance(body["message"], list) and all(isinstance(m, str) for m in body["message"])
    assert db_state(env) == before


def test_several_errors_are_all_reported(env: Any) -> None:
    r = env.client("alice").post(
        "/v3/pods",
        json={"pod_id": "Bad-Id", "image": IMAGE, "description": "é", "networking": stanza(port=9), "foo": 1},
    )
    messages = assert_400_naming(r, "pod_id")
    for field in ("description", "port", "foo"):
        assert any(field in m for m in messages), (field, messages)


def test_duplicate_pod_id_is_409_and_first_pod_unchanged(env: Any, new_id: Callable[[str], str]) -> None:
    pod_id = new_id("pod")
    alice = env.client("alice")
    assert (
        alice.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "description": "first"}).status_code
        == 200
    )
    before = db_state(env)
    r = alice.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "description": "second"})
    assert r.status_code == 409, r.text
    assert r.json()["status"] == "error"
    assert pod_id in str(r.json()["message"])
    assert db_state(env) == before
    # Also for another user of the same tenant (ids are unique per tenant, not per user).
    env.add_user("bobby")
    r = env.client("bobby").post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE})
    assert r.status_code == 409, r.text
    assert db_state(env) == before


VALID_EDGES: list[tuple[str, dict[str, Any]]] = [
    ("pod_id-3-chars", {"pod_id": "abc"}),
    ("pod_id-64-chars", {"pod_id": "p" * 64}),
    ("description-255", {"description": "x" * 255}),
    ("tts-minus-1", {"time_to_stop_default": -1, "time_to_stop_instance": -1}),
    ("tts-300", {"time_to_stop_default": 300, "time_to_stop_instance": 300}),
    ("port-10", {"networking": stanza(port=10)}),
    ("port-65535", {"networking": stanza(port=65535)}),
    (
        "protocols",
        {
            "networking": {
                "default": {"protocol": "http"},
                "bolt": {"protocol": "tcp", "port": 7687},
                "pgsql": {"protocol": "postgres", "port": 5432},
                "internal": {"protocol": "local_only", "port": 9000},
            }
        },
    ),
    (
        "ip-allow-v4-v6",
        {"networking": stanza(ip_allow_list=["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"])},
    ),
    (
        "resource-bounds",
        {
            "resources": {
                "cpu_request": 250,
                "cpu_limit": 6000,
                "mem_request": 256,
                "mem_limit": 12288,
                "gpus": 0,
            }
        },
    ),
    ("env-placeholders", {"environment_variables": {"P": "<<tapissecret_user_password>>", "EMPTY": ""}}),
    ("status_requested-OFF", {"status_requested": "OFF"}),
    ("status_requested-RESTART", {"status_requested": "RESTART"}),
    ("command-null", {"command": None, "arguments": None}),
    (
        "cors-origins-browsers-send",
        {"networking": stanza(cors_allow_origins=["https://ui.example.org", "http://localhost:3000", "*",
                                                  "https://[::1]:8443"])},
    ),
]


@pytest.mark.parametrize("extra", [c[1] for c in VALID_EDGES], ids=[c[0] for c in VALID_EDGES])
def test_create_pod_valid_edges(env: Any, new_id: Callable[[str], str], extra: dict[str, Any]) -> None:
    body: dict[str, Any] = {"pod_id": new_id("pod"), "image": IMAGE, **extra}
    r = env.client("alice").post("/v3/pods", json=body)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["pod_id"] == body["pod_id"]
    for key, value in extra.items():
        if key in ("pod_id", "networking"):
            continue
        if key == "status_requested":
            assert result[key] in ("ON", "OFF")
            continue
        if key == "resources":
            assert result[key] == value
            continue
        if value is None and key in ("command", "arguments"):
            assert result[key] == [], key  # unset: shown empty, the spec types them as arrays
            continue
        assert result[key] == value, key
    if "networking" in extra:
        assert set(result["networking"]) == set(extra["networking"])
    assert len(env.rows(Pod, pod_id=body["pod_id"])) == 1


def test_one_gpu_depends_on_the_engine(env: Any, new_id: Callable[[str], str]) -> None:
    """gpus 1 is within the spec's bounds; a site whose engine cannot give GPUs refuses it (400, no pod)."""
    pod_id = new_id("pod")
    before = db_state(env)
    r = env.client("alice").post(
        "/v3/pods", json={"pod_id": pod_id, "image": IMAGE, "resources": {"gpus": 1}}
    )
    if env.ctx.gpus_supported:
        assert r.status_code == 200, r.text
    else:
        assert_400_naming(r, "gpus")
        assert db_state(env) == before


# ------------------------------------------------------------------------------------------------ update_pod


UPDATE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-field", {"foo": 1}, "foo"),
    ("pod_id-not-updatable", {"pod_id": "otherid"}, "pod_id"),
    ("image-not-updatable-or-not-allowed", {"image": "localhost/openpods-test/notallowed"}, "image"),
    ("description-256", {"description": "x" * 256}, "description"),
    ("description-non-ascii", {"description": "ünïcode"}, "description"),
    ("description-int", {"description": 7}, "description"),
    ("tts-default-0", {"time_to_stop_default": 0}, "time_to_stop_default"),
    ("tts-default-299", {"time_to_stop_default": 299}, "time_to_stop_default"),
    ("tts-instance-minus-5", {"time_to_stop_instance": -5}, "time_to_stop_instance"),
    ("port-9", {"networking": stanza(port=9)}, "port"),
    ("port-70000", {"networking": stanza(port=70000)}, "port"),
    ("port-text", {"networking": stanza(port="eighty")}, "port"),
    ("protocol-udp", {"networking": stanza(protocol="udp")}, "protocol"),
    ("tapis_auth-on-tcp", {"networking": stanza(protocol="tcp", tapis_auth=True)}, "tapis_auth"),
    ("ip-allow-star", {"networking": stanza(ip_allow_list=["*"])}, "ip_allow_list"),
    ("five-stanzas", {"networking": {f"net{i}": {"port": 8000 + i} for i in range(5)}}, "networking"),
    ("stanza-key-uppercase", {"networking": {"Web": {"port": 80}}}, "networking"),
    ("cpu-7000", {"resources": {"cpu_limit": 7000}}, "cpu_limit"),
    ("mem-100000", {"resources": {"mem_limit": 100000}}, "mem_limit"),
    ("gpus-5", {"resources": {"gpus": 5}}, "gpus"),
    ("cpu-request-over-limit", {"resources": {"cpu_request": 3000, "cpu_limit": 2000}}, "cpu_request"),
    ("status_requested-MAYBE", {"status_requested": "MAYBE"}, "status_requested"),
    ("env-value-int", {"environment_variables": {"A": 1}}, "environment_variables"),
    ("command-not-list", {"command": "sleep 1"}, "command"),
    (
        "volume-mount-unknown-volume",
        {"volume_mounts": {"nosuchvolume": {"type": "tapisvolume"}}},
        "volume_mounts",
    ),
    ("several-one-bad", {"description": "fine", "networking": stanza(port=9)}, "port"),
    ("cors-origin-without-scheme", {"networking": stanza(cors_allow_origins=["example.org"])}, "cors_allow_origins"),
]


@pytest.fixture
def pod(env: Any, new_id: Callable[[str], str]) -> str:
    pod_id = new_id("pod")
    r = env.client("alice").post(
        "/v3/pods",
        json={
            "pod_id": pod_id,
            "image": IMAGE,
            "description": "original",
            "environment_variables": {"KEEP": "me"},
        },
    )
    assert r.status_code == 200, r.text
    return pod_id


@pytest.mark.parametrize(
    ("body", "field"), [(c[1], c[2]) for c in UPDATE_CASES], ids=[c[0] for c in UPDATE_CASES]
)
def test_update_pod_bad_input(env: Any, pod: str, body: dict[str, Any], field: str) -> None:
    alice = env.client("alice")
    before = (db_state(env), pod_state(env, pod))
    view = alice.get(f"/v3/pods/{pod}").json()
    assert_400_naming(alice.put(f"/v3/pods/{pod}", json=body), field)
    assert (db_state(env), pod_state(env, pod)) == before
    assert alice.get(f"/v3/pods/{pod}").json() == view


@pytest.mark.parametrize("content", [b"{not json", b"", b"[]", b"null", b'"x"'])
def test_update_pod_malformed_body(env: Any, pod: str, content: bytes) -> None:
    before = db_state(env)
    r = env.client("alice").put(
        f"/v3/pods/{pod}", content=content, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["message"], list)
    assert db_state(env) == before


def test_update_of_unknown_pod_is_404_even_with_bad_body(env: Any) -> None:
    r = env.client("alice").put("/v3/pods/nosuchpodqq", json={"description": "ok"})
    assert r.status_code == 404


def test_update_pod_only_sent_fields(env: Any, pod: str) -> None:
    alice = env.client("alice")
    r = alice.put(f"/v3/pods/{pod}", json={"time_to_stop_default": -1})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["time_to_stop_default"] == -1
    assert result["description"] == "original"
    assert result["environment_variables"] == {"KEEP": "me"}
    # Explicit nulls where the spec allows them.
    r = alice.put(f"/v3/pods/{pod}", json={"command": None, "time_to_stop_instance": None})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------------ never a 500


def test_concurrent_creates_of_one_pod_id_give_one_pod_and_409s(
    env: Any, new_id: Callable[[str], str]
) -> None:
    """Racing creates of the same id: one wins, the others get 409 (never 500), one set of rows stored.
    Several rounds of requests released together by a barrier, so the race is actually run."""
    import concurrent.futures
    import threading

    width = 8
    clients = [env.client("alice") for _ in range(width)]
    for client in clients:  # open the connections first
        assert client.get("/v3/pods/healthcheck").status_code == 200
    for _round in range(4):
        pod_id = new_id("race")
        barrier = threading.Barrier(width)

        def create(
            client: httpx.Client, pod_id: str = pod_id, barrier: threading.Barrier = barrier
        ) -> httpx.Response:
            barrier.wait()
            return client.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE})

        with concurrent.futures.ThreadPoolExecutor(width) as pool:
            responses = list(pool.map(create, clients))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] + [409] * (width - 1), [(r.status_code, r.text[:120]) for r in responses]
        assert env.count(Pod, pod_id=pod_id) == 1
        assert env.count(PodSecret, pod_id=pod_id) == 1
        assert env.count(Permission, object_type="pod", object_id=pod_id) == 1


HUGE = [2**31, 2**63, 10**30]  # beyond PostgreSQL INTEGER, beyond SQLite INTEGER, beyond both
TTS_FIELDS = ("time_to_stop_default", "time_to_stop_instance")


def _huge_problem(env: Any, r: httpx.Response, pod_id: str, field: str, value: int) -> str | None:
    """None if the answer is a 400 naming the field, or a 200 whose value reads back unchanged."""
    if r.status_code == 200:
        got = env.client("alice").get(f"/v3/pods/{pod_id}").json()["result"][field]
        return None if got == value else f"{field}={value}: accepted but reads back {got!r}"
    if r.status_code == 400 and any(field in m for m in r.json().get("message") or []):
        return None
    return f"{field}={value}: HTTP {r.status_code} {r.text[:100]}"


def test_huge_time_to_stop_is_refused_or_kept_never_500(env: Any, new_id: Callable[[str], str]) -> None:
    """A value the database cannot hold must be a 400 naming the field (on SQLite and PostgreSQL alike), not
    a database error; a value that is accepted must read back unchanged. Nothing is stored on a 400."""
    problems = []
    for field in TTS_FIELDS:
        for value in HUGE:
            pod_id = new_id("pod")
            before = db_state(env)
            # A fresh connection per request: after a 500 the server drops the connection.
            r = env.client("alice").post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE, field: value})
            problem = _huge_problem(env, r, pod_id, field, value)
            if problem:
                problems.append(problem)
            elif r.status_code == 400 and db_state(env) != before:
                problems.append(f"{field}={value}: 400 but rows were stored")
    assert not problems, problems


def test_huge_time_to_stop_on_update_is_refused_or_kept_never_500(env: Any, pod: str) -> None:
    problems = []
    for field in TTS_FIELDS:
        for value in HUGE:
            before = pod_state(env, pod)
            r = env.client("alice").put(f"/v3/pods/{pod}", json={field: value})
            problem = _huge_problem(env, r, pod, field, value)
            if problem:
                problems.append(problem)
            elif r.status_code == 400 and pod_state(env, pod) != before:
                problems.append(f"{field}={value}: 400 but the pod changed")
    assert not problems, problems


def test_nul_byte_in_description_is_400_on_create(env: Any, new_id: Callable[[str], str]) -> None:
    # PostgreSQL cannot store NUL in text; SQLite can. The API must answer the same on both: a 400.
    before = db_state(env)
    r = env.client("alice").post(
        "/v3/pods", json={"pod_id": new_id("pod"), "image": IMAGE, "description": "a\x00b"}
    )
    assert_400_naming(r, "description")
    assert db_state(env) == before


def test_nul_byte_in_description_is_400_on_update(env: Any, pod: str) -> None:
    before = db_state(env)
    r = env.client("alice").put(f"/v3/pods/{pod}", json={"description": "a\x00b"})
    assert_400_naming(r, "description")
    assert db_state(env) == before


ODD_PATH_CALLS = [
    ("GET", ""),
    ("PUT", ""),
    ("DELETE", ""),
    ("GET", "/logs"),
    ("GET", "/derived"),
    ("GET", "/credentials"),
    ("GET", "/permissions"),
    ("DELETE", "/permissions/alice"),
    ("GET", "/stop"),
    ("GET", "/start"),
    ("GET", "/restart"),
]


@pytest.mark.parametrize(
    "pod_id",
    ["a%00b", "a" * 3000, "p%C3%B6d", "%2e%2e", "pod%20id", "POD"],
    ids=["nul", "very-long", "non-ascii", "dotdot", "space", "uppercase"],
)
def test_odd_pod_ids_in_the_path_are_404(env: Any, pod_id: str) -> None:
    for method, suffix in ODD_PATH_CALLS:
        body = {"description": "x"} if method == "PUT" else None
        # A fresh connection per request: after a 500 the server drops the connection.
        r = env.client("alice").request(method, f"/v3/pods/{pod_id}{suffix}", json=body)
        assert r.status_code == 404, (method, suffix, r.status_code, r.text[:300])
        assert r.json()["status"] == "error"


@pytest.mark.parametrize("pod_id", ["docs", "healthcheck", "images", "templates", "volumes", "snapshots"])
def test_pod_id_never_shadowed_by_another_route(env: Any, pod_id: str) -> None:
    """A pod_id that the API accepts must reach the pod: ``GET /v3/pods/<pod_id>`` answers with that pod (JSON
    envelope), not with another route's page. Ids that a route owns must be refused (400) instead."""
    alice = env.client("alice")
    r = alice.post("/v3/pods", json={"pod_id": pod_id, "image": IMAGE})
    if r.status_code == 400:
        assert_400_naming(r, "pod_id")
        return
    assert r.status_code == 200, r.text
    got = alice.get(f"/v3/pods/{pod_id}")
    assert got.headers.get("content-type") == "application/json", (pod_id, got.headers.get("content-type"))
    assert got.json()["result"]["pod_id"] == pod_id
