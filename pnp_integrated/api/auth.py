"""Bearer-token authentication: ``admin`` tokens may change things, ``read`` tokens may only look."""

from __future__ import annotations

from flask import Blueprint, g, request

from ..models import ApiToken, AuditEntry, db
from .errors import ApiError
from .tokens import token_for

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Endpoints that need no token (the API's own description).
PUBLIC_ENDPOINTS = {"api.openapi"}
# POST endpoints that change nothing (rendering), open to read tokens.
READ_ONLY_POSTS = {"api.render_bootstrap"}
# The operator console calls the API in-process for its signed-in operator, whose name and role (an unsaved
# ApiToken) it puts under this WSGI environ key. No HTTP request can set one (headers arrive as HTTP_* keys), and the
# call then meets the same role check, validation and audit as any client's.
CONSOLE_PRINCIPAL = "pnp_integrated.console.principal"


def install(blueprint: Blueprint) -> None:
    """Check the token of every API request before its view runs."""

    @blueprint.before_request
    def _authenticate() -> None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return
        principal = request.environ.get(CONSOLE_PRINCIPAL)
        if isinstance(principal, ApiToken):
            _authorise(principal)
            return
        header = request.headers.get("Authorization", "")
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise ApiError(401, "unauthorized", "send a token: Authorization: Bearer <token> (pnpp token create)")
        token = token_for(raw.strip())
        if token is None:
            raise ApiError(401, "unauthorized", "the token is invalid or revoked")
        _authorise(token)


def _authorise(token: ApiToken) -> None:
    if token.role != "admin" and request.method not in SAFE_METHODS and request.endpoint not in READ_ONLY_POSTS:
        raise ApiError(403, "forbidden", f"token {token.name!r} has the read role; this request needs admin")
    g.api_token = token


def current_token() -> ApiToken:
    token: ApiToken = g.api_token
    return token


def audit(action: str, target: str, **detail: object) -> None:
    """Record a change in the audit log (same transaction as the change); the actor is the token's name."""
    db.session.add(AuditEntry(actor=current_token().name, action=action, target=target[:255], detail=detail))
