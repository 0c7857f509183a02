"""A roll-out of 10,000 devices written straight into a node's database (bulk inserts, a few seconds), for the
console's browser tests and screenshots: devices in every state, their jobs with every step, the events each job
wrote for Prime, jobs ending over the last three hours, and a failover of the gateway pair on the same time axis.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from pnp_integrated import create_app
from pnp_integrated.devsim.node import node_settings
from pnp_integrated.models import Device, JobStep, OutboxEvent, Profile, ProvisioningJob, db, new_uuid, utcnow

PIDS = ("C9300-48P", "C9200L-24T", "ISR4331/K9", "IE-3400-8P2S")
FAILURES = ("%Error copying flash:cat9k_iosxe.17.09.04a.SPA.bin (No space left on device)",
            "%Error opening tftp://10.0.0.5/branch.cfg (Timed out)",
            "PnP Service Error 1816: image checksum does not match the expected MD5")
STATE_SHARES = (("provisioned", 0.88), ("failed", 0.04), ("unclaimed", 0.03), ("provisioning", 0.03),
                ("claimed", 0.01), ("cancelled", 0.01))


@dataclass
class Fleet:
    """What was written: counts by state, the devices of interest, the jobs that ended in each minute."""

    by_state: Counter[str] = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)  # serial -> the device's error text
    unclaimed: list[str] = field(default_factory=list)
    ended: Counter[tuple[str, str]] = field(default_factory=Counter)  # (minute RFC 3339, job state) -> jobs
    transitions: list[tuple[dt.datetime, str, str]] = field(default_factory=list)  # (at, state, node)


def _minute(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:00Z")


def fill_fleet(data_dir: Path, devices: int = 10_000, seed: int = 7, now: dt.datetime | None = None) -> Fleet:
    """Migrate the database of the node that will run on ``data_dir`` and write ``devices`` into it."""
    from flask_migrate import upgrade

    rng = random.Random(seed)
    now = now or utcnow()
    app = create_app({**node_settings(data_dir), "TESTING": True}, check_schema=False)
    fleet = Fleet()
    with app.app_context():
        upgrade()
        connection = db.session.connection()
        connection.execute(insert(Profile), [
            {"id": 1, "name": "branch", "match_serials": [], "match_pid": "C9*", "is_default": False,
             "bootstrap_template": "", "config_template": "hostname {{ serial }}\nntp server {{ ntp }}\n",
             "post_template": "", "reload_after_install": True, "credentials": {}, "apply_to": "running",
             "variables": {"ntp": "10.0.0.1"}, "created_at": now, "updated_at": now},
            {"id": 2, "name": "edge", "match_serials": [], "match_pid": "", "is_default": False,
             "bootstrap_template": "", "config_template": "hostname edge-{{ serial }}\n", "post_template": "",
             "reload_after_install": True, "credentials": {}, "apply_to": "running", "variables": {},
             "created_at": now, "updated_at": now}])
        rows: dict[str, list[dict[str, Any]]] = {"devices": [], "jobs": [], "steps": [], "events": []}
        step_id = 0
        window = 170 * 60  # seconds: jobs end over the last three hours, a roll-out gathering pace
        states = [state for state, share in STATE_SHARES for _ in range(round(devices * share))]
        states = (states + ["provisioned"] * devices)[:devices]
        rng.shuffle(states)
        for index, state in enumerate(states, start=1):
            serial = f"FOC{index:07d}"
            protocol = "cns" if index % 3 == 0 else "pnp"
            pid = PIDS[index % len(PIDS)]
            seen = now - dt.timedelta(seconds=window * (1 - rng.random() ** 0.5))
            device = {"id": index, "serial": serial, "pid": pid, "udi": f"PID:{pid},VID:V01,SN:{serial}",
                      "hostname": f"sw-{index:05d}" if state == "provisioned" else "Switch", "protocol": protocol,
                      "address": f"10.{index // 65536}.{index // 256 % 256}.{index % 256}",
                      "software_version": "17.9.4a" if state == "provisioned" else "17.3.1", "state": state,
                      "profile_id": None if state == "unclaimed" else 1 + index % 2, "current_job_id": None,
                      "variables": {}, "first_seen": seen - dt.timedelta(minutes=5), "last_seen": seen}
            fleet.by_state[state] += 1
            if state == "unclaimed":
                fleet.unclaimed.append(serial)
            if state not in ("unclaimed", "claimed"):
                job_state = {"provisioned": "completed", "provisioning": "running"}.get(state, state)
                started = seen - dt.timedelta(minutes=4)
                finished = seen if job_state != "running" else None
                error = FAILURES[index % len(FAILURES)] if state == "failed" else ""
                failed_step = "image" if state == "failed" else ""
                device["current_job_id"] = index
                rows["jobs"].append({
                    "id": index, "device_id": index, "profile_id": device["profile_id"], "protocol": protocol,
                    "state": job_state, "step": failed_step or ("config" if job_state == "running" else "done"),
                    "attempt": 1, "max_attempts": 3, "correlator": "", "pending_request": {}, "context": {},
                    "detail": error or ("provisioned" if job_state == "completed" else ""),
                    "failed_step": failed_step, "version": 1, "created_at": started, "updated_at": seen,
                    "finished_at": finished})
                steps = [("identify", "succeeded", ""), ("image", "failed" if error else "succeeded", error)]
                if not error:
                    steps += [("config", "started" if job_state == "running" else "succeeded", "")]
                    if job_state == "completed":
                        steps += [("save", "succeeded", "")]
                for number, (name, step_state, detail) in enumerate(steps):
                    step_id += 1
                    begun = started + dt.timedelta(seconds=50 * number)
                    ended = None if step_state == "started" else begun + dt.timedelta(seconds=40)
                    rows["steps"].append({"id": step_id, "job_id": index, "step": name, "state": step_state,
                                          "attempt": 1, "detail": detail, "started_at": begun, "ended_at": ended})
                if finished is not None:
                    fleet.ended[(_minute(finished), job_state)] += 1
                    kind = "job.completed" if job_state == "completed" else "job.failed"
                    job = {"id": index, "device": {"id": index, "serial": serial, "pid": pid, "udi": device["udi"],
                                                   "protocol": protocol, "address": device["address"],
                                                   "port": None},
                           "profile": "branch" if device["profile_id"] == 1 else "edge",
                           "step": failed_step or "done", "state": job_state, "attempt": 1, "detail": job_state}
                    rows["events"].append({"event_id": new_uuid(), "type": kind, "payload": {"job": job},
                                           "created_at": finished, "sent_at": finished, "attempts": 1})
                if error:
                    fleet.failed[serial] = error
            rows["devices"].append(device)
        for at, state, node, reason in ((now - dt.timedelta(minutes=175), "ACTIVE", "gw-a", "VIP here, lease held"),
                                        (now - dt.timedelta(minutes=96), "PASSIVE", "gw-a",
                                         "VIP 10.0.0.10 is not on this node"),
                                        (now - dt.timedelta(minutes=95), "ACTIVE", "gw-b", "VIP here, lease held")):
            fleet.transitions.append((at, state, node))
            rows["events"].append({"event_id": new_uuid(), "type": "gateway.state", "created_at": at, "sent_at": at,
                                   "attempts": 1, "payload": {"state": state, "node": node, "reason": reason,
                                                              "vip": "10.0.0.10", "ha_mode": "vip"}})
        for table, model in (("devices", Device), ("jobs", ProvisioningJob), ("steps", JobStep),
                             ("events", OutboxEvent)):
            connection.execute(insert(model), rows[table])
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return fleet
