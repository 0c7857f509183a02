"""Day 0 of many simulated CNS devices against a real 2-worker node: dispatcher, gateway, image agent, post-PnP
config pushed over the event connection (from whichever worker the image agent's request landed on), write memory."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select

from pnp_integrated import create_app
from pnp_integrated.devsim.cns import CnsDevice, DeviceReport
from pnp_integrated.devsim.node import PNPP, RunningNode
from pnp_integrated.models import Device, OutboxEvent, Profile, ProvisioningJob, db

POST_TEMPLATE = "hostname {{ serial }}\nntp server 192.0.2.1\n"


def test_day0_of_many_devices_plain_and_tls(running_node: Callable[..., RunningNode]) -> None:
    node = running_node(workers=2)
    observer = create_app({**node.settings, "TESTING": True})
    with observer.app_context():
        db.session.add(Profile(name="branch", is_default=True, post_template=POST_TEMPLATE))
        db.session.add(Profile(name="broken", match_serials=["BAD1"], post_template="hostname x\nbogus command\n"))
        db.session.commit()

    base = node.port("cns_port_base")
    devices = [CnsDevice(f"FTX{i:03d}", "127.0.0.1", base + 1, http_port=node.port("http_port")) for i in range(16)]
    devices += [CnsDevice(f"TLS{i:03d}", "127.0.0.1", base + 2, http_port=node.port("http_port"), tls=True)
                for i in range(4)]
    bad = CnsDevice("BAD1", "127.0.0.1", base + 1, http_port=node.port("http_port"), fail_lines=("bogus command",))
    with ThreadPoolExecutor(max_workers=len(devices) + 1) as pool:
        reports: list[DeviceReport] = list(pool.map(lambda d: d.run(40), [*devices, bad]))

    for device, report in zip(devices, reports, strict=False):
        assert report.ok, (report.serial, report.steps, report.detail)
        assert f"hostname {device.serial}" in device.running_config
        assert "exec:write memory" in report.steps
    with observer.app_context():
        states = {d.serial: db.session.get(ProvisioningJob, d.current_job_id)
                  for d in db.session.scalars(select(Device))}
        assert {serial: job.state for serial, job in states.items() if job and serial != "BAD1"} == {
            d.serial: "completed" for d in devices}
        failed = states["BAD1"]
        assert failed is not None and failed.state == "failed" and "bogus command" in failed.detail
        results = [e.payload["subject"] for e in db.session.scalars(
            select(OutboxEvent).where(OutboxEvent.type == "cns.event"))]
        assert results.count("cisco.mgmt.cns.config.complete.FTX000") == 1
        assert results.count("cisco.mgmt.cns.config.failure.BAD1") == 3  # the step is tried max_attempts times
    assert "hostname x" in bad.running_config and "bogus command" not in bad.running_config


def test_pnpp_simulate_cns_and_bootstrap_commands(running_node: Callable[..., RunningNode], tmp_path: Path) -> None:
    node = running_node(workers=2)
    observer = create_app({**node.settings, "TESTING": True})
    with observer.app_context():
        db.session.add(Profile(name="all", is_default=True, post_template=POST_TEMPLATE))
        db.session.commit()
    run = subprocess.run([PNPP, "simulate", "cns", "--devices", "3", "--host", "127.0.0.1"], env=node.env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3/3 devices finished" in run.stdout and "SIM00003" in run.stdout

    boot = subprocess.run([PNPP, "bootstrap", "--protocol", "cns"], env={**node.env, "PNP_VIP": "198.51.100.7"},
                          capture_output=True, text=True, timeout=60)
    assert boot.returncode == 0
    assert f"cns event 198.51.100.7 {node.port('cns_port_base') + 1} keepalive 60 3" in boot.stdout
    assert "cns trusted-server all-agents 198.51.100.7" in boot.stdout
    assert "127.0.0.1" not in boot.stdout  # never a node address
