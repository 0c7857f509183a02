"""Settings validation: every bad setting is refused with a message that names the variable to change."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from pnp_integrated.config import DIFFERENT_IP_REFUSAL, ConfigError, Settings, load_settings, tls_floor
from pnp_integrated.tls import ensure_certificates, server_context


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A minimal valid environment: a private data dir, everything else at its default."""
    return {"PNP_DATA_DIR": str(tmp_path / "data")}


def refused(environ: dict[str, str], overrides: dict[str, Any] | None = None) -> str:
    """The ConfigError message for these settings (the test fails if they are accepted)."""
    with pytest.raises(ConfigError) as info:
        load_settings(overrides, environ=environ)
    return str(info.value)


def test_defaults_are_the_documented_ports(env: dict[str, str]) -> None:
    s = load_settings(environ=env)
    assert (s.http_port, s.https_port, s.monitoring_port) == (80, 443, 11010)
    assert (s.dispatcher_plain_port, s.dispatcher_tls_port) == (11011, 11012)
    assert s.gateway_plain_ports == [11013, 11015, 11017, 11019, 11021]
    assert s.gateway_tls_ports == [11014, 11016, 11018, 11020, 11022]
    assert tls_floor(s.tls_min_version) == "1.2"


# ---- ports ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PNP_HTTP_PORT", "70000", "70000 is not a TCP port (1-65535)"),
        ("PNP_HTTPS_PORT", "0", "0 is not a TCP port (1-65535)"),
        ("PNP_BROKER_PORT", "-1", "-1 is not a TCP port"),
        ("PNP_HTTP_PORT", "eighty", "'eighty' is not a valid number"),
        ("PNP_HTTP_PORT", "8_080", "'8_080' is not a valid number"),
        ("PNP_HEALTH_PORT", "80.5", "'80.5' is not a valid number"),
    ],
)
def test_bad_port_names_its_variable(env: dict[str, str], variable: str, value: str, expected: str) -> None:
    message = refused({**env, variable: value})
    assert variable in message
    assert expected in message


def test_two_services_on_one_port_are_refused(env: dict[str, str]) -> None:
    message = refused({**env, "PNP_HTTP_PORT": "8443", "PNP_HTTPS_PORT": "8443"})
    assert "PNP_HTTPS_PORT: port 8443 is already used by PNP_HTTP_PORT" in message


def test_port_inside_the_cns_range_is_refused(env: dict[str, str]) -> None:
    message = refused({**env, "PNP_HTTPS_PORT": "11016"})
    assert "PNP_HTTPS_PORT: port 11016 collides with the CNS ports 11010-11022" in message


@pytest.mark.parametrize("base", ["65524", "65535", "0"])
def test_cns_port_base_must_leave_room_for_13_ports(env: dict[str, str], base: str) -> None:
    message = refused({**env, "PNP_CNS_PORT_BASE": base})
    assert f"PNP_CNS_PORT_BASE: {base} leaves no room for the 13 CNS ports" in message
    assert "1-65523" in message


def test_highest_cns_port_base_is_accepted(env: dict[str, str]) -> None:
    assert load_settings(environ={**env, "PNP_CNS_PORT_BASE": "65523"}).gateway_ports[-1] == 65535


def test_every_problem_is_reported_at_once(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={**env, "PNP_HTTP_PORT": "0", "PNP_VIP": "gateway", "PNP_WORKERS": "0"})
    assert len(info.value.problems) == 3
    assert [p.split(":")[0] for p in info.value.problems] == ["PNP_HTTP_PORT", "PNP_VIP", "PNP_WORKERS"]


# ---- addresses and HA ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value"), [("PNP_VIP", "gateway.example.com"), ("PNP_VIP", "10.0.0.256"),
                                                 ("PNP_NODE_ADDRESS", "node-a")])
def test_addresses_must_be_ip_addresses(env: dict[str, str], variable: str, value: str) -> None:
    assert f"{variable}: {value!r} is not an IP address" in refused({**env, variable: value})


def test_ipv6_vip_is_accepted(env: dict[str, str]) -> None:
    assert load_settings(environ={**env, "PNP_VIP": "fd00::10"}).node_addr == "fd00::10"


def test_unknown_ha_mode_lists_the_modes(env: dict[str, str]) -> None:
    message = refused({**env, "PNP_HA_MODE": "active-active"})
    assert "PNP_HA_MODE: 'active-active' is not one of: none, vip, different-ip" in message


def test_ha_with_different_ips_is_refused_naming_the_limitation_and_the_alternative(env: dict[str, str]) -> None:
    message = refused({**env, "PNP_HA_MODE": "different-ip"})
    assert "PNP_HA_MODE" in message
    assert DIFFERENT_IP_REFUSAL in message
    assert "not supported by the integrated PnP gateway" in message
    assert "standalone PnP gateway" in message
    assert "PNP_HA_MODE=vip" in message


def test_ha_with_a_virtual_ip_is_accepted(env: dict[str, str]) -> None:
    s = load_settings(environ={**env, "PNP_HA_MODE": "vip", "PNP_VIP": "192.0.2.10", "PNP_NODE_ADDRESS": "192.0.2.11"})
    assert (s.ha_mode, s.vip, s.node_addr) == ("vip", "192.0.2.10", "192.0.2.11")


# ---- TLS ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["ssl3", "sslv3", "SSLv3", "3.0", "SSLv2", "2"])
def test_sslv3_can_never_be_enabled(env: dict[str, str], value: str) -> None:
    message = refused({**env, "PNP_TLS_MIN_VERSION": value})
    assert f"PNP_TLS_MIN_VERSION: {value!r}: SSLv2/SSLv3 are broken (POODLE) and can never be enabled" in message


@pytest.mark.parametrize("value", ["1.4", "tlsv1.4", "high", "1"])
def test_unknown_tls_version_is_refused(env: dict[str, str], value: str) -> None:
    message = refused({**env, "PNP_TLS_MIN_VERSION": value})
    assert f"PNP_TLS_MIN_VERSION: {value!r} is not a TLS version; use 1.2 (default), 1.3, 1.1 or 1.0" in message


@pytest.mark.parametrize(("value", "floor"), [("1.0", "1.0"), ("1.1", "1.1"), ("TLSv1.1", "1.1"), ("tls1.3", "1.3")])
def test_old_tls_versions_are_an_opt_in(env: dict[str, str], value: str, floor: str) -> None:
    s = load_settings(environ={**env, "PNP_TLS_MIN_VERSION": value})
    assert tls_floor(s.tls_min_version) == floor


@pytest.mark.parametrize(("value", "floor"), [("1.0", ssl.TLSVersion.TLSv1), ("1.2", ssl.TLSVersion.TLSv1_2),
                                              ("1.3", ssl.TLSVersion.TLSv1_3)])
def test_server_context_follows_the_floor_and_never_allows_sslv3(tmp_path: Path, value: str,
                                                                floor: ssl.TLSVersion) -> None:
    s = load_settings({"data_dir": tmp_path / "data", "tls_min_version": value}, environ={})
    s.data_dir.mkdir()
    ctx = server_context(s)
    assert ctx.minimum_version == floor
    assert ctx.options & ssl.OP_NO_SSLv3  # SSLv2 is gone from OpenSSL 3 altogether


def test_only_a_certificate_without_its_key_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    cert = tmp_path / "server.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    message = refused({**env, "PNP_TLS_CERT_FILE": str(cert)})
    assert "supply both PNP_TLS_CERT_FILE and PNP_TLS_KEY_FILE" in message
    message = refused({**env, "PNP_TLS_KEY_FILE": str(cert)})
    assert "supply both PNP_TLS_CERT_FILE and PNP_TLS_KEY_FILE" in message


def test_missing_certificate_file_is_named(env: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_text("key")
    message = refused({**env, "PNP_TLS_CERT_FILE": str(tmp_path / "nope.pem"), "PNP_TLS_KEY_FILE": str(key)})
    assert f"PNP_TLS_CERT_FILE: {tmp_path / 'nope.pem'}: no such file" in message


def test_certificate_that_does_not_load_is_refused_before_any_listener(env: dict[str, str], tmp_path: Path) -> None:
    garbage = tmp_path / "server.pem"
    garbage.write_text("not a certificate")
    message = refused({**env, "PNP_TLS_CERT_FILE": str(garbage), "PNP_TLS_KEY_FILE": str(garbage)})
    assert "PNP_TLS_CERT_FILE, PNP_TLS_KEY_FILE" in message
    assert "not a PEM certificate and its unencrypted private key" in message


def test_operator_certificate_and_key_are_accepted(tmp_path: Path) -> None:
    generated = ensure_certificates(Settings(data_dir=tmp_path / "gen"))
    s = load_settings(environ={"PNP_DATA_DIR": str(tmp_path / "data"), "PNP_TLS_CERT_FILE": str(generated.cert),
                               "PNP_TLS_KEY_FILE": str(generated.key)})
    assert s.tls_cert_file == str(generated.cert)


def test_mismatched_certificate_and_key_are_refused(tmp_path: Path) -> None:
    one = ensure_certificates(Settings(data_dir=tmp_path / "one"))
    other = ensure_certificates(Settings(data_dir=tmp_path / "other"))
    message = refused({"PNP_DATA_DIR": str(tmp_path / "data"), "PNP_TLS_CERT_FILE": str(one.cert),
                       "PNP_TLS_KEY_FILE": str(other.key)})
    assert "KEY_VALUES_MISMATCH" in message


# ---- other knobs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PNP_TLS_HANDSHAKE_TIMEOUT", "0", "must be a positive number of seconds"),
        ("PNP_TLS_HANDSHAKE_TIMEOUT", "nan", "must be a positive number of seconds"),
        ("PNP_DRAIN_TIMEOUT", "inf", "must be a positive number of seconds"),
        ("PNP_DB_DEAD_PEER_TIMEOUT", "-1", "must be a positive number of seconds"),
        ("PNP_RETENTION_DAYS", "0", "must be a positive number of days"),
        ("PNP_WORKERS", "0", "must be at least 1"),
        ("PNP_DISK_MIN_FREE_MB", "-5", "must be a number of MiB, 0 or more"),
        ("PNP_NEW_DEVICES_PER_SOURCE_PER_MINUTE", "-1", "must be 0 (no limit) or more"),
        ("PNP_CNS_PUBLISH_PER_MINUTE", "-1", "must be 0 (no limit) or more"),
        ("PNP_LOG_FORMAT", "xml", "'xml' is not one of: text, json"),
        ("PNP_DATABASE_URL", "pnp.sqlite3", "'pnp.sqlite3' is not a database URL"),
        ("PNP_DATABASE_URL", "mysql://pnp@db/pnp", "only SQLite and PostgreSQL databases are supported"),
    ],
)
def test_other_bad_settings_name_their_variable(env: dict[str, str], variable: str, value: str, expected: str) -> None:
    message = refused({**env, variable: value})
    assert f"{variable}: " in message or f"{variable} = " in message
    assert expected in message


def test_data_dir_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    message = refused({"PNP_DATA_DIR": str(blocker / "data")})
    assert f"PNP_DATA_DIR: {blocker} exists and is not a directory" in message


def test_unknown_override_is_refused(env: dict[str, str]) -> None:
    assert "unknown setting 'http_prot'" in refused(env, {"http_prot": 8080})


# ---- TOML file ----------------------------------------------------------------------------------------------------


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_toml_file_is_loaded_with_tables_flattened(env: dict[str, str], tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'http_port = 8080\nvip = "192.0.2.10"\n\n[tls]\nmin_version = "1.3"\n'
                                '\n[gateway]\ncns_port_base = 12010\n')
    s = load_settings(environ={**env, "PNP_CONFIG": str(toml)})
    assert (s.http_port, s.vip, s.tls_min_version, s.cns_port_base) == (8080, "192.0.2.10", "1.3", 12010)


def test_environment_wins_over_toml_and_overrides_win_over_both(env: dict[str, str], tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "http_port = 8080\nhttps_port = 8443\nworkers = 3\n")
    s = load_settings(environ={**env, "PNP_CONFIG": str(toml), "PNP_HTTP_PORT": "9080", "PNP_WORKERS": "4"})
    assert (s.http_port, s.https_port, s.workers) == (9080, 8443, 4)
    s = load_settings({"workers": 5}, environ={**env, "PNP_CONFIG": str(toml), "PNP_WORKERS": "4"})
    assert s.workers == 5


def test_empty_environment_variable_keeps_the_toml_value(env: dict[str, str], tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "http_port = 8080\n")
    assert load_settings(environ={**env, "PNP_CONFIG": str(toml), "PNP_HTTP_PORT": ""}).http_port == 8080


def test_unknown_toml_key_is_refused_naming_file_and_key(env: dict[str, str], tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "http_prot = 8080\n")
    message = refused({**env, "PNP_CONFIG": str(toml)})
    assert f"{toml}: unknown setting 'http_prot'" in message
    assert "http_port" in message  # the list of known settings shows the right spelling


def test_bad_value_in_toml_names_the_key_in_the_file(env: dict[str, str], tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'ha_mode = "different-ip"\nhttp_port = "eighty"\n')
    message = refused({**env, "PNP_CONFIG": str(toml)})
    assert f"ha_mode in {toml}: {DIFFERENT_IP_REFUSAL}" in message
    assert f"{toml}: http_port = 'eighty' is not a valid number" in message


def test_bad_toml_syntax_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "http_port = = 8080\n")
    message = refused({**env, "PNP_CONFIG": str(toml)})
    assert f"PNP_CONFIG={toml}: not valid TOML" in message
    assert "line 1" in message


def test_missing_toml_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    message = refused({**env, "PNP_CONFIG": str(tmp_path / "missing.toml")})
    assert f"PNP_CONFIG={tmp_path / 'missing.toml'}: file not found" in message


def test_directory_given_as_toml_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    message = refused({**env, "PNP_CONFIG": str(tmp_path)})
    assert f"PNP_CONFIG={tmp_path}: cannot read it" in message


def test_public_dict_masks_database_credentials(env: dict[str, str]) -> None:
    s = load_settings(environ={**env, "PNP_DATABASE_URL": "postgresql+psycopg://pnp:secret@db.example/pnp"})
    assert s.public_dict()["database_url"] == "postgresql+psycopg://***@db.example/pnp"
