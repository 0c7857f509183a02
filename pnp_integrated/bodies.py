"""A request body within ``PNP_HTTP_MAX_BODY_BYTES``, or 413: with a Content-Length and chunked alike."""

from __future__ import annotations

from typing import Any

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


class RefuseSmuggledHeaders:
    """WSGI middleware: a header value holding NUL or a bare CR is refused with 400 on every HTTP port.

    The servers below split requests correctly (two Content-Lengths, Content-Length with Transfer-Encoding, folded
    or unknown transfer codings are already refused), but they pass such values on; a proxy in front of the node
    might read the same bytes as two headers, so neither side gets to guess.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        for key, value in environ.items():
            if (key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")) and isinstance(value, str) \
                    and ("\x00" in value or "\r" in value):
                body = f"bad request: header {key[5:] if key.startswith('HTTP_') else key} holds NUL or CR\n".encode()
                start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Content-Length", str(len(body))), ("Connection", "close")])
                return [body]
        return self.app(environ, start_response)
