"""The operator console at ``/``: the fleet overview, the device inventory and each device's page, profiles and
images, behind a sign-in (users of ``pnpp user`` or API tokens, roles admin and read).

Pages are rendered on the server; small scripts served by the node (``console/static``) refresh the live parts in
place and upload images with progress. Nothing is loaded from elsewhere (devices' networks have no internet), and
every page says so to the browser (``Content-Security-Policy``: this node only, no inline script). Everything the
console shows or changes goes through the REST API (:mod:`.rest`), as the signed-in operator. A read operator is
shown no action and no configuration, and is refused both here and by the API.
"""

from __future__ import annotations

from flask import Blueprint, Response, redirect, request

from . import signin
from .pages import refusal, safe_next, signin_page

blueprint = Blueprint("console", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/console/static")

# Every resource from this node only; no inline script or style; no framing (clickjacking); forms post here only.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
                           "object-src 'none'")
# Uploads stream through to the API unread: their CSRF token travels in the header only.
HEADER_TOKEN_ONLY = {"console.upload_image"}


@blueprint.app_template_filter("console_duration")
def _duration(milliseconds: int | None) -> str:
    """A step's duration as people read it: 850 ms, 41.3 s, 12 min 5 s."""
    if milliseconds is None:
        return ""
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    if milliseconds < 60_000:
        return f"{milliseconds / 1000:.1f} s"
    minutes, seconds = divmod(round(milliseconds / 1000), 60)
    return f"{minutes} min {seconds} s"


@blueprint.before_request
def _refuse_forged_requests() -> Response | None:
    """Every request that changes something comes from this node's own pages: same origin, the right token."""
    if request.method in signin.SAFE_METHODS or request.endpoint == "console.static":
        return None
    if signin.foreign_origin():
        return refusal(403, "This request came from a page of another site; nothing was done.")
    if request.endpoint == "console.sign_in":
        if not signin.form_token_matches():
            return signin_page("The sign-in form had expired; it is fresh now: sign in again.", 403)
        return None
    operator = signin.current_operator()
    if operator is None:
        return signin_page()
    if not signin.csrf_token_matches(operator, header_only=request.endpoint in HEADER_TOKEN_ONLY):
        return refusal(403, "This form was not sent by a console page of this session (its security token is "
                            "missing or wrong); nothing was done. Reload the page and try again.")
    return None


@blueprint.after_request
def _harden(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"  # pages hold serials and configurations
    token = signin.new_form_token()
    if token is not None:
        response.set_cookie(signin.FORM_COOKIE, token, max_age=signin.FORM_SECONDS, httponly=True,
                            samesite="Strict", secure=request.is_secure, path="/")
    return response


@blueprint.get("/console/signin")
def sign_in_page() -> Response:
    """The sign-in form (a signed-in browser goes on to the overview)."""
    if signin.current_operator() is not None:
        return redirect(safe_next(request.args.get("next")), 303)  # type: ignore[return-value]
    return signin_page(status=200, target=request.args.get("next"))


@blueprint.post("/console/signin")
def sign_in() -> Response:
    """Sign in with a user's name and password, or with an API token; then back to the page that asked."""
    target = safe_next(request.form.get("next"))
    try:
        if request.form.get("method") == "token":
            cookie, _operator = signin.sign_in_with_token(request.form.get("token", ""))
        else:
            cookie, _operator = signin.sign_in_with_password(request.form.get("name", "").strip(),
                                                             request.form.get("password", ""))
    except signin.SignInRefused as refused:
        return signin_page(refused.message, refused.status, refused.retry_after, target)
    answer = redirect(target, 303)
    answer.set_cookie(signin.COOKIE, cookie, **signin.cookie_options())  # type: ignore[arg-type]
    return answer


@blueprint.post("/console/signout")
def sign_out() -> Response:
    operator = signin.current_operator()
    if operator is not None:
        signin.close_session(operator)
    answer = redirect("/", 303)
    answer.delete_cookie(signin.COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    return answer


# The pages attach their views to ``blueprint``.
from . import devices, images, overview, profiles  # noqa: E402, F401

__all__ = ["blueprint"]
