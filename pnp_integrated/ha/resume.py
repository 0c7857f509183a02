"""Resuming unfinished provisioning jobs when a node becomes ACTIVE.

Job state lives in the database, so the new ACTIVE node needs no hand-over: an Open PnP device's next WORK-REQUEST
and a CNS device's next HELLO/SUBSCRIBE continue its job from the step it reached. What only the server can start
are the CNS pushes (the post-PnP configuration, the pull of the configuration, ``write memory``): the node that
sent them may have died before the device answered. :func:`resume_unfinished` sends each pending push again to the
CNS devices whose sessions now live on this node; the correlator is the same, so an answer the device already gave
is recognised as stale and the job never advances twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import select

from ..context import gateway_state
from ..models import Device, DeviceSession, ProvisioningJob, db

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumeSummary:
    """What :func:`resume_unfinished` found and did."""

    unfinished: int  # jobs not finished, whatever their protocol
    pushed: int  # CNS pushes sent again to devices connected to this node
    waiting: int  # unfinished jobs that continue when their device next contacts the gateway


def resume_unfinished(app: Flask) -> ResumeSummary:
    """Find every unfinished job; for CNS devices connected to this node, re-send the push their job waits on."""
    from ..cns import provision
    from ..cns.worker import deliver
    from ..provisioning import engine

    settings = gateway_state(app).settings
    pushed = 0
    try:
        with app.app_context():
            unfinished = list(db.session.execute(
                select(ProvisioningJob.id, Device.serial, ProvisioningJob.protocol)
                .join(Device, Device.id == ProvisioningJob.device_id)
                .where(ProvisioningJob.finished_at.is_(None), Device.current_job_id == ProvisioningJob.id)
            ).all())
            cns_serials = [serial for _, serial, protocol in unfinished if protocol == "cns"]
            connected = set(db.session.scalars(select(DeviceSession.device_key).where(
                DeviceSession.closed_at.is_(None), DeviceSession.node == settings.node_name,
                DeviceSession.protocol == "cns", DeviceSession.device_key.in_(cns_serials)))) if cns_serials else set()
            db.session.commit()
            for serial in sorted(connected):
                action = engine.pending(serial)
                delivery = provision.delivery_for(action, serial, settings)
                # The session's Device-Id is the device key; simulated and bootstrapped devices use it as ConfigID.
                if delivery is not None and deliver(serial, *delivery):
                    pushed += 1
    except Exception:  # a job left here still continues at its device's next contact
        log.exception("could not resume the unfinished jobs")
        unfinished = []
    summary = ResumeSummary(unfinished=len(unfinished), pushed=pushed, waiting=len(unfinished) - pushed)
    log.info("%s resumes %d unfinished jobs: %d CNS pushes sent again, %d continue at the device's next contact",
             settings.node_name, summary.unfinished, summary.pushed, summary.waiting)
    return summary
