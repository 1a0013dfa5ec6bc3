"""RFC 9457 problem details: the one error shape of the HTTP API."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rules.limits import LimitExceeded

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error answered as ``application/problem+json``; extra fields go into the body, ``headers`` into
    the response (``Retry-After``)."""

    def __init__(
        self, status: int, detail: str, title: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int, detail: str, title: str | None = None, headers: dict | None = None, **extra: Any
) -> JSONResponse:
    """Build the problem+json response for a status and a detail."""
    body = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install(app: FastAPI) -> None:
    """Route every error the app raises through problem+json."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.title, exc.headers, **exc.extra)

    @app.exception_handler(LimitExceeded)
    async def _too_large(_: Request, exc: LimitExceeded) -> JSONResponse:
        return problem_response(422, f"input beyond the limits: {exc}", "Input too large", field=exc.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
        return problem_response(422, detail, errors=errors)
