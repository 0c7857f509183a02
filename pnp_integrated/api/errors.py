"""API errors: every failure is a JSON body ``{"error": {"code": ..., "message": ...}}``, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException

from ..models import db

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client sees with this status, machine-readable code and message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} does not exist")


def invalid(message: str, **extra: Any) -> ApiError:
    return ApiError(422, "validation_error", message, **extra)


def conflict(message: str) -> ApiError:
    return ApiError(409, "conflict", message)


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    """The JSON answer of a failure, as the ``ErrorAnswer`` schema has it."""
    from .schemas import ErrorAnswer, ErrorDetail  # the schemas' own imports reach this module

    answer = ErrorAnswer(error=ErrorDetail(code=code, message=message, **extra))
    response = Response(answer.model_dump_json(exclude_unset=True), status=status, mimetype="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="pnp-integrated"'
    return response


def _http_code(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("-", "_")


def _from_http_exception(exc: HTTPException) -> Response:
    """The JSON answer of an HTTP error, keeping the headers it carries (``Allow`` on a 405, as RFC 9110 asks)."""
    response = error_response(exc.code or 500, _http_code(exc), exc.description or exc.name)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def install(blueprint: Blueprint) -> None:
    """Register the JSON error handlers on the API blueprint (and for unknown URLs under its prefix)."""

    @blueprint.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        db.session.rollback()
        return error_response(exc.status, exc.code, exc.message, **exc.extra)

    @blueprint.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        db.session.rollback()
        return _from_http_exception(exc)

    @blueprint.errorhandler(StaleDataError)
    def _raced(_exc: StaleDataError) -> Response:
        db.session.rollback()
        return error_response(409, "conflict", "the job changed while the request ran (a device reported); retry")

    @blueprint.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        db.session.rollback()
        log.exception("API request %s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "the gateway could not complete the request; see its log")

    prefix = blueprint.url_prefix or "/"

    def _outside(exc: HTTPException) -> Response | HTTPException:
        # Unmatched URLs never reach the blueprint's handlers; answer JSON for the API's own prefix only.
        if request.path.startswith(prefix):
            return _from_http_exception(exc)
        return exc

    blueprint.app_errorhandler(404)(_outside)
    blueprint.app_errorhandler(405)(_outside)
