"""Fixtures of the drop-in compatibility suite: real OpenPods servers driven with the request shapes of real
third-party clients (the original Pods service's own test-suite, TapisUI's forms, tapipy as the user guide uses
it). Each test module's docstring names the public source file and commit each request shape was taken from.

Engine and servers come from ``tests/integration/conftest.py`` (loaded by path, as ``tests/e2e`` does, so there
is one copy of the engine helpers): ``engine`` is a private Podman service with the busybox test images,
``module_pod_server`` a real server with api + spawner + health on it (a :class:`PodEnv`). API-only modules use
the root ``server`` / ``make_server`` fixtures.

``original`` wraps a server the way the original suite's ``fastapi.testclient.TestClient`` is used there: paths
relative to ``/v3`` (``client.post("/pods", data=json.dumps(pod_def), headers=headers)``), bodies sent as
``json.dumps`` text WITHOUT a Content-Type header, and ``headers = {"X-Tapis-Token": ...}``. Its
``response_format`` / ``basic_response_checks`` are the original's helpers (tests/test_utils.py), re-implemented.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]




sys.path.insert(0, str(REPO / "tests" / "support"))
from module_loading import load_module  # noqa: E402

integration = load_module("openpods_tests_integration_support", REPO / "tests/integration/conftest.py")

# The integration suite's fixtures and backend parametrization (a module sets DB_BACKENDS = "one" when its
# database behaviour is covered elsewhere and it mostly drives containers).
engine = integration.engine
pod_server = integration.pod_server
module_pod_server = integration.module_pod_server
db_backend = integration.db_backend
pytest_generate_tests = integration.pytest_generate_tests

IMAGE_PREFIX = integration.IMAGE_PREFIX
SMALL = integration.SMALL
image = integration.image
wait_until = integration.wait_until


def response_format(rsp: httpx.Response) -> dict[str, Any]:
    """The original suite's ``response_format``: a JSON Tapis envelope."""
    assert "application/json" in rsp.headers["content-type"]
    data = json.loads(rsp.content.decode("utf-8"))
    for key in ("message", "status", "version", "metadata"):
        assert key in data, data
    return data


def basic_response_checks(rsp: httpx.Response) -> Any:
    """The original suite's ``basic_response_checks``: HTTP 200/201, an envelope, and its ``result``."""
    assert rsp.status_code in (200, 201), rsp.text
    data = response_format(rsp)
    assert "result" in data
    return data["result"]


@dataclass
class Original:
    """The original suite's ``client`` + ``headers``. ``client.post(path, data=json.dumps(...))`` sends the text
    with no Content-Type header, exactly as the original's TestClient calls do."""

    http: httpx.Client
    headers: dict[str, str]

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path, headers=self.headers)

    def delete(self, path: str) -> httpx.Response:
        return self.http.delete(path, headers=self.headers)

    def post(self, path: str, data: str | None = None, files: Any = None) -> httpx.Response:
        if files is not None:
            return self.http.post(path, files=files, headers=self.headers)
        return self.http.post(path, content=data, headers=self.headers)

    def put(self, path: str, data: str) -> httpx.Response:
        return self.http.put(path, content=data, headers=self.headers)


def original_client(srv: Any, user: str) -> Original:
    http = httpx.Client(base_url=f"{srv.base_url}/v3", timeout=120.0)
    srv._clients.append(http)  # closed with the server
    return Original(http=http, headers={"X-Tapis-Token": srv.token(user)})


def no_content_type(client: Original) -> None:
    """Sanity check of the harness itself: a body sent by :class:`Original` carries no Content-Type."""
    request = client.http.build_request("POST", "/pods", content=json.dumps({"a": 1}), headers=client.headers)
    assert "content-type" not in request.headers
