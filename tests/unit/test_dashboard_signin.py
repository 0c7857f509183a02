"""The dashboard shows serials, addresses and jobs only to a holder of an API token; /status stays open."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from pnp_integrated.api.tokens import issue_token
from pnp_integrated.models import Device, db


def _app_with_a_device(app_factory: Callable[..., Flask]) -> tuple[Flask, str]:
    app = app_factory()
    with app.app_context():
        db.session.add(Device(serial="SECRETSERIAL", address="198.51.100.23", state="unclaimed"))
        raw = issue_token("viewer", "read")
        db.session.commit()
    return app, raw


def test_without_a_token_nothing_about_devices_is_shown(app_factory: Callable[..., Flask]) -> None:
    app, _ = _app_with_a_device(app_factory)
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 401 and b"sign in" in page.data and b"SECRETSERIAL" not in page.data
    data = client.get("/dashboard/data")
    assert data.status_code == 401 and b"SECRETSERIAL" not in data.data
    assert client.get("/status").status_code == 200  # operators' status stays open, as Prime's does
    bad = client.post("/dashboard/signin", data={"token": "guess"})
    assert bad.status_code == 401 and b"not valid" in bad.data and "Set-Cookie" not in bad.headers


def test_a_read_token_signs_the_browser_in_and_sign_out_ends_it(app_factory: Callable[..., Flask]) -> None:
    app, raw = _app_with_a_device(app_factory)
    client = app.test_client()
    signed = client.post("/dashboard/signin", data={"token": raw})
    assert signed.status_code == 303
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP here
    page = client.get("/")
    assert page.status_code == 200 and b"SECRETSERIAL" in page.data and b"198.51.100.23" in page.data
    assert client.get("/dashboard/data").get_json()["devices"][0]["serial"] == "SECRETSERIAL"
    client.post("/dashboard/signout")
    assert client.get("/").status_code == 401


def test_scripts_may_read_the_data_with_a_bearer_token(app_factory: Callable[..., Flask]) -> None:
    app, raw = _app_with_a_device(app_factory)
    answer = app.test_client().get("/dashboard/data", headers={"Authorization": f"Bearer {raw}"})
    assert answer.status_code == 200 and answer.get_json()["devices"][0]["serial"] == "SECRETSERIAL"


def test_over_https_the_cookie_is_secure(app_factory: Callable[..., Flask]) -> None:
    app, raw = _app_with_a_device(app_factory)
    signed = app.test_client().post("/dashboard/signin", data={"token": raw}, base_url="https://localhost")
    assert "Secure" in signed.headers["Set-Cookie"]
