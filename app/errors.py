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

from diffaudit.archive import InvalidArchive
from diffaudit.checkpoints import InvalidCheckpoint
from diffaudit.datasets import InvalidDataset


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


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, _code_for_status(exc.status_code), str(exc.detail), headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_exception)
    for cls in CORE_ERRORS:
        app.add_exception_handler(cls, _core_error)


# Responses documented on every authenticated route.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or invalid bearer token"},
    422: {"model": ErrorResponse, "description": "the request does not validate"},
}
NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such resource in this project"}
}
