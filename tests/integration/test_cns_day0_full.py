"""The whole CNS day 0 on a real 2-worker node, plain and TLS: dispatcher -> gateway -> HELLO -> SUBSCRIBE -> initial
configuration from GET /cns/config.asp (rendered from the profile's template) -> config.complete -> image agent
inventory -> download from the Image Web Service with an MD5 check -> status -> reload on the new image -> the job's
configuration and post-PnP configuration pushed over the event connection -> write memory -> job completed.
Also ``pnpp simulate cns`` against a node nobody set up: what an operator sees with and without --create-profile."""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pnp_integrated import create_app
from pnp_integrated.cli.simulate import DEMO_PROFILE
from pnp_integrated.devsim.cns import CnsDevice, DeviceReport
from pnp_integrated.devsim.node import PNPP, RunningNode
from pnp_integrated.models import Device, JobStep, Profile, ProvisioningJob, db
from pnp_integrated.provisioning.images import store_image

CONFIG_TEMPLATE = "hostname {{ serial }}\ninterface GigabitEthernet0/0/0\n description {{ site }} uplink\n"
POST_TEMPLATE = "ntp server 192.0.2.1\nlogging host 192.0.2.2\n"
IMAGE = "c1100-universalk9.17.06.05.SPA.bin"
IMAGE_BYTES = bytes(range(256)) * 2048  # 512 KiB


@pytest.fixture(scope="module")
def node(node_launcher: Callable[..., RunningNode], tmp_path_factory: pytest.TempPathFactory) -> RunningNode:
    return node_launcher(Path(tmp_path_factory.mktemp("cns-day0-full")), workers=2)


@pytest.fixture(scope="module")
def observer(node: RunningNode) -> Iterator[Any]:
    app = create_app({**node.settings, "TESTING": True})
    with app.app_context():
        image = store_image(io.BytesIO(IMAGE_BYTES), IMAGE, "", actor="test")
        db.session.add(Profile(name="branch", match_serials=[f"FULL{i}" for i in range(6)], image_id=image.id,
                               config_template=CONFIG_TEMPLATE, post_template=POST_TEMPLATE,
                               variables={"site": "Lyon"}))
        db.session.commit()
    yield app


def job_history(observer: Any, serial: str) -> tuple[ProvisioningJob, Device, list[tuple[str, str]]]:
    with observer.app_context():
        device = db.session.scalars(select(Device).where(Device.serial == serial)).one()
        job = db.session.get(ProvisioningJob, device.current_job_id)
        assert job is not None
        steps = [(s.step, s.state) for s in db.session.scalars(select(JobStep).where(JobStep.job_id == job.id)
                                                                  .order_by(JobStep.id))]
        db.session.expunge_all()
        return job, device, steps


def test_full_day0_with_config_template_and_image_plain_and_tls(node: RunningNode, observer: Any) -> None:
    base, http = node.port("cns_port_base"), node.port("http_port")
    devices = [CnsDevice(f"FULL{i}", "127.0.0.1", base + 1, http_port=http, expect_image=True) for i in range(3)]
    devices += [CnsDevice(f"FULL{i}", "127.0.0.1", base + 2, http_port=http, tls=True, expect_image=True,
                          context=node.client_context()) for i in range(3, 6)]
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        reports: list[DeviceReport] = list(pool.map(lambda d: d.run(60), devices))

    for device, report in zip(devices, reports, strict=True):
        assert report.ok, (report.serial, report.steps, report.detail)
        steps = report.steps
        # Initial configuration, image, reload, then the job's configuration (pull) and the post-PnP one (push).
        assert steps.index("initial-config") < steps.index("image:activated") < steps.index("reload")
        assert steps.index("reload") < steps.index("config-pull:200") < steps.index("config-push")
        assert steps[-2:] == ["exec:write memory", "bye"]
        assert [p for p in steps if p.startswith("redirect:")] and all(
            (int(p.split(":")[1]) - base) % 2 == (0 if device.tls else 1) for p in steps if p.startswith("redirect:"))
        config = "\n".join(device.running_config)
        assert f"hostname {device.serial}" in config and " description Lyon uplink" in config
        assert "ntp server 192.0.2.1" in config and "logging host 192.0.2.2" in config
        assert device.flash == {f"flash:{IMAGE}": IMAGE_BYTES}
        assert device.image_file == IMAGE

        job, row, history = job_history(observer, device.serial)
        assert (job.state, job.step) == ("completed", "done")
        assert [(s, st) for s, st in history if st != "started"] == [
            ("identify", "succeeded"), ("image", "succeeded"), ("image.verify", "succeeded"),
            ("config", "succeeded"), ("post_config", "succeeded"), ("save", "succeeded")]
        assert row.software_version == "17.06.05" and row.state == "provisioned"


def test_corrupted_download_fails_the_image_step(node: RunningNode, observer: Any) -> None:
    with observer.app_context():
        db.session.add(Profile(name="md5", match_serials=["BADMD5"], config_template=CONFIG_TEMPLATE,
                               variables={"site": "Nice"}, image_id=db.session.scalars(select(Profile.image_id).where(
                                   Profile.name == "branch")).one()))
        db.session.commit()
    device = CnsDevice("BADMD5", "127.0.0.1", node.port("cns_port_base") + 1, http_port=node.port("http_port"),
                       expect_image=True, quiet=3)
    real_http = device.http

    def corrupting(method: str, path: str, body: str | None = None, raw: bool = False) -> tuple[int, Any]:
        status, data = real_http(method, path, body, raw)
        return (status, data[:-1] + b"!") if raw and path.startswith("/images/") else (status, data)

    device.http = corrupting  # type: ignore[method-assign]
    report = device.run(30)
    assert not report.ok and report.steps.count("image:failed") == 1
    assert "image:activated" not in report.steps and not device.flash
    job, _row, history = job_history(observer, "BADMD5")
    assert job.state == "running" and job.step == "image" and job.attempt == 2  # retried on its next inventory
    assert ("image", "failed") in history
    assert job.pending_request["image"]["md5"] == hashlib.md5(IMAGE_BYTES, usedforsecurity=False).hexdigest()


def test_simulate_cns_on_a_node_nobody_set_up(node_launcher: Callable[..., RunningNode], tmp_path: Path) -> None:
    fresh = node_launcher(tmp_path / "fresh", workers=2)
    blind = subprocess.run([PNPP, "simulate", "cns", "--devices", "2", "--timeout", "3"], env=fresh.env,
                           capture_output=True, text=True, timeout=120)
    assert blind.returncode == 1
    assert "no profile matches 2 of the 2 devices" in blind.stderr and "--create-profile" in blind.stderr
    assert blind.stdout.count("FAILED") == 2 and "UNCLAIMED: no profile matches it" in blind.stdout
    assert "0/2 devices finished day 0" in blind.stdout

    demo = subprocess.run([PNPP, "simulate", "cns", "--devices", "4", "--tls", "--image", "--create-profile"],
                          env=fresh.env, capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"created profile {DEMO_PROFILE}" in demo.stdout and "added image" in demo.stdout
    assert "seen before" not in demo.stdout  # the two unclaimed ones are claimed by the new profile
    assert demo.stdout.count(" ok ") == 4 and "image:activated" in demo.stdout
    assert "4/4 devices finished day 0" in demo.stdout

    again = subprocess.run([PNPP, "simulate", "cns", "--devices", "4", "--create-profile"], env=fresh.env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 of these devices were seen before" in again.stdout and "4/4 devices finished day 0" in again.stdout
    assert "image:none" in again.stdout  # the demo profile lost its image: the devices already run it anyway
