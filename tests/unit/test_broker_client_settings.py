"""Broker client certificate settings: a certificate the gateway could not present, or a client CA the simulated
Prime could not load, stops start-up with a message naming the setting and what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from pnp_integrated.config import ConfigError, load_settings
from tests.client_certificates import ClientPki, issue_client_pki


@pytest.fixture
def pki(tmp_path: Path) -> ClientPki:
    return issue_client_pki(tmp_path / "pki")


def refused(tmp_path: Path, **environ: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"PNP_DATA_DIR": str(tmp_path / "data"), **environ})
    return str(info.value)


def test_a_certificate_and_its_key_are_accepted(tmp_path: Path, pki: ClientPki) -> None:
    s = load_settings(environ={"PNP_DATA_DIR": str(tmp_path / "data"), "PNP_BROKER_CLIENT_CERT_FILE": str(pki.cert),
                               "PNP_BROKER_CLIENT_KEY_FILE": str(pki.key), "PNP_BROKER_CLIENT_CA_FILE": str(pki.ca)})
    assert (s.broker_client_cert_file, s.broker_client_key_file, s.broker_client_ca_file) == (
        str(pki.cert), str(pki.key), str(pki.ca))


def test_nothing_set_asks_for_no_certificate(tmp_path: Path) -> None:
    s = load_settings(environ={"PNP_DATA_DIR": str(tmp_path / "data")})
    assert (s.broker_client_cert_file, s.broker_client_key_file, s.broker_client_ca_file) == ("", "", "")


@pytest.mark.parametrize("given", ["PNP_BROKER_CLIENT_CERT_FILE", "PNP_BROKER_CLIENT_KEY_FILE"])
def test_one_without_the_other_is_refused(tmp_path: Path, pki: ClientPki, given: str) -> None:
    message = refused(tmp_path, **{given: str(pki.cert if given.endswith("CERT_FILE") else pki.key)})
    missing = "PNP_BROKER_CLIENT_KEY_FILE" if given.endswith("CERT_FILE") else "PNP_BROKER_CLIENT_CERT_FILE"
    assert f"{missing}: supply both PNP_BROKER_CLIENT_CERT_FILE and PNP_BROKER_CLIENT_KEY_FILE" in message


def test_a_missing_file_is_named_with_its_setting(tmp_path: Path, pki: ClientPki) -> None:
    gone = tmp_path / "gone.pem"
    message = refused(tmp_path, PNP_BROKER_CLIENT_CERT_FILE=str(gone), PNP_BROKER_CLIENT_KEY_FILE=str(pki.key))
    assert f"PNP_BROKER_CLIENT_CERT_FILE: {gone}: no such file; fix the path" in message
    message = refused(tmp_path, PNP_BROKER_CLIENT_CA_FILE=str(gone))
    assert f"PNP_BROKER_CLIENT_CA_FILE: {gone}: no such file; fix the path" in message


def test_a_directory_is_not_a_readable_file(tmp_path: Path, pki: ClientPki) -> None:
    message = refused(tmp_path, PNP_BROKER_CLIENT_CERT_FILE=str(pki.cert), PNP_BROKER_CLIENT_KEY_FILE=str(tmp_path))
    assert f"PNP_BROKER_CLIENT_KEY_FILE: {tmp_path}: a directory, not a file" in message


def test_a_key_of_another_certificate_is_refused(tmp_path: Path, pki: ClientPki) -> None:
    other = issue_client_pki(tmp_path / "other", "other")
    message = refused(tmp_path, PNP_BROKER_CLIENT_CERT_FILE=str(pki.cert), PNP_BROKER_CLIENT_KEY_FILE=str(other.key))
    assert "PNP_BROKER_CLIENT_CERT_FILE, PNP_BROKER_CLIENT_KEY_FILE" in message
    assert "KEY_VALUES_MISMATCH" in message and "give the key that belongs to that certificate" in message


def test_a_client_ca_file_without_a_ca_certificate_is_refused(tmp_path: Path, pki: ClientPki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert f"PNP_BROKER_CLIENT_CA_FILE: {garbage}: not a PEM bundle of CA certificates" in refused(
        tmp_path, PNP_BROKER_CLIENT_CA_FILE=str(garbage))
    # A client's own certificate is no CA: nothing could chain to it.
    assert f"PNP_BROKER_CLIENT_CA_FILE: {pki.cert}: holds no CA certificate" in refused(
        tmp_path, PNP_BROKER_CLIENT_CA_FILE=str(pki.cert))


def test_a_toml_setting_is_named_by_its_key_and_file(tmp_path: Path, pki: ClientPki) -> None:
    other = issue_client_pki(tmp_path / "other", "other")
    config = tmp_path / "gw.toml"
    config.write_text(f'broker_client_cert_file = "{pki.cert}"\nbroker_client_key_file = "{other.key}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"PNP_CONFIG": str(config), "PNP_DATA_DIR": str(tmp_path / "data")})
    assert f"broker_client_cert_file in {config}, broker_client_key_file in {config}" in str(info.value)
