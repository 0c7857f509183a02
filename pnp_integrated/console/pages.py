"""What every console page shares: the signed-in operator, the API as that operator, and the page's answer."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeVar, cast

from flask import Response, render_template, request, url_for

from ..version import __version__
from . import rest
from .signin import CSRF_FIELD, Operator, current_operator, form_token

View = TypeVar("View", bound=Callable[..., Any])


def operator() -> Operator:
    """The signed-in operator (views behind :func:`signed_in` only)."""
    found = current_operator()
    assert found is not None, "a console view without @signed_in"
    return found


def api(method: str, path: str, *, json: Any = None, query: Mapping[str, str] | None = None,
        body: IO[bytes] | None = None, content_type: str | None = None,
        content_length: int | None = None) -> rest.Answer:
    """Call the REST API as the signed-in operator (see :mod:`.rest`)."""
    who = operator()
    return rest.call(who.actor, who.role, method, path, json=json, query=query, body=body,
                     content_type=content_type, content_length=content_length)


def safe_next(target: str | None) -> str:
    """A path on this node to go to after signing in (never another site: ``//host`` or ``\\`` are refused)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 2000:
        return url_for("console.overview")
    return target


def page(template: str, status: int = 200, **context: Any) -> Response:
    """A console page: the template with the operator, the node and the CSRF field."""
    who = current_operator()
    html = render_template(template, operator=who, version=__version__, csrf_field=CSRF_FIELD,
                           csrf_token=who.csrf_token if who else "", **context)
    return Response(html, status, content_type="text/html; charset=utf-8")


def signin_page(problem: str = "", status: int = 401, retry_after: int = 0, target: str | None = None) -> Response:
    """The sign-in page (what every console page answers until the browser is signed in)."""
    answer = Response(render_template(
        "console/signin.html", problem=problem, next=safe_next(target or request.full_path.rstrip("?")),
        form_token=form_token(), csrf_field=CSRF_FIELD, secure=request.is_secure, version=__version__),
        status, content_type="text/html; charset=utf-8")
    if retry_after:
        answer.headers["Retry-After"] = str(retry_after)
    return answer


def refusal(status: int, message: str) -> Response:
    """A short page saying why a request was refused (CSRF, role)."""
    return page("console/refused.html", status, message=message)


def signed_in(view: View) -> View:
    """The view needs a signed-in operator; without one the browser gets the sign-in page (401)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_operator() is None:
            return signin_page()
        return view(*args, **kwargs)

    return cast(View, wrapper)


def admin_only(view: View) -> View:
    """The view changes something: a read operator is refused (403) before the API is asked."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        who = current_operator()
        if who is None:
            return signin_page()
        if not who.is_admin:
            return refusal(403, f"{who.name} has the read role: only an admin may do this.")
        return view(*args, **kwargs)

    return cast(View, wrapper)
