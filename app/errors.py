"""Domain errors and the one JSON error shape: {"error": {"code", "message", "details"}}.

Services raise DomainError subclasses; routers never build error responses themselves. The core's
input errors (bad archive, dataset, checkpoint, spec) are turned into 4xx with their own message.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from diffaudit.archive import InvalidArchive
from diffaudit.checkpoints import InvalidCheckpoint
from diffaudit.datasets import InvalidDataset
from diffaudit.errors import InvalidInput

FASTAPI_BODY_ERROR = "There was an error parsing the body"  # FastAPI's 400 for a body it cannot decode
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
UNDECODABLE_BODY = "the request body cannot be decoded: send JSON encoded as UTF-8"


class DomainError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers
        if code is not None:
            self.code = code


class BadRequest(DomainError):
    status_code = 400
    code = "bad_request"


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class TooLarge(DomainError):
    status_code = 413
    code = "too_large"


class BodyTooLarge(HTTPException):
    """A request body over its limit, raised while the body streams in (an HTTPException, so that FastAPI's body
    parsing lets it through); answered like TooLarge."""

    def __init__(self, message: str, limit_bytes: int) -> None:
        super().__init__(413, message)
        self.limit_bytes = limit_bytes


class Invalid(DomainError):
    status_code = 422
    code = "invalid"


class Unavailable(DomainError):
    status_code = 503
    code = "unavailable"


# The core's input errors: (status, code) of the response they become.
CORE_ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidArchive: (400, "invalid_archive"),
    InvalidDataset: (422, "invalid_dataset"),
    InvalidCheckpoint: (422, "invalid_checkpoint"),
    InvalidInput: (422, "invalid_input"),  # any other input error of the core (e.g. InvalidWeights): the user's to fix
}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    error: ErrorBody


def error_response(status: int, code: str, message: str, details: Any = None, **kwargs: Any) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, **kwargs)


def _code_for_status(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, headers=exc.headers)


async def _core_error(request: Request, exc: Exception) -> JSONResponse:
    status, code = next(v for cls, v in CORE_ERRORS.items() if isinstance(exc, cls))
    return error_response(status, code, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return error_response(422, "validation_error", f"request is invalid: {summary}", errors)


def too_large_response(exc: BodyTooLarge) -> JSONResponse:
    return error_response(413, TooLarge.code, str(exc.detail), {"limit_bytes": exc.limit_bytes})


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this path (Starlette's 405 names only the first route's)."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, BodyTooLarge):
        return too_large_response(exc)
    if exc.status_code == 400 and exc.detail == FASTAPI_BODY_ERROR:
        return error_response(400, BadRequest.code, UNDECODABLE_BODY)
    headers = exc.headers
    if exc.status_code == 405:
        methods = allowed_methods(request)
        headers = {**(headers or {}), "Allow": ", ".join(methods)}
        message = f"{request.method} is not allowed on {request.url.path}; use {' or '.join(methods)}"
        return error_response(405, _code_for_status(405), message, {"allowed": methods}, headers=headers)
    return error_response(exc.status_code, _code_for_status(exc.status_code), str(exc.detail), headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_exception)
    for cls in CORE_ERRORS:
        app.add_exception_handler(cls, _core_error)


# Responses of the routes that take a JSON body.
JSON_BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body cannot be decoded (send UTF-8 JSON)"},
    413: {"model": ErrorResponse, "description": "the body is larger than 1 MiB"},
}

# Responses documented on every authenticated route.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or invalid bearer token"},
    422: {"model": ErrorResponse, "description": "the request does not validate"},
}
NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such resource in this project"}
}
