"""A CNS device's result is receipted only once the job has it: a database that cannot take it means no RECEIPT.

Before, the gateway receipted a ``write memory`` response as soon as the event was stored for Prime, and then handed
it to the engine; an engine that could not record it (a lock held by a node that just died, a saturated database)
left the job running forever while the device, receipted, had moved on. Here the device row is locked by another
connection while the device answers ``write memory``: the gateway must refuse the result (ERROR 503), and the device,
coming back, must be asked again and complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import pytest
from sqlalchemy import select

from pnp_integrated import create_app
from pnp_integrated.cli.lab import ensure_fleet_profile
from pnp_integrated.devsim.link import CnsLink
from pnp_integrated.devsim.node import RunningNode
from pnp_integrated.lab.fleet import FailoverCnsDevice, GatewayLost, Published
from pnp_integrated.models import Device, JobStep, ProvisioningJob, db

pytestmark = pytest.mark.postgres


@dataclass
class DeviceRowLockedOnSave(FailoverCnsDevice):
    """Answers ``write memory`` the first time while another connection holds the device's row lock."""

    database: str = ""
    refusals: list[str] = field(default_factory=list)

    def _publish(self, link: CnsLink, result: Published) -> None:
        if not result.saved or self.refusals:
            super()._publish(link, result)
            return
        with psycopg.connect(self.database) as holder:
            holder.execute("SELECT id FROM devices WHERE serial = %s FOR UPDATE", (self.serial,))
            try:
                super()._publish(link, result)
            except GatewayLost as exc:
                self.refusals.append(str(exc))
                raise
            self.refusals.append("RECEIPT")  # the result was taken although the job could not have it


def test_a_result_the_database_cannot_take_is_refused_and_asked_for_again(
    running_node: Callable[..., RunningNode], postgres_url: str
) -> None:
    node = running_node(workers=1, database_url=postgres_url, db_dead_peer_timeout=0.5)
    observer = create_app({**node.settings, "TESTING": True})
    with observer.app_context():
        ensure_fleet_profile(["LOCK0001"])
    device = DeviceRowLockedOnSave("LOCK0001", "127.0.0.1", node.port("cns_port_base") + 1,
                                   http_port=node.port("http_port"), quiet=15.0,
                                   database=postgres_url.replace("postgresql+psycopg", "postgresql"))
    result = device.run(deadline=time.monotonic() + 90)

    assert device.refusals and "ERROR 503" in device.refusals[0], device.refusals
    assert result.ok, result.detail
    assert result.reconnects >= 1
    with observer.app_context():
        row = db.session.scalar(select(Device).where(Device.serial == "LOCK0001"))
        assert row is not None and row.current_job_id is not None
        job = db.session.get(ProvisioningJob, row.current_job_id)
        assert job is not None and job.state == "completed"
    assert "result on cisco.mgmt.cns.exec.rsp not recorded" in node.log_path.read_text()



@dataclass
class ReceiptLostOnSave(FailoverCnsDevice):
    """Its first ``write memory`` answer is recorded, but the RECEIPT never reaches it (the node died in between)."""

    lost: list[str] = field(default_factory=list)

    def _publish(self, link: CnsLink, result: Published) -> None:
        if not result.saved or self.lost:
            super()._publish(link, result)
            return
        self.unreceipted.append(result)
        token = "lost-on-the-way"
        link.command("PUBLISH", {"Subject": result.subject, "Receipt": token, "Content-Type": "application/xml"},
                     result.body)
        self._await_receipt(link, token)  # the gateway recorded it; the device never sees this RECEIPT
        self.lost.append(token)
        raise GatewayLost("connection lost before the RECEIPT")


def test_a_recorded_result_whose_receipt_was_lost_is_sent_again_and_ends_the_day0(
    running_node: Callable[..., RunningNode], postgres_url: str
) -> None:
    node = running_node(workers=1, database_url=postgres_url)
    observer = create_app({**node.settings, "TESTING": True})
    with observer.app_context():
        ensure_fleet_profile(["LOST0001"])
    # The job is complete after the first answer, so the gateway has nothing left to push: a device waiting for a
    # push would wait forever (`quiet` short so that failure shows within the deadline).
    device = ReceiptLostOnSave("LOST0001", "127.0.0.1", node.port("cns_port_base") + 1,
                               http_port=node.port("http_port"), quiet=3.0)
    result = device.run(deadline=time.monotonic() + 30)

    assert device.lost, "the device never answered write memory"
    assert result.ok, result.detail
    assert result.reconnects == 1
    assert device.unreceipted == []
    with observer.app_context():
        row = db.session.scalar(select(Device).where(Device.serial == "LOST0001"))
        assert row is not None and row.current_job_id is not None
        job = db.session.get(ProvisioningJob, row.current_job_id)
        assert job is not None and job.state == "completed"
        saves = db.session.scalars(select(JobStep).where(JobStep.job_id == job.id, JobStep.step == "save")).all()
        assert [s.state for s in saves].count("succeeded") == 1  # the second answer did not save twice
