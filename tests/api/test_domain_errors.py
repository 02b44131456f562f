"""The core's errors (openpods.domain.errors) become Tapis envelopes in one place, api.envelope: each kind with
its status, the message kept exactly (a list stays a list)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from openpods import TAPIS_API_VERSION
from openpods.api.envelope import install_error_handlers
from openpods.domain import errors

CASES = [
    (errors.InvalidInput(["image: 'x' is not allowed."]), 400, ["image: 'x' is not allowed."]),
    (errors.PermissionDenied("volume_mounts, v: mounting needs USER on volume 'v'."), 403,
     "volume_mounts, v: mounting needs USER on volume 'v'."),
    (errors.NotFoundError("Template with identifier template_id: 't' not found"), 404,
     "Template with identifier template_id: 't' not found"),
    (errors.ConflictError("Pod 'p' is not running."), 409, "Pod 'p' is not running."),
    (errors.TooLarge("too big"), 413, "too big"),
    (errors.DomainError("unclassified"), 400, "unclassified"),  # the user's problem, never a 500
]


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{index}")
    def _raise(index: int) -> None:
        raise CASES[index][0]

    return TestClient(app)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_domain_error_becomes_its_envelope(client: TestClient, index: int) -> None:
    _, status, message = CASES[index]
    r = client.get(f"/raise/{index}")
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"result": None, "status": "error", "message": message, "version": TAPIS_API_VERSION,
                        "metadata": {}}


def test_text_joins_a_list_of_messages() -> None:
    assert errors.InvalidInput(["a: x.", "b: y."]).text == "a: x.; b: y."
    assert str(errors.InvalidInput(["a: x.", "b: y."])) == "a: x.; b: y."
