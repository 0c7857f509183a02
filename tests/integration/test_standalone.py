"""A standalone gateway: Prime is another machine (a simulated Prime server bound to its own loopback address), in
each of Prime's combinations: without HA, HA with a virtual IP, HA with different primary and secondary addresses.

What an operator sees is asserted: `pnpp run` refusing to start while a Prime server is not trusted, the status rows
naming the Prime server the gateway is connected to, and every event the gateway recorded reaching Prime, through
the secondary when the primary dies.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pnp_integrated.devsim.node import (
    PNPP,
    RunningNode,
    RunningPrime,
    free_port_block,
    node_environment,
    node_settings,
    start_node,
    start_prime,
)
from pnp_integrated.prime.accounts import AccountStore, accounts_path, new_passcode
from tests.support import create_default_profile, wait_until

PRIMARY, SECONDARY = "127.0.0.2", "127.0.0.3"
LOGIN = "pnp-gateway"


@pytest.fixture
def primes(tmp_path: Path) -> Iterator[Callable[..., RunningPrime]]:
    started: list[RunningPrime] = []

    def launch(address: str, ports: dict[str, int], **options: Any) -> RunningPrime:
        # Each server's loopback bus needs a port of its own on this one host; the gateway never uses it.
        prime = start_prime(tmp_path / f"prime-{address}", address, bus_port=free_port_block(1), **ports, **options)
        started.append(prime)
        return prime

    yield launch
    for prime in started:
        prime.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[RunningNode]]:
    nodes: list[RunningNode] = []
    yield nodes
    for node in nodes:
        node.stop()


def shared_ports() -> dict[str, int]:
    """The ports a gateway and the Prime servers it talks to agree on."""
    base = free_port_block(2)
    return {"broker_port": base, "health_port": base + 1}


def enrol(prime: RunningPrime, passcode: str) -> None:
    """Prime's administrator creates the gateway's account (Prime HA replicates it to the other server)."""
    AccountStore(accounts_path(_settings_of(prime))).put(LOGIN, "gateway", passcode)


def _settings_of(prime: RunningPrime) -> Any:
    from pnp_integrated.config import load_settings

    return load_settings(environ=prime.env, gateway=False)


def gateway_settings(tmp_path: Path, ports: dict[str, int], **prime: str) -> dict[str, Any]:
    settings = node_settings(tmp_path / "gateway" / "data", mode="standalone", **ports, **prime)
    return settings


def trust(settings: dict[str, Any], address: str, passcode: str) -> str:
    """`pnpp prime trust --from ADDRESS --login` as the gateway's operator runs it; its output."""
    done = subprocess.run([PNPP, "prime", "trust", "--from", f"{address}:{settings['broker_port']}",
                           "--login", LOGIN, "--passcode-file", "-"], input=passcode, env=node_environment(settings),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def start_gateway(tmp_path: Path, settings: dict[str, Any], gateways: list[RunningNode]) -> RunningNode:
    overrides = {k: v for k, v in settings.items() if k != "data_dir"}
    node = start_node(tmp_path / "gateway", **{**overrides, **_fixed_ports(settings)})
    gateways.append(node)
    return node


def _fixed_ports(settings: dict[str, Any]) -> dict[str, Any]:
    # start_node moves every port again; the gateway's must stay those its trust and settings were made with.
    return {k: settings[k] for k in ("http_port", "https_port", "cns_port_base", "bus_port")}


def row(node: RunningNode, service: str) -> dict[str, str]:
    _, status = node.get_json("/status")
    return next(r for r in status["rows"] if r["service"] == service)


def connected(node: RunningNode, text: str) -> dict[str, dict[str, str]] | None:
    """The rows of one reading in which both Prime rows say the bridge is connected, the HA row with ``text``
    (``None`` otherwise). Each worker keeps its own reading for up to a second, so two requests may see two moments:
    what is asserted afterwards is read from these rows."""
    _, status = node.get_json("/status")
    rows = {r["service"]: r for r in status["rows"]}
    if rows["Prime Infrastructure Broker"]["status"] == "UP" and text in rows["Prime Infrastructure HA status"]["info"]:
        return rows
    return None


def pnpp_status(node: RunningNode) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([PNPP, "status", "--json"], env=node.env, capture_output=True, text=True, timeout=30)
    return done.returncode, json.loads(done.stdout)


def provision(node: RunningNode, prefix: str, devices: int = 3) -> None:
    done = subprocess.run([PNPP, "simulate", "pnp", "--devices", str(devices), "--serial-prefix", prefix,
                           "--time-scale", "0.002", "--timeout", "90"], env=node.env, capture_output=True, text=True,
                          timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr


def outbox_ids(node: RunningNode) -> set[str]:
    import sqlite3

    with sqlite3.connect(node.data_dir / "pnp.sqlite3") as db:
        return {str(r[0]) for r in db.execute("SELECT event_id FROM outbox")}


def test_a_standalone_gateway_does_not_start_until_it_trusts_prime_and_has_its_login(tmp_path: Path) -> None:
    ports = shared_ports()
    settings = gateway_settings(tmp_path, ports, prime_address=PRIMARY, ha_mode="different-ip",
                                prime_secondary_address=SECONDARY)
    done = subprocess.run([PNPP, "run"], env=node_environment(settings), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "a standalone gateway cannot start yet" in done.stderr
    assert f"Prime's primary {PRIMARY} (PNP_PRIME_ADDRESS) is not trusted yet: run `pnpp prime trust --from " \
           f"{PRIMARY}:{ports['broker_port']}`" in done.stderr
    assert f"Prime's secondary {SECONDARY} (PNP_PRIME_SECONDARY_ADDRESS) is not trusted yet" in done.stderr
    assert "the gateway has no login on Prime's broker" in done.stderr
    assert not (Path(settings["data_dir"]) / "prime").exists()  # no co-located Prime was started


@pytest.mark.parametrize("prime_ha", ["none", "vip"])
def test_a_standalone_gateway_with_prime_on_one_address(tmp_path: Path, primes: Callable[..., RunningPrime],
                                                        gateways: list[RunningNode], prime_ha: str) -> None:
    ports = shared_ports()
    prime = primes(PRIMARY, ports, ha_mode=prime_ha)
    passcode = new_passcode()
    enrol(prime, passcode)
    settings = gateway_settings(tmp_path, ports, prime_address=PRIMARY, ha_mode=prime_ha)
    trust(settings, PRIMARY, passcode)
    node = start_gateway(tmp_path, settings, gateways)

    rows = wait_until(lambda: connected(node, "connected to"), 30, "the bridge to connect")
    assert f"Connection Detail: {PRIMARY}:{ports['broker_port']}" in rows["Prime Infrastructure Broker"]["info"]
    ha = rows["Prime Infrastructure HA status"]
    assert ha["status"] == "UP" and ha["mode"] == prime_ha
    if prime_ha == "vip":
        assert f"connected to Prime's VIP {PRIMARY} (which server holds the VIP is not visible from here)" in ha["info"]
    else:
        assert f"connected to {PRIMARY}" in ha["info"]
    code, table = pnpp_status(node)
    services = [r["service"] for r in table["rows"]]
    assert "Event Messaging Bus" not in services  # no co-located Prime, so no local bus to show as DOWN
    assert code == 0, table

    create_default_profile(node)
    provision(node, "SOLO")
    expected = outbox_ids(node)
    wait_until(lambda: expected <= set(prime.event_ids()), 30, "every event to reach Prime")

    # Prime goes away: the row turns DOWN, and nothing the gateway records meanwhile is lost.
    prime.kill()
    wait_until(lambda: "neither the broker nor the health monitor" in
               row(node, "Prime Infrastructure HA status")["info"], 30, "the Prime HA row to say Prime is gone")
    wait_until(lambda: row(node, "Prime Infrastructure HA status")["status"] == "DOWN"
               and row(node, "Prime Infrastructure Broker")["status"] == "DOWN", 30, "both Prime rows DOWN")


def test_prime_ha_with_different_addresses_the_gateway_follows_the_active_server(
        tmp_path: Path, primes: Callable[..., RunningPrime], gateways: list[RunningNode]) -> None:
    ports = shared_ports()
    primary = primes(PRIMARY, ports, ha_mode="different-ip", role="primary", peer=SECONDARY)
    secondary = primes(SECONDARY, ports, ha_mode="different-ip", role="secondary", peer=PRIMARY)
    wait_until(lambda: (primary.health() or {}).get("state") == "active", 30, "the primary to be active")
    passcode = new_passcode()
    enrol(primary, passcode)
    enrol(secondary, passcode)
    settings = gateway_settings(tmp_path, ports, prime_address=PRIMARY, ha_mode="different-ip",
                                prime_secondary_address=SECONDARY)
    trust(settings, PRIMARY, passcode)
    assert f"and those of {PRIMARY}, trusted before" in trust(settings, SECONDARY, passcode)
    node = start_gateway(tmp_path, settings, gateways)

    rows = wait_until(lambda: connected(node, "connected to the primary"), 30,
                      "the gateway to connect to the primary")
    assert "(Prime's primary)" in rows["Prime Infrastructure Broker"]["info"]
    # Each server's health is asked with a short time limit: on a loaded host one reading may miss an answer.
    wait_until(lambda: row(node, "Prime Infrastructure HA status")["info"] ==
               f"connected to the primary {PRIMARY}; primary {PRIMARY} active; secondary {SECONDARY} standby", 30,
               "the row to name both servers' states")
    assert row(node, "Prime Infrastructure HA status")["mode"] == "different-ip"
    create_default_profile(node)
    provision(node, "BEFORE")
    before = outbox_ids(node)
    wait_until(lambda: before <= set(primary.event_ids()), 30, "the events to reach the primary")

    # The primary hangs (its connections stay open, nothing answers): the secondary takes over, and the gateway
    # moves its bridge there long before STOMP heart-beats (25 s) would have noticed.
    primary.freeze()
    wait_until(lambda: (secondary.health() or {}).get("state") == "active", 30, "the secondary to become active")
    rows = wait_until(lambda: connected(node, "connected to the secondary"), 20,
                      "the gateway to connect to the secondary")
    assert f"Connection Detail: {SECONDARY}:{ports['broker_port']} (Prime's secondary)" in \
        rows["Prime Infrastructure Broker"]["info"]
    provision(node, "DURING")
    wait_until(lambda: f"primary {PRIMARY} not answering; secondary {SECONDARY} active" in
               row(node, "Prime Infrastructure HA status")["info"], 30, "the row to show the secondary active")
    everything = outbox_ids(node)
    wait_until(lambda: everything <= set(primary.event_ids()) | set(secondary.event_ids()), 60,
               "every event to reach Prime, the later ones through the secondary")
    received = set(primary.event_ids()) | set(secondary.event_ids())
    assert everything - before and (everything - before) <= set(secondary.event_ids())
    assert everything <= received  # the sinks de-duplicate by id: what matters is that none is missing
