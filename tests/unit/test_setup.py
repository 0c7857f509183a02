"""``pnpp setup`` / ``pnpp setup advance``: answers typed on stdin become the TOML file the gateway then loads."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pnp_integrated.cli import main
from pnp_integrated.config import load_settings
from pnp_integrated.devsim.node import node_environment, node_settings
from pnp_integrated.prime.server import PrimeProcess

PNPP = str(Path(sys.executable).with_name("pnpp"))


def run(args: list[str], answers: str = "", health_port: int = 1) -> tuple[int, str]:
    # Health port 1: no Prime answers there, so detection reports nothing unless a test starts one.
    result = CliRunner().invoke(main, ["setup", *args], input=answers, env={"PNP_HEALTH_PORT": str(health_port)})
    return result.exit_code, result.output


def test_answers_on_stdin_write_a_config_the_gateway_loads(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    code, out = run(["--config", str(path)], answers="vip\n198.51.100.7\ny\n")
    assert code == 0, out
    assert "cannot be detected" in out
    assert "follow the virtual IP 198.51.100.7" in out
    settings = load_settings(environ={"PNP_CONFIG": str(path)})
    assert (settings.ha_mode, settings.vip) == ("vip", "198.51.100.7")


def test_a_wrong_address_is_asked_again(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    code, out = run(["--config", str(path)], answers="vip\nnot-an-ip\n192.0.2.44\ny\n")
    assert code == 0, out
    assert "'not-an-ip' is not an IP address" in out
    assert tomllib.loads(path.read_text())["vip"] == "192.0.2.44"


def test_different_ip_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    code, out = run(["--config", str(path)], answers="different-ip\n")
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
    code, out = run(["--config", str(path)], answers="none\n192.0.2.99\nn\n")
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
        "vip", "10.20.0.100",  # HA mode, VIP
        "prime-b", "10.20.0.12", str(tmp_path / "data"), "postgresql+psycopg://pnp@10.20.0.1/pnp",
        "8080", "8443", "21010", "4", "1.3",  # no health port question: PNP_HEALTH_PORT is set
        "y",
    ]) + "\n"
    code, out = run(["advance", "--config", str(path)], answers=answers)
    assert code == 0, out
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
    done = subprocess.run([PNPP, "setup", "--config", str(path)], input="\n\n\n", env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "prime-a (primary, active); HA mode: vip; virtual IP: 127.0.0.1" in done.stdout
    assert tomllib.loads(path.read_text()) == {"ha_mode": "vip", "vip": "127.0.0.1"}
