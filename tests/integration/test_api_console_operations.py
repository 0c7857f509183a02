"""The API operations the operator console stands on beyond the resources: the provisioning activity per minute with
the HA transitions (on SQLite and on PostgreSQL, whose minute arithmetic differs), a device's rendered
configuration (admin tokens only) and a preview of templates not saved yet."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import insert, select, text

from pnp_integrated.api.tokens import issue_token
from pnp_integrated.models import Device, OutboxEvent, Profile, ProvisioningJob, db, new_uuid, utcnow

Call = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, app_factory: Callable[..., Flask]) -> Flask:
    if request.param == "sqlite":
        return app_factory()
    return app_factory(database_url=str(request.getfixturevalue("postgres_url")))


@pytest.fixture
def api(app: Flask) -> Call:
    with app.app_context():
        tokens = {"admin": issue_token("ops", "admin"), "read": issue_token("noc", "read")}
    client = app.test_client()

    def call(method: str, path: str, role: str = "admin", **kwargs: Any) -> Any:
        return client.open(f"/api/v1{path}", method=method, headers={"Authorization": f"Bearer {tokens[role]}"},
                           **kwargs)

    return call


def test_activity_counts_the_jobs_ended_in_each_minute_and_lists_the_ha_transitions(app: Flask, api: Call) -> None:
    now = utcnow() - dt.timedelta(seconds=1)  # ended a moment ago: the window ends at the request
    ten_ago, old = now - dt.timedelta(minutes=10), now - dt.timedelta(hours=5)
    ends = [(now, "completed")] * 3 + [(now, "failed")] + [(ten_ago, "completed")] * 2 + [(ten_ago, "cancelled")] \
        + [(old, "completed")] * 4 + [(None, "running")]
    with app.app_context():
        db.session.add(Device(id=1, serial="FOC1"))
        db.session.flush()
        db.session.execute(insert(ProvisioningJob), [
            {"device_id": 1, "state": state, "finished_at": at, "created_at": now, "updated_at": now, "version": 1}
            for at, state in ends])
        db.session.execute(insert(OutboxEvent), [
            {"event_id": new_uuid(), "type": "gateway.state", "created_at": at, "attempts": 0,
             "payload": {"state": state, "node": node, "reason": "VIP moved"}}
            for at, state, node in ((now - dt.timedelta(minutes=30), "PASSIVE", "gw-a"),
                                    (now - dt.timedelta(minutes=29), "ACTIVE", "gw-b"),
                                    (old, "ACTIVE", "gw-a"))]
            + [{"event_id": new_uuid(), "type": "job.completed", "created_at": now, "attempts": 0, "payload": {}}])
        db.session.commit()

    answer = api("GET", "/activity", role="read")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["minutes"] == 180
    minute = now.strftime("%Y-%m-%dT%H:%M:00Z")
    earlier = ten_ago.strftime("%Y-%m-%dT%H:%M:00Z")
    assert body["per_minute"] == [
        {"minute": earlier, "completed": 2, "failed": 0, "cancelled": 1},
        {"minute": minute, "completed": 3, "failed": 1, "cancelled": 0}]
    assert [(t["state"], t["node"]) for t in body["transitions"]] == [("PASSIVE", "gw-a"), ("ACTIVE", "gw-b")]
    assert body["transitions"][0]["reason"] == "VIP moved"

    # The next refresh counts what ended since; the minutes before keep their counts.
    with app.app_context():
        later = utcnow() - dt.timedelta(seconds=1)
        db.session.execute(insert(ProvisioningJob), [{"device_id": 1, "state": "failed", "finished_at": later,
                                                      "created_at": later, "updated_at": later, "version": 1}])
        db.session.commit()
    again = {m["minute"]: m for m in api("GET", "/activity").get_json()["per_minute"]}
    latest = later.strftime("%Y-%m-%dT%H:%M:00Z")
    assert again[latest]["failed"] == (2 if latest == minute else 1)
    assert again[earlier] == {"minute": earlier, "completed": 2, "failed": 0, "cancelled": 1}

    wide = api("GET", "/activity?minutes=400").get_json()
    assert sum(m["completed"] for m in wide["per_minute"]) == 9 and len(wide["transitions"]) == 3
    for bad in ("0", "1441", "lots"):
        refused = api("GET", f"/activity?minutes={bad}")
        assert refused.status_code == 422 and refused.get_json()["error"]["fields"] == ["minutes"]
    assert api("GET", "/activity?hours=3").status_code == 422


def test_the_partial_index_finds_the_transitions(app: Flask) -> None:
    """The chart's HA marks come from the few gateway.state events, not from a scan of every event."""
    from pnp_integrated.api.activity import GATEWAY_STATE_EVENTS
    from pnp_integrated.api.inventory import query_plan

    with app.app_context():
        statement = select(OutboxEvent.created_at).where(text(GATEWAY_STATE_EVENTS),
                                                         OutboxEvent.created_at >= utcnow())
        if db.session.get_bind().dialect.name == "postgresql":  # an empty table: a scan would cost nothing either
            db.session.execute(text("SET enable_seqscan = off"))
        plan = " ".join(query_plan(statement))
    assert "ix_outbox_gateway_state" in plan, plan


def test_a_devices_configuration_is_its_profiles_templates_rendered_for_admins_only(app: Flask, api: Call) -> None:
    with app.app_context():
        db.session.add(Profile(name="branch", match_pid="ISR*", variables={"ntp": "10.0.0.1"},
                               config_template="hostname {{ serial }}\nntp server {{ ntp }}\n",
                               post_template="banner motd {{ missing }}"))
        db.session.add(Device(serial="FOC9", pid="ISR4331", protocol="pnp", variables={"ntp": "10.9.9.9"}))
        db.session.add(Device(serial="JAE1", pid="C9300", protocol="cns"))
        db.session.commit()
    answer = api("GET", "/devices/FOC9/configuration")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["profile"] == "branch"
    assert body["rendered"] == {"config_template": "hostname FOC9\nntp server 10.9.9.9\n"}  # its own ntp wins
    assert set(body["problems"]) == {"post_template"} and "missing" in body["problems"]["post_template"]
    assert api("GET", "/devices/JAE1/configuration").get_json() == {
        "serial": "JAE1", "profile": None, "rendered": {}, "problems": {}}
    refused = api("GET", "/devices/FOC9/configuration", role="read")
    assert refused.status_code == 403 and "10.9.9.9" not in refused.get_data(as_text=True)
    assert api("GET", "/devices/NOPE/configuration").status_code == 404


def test_a_preview_renders_unsaved_templates_for_a_device_and_saves_nothing(app: Flask, api: Call) -> None:
    with app.app_context():
        db.session.add(Device(serial="FOC9", pid="ISR4331", hostname="Router", protocol="cns",
                              variables={"site": "ams1"}))
        db.session.commit()
    answer = api("POST", "/templates/preview", json={
        "serial": "FOC9", "variables": {"site": "default", "vlan": 20},
        "templates": {"config_template": "hostname {{ site }}-{{ serial }}\nvlan {{ vlan }}\n",
                      "bootstrap_template": "cns config initial {{ gateway }} {{ cns_port }}",
                      "post_template": "{% if %}"}})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["rendered"]["config_template"] == "hostname ams1-FOC9\nvlan 20\n"
    assert body["rendered"]["bootstrap_template"].startswith("cns config initial 127.0.0.1 ")
    assert list(body["problems"]) == ["post_template"]
    with app.app_context():
        assert db.session.scalar(select(Profile.id)) is None
    assert api("POST", "/templates/preview", role="read",
               json={"serial": "FOC9", "templates": {}}).status_code == 403
    assert api("POST", "/templates/preview", json={"serial": "NOPE", "templates": {}}).status_code == 404
    unknown = api("POST", "/templates/preview", json={"serial": "FOC9", "templates": {"motd": "x"}})
    assert unknown.status_code == 422 and unknown.get_json()["error"]["fields"] == ["templates"]
    assert api("POST", "/templates/preview", json={"templates": {}}).status_code == 422
