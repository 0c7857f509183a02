"""``pnpp ha failback`` where there is nothing it can do itself: each case names what the operator does instead."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pnp_integrated.cli import main

PAIR = {
    "PNP_MODE": "standalone", "PNP_PRIME_ADDRESS": "192.0.2.50", "PNP_VIP": "192.0.2.10",
    "PNP_NODE_ADDRESS": "192.0.2.11", "PNP_GATEWAY_HA": "pair", "PNP_GATEWAY_PEER": "192.0.2.12",
    "PNP_DATABASE_URL": "postgresql+psycopg://pnp@192.0.2.9/pnp",
}


def failback(tmp_path: Path, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["ha", "failback"], env={"PNP_DATA_DIR": str(tmp_path), **env})
    return result.exit_code, result.output


def test_the_integrated_gateway_names_prime_s_failback(tmp_path: Path) -> None:
    code, output = failback(tmp_path)
    assert code == 1 and "pnpp prime failback" in output


def test_a_single_standalone_gateway_has_nothing_to_fail_back(tmp_path: Path) -> None:
    code, output = failback(tmp_path, PNP_MODE="standalone", PNP_PRIME_ADDRESS="192.0.2.50")
    assert code == 1 and "no HA peer" in output


def test_with_keepalived_it_says_to_restart_keepalived_on_the_secondary(tmp_path: Path) -> None:
    code, output = failback(tmp_path, **PAIR, PNP_GATEWAY_VIP_MOVER="keepalived")
    assert code == 1 and "restart keepalived on the secondary" in output


def test_with_the_builtin_mover_and_no_watch_running_it_says_so(tmp_path: Path) -> None:
    settings = {**PAIR, "PNP_GATEWAY_VIP_MOVER": "builtin", "PNP_GATEWAY_VIP_INTERFACE": "lo",
                "PNP_NODE_ADDRESS": "127.0.0.1", "PNP_HEALTH_PORT": "1"}
    code, output = failback(tmp_path, **settings)
    assert code == 1 and "does not answer on 127.0.0.1:1" in output and "pnpp run" in output
