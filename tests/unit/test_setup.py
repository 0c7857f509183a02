"""``pnpp setup`` / ``pnpp setup advance``: answers typed on stdin become the TOML file the gateway then loads."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pnp_integrated.cli import main
from pnp_integrated.config import ConfigError, load_settings
from pnp_integrated.credentials import BrokerCredentials, gateway_credentials, store_gateway_credentials
from pnp_integrated.devsim.node import node_environment, node_settings
from pnp_integrated.listeners import bind_socket
from pnp_integrated.prime.server import PrimeProcess
from tests.client_certificates import issue_client_pki

PNPP = str(Path(sys.executable).with_name("pnpp"))


def run(args: list[str], answers: str = "", health_port: int = 1, **env: str) -> tuple[int, str]:
    # Health port 1: no Prime answers there, so detection reports nothing unless a test starts one.
    result = CliRunner().invoke(main, ["setup", *args], input=answers,
                                env={"PNP_HEALTH_PORT": str(health_port), **env})
    return result.exit_code, result.output


def test_answers_on_stdin_write_a_config_the_gateway_loads(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    # Integrated mode, Prime's HA mode and VIP, no broker login (none yet), write.
    code, out = run(["--config", str(path)], answers="integrated\nvip\n198.51.100.7\n\ny\n")
    assert code == 0, out
    assert "cannot be detected" in out
    assert "follow the virtual IP 198.51.100.7" in out
    settings = load_settings(environ={"PNP_CONFIG": str(path)})
    assert (settings.ha_mode, settings.vip) == ("vip", "198.51.100.7")


def test_a_wrong_address_is_asked_again(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    code, out = run(["--config", str(path)], answers="integrated\nvip\nnot-an-ip\n192.0.2.44\n\ny\n")
    assert code == 0, out
    assert "'not-an-ip' is not an IP address" in out
    assert tomllib.loads(path.read_text())["vip"] == "192.0.2.44"


def test_different_ip_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    code, out = run(["--config", str(path)], answers="integrated\ndifferent-ip\nn\n")
    assert code == 2
    assert "not supported by the integrated PnP gateway" in out and "standalone PnP gateway" in out
    assert not path.exists()
    code, out = run(["--config", str(path), "--ha-mode", "different-ip", "--yes"])
    assert code == 2 and "standalone PnP gateway" in out and not path.exists()


def test_different_ip_from_the_environment_is_refused_as_the_flag_is(tmp_path: Path) -> None:
    # PNP_HA_MODE overrides the file at run time, so writing ha_mode = "none" would not change what runs.
    path = tmp_path / "gw.toml"
    result = CliRunner().invoke(main, ["setup", "--config", str(path), "--yes"],
                                env={"PNP_HEALTH_PORT": "1", "PNP_HA_MODE": "different-ip"})
    assert result.exit_code == 2, result.output
    assert "ha_mode = different-ip comes from PNP_HA_MODE" in result.output
    assert "standalone PnP gateway" in result.output and not path.exists()


def test_declining_writes_nothing_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('vip = "192.0.2.1"\nworkers = 3\n')
    code, out = run(["--config", str(path)], answers="integrated\nnone\n192.0.2.99\n\nn\n")
    assert code == 1 and "Nothing was written" in out
    assert tomllib.loads(path.read_text()) == {"vip": "192.0.2.1", "workers": 3}


def test_flags_alone_keep_other_settings_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('workers = 3\nnode_name = "prime-a"\n')
    code, out = run(["--config", str(path), "--ha-mode", "vip", "--vip", "203.0.113.5", "--yes"])
    assert code == 0, out
    assert tomllib.loads(path.read_text()) == {"ha_mode": "vip", "vip": "203.0.113.5", "workers": 3,
                                               "node_name": "prime-a"}
    code, out = run(["--config", str(path), "--vip", "203.0.113.500", "--yes"])
    assert code == 2 and "not an IP address" in out


def test_advance_asks_every_setting(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    answers = "\n".join([
        "integrated", "vip", "10.20.0.100",  # mode, HA mode, VIP
        "prime-b", "10.20.0.12", str(tmp_path / "data"), "postgresql+psycopg://pnp@10.20.0.1/pnp",
        "8080", "8443", "21010", "4", "1.3",  # no health port question: PNP_HEALTH_PORT is set
        "",  # no client certificate for the broker, so no key is asked for
        "gw-b", "passcode-of-gw-b", "passcode-of-gw-b",  # the broker login (typed hidden, twice)
        "y",
    ]) + "\n"
    code, out = run(["advance", "--config", str(path)], answers=answers)
    assert code == 0, out
    assert "passcode-of-gw-b" not in out
    assert gateway_credentials(load_settings({"data_dir": str(tmp_path / "data")}, environ={})) == \
        BrokerCredentials("gw-b", "passcode-of-gw-b")
    assert "health_port = 1 comes from PNP_HEALTH_PORT, which overrides the file" in out
    settings = load_settings(environ={"PNP_CONFIG": str(path)})
    assert (settings.node_name, settings.node_addr, settings.http_port, settings.cns_port_base) == (
        "prime-b", "10.20.0.12", 8080, 21010)
    assert (settings.database_url, settings.workers, settings.tls_min_version) == (
        "postgresql+psycopg://pnp@10.20.0.1/pnp", 4, "1.3")


def test_advance_reports_settings_that_do_not_fit_together(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    code, out = run(["advance", "--config", str(path), "--yes", "--ha-mode", "none", "--vip", "192.0.2.1",
                     "--http-port", "11011", "--cns-port-base", "11010"])
    assert code == 2 and "collides with the CNS ports" in out and "Traceback" not in out
    assert not path.exists()


# ---- the gateway's broker login ------------------------------------------------------------------------------------


def stored(data_dir: Path) -> tuple[dict[str, str], int]:
    """The broker credentials file of ``data_dir``: its JSON content and its permission bits."""
    path = data_dir / "secrets" / "broker-credentials.json"
    return json.loads(path.read_text()), path.stat().st_mode & 0o777


def test_a_node_whose_prime_is_elsewhere_is_asked_for_its_broker_login(tmp_path: Path) -> None:
    path, data = tmp_path / "gw.toml", tmp_path / "data"
    # A second passcode that differs from the first is asked again, hidden both times.
    answers = ("integrated\nnone\n192.0.2.50\ngw-7\nfirst-typing-1\nother-typing-2\nthe-passcode-7\nthe-passcode-7"
               "\ny\n")
    code, out = run(["--config", str(path)], answers=answers, PNP_DATA_DIR=str(data))
    assert code == 0, out
    assert "do not match" in out
    assert stored(data) == ({"login": "gw-7", "passcode": "the-passcode-7"}, 0o600)
    assert "the-passcode-7" not in out and "typing" not in out
    assert f"Stored the gateway's broker login 'gw-7' in {data / 'secrets' / 'broker-credentials.json'}" in out
    assert "passcode" not in path.read_text()  # the TOML file holds no secret


def test_an_invalid_login_is_refused_with_a_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out = run(["--config", str(tmp_path / "gw.toml")], PNP_DATA_DIR=str(data),
                    answers="integrated\nnone\n192.0.2.50\nbad login!\ngw-7\npasscode-7-ok\npasscode-7-ok\ny\n")
    assert code == 0, out
    assert "'bad login!' is not a broker login: use 1-64 letters, digits and . _ @ -" in out
    assert stored(data)[0]["login"] == "gw-7"
    passcode = tmp_path / "passcode"
    passcode.write_text("passcode-of-gw\n")
    for login in ("bad login!", "-starts-with-a-dash", "x" * 65):
        code, out = run(["--config", str(tmp_path / "other.toml"), "--yes", "--broker-login", login,
                         "--broker-passcode-file", str(passcode)], PNP_DATA_DIR=str(tmp_path / "other"))
        assert code == 2 and f"--broker-login: {login!r} is not a broker login" in out
        assert not (tmp_path / "other.toml").exists() and not (tmp_path / "other").exists()


def test_unattended_the_passcode_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    passcode = tmp_path / "passcode"
    passcode.write_text("passcode-from-a-file\n")
    code, out = run(["--config", str(tmp_path / "a.toml"), "--yes", "--vip", "192.0.2.50", "--broker-login", "gw-a",
                     "--broker-passcode-file", str(passcode)], PNP_DATA_DIR=str(tmp_path / "a"))
    assert code == 0, out
    assert stored(tmp_path / "a") == ({"login": "gw-a", "passcode": "passcode-from-a-file"}, 0o600)
    code, out = run(["--config", str(tmp_path / "b.toml"), "--yes", "--broker-login", "gw-b"],
                    PNP_DATA_DIR=str(tmp_path / "b"), PNP_BROKER_PASSCODE="passcode-from-the-env")
    assert code == 0, out
    assert stored(tmp_path / "b") == ({"login": "gw-b", "passcode": "passcode-from-the-env"}, 0o600)
    assert "passcode-from" not in out
    # PNP_BROKER_CREDENTIALS_FILE decides where, as it does for the gateway.
    elsewhere = tmp_path / "elsewhere.json"
    code, out = run(["--config", str(tmp_path / "c.toml"), "--yes", "--broker-login", "gw-c"],
                    PNP_DATA_DIR=str(tmp_path / "c"), PNP_BROKER_PASSCODE="passcode-of-gw-c",
                    PNP_BROKER_CREDENTIALS_FILE=str(elsewhere))
    assert code == 0, out
    assert json.loads(elsewhere.read_text())["login"] == "gw-c" and elsewhere.stat().st_mode & 0o777 == 0o600


def test_unattended_a_login_without_its_passcode_is_refused(tmp_path: Path) -> None:
    code, out = run(["--config", str(tmp_path / "gw.toml"), "--yes", "--broker-login", "gw-7"],
                    PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 2 and "--broker-login 'gw-7' needs its passcode: --broker-passcode-file" in out
    assert not (tmp_path / "gw.toml").exists() and not (tmp_path / "data").exists()


def test_with_yes_and_no_login_the_stored_one_is_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = load_settings({"data_dir": str(data)}, environ={})
    store_gateway_credentials(settings, BrokerCredentials("gw-old", "the-old-passcode"))
    before = (data / "secrets" / "broker-credentials.json").read_text()
    code, out = run(["--config", str(tmp_path / "gw.toml"), "--yes", "--vip", "192.0.2.50"], PNP_DATA_DIR=str(data))
    assert code == 0, out
    assert (data / "secrets" / "broker-credentials.json").read_text() == before
    # Asked, an empty answer keeps it as well.
    code, out = run(["--config", str(tmp_path / "gw.toml")], answers="integrated\nnone\n192.0.2.50\n\ny\n",
                    PNP_DATA_DIR=str(data))
    assert code == 0, out
    assert "now 'gw-old'" in out and "empty: keep the stored one" in out
    assert (data / "secrets" / "broker-credentials.json").read_text() == before


def test_a_node_with_its_own_prime_is_not_asked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The loopback VIP: the broker the gateway follows is its own node's, whose `pnpp run` enrols it.
    code, out = run(["--config", str(tmp_path / "gw.toml")], answers="integrated\nnone\n127.0.0.1\ny\n",
                    PNP_DATA_DIR=str(data))
    assert code == 0, out
    assert "broker login" not in out and not (data / "secrets").exists()


def test_declining_stores_no_login(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out = run(["--config", str(tmp_path / "gw.toml")], PNP_DATA_DIR=str(data),
                    answers="integrated\nnone\n192.0.2.50\ngw-7\npasscode-of-gw-7\npasscode-of-gw-7\nn\n")
    assert code == 1 and "Nothing was written" in out
    assert not (data / "secrets" / "broker-credentials.json").exists()


def test_advance_records_the_broker_client_certificate(tmp_path: Path) -> None:
    pki, other = issue_client_pki(tmp_path / "pki"), issue_client_pki(tmp_path / "other", "other")
    path = tmp_path / "gw.toml"
    code, out = run(["advance", "--config", str(path), "--yes", "--broker-client-cert-file", str(pki.cert),
                     "--broker-client-key-file", str(pki.key)], PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 0, out
    settings = load_settings(environ={"PNP_CONFIG": str(path)})
    assert (settings.broker_client_cert_file, settings.broker_client_key_file) == (str(pki.cert), str(pki.key))
    code, out = run(["advance", "--config", str(tmp_path / "bad.toml"), "--yes", "--broker-client-cert-file",
                     str(pki.cert), "--broker-client-key-file", str(other.key)], PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 2 and "KEY_VALUES_MISMATCH" in out and not (tmp_path / "bad.toml").exists()
    with pytest.raises(ConfigError):  # what was refused is what the gateway would refuse
        load_settings({"broker_client_cert_file": str(pki.cert), "broker_client_key_file": str(other.key)},
                      environ={})
    # Asked: a certificate, then its key.
    code, out = run(["advance", "--config", str(tmp_path / "asked.toml")], PNP_DATA_DIR=str(tmp_path / "data"),
                    answers="\n".join(["integrated", "none", "127.0.0.1", "n1", "", "", "8080", "8443", "21010", "2",
                                        "1.2", str(pki.cert), str(pki.key), "", "y"]) + "\n")  # data dir: PNP_DATA_DIR
    assert code == 0, out
    asked = tomllib.loads((tmp_path / "asked.toml").read_text())
    assert (asked["broker_client_cert_file"], asked["broker_client_key_file"]) == (str(pki.cert), str(pki.key))


@pytest.fixture
def prime_in_ha(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real simulated Prime on this host, active in a VIP HA pair."""
    settings = node_settings(tmp_path / "prime", ha_mode="vip", vip="127.0.0.1", node_name="prime-a")
    env = node_environment(settings)
    prime = PrimeProcess(load_settings(settings, environ={}), env=env, stderr=subprocess.DEVNULL)
    prime.start()
    try:
        yield {k: str(v) for k, v in settings.items()}
    finally:
        prime.stop()


def test_detects_the_colocated_prime_ha_mode_and_vip(prime_in_ha: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    env = node_environment({"health_port": prime_in_ha["health_port"]})
    # Pressing Enter everywhere accepts what was detected.
    done = subprocess.run([PNPP, "setup", "--config", str(path)], input="\n\n\n\n", env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prime-a (primary, active); HA mode: vip; virtual IP: 127.0.0.1" in done.stdout
    assert tomllib.loads(path.read_text()) == {"ha_mode": "vip", "vip": "127.0.0.1"}


# ---- standalone mode ------------------------------------------------------------------------------------------------


def test_standalone_asks_prime_addresses_and_writes_a_single_gateway_that_loads(tmp_path: Path) -> None:
    path, data = tmp_path / "gw.toml", tmp_path / "data"
    answers = "\n".join([
        "standalone", "different-ip", "10.0.0.11", "10.0.0.12",  # mode, Prime HA, its primary and secondary
        "n", "198.51.100.9",  # Configure HA: no; the gateway's own address
        "gw-s", "passcode-of-gw-s", "passcode-of-gw-s",  # its login on Prime's broker
        "y",
    ]) + "\n"
    code, out = run(["--config", str(path)], answers=answers, PNP_DATA_DIR=str(data))
    assert code == 0, out
    assert "Prime primary server's address" in out and "Prime secondary server's address" in out
    assert "Configure HA (y/n)" in out
    settings = load_settings(environ={"PNP_CONFIG": str(path)})
    assert (settings.mode, settings.ha_mode, settings.prime_addresses, settings.vip, settings.gateway_in_pair) == (
        "standalone", "different-ip", ["10.0.0.11", "10.0.0.12"], "198.51.100.9", False)
    assert stored(data) == ({"login": "gw-s", "passcode": "passcode-of-gw-s"}, 0o600)
    # Prime's HA with one virtual IP: no secondary address is asked, none stays in the file.
    code, out = run(["--config", str(path), "--yes", "--ha-mode", "vip", "--prime-address", "10.0.0.10"],
                    PNP_DATA_DIR=str(data))
    assert code == 0, out
    assert "prime_secondary_address" not in tomllib.loads(path.read_text())
    assert load_settings(environ={"PNP_CONFIG": str(path)}).prime_addresses == ["10.0.0.10"]


def test_integrated_next_to_different_ip_prime_ha_offers_standalone_mode(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    answers = "integrated\ndifferent-ip\ny\n10.0.0.11\n10.0.0.12\nn\n198.51.100.9\n\ny\n"
    code, out = run(["--config", str(path)], answers=answers, PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 0, out
    assert "not supported by the integrated PnP gateway" in out and "standalone mode instead" in out
    settings = load_settings(environ={"PNP_CONFIG": str(path)})
    assert (settings.mode, settings.ha_mode, settings.prime_addresses) == (
        "standalone", "different-ip", ["10.0.0.11", "10.0.0.12"])
    # Unattended there is nobody to take the offer: refused, with the command that sets it up.
    other = tmp_path / "other.toml"
    code, out = run(["--config", str(other), "--yes", "--ha-mode", "different-ip"])
    assert code == 2 and "pnpp setup --mode standalone --ha-mode different-ip" in out and not other.exists()


def test_a_pair_asks_its_settings_and_writes_nothing_while_the_secondary_cannot_be_reached(tmp_path: Path) -> None:
    path, data = tmp_path / "gw.toml", tmp_path / "data"
    answers = "\n".join([
        "standalone", "vip", "10.0.0.10", "y",  # Prime HA with a virtual IP; Configure HA
        "192.0.2.80", "pnp-gw.example.net", "192.0.2.11", "127.0.0.1",  # VIP, its name, own and secondary's address
        "postgresql+psycopg://pnp@127.0.0.1:1/pnp",  # the database both share
        "1", "90",  # automatic failback, then its hold-down
        "gw-a", "passcode-of-gw-a", "passcode-of-gw-a",
    ]) + "\n"
    code, out = run(["--config", str(path), "--secondary-port", "1"], answers=answers, PNP_DATA_DIR=str(data))
    assert code == 2, out
    for question in ("Gateway virtual IP", "Virtual host name", "This gateway's own address",
                     "Secondary gateway's address", "Database both gateways share", "Failback: 0 = manual",
                     "Hold-down: seconds the primary must stay healthy"):
        assert question in out, question
    assert "no TLS connection to the secondary at https://127.0.0.1:1" in out and "nothing was written" in out
    assert not path.exists() and not (data / "secrets").exists()


@pytest.mark.parametrize(("flags", "refusal"), [
    (["--vip", "192.0.2.11"], "the gateway pair's VIP must differ from either gateway's own address"),
    (["--database-url", f"sqlite:////{'x'}/pnp.sqlite3"], "share one PostgreSQL database"),
    (["--secondary-address", "192.0.2.11"], "is this gateway's own address"),
    (["--virtual-host-name", "not a name"], "'not a name' is not a host name"),
])
def test_pair_settings_that_cannot_work_are_refused_before_anything_is_sent(
        tmp_path: Path, flags: list[str], refusal: str) -> None:
    pair = {"--mode": "standalone", "--ha-mode": "none", "--prime-address": "10.0.0.10", "--gateway-ha": "pair",
            "--vip": "192.0.2.80", "--node-address": "192.0.2.11", "--secondary-address": "192.0.2.12",
            "--database-url": "postgresql+psycopg://pnp@127.0.0.1:1/pnp"}
    pair.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    args = [item for option in pair.items() for item in option]
    code, out = run(["--config", str(tmp_path / "gw.toml"), "--yes", *args], PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 2 and refusal in out, out
    assert "no TLS connection" not in out and not (tmp_path / "gw.toml").exists()


def test_unattended_a_new_secondary_needs_its_fingerprint(tmp_path: Path) -> None:
    # Something must answer TLS for the certificate to be shown: this test's own TLS listener.
    pki = issue_client_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    listener = bind_socket("127.0.0.1", 0, reuse_port=False, setting="test")
    port = listener.getsockname()[1]

    def accept() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (OSError, ssl.SSLError):
                conn.close()

    threading.Thread(target=accept, daemon=True).start()
    base = ["--config", str(tmp_path / "gw.toml"), "--yes", "--mode", "standalone", "--ha-mode", "none",
            "--prime-address", "10.0.0.10", "--gateway-ha", "pair", "--vip", "192.0.2.80", "--node-address",
            "192.0.2.11", "--secondary-address", "127.0.0.1", "--secondary-port", str(port), "--database-url",
            "postgresql+psycopg://pnp@127.0.0.1:1/pnp"]
    code, out = run(base, PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 2, out
    assert "The secondary at https://127.0.0.1:" in out and "SHA-256 " in out
    assert "pinned by --secondary-fingerprint" in out and not (tmp_path / "gw.toml").exists()
    code, out = run([*base, "--secondary-fingerprint", "12:34"], PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 2 and "'12:34' is not a SHA-256 fingerprint" in out
    listener.close()


def test_setup_on_the_secondary_points_at_the_primary(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('mode = "standalone"\nprime_address = "10.0.0.10"\ngateway_ha = "pair"\ngateway_role = "secondary"'
                    '\ngateway_peer = "192.0.2.11"\nnode_address = "192.0.2.12"\nvip = "192.0.2.80"\n')
    before = path.read_text()
    code, out = run(["--config", str(path)], answers="\n")
    assert code == 2 and "the secondary of the gateway pair with 192.0.2.11" in out
    assert "`pnpp setup` on 192.0.2.11" in out and path.read_text() == before


def test_removing_ha_without_the_secondary_says_what_devices_need(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('mode = "standalone"\nprime_address = "10.0.0.10"\nvip = "192.0.2.80"\ngateway_ha = "pair"\n'
                    'gateway_role = "primary"\ngateway_peer = "192.0.2.12"\nnode_address = "192.0.2.11"\n'
                    'database_url = "postgresql+psycopg://pnp@127.0.0.1:1/pnp"\ncns_port_base = 11010\n')
    args = ["--config", str(path), "--yes", "--gateway-ha", "none", "--vip", "192.0.2.11"]
    code, out = run(args, PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 2 and "no pinned certificate of the secondary 192.0.2.12" in out and "pair" in path.read_text()
    code, out = run([*args, "--secondary-unreachable"], PNP_DATA_DIR=str(tmp_path / "data"))
    assert code == 0, out
    assert "stop it on its host before it takes the VIP 192.0.2.80" in out
    assert "names the pair's VIP 192.0.2.80 needs it to name this gateway instead: `cns event 192.0.2.11 11011 " \
           "keepalive 60 3`" in out
    assert "names the secondary 192.0.2.12 (e.g. as its backup event gateway) needs that line removed" in out
    settings = load_settings(environ={"PNP_CONFIG": str(path)})
    assert (settings.gateway_ha, settings.vip, settings.node_address, settings.gateway_peer) == (
        "none", "192.0.2.11", "", "")
