"""Profile credentials are sealed at rest: the database holds no device password, the device still gets it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable

from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select

from pnp_integrated.api.tokens import issue_token
from pnp_integrated.cli import main
from pnp_integrated.context import gateway_state
from pnp_integrated.models import Profile, db
from pnp_integrated.pnp.messages import Udi, WorkRequest, encode, parse_server_message
from pnp_integrated.sealing import keys_path, rotate

UDI = Udi("ISR4451-X/K9", "V01", "FOC2001X0SEAL")
SECRET = "s3cret-Pa55"


def _stored(app: Flask) -> str:
    with app.app_context():
        row = db.session.scalar(select(Profile).where(Profile.name == "sealed"))
        assert row is not None
        text = json.dumps(row.credentials)
        db.session.remove()
        return text


def _asked_with(app: Flask) -> dict[str, str] | None:
    reply = app.test_client().post("/pnp/WORK-REQUEST", data=encode(WorkRequest(UDI, "CiscoPnP-1.0-1",
                                                                                 auth_required=True)),
                                   content_type="text/xml")
    assert reply.status_code == 200
    return parse_server_message(reply.data).credentials  # type: ignore[union-attr]


def _create(app: Flask) -> None:
    with app.app_context():
        token = issue_token("sealer", "admin")
    answer = app.test_client().post("/api/v1/profiles", headers={"Authorization": f"Bearer {token}"}, json={
        "name": "sealed", "match_serials": [UDI.serial], "credentials": {"username": "pnp", "password": SECRET}})
    assert answer.status_code == 201, answer.data


def test_the_database_holds_no_password_and_the_device_gets_it(app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    _create(app)
    stored = _stored(app)
    assert SECRET not in stored and "pnp" not in stored and '"sealed"' in stored
    keys = keys_path(gateway_state(app).settings)
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    assert _asked_with(app) == {"username": "pnp", "password": SECRET}


def test_rotation_seals_again_with_a_new_key_and_drops_the_old(app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    _create(app)
    settings = gateway_state(app).settings
    before, old_keys = _stored(app), json.loads(keys_path(settings).read_text())["keys"]
    with app.app_context():
        key_id, count = rotate(settings)
    assert count == 1 and key_id not in {k["id"] for k in old_keys}
    assert [k["id"] for k in json.loads(keys_path(settings).read_text())["keys"]] == [key_id]
    assert _stored(app) != before and key_id in _stored(app)
    assert _asked_with(app) == {"username": "pnp", "password": SECRET}


def test_credentials_from_before_sealing_are_sealed_by_the_rotate_command(app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    with app.app_context():
        db.session.add(Profile(name="sealed", match_serials=[UDI.serial],
                               credentials={"username": "pnp", "password": SECRET}))
        db.session.commit()
    assert SECRET in _stored(app)
    assert _asked_with(app) == {"username": "pnp", "password": SECRET}  # still served meanwhile
    settings = gateway_state(app).settings
    env = {"PNP_DATA_DIR": str(settings.data_dir), "PNP_DATABASE_URL": settings.sqlalchemy_url}
    result = CliRunner().invoke(main, ["profile-keys", "rotate"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 profile(s), 1 of them stored in the clear until now" in result.output
    assert SECRET not in _stored(app)
    assert _asked_with(app) == {"username": "pnp", "password": SECRET}


def test_a_lost_keys_file_is_named_not_a_crash(app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    _create(app)
    settings = gateway_state(app).settings
    keys_path(settings).unlink()
    assert _asked_with(app) is None  # asked without a login it cannot have; the log says why
    env = {"PNP_DATA_DIR": str(settings.data_dir), "PNP_DATABASE_URL": settings.sqlalchemy_url}
    result = CliRunner().invoke(main, ["profile-keys", "rotate"], env=env)
    assert result.exit_code == 1 and f"{keys_path(settings)} is missing but profiles hold credentials" in result.output
    assert not keys_path(settings).exists()  # no new key that a restored file would not know
