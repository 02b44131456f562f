"""``api.fast_routes.hoist``: the hot routes go first, and every request still reaches the route it reached
before (checked for every route's own path with many parameter values, and every method). ``DirectRoute``:
the same answers and OpenAPI description as FastAPI's own route."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from openpods.api.app import HOT_ROUTES, ordered_routes
from openpods.api.fast_routes import DirectRoute, first_match, hoist

SAMPLES = ["abc", "volumes", "snapshots", "templates", "images", "healthcheck", "traefik-config", "jupyter",
           "tags", "contents", "a.b", "x%2Fy", "docs", "openapi.json", "permissions", "auth", "latest"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]


def paths() -> list[str]:
    out: set[str] = {"/", "/v3", "/v3/pods", "/v3/pods/", "/v3/pods/abc/", "/v3/pods//x", "/v3/pods/a/b/c/d"}
    for route in ordered_routes():
        if not isinstance(route, Route):
            continue
        for sample in SAMPLES:
            out.add(re.sub(r"\{[^}]+\}", sample, route.path))
            out.add(re.sub(r"\{[^}]+\}", f"{sample}/more", route.path))
        out.add(route.path.split("{")[0].rstrip("/") or "/")
    return sorted(out)


def scope(method: str, path: str) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}


def test_the_hot_routes_are_first() -> None:
    assert [r.name for r in hoist(ordered_routes(), HOT_ROUTES)[:2]] == list(HOT_ROUTES)  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", METHODS)
def test_every_request_reaches_the_same_route(method: str) -> None:
    before, after = ordered_routes(), hoist(ordered_routes(), HOT_ROUTES)
    checked = 0
    for path in paths():
        a, b = first_match(before, scope(method, path)), first_match(after, scope(method, path))
        assert getattr(a, "endpoint", a) is getattr(b, "endpoint", b), (method, path, a, b)
        checked += 1
    assert checked > 200


def test_a_route_that_an_earlier_catch_all_could_shadow_stays_in_place() -> None:
    catch_all = Route("/v3/pods/{rest:path}", lambda r: None, name="catch_all")
    get_pod = next(r for r in ordered_routes() if getattr(r, "name", "") == "get_pod")
    assert hoist([catch_all, get_pod], ["get_pod"])[0] is catch_all


# ------------------------------------------------------------------------------------------- DirectRoute


def direct_app(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    router = app.router  # routes added as the app adds them (api.app), not through include_router

    async def plain(request: Request, pod_id: str) -> Response:
        return Response(f"{request.method} {pod_id}")

    async def with_query(request: Request, pod_id: str, n: int = 1) -> Response:
        return Response(f"{pod_id} {n}")

    router.add_api_route("/plain/{pod_id}", plain, methods=["GET"], operation_id="plain",
                         route_class_override=route_class)
    router.add_api_route("/query/{pod_id}", with_query, methods=["GET"], operation_id="with_query",
                         route_class_override=route_class)
    return app


def test_direct_routes_answer_and_are_described_as_fastapi_would() -> None:
    direct, usual = direct_app(DirectRoute), direct_app(APIRoute)
    assert direct.openapi() == usual.openapi()
    with TestClient(direct) as dc, TestClient(usual) as uc:
        for url in ("/plain/abc", "/plain/a%20b", "/query/abc?n=3", "/query/abc?n=x"):
            d, u = dc.get(url), uc.get(url)
            assert (d.status_code, d.content) == (u.status_code, u.content), url
    # Only the endpoint with nothing to validate is called directly; the other keeps FastAPI's handler.
    handlers = {r.name: r.get_route_handler().__qualname__ for r in direct.routes if isinstance(r, DirectRoute)}
    assert handlers["plain"].startswith("DirectRoute.")
    assert not handlers["with_query"].startswith("DirectRoute.")


def test_the_hot_routes_are_called_directly() -> None:
    routes = {r.name: r for r in ordered_routes() if isinstance(r, APIRoute)}
    for name in HOT_ROUTES:
        assert isinstance(routes[name], DirectRoute)
        assert routes[name].get_route_handler().__qualname__.startswith("DirectRoute.")
