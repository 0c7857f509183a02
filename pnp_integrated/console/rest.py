"""The console's way to the REST API: each operation is an in-process request to ``/api/v1``.

The console has no data access of its own for what the API offers: a page's devices, a claim, a profile's
validation errors are the API's answers, so the console and a script see the same rules, the same refusals and the
same audit. A call runs the API's WSGI application in a fresh application context (its own database session and
``g``, ended with it) for the signed-in operator, whom :mod:`.signin` hands over as the API's principal
(:data:`~pnp_integrated.api.auth.CONSOLE_PRINCIPAL`): the API checks the operator's role as it checks a token's.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote

from flask import current_app, request
from werkzeug.test import EnvironBuilder, run_wsgi_app

from ..api.auth import CONSOLE_PRINCIPAL
from ..models import ApiToken, db

API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class Answer:
    """An API answer: its status and JSON body (``{}`` when it had none)."""

    status: int
    body: Any = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> dict[str, Any]:
        found = self.body.get("error") if isinstance(self.body, dict) else None
        return found if isinstance(found, dict) else {}

    @property
    def message(self) -> str:
        return str(self.error.get("message") or f"the API answered {self.status}")

    @property
    def fields(self) -> list[str]:
        """The fields the API named as wrong (a 422's ``error.fields``)."""
        return [str(f) for f in self.error.get("fields") or []]


def segment(value: str) -> str:
    """``value`` as one path segment (a serial or a name may hold any character)."""
    return quote(value, safe="")


def call(actor: str, role: str, method: str, path: str, *, json: Any = None,
         query: Mapping[str, str] | None = None, body: IO[bytes] | None = None, content_type: str | None = None,
         content_length: int | None = None) -> Answer:
    """Send ``method path`` (under ``/api/v1``) to the API as ``actor`` with ``role``; its answer.

    ``json`` sends a JSON body; ``body`` streams one (an image upload) of ``content_type`` and ``content_length``.
    """
    # The caller's session hands its connection back first: the API's own session takes one.
    db.session.close()
    principal = ApiToken(name=actor, role=role)  # never added to a session: only the API's check reads it
    builder = EnvironBuilder(
        path=API_PREFIX + path, method=method, base_url=request.host_url, query_string=dict(query or {}),
        json=json, environ_overrides={CONSOLE_PRINCIPAL: principal, "REMOTE_ADDR": request.remote_addr or ""})
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    if body is not None:  # the server's own input stream, which cannot seek: given as is, with its length
        environ.update({"wsgi.input": body, "CONTENT_TYPE": content_type or "application/octet-stream",
                        "CONTENT_LENGTH": str(content_length or 0)})
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    with app.app_context():
        chunks, status, _headers = run_wsgi_app(app.wsgi_app, environ, buffered=True)
        data = b"".join(chunks)
    code = int(status.split(" ", 1)[0])
    try:
        parsed = jsonlib.loads(data) if data else {}
    except ValueError:
        parsed = {}
    return Answer(code, parsed)
