"""Signing in to the console: users' passwords and API tokens, the session cookie, CSRF on every change, the throttle
against guessing, and a read user refused what only an admin may do; /status stays open."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from pnp_integrated.api.tokens import issue_token, revoke_token
from pnp_integrated.console import rest
from pnp_integrated.console.users import create_user, delete_user, set_password
from pnp_integrated.models import ConsoleSession, Device, Profile, SignInFailure, db

ADMIN_PASSWORD = "correct horse battery staple"
READ_PASSWORD = "tr0ub4dor&3 is too short? no"


@pytest.fixture(scope="module")
def hashed_users() -> dict[str, str]:
    """The users' stored hashes, made once for the module: hashing is meant to be slow."""
    from pnp_integrated.console.users import hash_password

    return {"alice": hash_password(ADMIN_PASSWORD), "bob": hash_password(READ_PASSWORD)}


@pytest.fixture
def app(app_factory: Callable[..., Flask], hashed_users: dict[str, str]) -> Flask:
    from pnp_integrated.models import ConsoleUser

    app = app_factory()
    with app.app_context():
        db.session.add(ConsoleUser(name="alice", role="admin", password_hash=hashed_users["alice"]))
        db.session.add(ConsoleUser(name="bob", role="read", password_hash=hashed_users["bob"]))
        db.session.add(Profile(name="branch", config_template="hostname {{ serial }}-secret-config"))
        db.session.add(Device(serial="SECRETSERIAL", address="198.51.100.23", state="unclaimed", protocol="pnp"))
        db.session.commit()
    return app


def form_field(html: bytes, name: str) -> str:
    found = re.search(rb'name="' + name.encode() + rb'" value="([^"]*)"', html)
    assert found is not None, f"no field {name} on the page"
    return found.group(1).decode()


def sign_in(client: FlaskClient, name: str, password: str, **kwargs: object) -> tuple[int, str]:
    """Sign in through the form as a browser does; (status, the session's Set-Cookie header or '')."""
    page = client.get("/", **kwargs)  # type: ignore[arg-type]
    answer = client.post("/console/signin", data={"csrf_token": form_field(page.data, "csrf_token"), "name": name,
                                                  "password": password, "method": "password", "next": "/"},
                         **kwargs)  # type: ignore[arg-type]
    cookies = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("pnp_console=")]
    return answer.status_code, cookies[0] if cookies else ""


def csrf_of(client: FlaskClient, path: str = "/") -> str:
    return form_field(client.get(path).data, "csrf_token")


def test_without_signing_in_nothing_about_devices_is_shown(app: Flask) -> None:
    client = app.test_client()
    for path in ("/", "/console/devices", "/console/devices/SECRETSERIAL", "/console/overview/live",
                 "/console/profiles", "/console/images", "/dashboard/data"):
        page = client.get(path)
        assert page.status_code == 401, path
        assert b"198.51.100.23" not in page.data and b"unclaimed" not in page.data, path
        if "SECRETSERIAL" not in path:  # the page asked for is named in the sign-in form, to come back to
            assert b"SECRETSERIAL" not in page.data, path
    assert b"sign in" in client.get("/").data
    assert client.get("/status").status_code == 200  # operators' status stays open, as Prime's does


def test_a_user_signs_in_with_a_session_cookie_that_sign_out_ends(app: Flask) -> None:
    client = app.test_client()
    status, cookie = sign_in(client, "alice", ADMIN_PASSWORD)
    assert status == 303
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    value = cookie.split(";")[0].removeprefix("pnp_console=")
    assert value.count(".") == 2  # signed and timestamped (payload.time.signature)
    page = client.get("/console/devices")
    assert page.status_code == 200 and b"SECRETSERIAL" in page.data and b"198.51.100.23" in page.data
    assert b'id="operator">alice' in page.data
    client.post("/console/signout", data={"csrf_token": csrf_of(client)})
    assert client.get("/").status_code == 401
    # The cookie, copied before signing out, opens nothing: the session is gone from the database.
    replay = app.test_client()
    replay.set_cookie("pnp_console", value)
    assert replay.get("/console/devices").status_code == 401


def test_over_https_the_session_cookie_is_secure(app: Flask) -> None:
    status, cookie = sign_in(app.test_client(), "alice", ADMIN_PASSWORD, base_url="https://localhost")
    assert status == 303 and "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_a_wrong_password_or_unknown_user_signs_nobody_in(app: Flask) -> None:
    client = app.test_client()
    for name, password in (("alice", "not the password"), ("mallory", ADMIN_PASSWORD)):
        page = client.get("/")
        answer = client.post("/console/signin", data={"csrf_token": form_field(page.data, "csrf_token"),
                                                      "name": name, "password": password, "next": "/"})
        assert answer.status_code == 401 and b"Wrong user name or password" in answer.data
        assert not any(h.startswith("pnp_console=") for h in answer.headers.getlist("Set-Cookie"))
    assert client.get("/").status_code == 401


def test_a_forged_or_expired_cookie_opens_nothing(app: Flask) -> None:
    client = app.test_client()
    _, cookie = sign_in(client, "alice", ADMIN_PASSWORD)
    value = cookie.split(";")[0].removeprefix("pnp_console=")
    forged = app.test_client()
    forged.set_cookie("pnp_console", value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert forged.get("/console/devices").status_code == 401
    with app.app_context():
        db.session.execute(update(ConsoleSession).values(expires_at=dt.datetime(2020, 1, 1)))
        db.session.commit()
    assert client.get("/console/devices").status_code == 401


def test_guessing_is_throttled_per_user_and_per_address(app: Flask) -> None:
    guesser = app.test_client()
    for attempt in range(5):
        status, _ = sign_in(guesser, "alice", f"guess {attempt}", environ_base={"REMOTE_ADDR": "203.0.113.9"})
        assert status == 401
    # Now even the right password waits, from any address: the user's name is throttled.
    elsewhere = app.test_client()
    page = elsewhere.get("/")
    answer = elsewhere.post("/console/signin", data={"csrf_token": form_field(page.data, "csrf_token"),
                                                     "name": "alice", "password": ADMIN_PASSWORD},
                            environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert answer.status_code == 429 and b"Too many failed sign-ins: try again in 1 s" in answer.data
    assert answer.headers["Retry-After"] == "1" and "pnp_console=" not in str(answer.headers.getlist("Set-Cookie"))
    # ... and the guessing address is throttled for every name.
    status, _ = sign_in(guesser, "bob", READ_PASSWORD, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert status == 429
    # Once the wait has passed (the failures' clock moved back), the right password works and is forgiven.
    with app.app_context():
        db.session.execute(update(SignInFailure).values(last_failure_at=dt.datetime(2020, 1, 1, 0, 0)))
        db.session.commit()
    status, cookie = sign_in(elsewhere, "alice", ADMIN_PASSWORD, environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert status == 303 and cookie
    with app.app_context():
        assert db.session.scalar(select(SignInFailure).where(SignInFailure.key == "user:alice")) is None


def test_a_wait_doubles_with_each_further_failure(app: Flask) -> None:
    from pnp_integrated.console.signin import seconds_to_wait

    client = app.test_client()
    waits = []
    for attempt in range(8):
        with app.app_context():
            db.session.execute(update(SignInFailure).values(last_failure_at=dt.datetime(2020, 1, 1)))
            db.session.commit()
        sign_in(client, "nobody", f"guess {attempt}")
        with app.test_request_context(environ_base={"REMOTE_ADDR": "127.0.0.1"}):
            waits.append(round(seconds_to_wait(["user:nobody"])))
    assert waits[:4] == [0, 0, 0, 0] and waits[4:] == [1, 2, 4, 8]


def test_every_change_needs_the_sessions_csrf_token_and_this_origin(app: Flask) -> None:
    client = app.test_client()
    sign_in(client, "alice", ADMIN_PASSWORD)
    token = csrf_of(client, "/console/devices/SECRETSERIAL")
    claim = "/console/devices/SECRETSERIAL/claim"
    for data, headers in (({"profile": "branch"}, {}),
                          ({"profile": "branch", "csrf_token": "forged"}, {}),
                          ({"profile": "branch"}, {"X-CSRF-Token": token + "x"}),
                          ({"profile": "branch", "csrf_token": token}, {"Origin": "https://evil.example"})):
        answer = client.post(claim, data=data, headers=headers)
        assert answer.status_code == 403, (data, headers)
        with app.app_context():
            assert db.session.scalar(select(Device.state).where(Device.serial == "SECRETSERIAL")) == "unclaimed"
    # Another session's token is no better than a forged one.
    other = app.test_client()
    sign_in(other, "alice", ADMIN_PASSWORD)
    assert client.post(claim, data={"profile": "branch", "csrf_token": csrf_of(other)}).status_code == 403
    answer = client.post(claim, data={"profile": "branch", "csrf_token": token},
                         headers={"Origin": "http://localhost"})
    assert answer.status_code == 303
    with app.app_context():
        assert db.session.scalar(select(Device.state).where(Device.serial == "SECRETSERIAL")) == "claimed"
    # Signing out is a change too.
    assert client.post("/console/signout").status_code == 403 and client.get("/").status_code == 200


def test_the_sign_in_form_needs_the_token_its_page_set(app: Flask) -> None:
    client = app.test_client()
    answer = client.post("/console/signin", data={"name": "alice", "password": ADMIN_PASSWORD})
    assert answer.status_code == 403 and not answer.headers.get("Location")
    assert client.get("/console/devices").status_code == 401


def test_a_read_user_sees_no_actions_nor_configurations_and_is_refused_them(app: Flask) -> None:
    client = app.test_client()
    assert sign_in(client, "bob", READ_PASSWORD)[0] == 303
    device = client.get("/console/devices/SECRETSERIAL")
    assert device.status_code == 200 and b"SECRETSERIAL" in device.data
    assert b'id="actions"' not in device.data and b'id="claim-form"' not in device.data
    assert b"secret-config" not in device.data and b'id="configuration"' not in device.data
    profile = client.get("/console/profiles/branch")
    assert profile.status_code == 200 and b"secret-config" not in profile.data
    token = csrf_of(client)
    for path, data in (("/console/devices/SECRETSERIAL/claim", {"profile": "branch"}),
                       ("/console/devices/SECRETSERIAL/reprovision", {}),
                       ("/console/profiles/new", {"name": "sneaky"}),
                       ("/console/profiles/branch", {"name": "branch", "config_template": "x"})):
        answer = client.post(path, data={**data, "csrf_token": token})
        assert answer.status_code == 403 and b"read role" in answer.data, path
    assert client.get("/console/profiles/new").status_code == 403
    with app.app_context():
        assert db.session.scalar(select(Device.state).where(Device.serial == "SECRETSERIAL")) == "unclaimed"
        assert db.session.scalar(select(Profile.config_template)) == "hostname {{ serial }}-secret-config"
    # Beneath the console, the API refuses the read role as it refuses a read token.
    with app.test_request_context():
        claim = rest.call("user:bob", "read", "POST", "/devices/SECRETSERIAL/claim", json={"profile": "branch"})
        configuration = rest.call("user:bob", "read", "GET", "/devices/SECRETSERIAL/configuration")
    assert claim.status == 403 and configuration.status == 403


def test_an_api_token_signs_in_too_until_it_is_revoked(app: Flask) -> None:
    with app.app_context():
        raw = issue_token("viewer", "read")
    client = app.test_client()
    page = client.get("/")
    answer = client.post("/console/signin", data={"csrf_token": form_field(page.data, "csrf_token"),
                                                  "method": "token", "token": raw, "next": "/console/devices"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/devices"
    assert b"SECRETSERIAL" in client.get("/console/devices").data
    with app.app_context():
        revoke_token("viewer")
    assert client.get("/console/devices").status_code == 401


def test_deleting_a_user_or_a_new_password_ends_their_sessions(app: Flask) -> None:
    first, second = app.test_client(), app.test_client()
    sign_in(first, "alice", ADMIN_PASSWORD)
    sign_in(second, "bob", READ_PASSWORD)
    with app.app_context():
        set_password("alice", "a brand new passphrase")
        assert delete_user("bob")
    assert first.get("/").status_code == 401 and second.get("/").status_code == 401
    assert sign_in(first, "alice", "a brand new passphrase")[0] == 303


def test_after_signing_in_the_browser_goes_back_to_its_page_on_this_node_only(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/console/devices?state=unclaimed")
    assert form_field(page.data, "next") == "/console/devices?state=unclaimed"
    for target, lands in (("/console/devices?state=unclaimed", "/console/devices?state=unclaimed"),
                          ("//evil.example/", "/"), ("https://evil.example/", "/"), ("/\\evil.example", "/")):
        answer = client.post("/console/signin", data={"csrf_token": form_field(page.data, "csrf_token"),
                                                      "name": "alice", "password": ADMIN_PASSWORD, "next": target})
        assert answer.headers["Location"] == lands, target
    # The form has an address of its own too; a signed-in browser asking for it goes on.
    assert client.get("/console/signin?next=/console/profiles").headers["Location"] == "/console/profiles"
    fresh = app.test_client().get("/console/signin")
    assert fresh.status_code == 200 and b'id="password-form"' in fresh.data


def test_scripts_may_read_the_dashboard_data_with_a_bearer_token(app: Flask) -> None:
    with app.app_context():
        raw = issue_token("script", "read")
    answer = app.test_client().get("/dashboard/data", headers={"Authorization": f"Bearer {raw}"})
    assert answer.status_code == 200 and answer.get_json()["devices"][0]["serial"] == "SECRETSERIAL"


def test_users_are_created_with_a_good_password_and_a_known_role(app: Flask) -> None:
    from pnp_integrated.console.users import UserProblem

    with app.app_context():
        for name, role, password in (("carol", "root", "long enough password"), ("carol", "read", "short"),
                                     ("alice", "read", "long enough password"), ("-bad", "read", "x" * 20)):
            with pytest.raises(UserProblem):
                create_user(name, role, password)
