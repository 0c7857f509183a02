"""Software images (``/console/images``): the repository's list, and an upload with its progress and MD5.

The page's script sends the file as the request's body; this view passes it through to the API's raw upload unread
(an image may be gigabytes: it is never held here), so the API's own limits and checks apply, and the answer (the
image with the MD5 and size the node computed) goes back to the script.
"""

from __future__ import annotations

from flask import Response, jsonify, request

from . import blueprint
from .pages import admin_only, api, page, refusal, signed_in


@blueprint.get("/console/images")
@signed_in
def image_list() -> Response:
    answer = api("GET", "/images")
    if not answer.ok:
        return refusal(answer.status, answer.message)
    return page("console/images.html", nav="images", images=answer.body["items"])


@blueprint.post("/console/images/upload")
@admin_only
def upload_image() -> tuple[Response, int]:
    """The image file as the request body (``?name=&version=``), passed to ``POST /api/v1/images`` as it arrives.

    A raw body, not multipart: the bytes go through untouched, and nothing has to find a boundary in gigabytes.
    """
    if request.content_length is None:
        return jsonify({"error": {"message": "send the image with a Content-Length"}}), 411
    query = {name: request.args[name] for name in ("name", "version") if request.args.get(name)}
    answer = api("POST", "/images", query=query, body=request.environ["wsgi.input"],
                 content_type="application/octet-stream", content_length=request.content_length)
    return jsonify(answer.body), answer.status
