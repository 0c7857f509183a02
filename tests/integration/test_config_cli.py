"""Settings as an operator meets them: ``pnpp config show``, ``pnpp certs show`` and ``pnpp status`` in a shell."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pnp_integrated.devsim.node import PNPP, node_environment, node_settings


def pnpp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PNPP, *args], env=env, capture_output=True, text=True, timeout=60)


def test_config_show_merges_toml_and_environment(tmp_path: Path) -> None:
    toml = tmp_path / "gateway.toml"
    toml.write_text('vip = "192.0.2.10"\nworkers = 3\n[tls]\nmin_version = "1.3"\n')
    env = node_environment(node_settings(tmp_path / "data", workers=4,
                                         database_url="postgresql+psycopg://pnp:s3cret@db.example/pnp"))
    env["PNP_CONFIG"] = str(toml)
    result = pnpp(env, "config", "show")
    assert result.returncode == 0, result.stderr
    shown = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    assert shown["vip"] == "192.0.2.10"  # from the file
    assert shown["tls_min_version"] == "1.3"  # from a [tls] table
    assert shown["workers"] == "4"  # the environment wins over the file
    assert shown["database_url"] == "postgresql+psycopg://***@db.example/pnp"
    assert "s3cret" not in result.stdout


def test_config_show_refuses_bad_settings_with_exit_code_2(tmp_path: Path) -> None:
    env = node_environment(node_settings(tmp_path / "data", tls_min_version="sslv3", vip="gateway"))
    result = pnpp(env, "config", "show")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("pnpp: invalid configuration:\n")
    assert "  - PNP_TLS_MIN_VERSION: 'sslv3': SSLv2/SSLv3 are broken (POODLE) and can never be enabled" in result.stderr
    assert "  - PNP_VIP: 'gateway' is not an IP address" in result.stderr
    assert "Traceback" not in result.stderr


def test_certs_show_generates_a_certificate_for_the_vip(tmp_path: Path) -> None:
    env = node_environment(node_settings(tmp_path / "data", vip="192.0.2.10", node_address="192.0.2.11"))
    first = pnpp(env, "certs", "show")
    assert first.returncode == 0, first.stderr
    facts = {line[:18].strip(): line[18:].strip() for line in first.stdout.splitlines()}
    assert facts["subject"] == "CN=192.0.2.10"
    assert facts["generated"] == "True"
    assert {"192.0.2.10", "192.0.2.11", "localhost"} <= set(facts["subject_alt_names"].split(", "))
    assert (tmp_path / "data" / "certs" / "server.key").stat().st_mode & 0o077 == 0  # the key is private
    second = pnpp(env, "certs", "show")
    assert second.stdout == first.stdout  # generated once, then reused


def test_status_of_a_refused_ha_mode_says_refused(tmp_path: Path) -> None:
    env = node_environment(node_settings(tmp_path / "data", ha_mode="different-ip"))
    result = pnpp(env, "status")
    assert result.returncode == 1
    ha_row = next(line for line in result.stdout.splitlines() if line.startswith("PnP Gateway HA state"))
    assert "different-ip" in ha_row and "REFUSED" in ha_row and "standalone PnP gateway" in ha_row


def test_status_of_a_node_that_never_ran_says_so(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "data")
    result = pnpp(node_environment(settings), "status")
    assert result.returncode == 1
    system = next(line for line in result.stdout.splitlines() if line.startswith("System"))
    assert " DOWN " in system
    assert f"gateway not reachable at https://127.0.0.1:{settings['cns_port_base']}/status" in system
    assert f"no node has started with PNP_DATA_DIR={tmp_path / 'data'}" in system
