"""The FastAPI application: ``create_app()`` wires settings, routers, auth, limits and error handling.

Safe by default: CORS stays off unless PRUNELENS_CORS_ORIGINS names origins; when a token is
configured (PRUNELENS_API_TOKEN, required by ``prunelens serve`` off loopback) every endpoint but
``/health`` needs ``Authorization: Bearer <token>``; request bodies and uploads are size-limited;
every error, including a bug, is answered as JSON ``{"detail": message}``, never a stack trace.
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import backend
from backend.api.routes import build_routers, register_job_kinds
from backend.api.routes.nsa import MULTIPART_OVERHEAD
from backend.api.schemas import ErrorResponse
from backend.api.settings import ApiSettings, api_settings
from backend.api.state import ApiState
from backend.config import Settings
from backend.errors import UserError
from backend.jobs import BusyError

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

log = logging.getLogger("prunelens.api")

OPEN_PATHS = frozenset({"/health"})
# Documented on every operation, so /docs shows what each error looks like.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Bad input (a message says what to fix)."),
        (401, "Missing or wrong Bearer token (when the server requires one)."),
        (404, "Unknown model, variant, job or result."),
        (413, "Request body or upload too large."),
        (422, "The request does not match the schema."),
        (429, "Too many requests waiting; retry after the Retry-After seconds."),
        (500, "Internal error (logged on the server)."),
        (503, "The model stayed busy too long; retry after the Retry-After seconds."),
    )
}


def _error(
    status: int, detail: str, *, headers: dict | None = None, errors: list | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


class BearerTokenMiddleware:
    """Every request but OPEN_PATHS (and CORS preflights) needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        detail = "missing Bearer token" if not given else "wrong Bearer token"
        response = _error(
            401,
            f"{detail}: send 'Authorization: Bearer <PRUNELENS_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuse request bodies over a size limit (per path, else the default) with a JSON 413.

    A declared Content-Length over the limit is refused before reading anything; a body without
    one (chunked) is counted while it is read, and refused when it passes the limit.
    """

    def __init__(self, app: ASGIApp, default_limit: int, path_limits: dict[str, int]):
        self.app = app
        self.default_limit = default_limit
        self.path_limits = path_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.default_limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _error(413, BodyTooLarge(limit).detail)(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)  # an HTTPException: handlers answer it as JSON
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _error(413, exc.detail)(scope, receive, send)


def _validation_message(errors: list[dict]) -> str:
    """One line for the first problem: 'top_k: Input should be ...', 'text is empty', ..."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    location = list(first.get("loc", ()))
    if location and location[0] in ("body", "query", "path", "header", "cookie"):
        location = location[1:]
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    where = ".".join(str(part) for part in location)
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, BusyError) else None
        return _error(
            exc.status_code,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": list(error.get("loc", ())),
                "msg": str(error.get("msg", "")),
                "type": str(error.get("type", "")),
            }
            for error in exc.errors()
        ]
        return _error(422, _validation_message(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error (the server logged the details)")


def _multipart_when_it_holds_a_file(operation: dict, schema: dict) -> None:
    """A form model with a file field (POST /nsa/upload's ``NsaUpload``) is documented by FastAPI
    as url-encoded; it is sent as multipart/form-data."""
    content = operation.get("requestBody", {}).get("content", {})
    form = content.get("application/x-www-form-urlencoded")
    if form is None:
        return
    name = form.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
    fields = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
    if any(field.get("contentMediaType") == "application/octet-stream" or field.get("format") == "binary"
           for field in fields.values()):
        content["multipart/form-data"] = content.pop("application/x-www-form-urlencoded")


def _customise_openapi(app: FastAPI, *, bearer: bool) -> None:
    """Errors are JSON on every operation (the event stream's too), and with a token configured
    the Bearer scheme is documented, so /docs can send it."""
    base_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base_openapi()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                _multipart_when_it_holds_a_file(operation, schema)
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if int(status) >= 400 and "text/event-stream" in content:
                        response["content"] = {"application/json": content.pop("text/event-stream")}
        if bearer:
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "The server's PRUNELENS_API_TOKEN.",
            }
            schema["security"] = [{"bearer": []}]
            for path in OPEN_PATHS:
                for operation in schema.get("paths", {}).get(path, {}).values():
                    operation["security"] = []
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def create_app(
    settings: Settings | None = None, *, loaded: LoadedModel | None = None, load_default: bool = True,
    start_page_workers: bool = False,
) -> FastAPI:
    """The API application.

    ``settings``: backend Settings or ApiSettings (default: from the environment).
    ``loaded``: a LoadedModel to serve as the default model instead of loading one (tests inject
    tiny models). ``load_default``: load the default model in the lifespan (off: loaded on first use).
    ``start_page_workers``: spawn the neuron page workers at start (``prunelens serve``; off: on the
    first page that is not cached, which then waits seconds for their imports).
    """
    config: ApiSettings = api_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = ApiState.build(config, loaded=loaded)
        register_job_kinds(state)
        interrupted = state.jobs.recover()
        if interrupted:
            log.warning("%d job(s) interrupted by the last shutdown", len(interrupted))
        if state.pages is not None and start_page_workers:  # they import while the model loads
            state.pages.start()
        if loaded is None and load_default:
            try:
                state.pool.get(None)
            except UserError as exc:
                state.startup_error = str(exc)
                log.error("default model not loaded: %s", exc)
        state.jobs.start()
        app.state.api = state
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="PruneLens API",
        version=backend.__version__,
        description="Prune LLMs, evaluate the variants, and see which neurons (and words) pruning took.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = config
    _install_error_handlers(app)
    for router in build_routers(config):
        app.include_router(router)
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=config.api_max_body_bytes,
        path_limits={"/nsa/upload": config.api_max_upload_bytes + MULTIPART_OVERHEAD},
    )
    if config.api_token:  # outside the size limit: a stranger's body is not even counted
        app.add_middleware(BearerTokenMiddleware, token=config.api_token)
    _customise_openapi(app, bearer=bool(config.api_token))
    if config.cors_origin_list:  # added last = outermost: a 401 carries CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,
        )
    return app
