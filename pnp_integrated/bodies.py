"""A request body within ``PNP_HTTP_MAX_BODY_BYTES``, or 413: with a Content-Length and chunked alike."""

from __future__ import annotations

from flask import abort, request

from .context import current_settings


def limited_body() -> bytes:
    """The whole body of the current request; 413 when it is longer than the limit.

    The stream is opened with room for one byte more than the limit, so a chunked body that goes past it is told
    apart from one that ends exactly at it (the app-wide limit alone would cut it off there without a word).
    """
    limit = current_settings().http_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        abort(413)
    request.max_content_length = limit + 1
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        abort(413)
    return data

