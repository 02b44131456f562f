"""Hot routes first, with the same answers, and called directly.

Starlette (and FastAPI) match a request against the routes in order. ``GET /v3/pods/{pod_id}`` and
``GET /v3/pods`` come last (fixed paths such as ``/v3/pods/volumes`` must win over ``{pod_id}``), so every
get/list paid for ~70 failed matches first. :func:`hoist` moves such a route to the front, narrowed so that it
matches no path that any route before it could match (``{pod_id}`` then excludes ``volumes``, ``templates``,
…). Where that cannot be shown from the routes' paths, the route stays where it is.

:class:`DirectRoute` calls an endpoint that takes only the request and string path parameters, and returns a
Response, without FastAPI's per-request dependency solving and validation (there is nothing to validate: a path
parameter is a string). Its OpenAPI description is FastAPI's, from the same signature."""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

_PARAM = re.compile(r"^\{(\w+)\}$")


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/")


def _may_overlap(earlier: Route, path: str) -> bool:
    """Whether ``earlier`` (which has path parameters) might match a path that ``path`` (literal segments, at
    most a plain parameter as its last segment) matches."""
    mine, theirs = _segments(path), _segments(earlier.path)
    first_param = next(i for i, seg in enumerate(theirs) if "{" in seg)
    if first_param >= len(mine):
        return False  # it needs more segments than ``path`` ever has
    if any(a != b for a, b in zip(mine[:first_param], theirs[:first_param], strict=True) if "{" not in a):
        return False  # a fixed segment differs
    if any(":" in seg for seg in theirs):
        return True  # a typed or path-spanning convertor ({x:path}): assume it can
    return len(mine) == len(theirs) and all(
        "{" in a or "{" in b or a == b for a, b in zip(mine, theirs, strict=True))


def _narrowed(route: Route, earlier: list[BaseRoute]) -> Route | None:
    *prefix, last = _segments(route.path)
    param = _PARAM.match(last)
    if any(_PARAM.match(s) for s in prefix) or ":" in last:
        return None  # only one plain parameter, in the last segment
    excluded: set[str] = set()
    for other in earlier:
        if not isinstance(other, Route):
            return None  # mounts, websockets, …: not analysed
        if other.param_convertors:
            if _may_overlap(other, route.path):
                return None
            continue
        if other.path == route.path or (param and route.path_regex.match(other.path)):
            if not param:
                return None
            excluded.add(_segments(other.path)[-1])
    if not param:
        return route
    head = re.escape("/" + "/".join(prefix))
    guard = f"(?!(?:{'|'.join(re.escape(e) for e in sorted(excluded))})$)" if excluded else ""
    narrowed = copy.copy(route)
    narrowed.path_regex = re.compile(f"^{head}/{guard}(?P<{param.group(1)}>[^/]+)$")
    return narrowed


def hoist(routes: list[BaseRoute], names: Iterable[str]) -> list[BaseRoute]:
    """``routes`` with the named routes moved to the front (in the given order), where that changes no answer."""
    out = list(routes)
    front: list[BaseRoute] = []
    for name in names:
        index = next((i for i, r in enumerate(out) if getattr(r, "name", None) == name), None)
        if index is None or not isinstance(out[index], Route):
            continue
        narrowed = _narrowed(out[index], out[:index])
        if narrowed is not None:
            del out[index]
            front.append(narrowed)
    return front + out


def first_match(routes: list[BaseRoute], scope: dict[str, Any]) -> BaseRoute | None:
    """The route Starlette's router picks for ``scope``: the first full match, else the first partial one."""
    from starlette.routing import Match

    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
        if match == Match.PARTIAL and partial is None:
            partial = route
    return partial


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint is awaited with the request and its path parameters as they are (see the module
    docstring). Any other endpoint gets FastAPI's usual handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        dep, endpoint = self.dependant, self.endpoint
        direct = (inspect.iscoroutinefunction(endpoint) and dep.request_param_name is not None
                  and not (dep.query_params or dep.header_params or dep.cookie_params or dep.body_params
                           or dep.dependencies or dep.background_tasks_param_name or dep.response_param_name
                           or dep.websocket_param_name or dep.http_connection_param_name
                           or dep.security_scopes_param_name)
                  and all(p.field_info.annotation is str for p in dep.path_params))
        if not direct:
            return super().get_route_handler()
        request_name, path_names = dep.request_param_name, [p.name for p in dep.path_params]

        async def handler(request: Request) -> Response:
            params = request.path_params
            return await endpoint(**{request_name: request}, **{name: params[name] for name in path_names})

        return handler
