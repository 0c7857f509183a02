"""Configuration URLs with a token bound to their request (PNP_CONFIG_URL_TOKENS): knowing a serial is not enough."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from pnp_integrated.bus.commands import own_config_url
from pnp_integrated.config import ConfigError, load_settings
from pnp_integrated.context import current_settings
from pnp_integrated.models import Device, Profile, db
from pnp_integrated.pnp.messages import (
    Bye,
    CliConfigRequest,
    ConfigUpgradeRequest,
    DeviceInfo,
    ServerMessage,
    Udi,
    WorkRequest,
    WorkResponse,
    encode,
    parse_server_message,
)
from pnp_integrated.provisioning import url_tokens
from pnp_integrated.sealing import rotate

UDI = Udi("ISR4451-X/K9", "V01", "FOC2001X0AB")
INFO = DeviceInfo(version="17.3.4a")


def add_profile(app: Flask, serial: str = UDI.serial) -> None:
    with app.app_context():
        db.session.add(Profile(name=f"p-{serial}", match_serials=[serial], config_template="hostname {{ serial }}\n",
                               post_template="ntp server 192.0.2.1\n"))
        db.session.commit()


def ask(client: FlaskClient, correlator: str) -> ServerMessage:
    reply = client.post("/pnp/WORK-REQUEST", data=encode(WorkRequest(UDI, correlator)), content_type="text/xml")
    assert reply.status_code == 200, reply.data
    return parse_server_message(reply.data)


def answer(client: FlaskClient, request: ServerMessage, **fields: object) -> ServerMessage:
    message = WorkResponse(UDI, request.service, request.correlator, True, **fields)  # type: ignore[union-attr]
    reply = client.post("/pnp/WORK-RESPONSE", data=encode(message), content_type="text/xml")
    assert reply.status_code == 200, reply.data
    return parse_server_message(reply.data)


def config_request(client: FlaskClient) -> ConfigUpgradeRequest:
    answer(client, ask(client, "D-1"), device_info=INFO)
    config = ask(client, "D-2")
    assert isinstance(config, ConfigUpgradeRequest)
    return config


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def fetch(client: FlaskClient, query: dict[str, str]) -> tuple[int, str]:
    reply = client.get(f"/cns/config.asp?{urlencode(query)}")
    return reply.status_code, reply.get_data(as_text=True)


@pytest.fixture
def guarded(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory(config_url_tokens=True)


def test_the_url_sent_to_the_device_serves_its_configuration_and_nothing_else_does(guarded: Flask) -> None:
    add_profile(guarded)
    client = guarded.test_client()
    config = config_request(client)
    query = query_of(config.location)
    assert set(query) == {"DeviceID", "Identifier", "Expires", "Token"}
    assert fetch(client, query) == (200, "hostname FOC2001X0AB\n")

    without = {k: v for k, v in query.items() if k != "Token"}
    status, text = fetch(client, without)
    assert status == 403 and "PNP_CONFIG_URL_TOKENS" in text
    # The request's identifier and the serial alone (what a guesser has) give nothing either.
    assert fetch(client, {"DeviceID": UDI.serial})[0] == 403
    assert fetch(client, {**query, "Token": query["Token"][:-2] + "AA"})[0] == 403
    assert fetch(client, {**query, "Expires": str(int(query["Expires"]) + 1)})[0] == 403  # the expiry is signed
    assert fetch(client, {**query, "Token": "é" * 24})[0] == 403


def test_a_token_is_bound_to_its_device_and_its_request(guarded: Flask) -> None:
    add_profile(guarded)
    add_profile(guarded, "FOC2001X0CD")
    client = guarded.test_client()
    config = config_request(client)
    query = query_of(config.location)
    # Another device's configuration with this device's token: refused before anything is looked up.
    status, text = fetch(client, {**query, "DeviceID": "FOC2001X0CD"})
    assert status == 403 and "not valid" in text
    # Once the device has answered the request, its URL serves nothing, though the token has not expired.
    assert isinstance(answer(client, config), Bye)
    assert isinstance(ask(client, "D-3"), CliConfigRequest)
    assert fetch(client, query)[0] == 404


def test_asking_again_gives_a_url_for_the_same_request_that_works_too(guarded: Flask) -> None:
    add_profile(guarded)
    client = guarded.test_client()
    first = query_of(config_request(client).location)
    time.sleep(1.1)  # a new second: a newly signed expiry
    again = ask(client, "D-3")
    assert isinstance(again, ConfigUpgradeRequest)
    second = query_of(again.location)
    assert second["Identifier"] == first["Identifier"] and second["Token"] != first["Token"]
    assert fetch(client, first)[0] == fetch(client, second)[0] == 200


def test_an_expired_url_is_refused_with_the_reason(guarded: Flask) -> None:
    with guarded.app_context():
        settings = current_settings()
        issued = time.time() - settings.config_url_token_lifetime - 5
        old = url_tokens.grant(settings, UDI.serial, "job1-1-abc", now=issued)
        assert url_tokens.refusal(settings, UDI.serial, "job1-1-abc", old["Expires"], old["Token"],
                                  now=issued + 10) is None
        reason = url_tokens.refusal(settings, UDI.serial, "job1-1-abc", old["Expires"], old["Token"])
    assert reason is not None and "expired" in reason


def test_an_unknown_serial_without_a_token_is_not_recorded(guarded: Flask, app: Flask) -> None:
    client = guarded.test_client()
    assert fetch(client, {"DeviceID": "NEW123"})[0] == 403
    with guarded.app_context():
        assert db.session.scalar(select(func.count()).select_from(Device)) == 0
    # The control: with tokens off, the same request records the device (and finds no configuration for it).
    assert fetch(app.test_client(), {"DeviceID": "NEW123"})[0] == 404
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Device)) == 1


def test_prime_config_push_and_the_cns_pull_carry_working_tokens(guarded: Flask) -> None:
    from pnp_integrated.cns.provision import config_url

    add_profile(guarded, "CNS-1")
    client = guarded.test_client()
    with guarded.app_context():
        pushed = query_of(own_config_url("CNS-1"))
        pulled = query_of(config_url(current_settings(), "CNS-1", "job9-1-abc"))
    assert {"Expires", "Token"} <= set(pushed) and "Identifier" not in pushed
    assert fetch(client, pushed) == (200, "hostname CNS-1\n")
    assert {"Expires", "Token", "Identifier"} <= set(pulled)
    # Signed, but no such pending request: not found (the token alone serves nothing).
    assert fetch(client, pulled)[0] == 404
    assert fetch(client, {"DeviceID": "CNS-1"})[0] == 403


def test_the_other_node_of_a_pair_and_a_rotated_key_accept_the_url(app_factory: Callable[..., Flask],
                                                                   tmp_path: Path) -> None:
    keys = tmp_path / "shared-profile-keys.json"
    one = app_factory(config_url_tokens=True, profile_keys_file=str(keys))
    two = app_factory(config_url_tokens=True, profile_keys_file=str(keys))
    alone = app_factory(config_url_tokens=True)
    for node in (one, two, alone):
        add_profile(node, "CNS-1")
    with one.app_context():
        query = query_of(own_config_url("CNS-1"))
    assert fetch(two.test_client(), query)[0] == 200
    assert fetch(alone.test_client(), query)[0] == 403  # a node with keys of its own does not
    with two.app_context():
        rotate(current_settings())
        query = query_of(own_config_url("CNS-1"))
    assert fetch(one.test_client(), query)[0] == 200


@pytest.mark.parametrize(("env", "setting"), [
    ({"PNP_DEVICE_CERT_REQUIRED": "true"}, "device_cert_required"),
    ({"PNP_CONFIG_URL_TOKEN_LIFETIME": "10"}, "config_url_token_lifetime"),
    ({"PNP_DEVICE_CA_FILE": "/nonexistent/sudi.pem"}, "device_ca_file"),
])
def test_wrong_settings_say_what_to_change(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=env)
    assert any(setting.upper() in problem or setting in problem for problem in raised.value.problems)
