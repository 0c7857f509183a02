"""Metrics labels are bounded: a client inventing HTTP methods cannot grow /metrics."""

from __future__ import annotations

from flask import Flask


def test_invented_http_methods_share_one_label(app: Flask) -> None:
    client = app.test_client()
    for n in range(50):
        client.open("/status", method=f"BREW{n}")
    text = client.get("/metrics").get_data(as_text=True)
    assert "BREW" not in text
    assert 'method="other"' in text
