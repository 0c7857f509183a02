"""Every route has a body limit (PNP_HTTP_MAX_BODY_BYTES, 1 MiB): a larger body is a 413, read no further."""

from __future__ import annotations

import io

import pytest
from flask import Flask

from pnp_integrated.api.tokens import issue_token

TOO_BIG = 2 * 1024 * 1024


@pytest.mark.parametrize("path", ["/cns/HttpMsgDispatcher", "/pnp/WORK-REQUEST"])
def test_device_routes_refuse_an_oversized_body(app: Flask, path: str) -> None:
    answer = app.test_client().post(path, data=b"<a>" + b"x" * TOO_BIG + b"</a>", content_type="text/xml")
    assert answer.status_code == 413


def test_the_json_api_refuses_an_oversized_body(app: Flask) -> None:
    with app.app_context():
        token = issue_token("ops", "admin")
    body = b'{"name": "' + b"x" * TOO_BIG + b'"}'
    answer = app.test_client().post("/api/v1/profiles", data=body, content_type="application/json",
                                    headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 413


def test_a_body_within_the_limit_is_still_served(app: Flask) -> None:
    answer = app.test_client().post("/cns/HttpMsgDispatcher", data=b"<not-cns/>", content_type="text/xml")
    assert answer.status_code != 413


def test_a_chunked_body_past_the_limit_is_413_not_a_truncated_parse(app: Flask) -> None:
    # No Content-Length (a chunked upload, the server has de-chunked it): the limit is found while reading.
    answer = app.test_client().post("/cns/HttpMsgDispatcher", input_stream=io.BytesIO(b"<" * TOO_BIG),
                                    content_type="text/xml", environ_overrides={"wsgi.input_terminated": True})
    assert answer.status_code == 413
