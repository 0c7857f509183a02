"""An XML declaration naming an unknown encoding is a client mistake: 400 with the reason, never a 500."""

from __future__ import annotations

from flask import Flask

BOGUS = b'<?xml version="1.0" encoding="x-bogus"?><imageMgmtRequest/>'


def test_cns_image_service_refuses_an_unknown_encoding_with_400(app: Flask) -> None:
    answer = app.test_client().post("/cns/HttpMsgDispatcher", data=BOGUS, content_type="text/xml")
    assert answer.status_code == 400
    assert b"unknown encoding" in answer.data and b"Traceback" not in answer.data


def test_cns_image_service_refuses_an_encoding_the_parser_cannot_read_with_400(app: Flask) -> None:
    # UTF-7 is a codec Python knows, but the XML parser reads no multi-byte encoding other than UTF-8/16.
    utf7 = b'<?xml version="1.0" encoding="UTF-7"?><image-inventory device-id="X"/>'
    answer = app.test_client().post("/cns/HttpMsgDispatcher", data=utf7, content_type="text/xml")
    assert answer.status_code == 400
    assert b"not accepted" in answer.data and b"Traceback" not in answer.data
