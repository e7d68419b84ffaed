"""The ASGI app of `gandid serve` (Starlette): the JSON API of docs/serve.md and the static views.

Model calls go through one :class:`ModelQueue` (one device, one call at a time, a bounded wait list);
reading results and files never waits for it.
"""
from __future__ import annotations

import asyncio
import json
import re
import traceback
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import GandidError
from .explorer import BadRequest, Explorer, NotFound

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 1 << 20  # bytes: a 256 x 256 region written out as JSON numbers fits with room to spare
MAX_DEPTH = 16  # nested lists/objects in a body: an edit needs 3 (object, region, row)
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".html": "text/html; charset=utf-8"}
HEADERS = {
    # the views load nothing from elsewhere; images are data: URLs or the run's own files
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Busy(GandidError):
    """The model's wait list is full (HTTP 503)."""


class ModelQueue:
    """Model calls one at a time, in arrival order, with at most ``limit`` waiting behind the running one.

    A waiting request whose client disconnects leaves the list without running; a running call (well
    under a second for the views' requests) finishes and its answer is dropped.
    """

    def __init__(self, limit: int = 8):
        self.limit = limit
        self.pending = 0  # running + waiting
        self._lock: asyncio.Lock | None = None

    async def run(self, request: Request, fn, *args):
        if self.pending > self.limit:
            raise Busy(f"busy: {self.pending - 1} requests are waiting for the model (at most {self.limit}); "
                       "try again in a moment")
        if self._lock is None:
            self._lock = asyncio.Lock()
        self.pending += 1
        try:
            if not await _unless_disconnected(request, self._lock.acquire()):
                return None
            try:
                return await anyio.to_thread.run_sync(fn, *args)
            finally:
                self._lock.release()
        finally:
            self.pending -= 1


async def _unless_disconnected(request: Request, acquire) -> bool:
    """Await ``acquire`` (the model lock) unless the client goes away first; True when acquired."""
    acquiring = asyncio.ensure_future(acquire)
    watching = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({acquiring, watching}, return_when=asyncio.FIRST_COMPLETED)
    watching.cancel()
    if acquiring.done():
        return True
    acquiring.cancel()
    try:
        await acquiring
    except asyncio.CancelledError:
        return False
    return True  # acquired at the very moment the client left: the caller releases it as usual


async def _disconnected(request: Request) -> None:
    while True:  # the body has been read, so the next message is the disconnect
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _json_body(request: Request):
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise BadRequest(f"the request body must be at most {MAX_BODY} bytes")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadRequest(f"the request body must be at most {MAX_BODY} bytes")
    too_deep = (f"the request body nests lists and objects more than {MAX_DEPTH} deep: an edit needs 3 "
                "(see docs/serve.md)")
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    except RecursionError:  # the decoder recurses per level: '[' * 100000 ends here
        raise BadRequest(too_deep) from None
    if _deeper_than(value, MAX_DEPTH):  # what parsed may still be too deep for repr() in an error message
        raise BadRequest(too_deep)
    return value


def _deeper_than(value, limit: int) -> bool:
    """Whether ``value`` nests lists/dicts more than ``limit`` deep (level by level: the check must not recurse)."""
    level = [value]
    for _ in range(limit):
        level = [child for v in level if isinstance(v, (list, dict))
                 for child in (v.values() if isinstance(v, dict) else v)]
    return any(isinstance(v, (list, dict)) for v in level)


class RefuseNul:
    """ASGI middleware: a path holding NUL (``%00``) is a 400 before any route sees it; the file system calls
    would raise ValueError ("embedded null byte") on it, and no run's file or analysis name has one."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "\x00" in scope.get("path", ""):
            path = scope["path"].replace("\x00", "%00")
            await _error(400, f"the path {path!r} holds a NUL character (%00): no file or analysis name has one")(
                scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(run_dir: str | Path, registry=None, device: str = "cpu", queue: int = 8,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The app serving ``run_dir``. ``allowed_hosts``: Host headers accepted (None: any), which keeps a
    localhost server from answering pages of other sites that resolve their name to 127.0.0.1."""
    explorer = Explorer(run_dir, registry=registry, device=device)
    models = ModelQueue(queue)
    # the files shipped, by relative path (the views' ES modules are in static/js/): nothing else is served
    static_files = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}

    async def index(request):
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    async def static(request):
        name = request.path_params["name"]
        if name not in static_files:
            raise NotFound(f"no static file {name!r}")
        # module scripts must come with a JavaScript type (nosniff); mimetypes may not say so on every system
        return FileResponse(STATIC / name, headers=HEADERS, media_type=MEDIA_TYPES.get(Path(name).suffix))

    async def refreshed():
        """Re-read a changed run.json off the event loop: a reload that rebuilds the models reads weights and
        waits for a model call in progress, and must not stall every other request meanwhile."""
        await anyio.to_thread.run_sync(explorer.refresh)

    async def run_info(request):
        await refreshed()
        info = await anyio.to_thread.run_sync(explorer.info)  # it may describe the analyses: not on the loop
        info["limits"]["queue"] = queue
        return JSONResponse(info)

    async def analyses(request):
        await refreshed()
        return JSONResponse({"analyses": await anyio.to_thread.run_sync(explorer.analyses)})

    async def result(request):
        await refreshed()
        return JSONResponse(explorer.result(request.path_params["analysis"]))

    async def run_file(request):
        relative = request.path_params["path"]
        if "\x00" in relative:  # RefuseNul answers first; kept so this route is safe on its own
            raise BadRequest(f"path {relative!r} holds a NUL character: give a file name that run.json lists")
        if relative.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", relative):
            raise BadRequest(f"path {relative!r} leaves the run folder: give a file name that run.json lists")
        await refreshed()
        return FileResponse(explorer.file(relative), headers=HEADERS)

    async def on_model(request, fn, *args):
        await refreshed()  # a run still writing: its seed and DID sites as run.json says now
        answer = await models.run(request, fn, *args)
        return Response(status_code=499) if answer is None else JSONResponse(answer)

    async def sample(request):
        index = explorer.sample_index(request.path_params["index"])
        return await on_model(request, explorer.sample, index)

    async def unit_images(request):
        q = request.query_params
        missing = [k for k in ("layer", "unit", "threshold", "samples") if k not in q]
        if missing:
            raise BadRequest(f"missing query parameters {missing}: give layer, unit, threshold and samples=3,17,42")
        return await on_model(request, explorer.unit_images, q["layer"], q["unit"], q["threshold"], q["samples"])

    async def edit(request):
        return await on_model(request, explorer.edit, explorer.parse_edit(await _json_body(request)))

    async def arms(request):
        return await on_model(request, explorer.arms, explorer.parse_edit(await _json_body(request)))

    async def bad_request(request, exc):
        return _error(400, str(exc))

    async def not_found(request, exc):
        return _error(404, str(exc))

    async def busy(request, exc):
        return _error(503, str(exc), {"Retry-After": "1"})

    async def failed(request, exc):
        traceback.print_exception(exc)
        return _error(500, f"{type(exc).__name__}: {exc}")

    async def no_route(request, exc):
        status = getattr(exc, "status_code", 404)
        return _error(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}")

    routes = [
        Route("/", index), Route("/static/{name:path}", static), Route("/files/{path:path}", run_file),
        Route("/api/run", run_info), Route("/api/analyses", analyses), Route("/api/results/{analysis}", result),
        Route("/api/sample/{index}", sample), Route("/api/unit-images", unit_images),
        Route("/api/edit", edit, methods=["POST"]), Route("/api/arms", arms, methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    middleware.append(Middleware(RefuseNul))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={
        BadRequest: bad_request, NotFound: not_found, Busy: busy, 404: no_route, 405: no_route, Exception: failed})
    app.state.explorer, app.state.models = explorer, models
    return app
