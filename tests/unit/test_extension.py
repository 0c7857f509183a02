"""The PnPGateway extension's init_app contract and the application factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from pnp_integrated import create_app
from pnp_integrated.config import ConfigError
from pnp_integrated.context import EXTENSION_KEY, GatewayState, gateway_state
from pnp_integrated.database import SchemaError
from pnp_integrated.devsim.node import node_settings
from pnp_integrated.extension import PnPGateway


def bare_app(tmp_path: Path, **overrides: object) -> Flask:
    app = Flask("gateway-under-test")
    app.config["PNP_SETTINGS"] = node_settings(tmp_path / "data", **overrides)
    return app


def test_init_app_registers_its_state_in_app_extensions(tmp_path: Path) -> None:
    app = bare_app(tmp_path, vip="192.0.2.10")
    PnPGateway(check_schema=False).init_app(app)
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, GatewayState)
    assert state is gateway_state(app)
    assert state.settings.vip == "192.0.2.10"
    assert state.certs.cert.is_file() and state.certs.ca.is_file()  # first start generates the TLS material


def test_double_registration_is_refused(tmp_path: Path) -> None:
    app = bare_app(tmp_path)
    gateway = PnPGateway(check_schema=False)
    gateway.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        gateway.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        PnPGateway(check_schema=False).init_app(app)


def test_one_extension_serves_several_apps_and_keeps_none(tmp_path: Path) -> None:
    gateway = PnPGateway(check_schema=False)
    first, second = bare_app(tmp_path / "a", http_port=8081), bare_app(tmp_path / "b", http_port=8082)
    gateway.init_app(first)
    gateway.init_app(second)
    assert not any(isinstance(value, Flask) for value in vars(gateway).values())
    assert gateway_state(first).settings.http_port == 8081
    assert gateway_state(second).settings.http_port == 8082


def test_constructor_with_an_app_initialises_it(tmp_path: Path) -> None:
    app = bare_app(tmp_path)
    gateway = PnPGateway(app, check_schema=False)
    assert EXTENSION_KEY in app.extensions
    assert not any(isinstance(value, Flask) for value in vars(gateway).values())


def test_bad_settings_in_app_config_raise_config_error(tmp_path: Path) -> None:
    app = bare_app(tmp_path, tls_min_version="sslv3")
    with pytest.raises(ConfigError) as info:
        PnPGateway(check_schema=False).init_app(app)
    assert "can never be enabled" in str(info.value)
    assert EXTENSION_KEY not in app.extensions


def test_create_app_applies_overrides_and_flask_settings(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data", vip="192.0.2.20", tls_min_version="1.3", workers=3)
    app = create_app({**settings, "TESTING": True, "SECRET_KEY": "k"}, check_schema=False)
    s = gateway_state(app).settings
    assert (s.vip, s.tls_min_version, s.workers, s.http_port) == ("192.0.2.20", "1.3", 3, settings["http_port"])
    assert app.config["TESTING"] is True and app.config["SECRET_KEY"] == "k"
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{(tmp_path / 'data' / 'pnp.sqlite3').resolve()}"
    assert (tmp_path / "data" / "images").is_dir() and (tmp_path / "data" / "resources").is_dir()


def test_create_app_overrides_beat_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PNP_VIP", "192.0.2.30")
    monkeypatch.setenv("PNP_WORKERS", "4")
    app = create_app(node_settings(tmp_path / "data", workers=1), check_schema=False)
    assert (gateway_state(app).settings.vip, gateway_state(app).settings.workers) == ("192.0.2.30", 1)


def test_start_refuses_an_empty_database_naming_the_upgrade_command(tmp_path: Path) -> None:
    with pytest.raises(SchemaError) as info:
        create_app(node_settings(tmp_path / "data"))
    message = str(info.value)
    assert "is empty (no tables yet)" in message
    assert "run `pnpp db upgrade` first" in message


def test_start_refuses_a_database_behind_the_code(app_factory: Callable[..., Flask], tmp_path: Path) -> None:
    from flask_migrate import downgrade

    app = app_factory(data_dir=tmp_path / "node")
    with app.app_context():
        downgrade(revision="base")
    with pytest.raises(SchemaError, match=r"run `pnpp db upgrade` first"):
        create_app(node_settings(tmp_path / "node"))


def test_status_returns_json(client: FlaskClient, app: Flask) -> None:
    response = client.get("/status")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    data = response.get_json()
    settings = gateway_state(app).settings
    assert data["vip"] == settings.vip and data["ha_mode"] == "none"
    services = [row["service"] for row in data["rows"]]
    assert services[0] == "System"
    assert sum(1 for s in services if s.startswith("CNS Gateway port:")) == 10
    assert sum(1 for s in services if s.startswith("CNS Gateway Dispatcher port:")) == 2
    # Nothing listens in a test client: the rows must say so rather than claim UP.
    port_rows = [row for row in data["rows"] if row["service"].startswith("CNS Gateway port:")]
    assert all(row["status"] == "DOWN" and "not listening" in row["info"] for row in port_rows)
