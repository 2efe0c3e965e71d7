"""Finding a request's route without trying every route in turn.

Starlette and FastAPI try the routes one after the other; FastAPI's included routers each add a second pass of
their own, and each try costs a few microseconds. Measured in this gateway, 40 routes, that was 43 us of CPU per
request to find `GET /api/v2/auth/me` and 150 us for `GET /api/v2/analyses/{id}` (bench/read_path.py's hottest
reads), before the handler had started. So:

- `add_routes` puts each module's routes on the application's router itself, not behind an included router: its
  `APIRoute`s already carry the module router's prefix, tags and responses, so the routes, the OpenAPI document
  and the handlers are the same (tests/unit/test_route_index.py compares them);
- `RouteIndex` groups the routes by method and by the first `DEPTH` segments of their path, and tries only the
  group of the request, in the routes' order, with every route whose first segments hold a parameter. A request the
  group does not take whole (an unknown path, a method the path lacks, a trailing slash) goes to the router as
  before, which answers it exactly as without the index: 404, 405 with `Allow`, or the redirect.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from fastapi import APIRouter, FastAPI
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

DEPTH = 3  # /api/v2/<resource>: the segments that tell the routes apart


def add_routes(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Every route of `routers`, in order, on the application's own router."""
    for router in routers:
        app.router.routes.extend(router.routes)
    app.router.middleware_stack = RouteIndex(app.router)


def _key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/", DEPTH + 1)[1 : DEPTH + 1])


class RouteIndex:
    """The router's own dispatch with the candidates narrowed by method and path; built on the first request, once
    every route is there."""

    def __init__(self, router: APIRouter):
        self.router = router
        self.fallback: ASGIApp = router.app
        self._groups: dict[tuple[str, tuple[str, ...]], list[BaseRoute]] | None = None
        self._anywhere: dict[str, list[BaseRoute]] = {}

    def _build(self) -> dict[tuple[str, tuple[str, ...]], list[BaseRoute]]:
        keyed: dict[tuple[str, tuple[str, ...]], list[tuple[int, BaseRoute]]] = {}
        # Routes with a parameter in their first segments, by method, with the literal segments before it.
        early: dict[str, list[tuple[int, BaseRoute, tuple[str, ...]]]] = {}
        for position, route in enumerate(self.router.routes):
            template = getattr(route, "path_format", None)
            methods = getattr(route, "methods", None) or ("*",)  # a mount: every method
            key = _key(template) if isinstance(template, str) and template.startswith("/") else ()
            literal = tuple(itertools.takewhile(lambda segment: "{" not in segment, key))
            for method in methods:
                if key and literal == key and method != "*":
                    keyed.setdefault((method, key), []).append((position, route))
                else:
                    early.setdefault(method, []).append((position, route, literal))

        def joined(method: str, key: tuple[str, ...] | None) -> list[BaseRoute]:
            """The routes that may take a request of `method` whose first segments are `key` (None: any)."""
            found = list(keyed.get((method, key), [])) if key is not None else []
            for position, route, literal in early.get(method, []) + early.get("*", []):
                if key is None or key[: len(literal)] == literal:
                    found.append((position, route))
            return [route for _, route in sorted(found, key=lambda each: each[0])]

        self._anywhere = {method: joined(method, None) for method in early if method != "*"}
        return {(method, key): joined(method, key) for method, key in keyed}

    def candidates(self, scope: Scope) -> Sequence[BaseRoute]:
        """The routes that may take this request, in the router's order."""
        if self._groups is None:
            self._groups = self._build()
        method, key = scope["method"], _key(get_route_path(scope))
        return self._groups.get((method, key), self._anywhere.get(method, ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.candidates(scope):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self.router)
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        # No route of the group takes it (a method the path lacks gets its 405 and `Allow` there).
        await self.fallback(scope, receive, send)
