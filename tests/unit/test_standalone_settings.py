"""Standalone mode's settings: where Prime is, Prime HA with different addresses, and the gateway pair.

Each wrong combination stops start-up with a message naming the variable to change; the right ones load.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pnp_integrated.config import DIFFERENT_IP_REFUSAL, ConfigError, load_settings

PG = "postgresql+psycopg://pnp@db/pnp"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PNP_DATA_DIR": str(tmp_path / "data"), "PNP_MODE": "standalone", "PNP_VIP": "10.0.0.5",
            "PNP_PRIME_ADDRESS": "10.0.1.1"}


def refused(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    return str(info.value)


def pair(env: dict[str, str], **more: str) -> dict[str, str]:
    return {**env, "PNP_GATEWAY_HA": "pair", "PNP_NODE_ADDRESS": "10.0.0.11", "PNP_GATEWAY_PEER": "10.0.0.12",
            "PNP_DATABASE_URL": PG, **more}


def test_every_prime_combination_loads_for_a_standalone_gateway(env: dict[str, str]) -> None:
    alone = load_settings(environ=env)
    assert alone.standalone and not alone.gateway_in_pair and alone.prime_addresses == ["10.0.1.1"]
    vip = load_settings(environ={**env, "PNP_HA_MODE": "vip"})
    assert vip.prime_addresses == ["10.0.1.1"]  # Prime's VIP: one address, whichever node holds it
    two = load_settings(environ={**env, "PNP_HA_MODE": "different-ip", "PNP_PRIME_SECONDARY_ADDRESS": "10.0.2.1"})
    assert two.prime_addresses == ["10.0.1.1", "10.0.2.1"]
    paired = load_settings(environ=pair(env))
    assert paired.gateway_in_pair and paired.node_addr == "10.0.0.11"


def test_the_integrated_refusal_names_standalone_mode_and_its_setup(tmp_path: Path) -> None:
    message = refused({"PNP_DATA_DIR": str(tmp_path), "PNP_HA_MODE": "different-ip"})
    assert DIFFERENT_IP_REFUSAL in message
    assert "PNP_MODE=standalone" in message and "pnpp setup advance" in message


def test_the_simulated_prime_may_run_a_different_address_pair(tmp_path: Path) -> None:
    # Prime's own processes are not a gateway: the integrated gateway's limitation is not theirs.
    settings = load_settings(environ={"PNP_DATA_DIR": str(tmp_path), "PNP_HA_MODE": "different-ip"}, gateway=False)
    assert settings.ha_mode == "different-ip"


@pytest.mark.parametrize(("more", "expected"), [
    ({"PNP_PRIME_ADDRESS": ""}, "PNP_PRIME_ADDRESS: a standalone gateway needs Prime's address"),
    ({"PNP_PRIME_ADDRESS": "prime.example"}, "PNP_PRIME_ADDRESS: 'prime.example' is not an IP address"),
    ({"PNP_HA_MODE": "different-ip"}, "PNP_PRIME_SECONDARY_ADDRESS: Prime HA with different addresses: give the "
                                      "secondary server's address"),
    ({"PNP_HA_MODE": "different-ip", "PNP_PRIME_SECONDARY_ADDRESS": "10.0.1.1"},
     "PNP_PRIME_SECONDARY_ADDRESS: is the primary's address too"),
    ({"PNP_PRIME_SECONDARY_ADDRESS": "10.0.2.1"}, "only Prime HA with different addresses has a secondary address"),
    ({"PNP_MODE": "satellite"}, "PNP_MODE: 'satellite' is not one of: integrated, standalone"),
    ({"PNP_GATEWAY_PEER": "10.0.0.12"}, "PNP_GATEWAY_PEER: only a gateway HA pair has a peer"),
])
def test_a_wrong_standalone_setting_names_what_to_change(env: dict[str, str], more: dict[str, str],
                                                         expected: str) -> None:
    assert expected in refused({**env, **more})


@pytest.mark.parametrize(("more", "expected"), [
    ({"PNP_GATEWAY_PEER": ""}, "PNP_GATEWAY_PEER: a gateway HA pair needs the other gateway's own address"),
    ({"PNP_NODE_ADDRESS": ""}, "PNP_NODE_ADDRESS: a gateway of an HA pair needs its own address"),
    ({"PNP_GATEWAY_PEER": "10.0.0.11"}, "is this gateway's own address"),
    ({"PNP_VIP": "10.0.0.11"}, "PNP_VIP: the gateway pair's VIP must differ"),
    ({"PNP_VIP": "127.0.0.1"}, "PNP_VIP: 127.0.0.1 is a loopback address"),
    ({"PNP_DATABASE_URL": ""}, "PNP_DATABASE_URL: the two gateways of a pair share one PostgreSQL database"),
    ({"PNP_GATEWAY_VIP_MOVER": "builtin"}, "PNP_GATEWAY_VIP_INTERFACE: the built-in VIP mover needs the interface"),
    ({"PNP_GATEWAY_FAILBACK": "sometimes"}, "PNP_GATEWAY_FAILBACK: 'sometimes' is not one of: manual, auto"),
    ({"PNP_GATEWAY_ROLE": "tertiary"}, "PNP_GATEWAY_ROLE: 'tertiary' is not one of: primary, secondary"),
])
def test_a_wrong_pair_setting_names_what_to_change(env: dict[str, str], more: dict[str, str], expected: str) -> None:
    assert expected in refused(pair(env, **more))


def test_standalone_settings_are_refused_on_an_integrated_gateway(tmp_path: Path) -> None:
    message = refused({"PNP_DATA_DIR": str(tmp_path), "PNP_PRIME_ADDRESS": "10.0.1.1", "PNP_GATEWAY_HA": "pair"})
    assert "PNP_PRIME_ADDRESS: is a setting of a standalone gateway" in message
    assert "PNP_GATEWAY_HA: the integrated gateway follows Prime's HA" in message
