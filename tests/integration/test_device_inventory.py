"""The device inventory as the operator console reads it: keyset pages, sorts, filters, search, the fleet counts and a
device's history, on SQLite and on a real PostgreSQL server; and the plans that keep those queries on their indexes."""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert

from pnp_integrated.api import inventory
from pnp_integrated.api.tokens import issue_token
from pnp_integrated.models import Device, OutboxEvent, Profile, db
from pnp_integrated.outbox import record_event
from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import DEVICE_STATES, DeviceIdentity, Outcome

BASE = dt.datetime(2026, 3, 1, 8, 0, 0)
# Letters and digits only: every collation (the test server's, SQLite's bytes) orders them alike.
PIDS = ("C9300X24U", "IE3400", "ISR4331")
VERSIONS = ("17.9.4a", "17.6.5")
SORTS = ("serial", "last_seen", "state", "pid")


@pytest.fixture(params=["sqlite", "postgresql"])
def inventory_app(request: pytest.FixtureRequest, app_factory: Callable[..., Flask]) -> Flask:
    """An app on an empty migrated database of each kind."""
    if request.param == "sqlite":
        return app_factory()
    return app_factory(database_url=request.getfixturevalue("postgres_url"))


@dataclass
class Fleet:
    """Devices written straight into the database, and what each of them is (to predict every answer)."""

    app: Flask
    rng: random.Random = field(default_factory=lambda: random.Random(20260301))
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, int] = field(default_factory=dict)

    def profile(self, name: str) -> int:
        with self.app.app_context():
            profile = Profile(name=name)
            db.session.add(profile)
            db.session.commit()
            self.profiles[name] = profile.id
        return self.profiles[name]

    def add(self, count: int = 1, **fixed: Any) -> list[str]:
        """``count`` devices with random facts (``fixed`` ones as given); returns their serials."""
        added = []
        with self.app.app_context():
            for _ in range(count):
                serial = fixed.get("serial") or self._new_serial()
                state = fixed.get("state", self.rng.choice(DEVICE_STATES))
                facts = {
                    "serial": serial, "state": state,
                    "pid": fixed.get("pid", self.rng.choice(PIDS)),
                    "software_version": fixed.get("software_version", self.rng.choice(VERSIONS)),
                    "hostname": fixed.get("hostname", f"site{self.rng.randrange(100):02d}-sw"),
                    "protocol": fixed.get("protocol", "" if state == "expected" else self.rng.choice(("cns", "pnp"))),
                    # A few minutes apart at most: devices share a last-seen time, and the serial breaks the tie.
                    "last_seen": fixed.get("last_seen", BASE + dt.timedelta(minutes=self.rng.randrange(30))),
                    "profile": fixed.get("profile", self.rng.choice([None, *self.profiles])),
                }
                db.session.add(Device(**{k: v for k, v in facts.items() if k != "profile"}, first_seen=BASE,
                                      profile_id=self.profiles.get(facts["profile"] or "")))
                self.devices[serial] = facts
                added.append(serial)
            db.session.commit()
        return added

    def _new_serial(self) -> str:
        while True:
            serial = f"{self.rng.choice(('FOC', 'JAE', 'FDO'))}{self.rng.randrange(10**6):06d}"
            if serial not in self.devices:
                return serial

    def where(self, **wanted: Any) -> set[str]:
        return {s for s, facts in self.devices.items() if all(facts[k] == v for k, v in wanted.items())}


@pytest.fixture
def fleet(inventory_app: Flask) -> Fleet:
    fleet = Fleet(inventory_app)
    fleet.profile("branch")
    fleet.profile("core")
    fleet.add(40)
    return fleet


@pytest.fixture
def read(inventory_app: Flask) -> Callable[[str], Any]:
    """``read(path)``: the JSON of a GET under /api/v1 with a read token (asserting it answered 200)."""
    client: FlaskClient = inventory_app.test_client()
    with inventory_app.app_context():
        headers = {"Authorization": f"Bearer {issue_token('console', 'read')}"}

    def get(path: str) -> Any:
        answer = client.get(f"/api/v1{path}", headers=headers)
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    return get


def pages(read: Callable[[str], Any], limit: int, **params: str) -> Iterator[dict[str, Any]]:
    """Every page of a walk, following each answer's next."""
    cursor = None
    while True:
        query = {**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = read(f"/devices?{urlencode(query)}")
        assert ("total" in page) == (cursor is None), "total comes with the first page only"
        yield page
        cursor = page["next"]
        if cursor is None:
            return


def walk(read: Callable[[str], Any], limit: int = 7, **params: str) -> list[str]:
    return [d["serial"] for page in pages(read, limit, **params) for d in page["items"]]


def sort_key(fleet: Fleet, sort: str) -> Callable[[str], tuple[Any, str]]:
    return lambda serial: (fleet.devices[serial][sort], serial)


# ---- paging and sorting ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sort", SORTS)
def test_a_walk_lists_every_device_once_while_devices_arrive(fleet: Fleet, read: Callable[[str], Any],
                                                             sort: str) -> None:
    for order in ("asc", "desc"):
        present = set(fleet.devices)
        seen: list[str] = []
        for page in pages(read, 6, sort=sort, order=order):
            assert page["sort"] == sort and page["order"] == order and len(page["items"]) <= 6
            seen += [d["serial"] for d in page["items"]]
            fleet.add(3)  # new devices between pages, sorting before and after the position
        assert sorted(seen) == sorted(set(seen)), "a device was listed twice"
        assert present <= set(seen), f"devices missed: {sorted(present - set(seen))}"
        keys = [sort_key(fleet, sort)(s) for s in seen]
        assert keys == sorted(keys, reverse=order == "desc"), f"not in ({sort}, serial) {order} order"


def test_pages_keep_their_size_and_the_last_says_so(fleet: Fleet, read: Callable[[str], Any]) -> None:
    walked = list(pages(read, 10))
    assert [len(p["items"]) for p in walked] == [10, 10, 10, 10]
    assert walked[0]["total"] == 40 and walked[-1]["next"] is None
    assert read("/devices")["limit"] == 50 and len(read("/devices?limit=500")["items"]) == 40
    for item in (d for page in walked for d in page["items"]):  # each device as GET /devices/<serial> has it
        facts = fleet.devices[item["serial"]]
        assert (item["profile"], item["state"], item["pid"]) == (facts["profile"], facts["state"], facts["pid"])


# ---- filters and search ---------------------------------------------------------------------------------------------


def test_each_filter_lists_exactly_its_devices(fleet: Fleet, read: Callable[[str], Any]) -> None:
    at = BASE + dt.timedelta(minutes=15)
    stamp = at.isoformat() + "Z"
    cases: list[tuple[dict[str, str], set[str]]] = [
        *(({"state": s}, fleet.where(state=s)) for s in DEVICE_STATES),
        ({"protocol": "cns"}, fleet.where(protocol="cns")), ({"protocol": "pnp"}, fleet.where(protocol="pnp")),
        ({"profile": "branch"}, fleet.where(profile="branch")), ({"profile": ""}, fleet.where(profile=None)),
        ({"profile": "nobody-has-it"}, set()),
        ({"pid": "IE3400"}, fleet.where(pid="IE3400")),
        ({"software_version": "17.6.5"}, fleet.where(software_version="17.6.5")),
        ({"last_seen_after": stamp}, {s for s, f in fleet.devices.items() if f["last_seen"] >= at}),
        ({"last_seen_before": stamp}, {s for s, f in fleet.devices.items() if f["last_seen"] < at}),
        # The same instant written in another time zone.
        ({"last_seen_before": (at + dt.timedelta(hours=2)).isoformat() + "+02:00"},
         {s for s, f in fleet.devices.items() if f["last_seen"] < at}),
        ({"state": "failed", "pid": "ISR4331"}, fleet.where(state="failed", pid="ISR4331")),
        ({"protocol": "pnp", "software_version": "17.9.4a", "sort": "last_seen"},
         fleet.where(protocol="pnp", software_version="17.9.4a")),
    ]
    for params, expected in cases:
        listed = walk(read, 4, **params)
        assert set(listed) == expected and len(listed) == len(expected), params
        assert read(f"/devices?{urlencode(params)}")["total"] == len(expected), params
    assert any(len(expected) > 4 for _, expected in cases[:7]), "the fleet spreads over the states"


def test_search_is_a_case_insensitive_prefix_of_serial_or_hostname(fleet: Fleet, read: Callable[[str], Any]) -> None:
    fleet.add(serial="FOC2231X0AB", hostname="edge-7")
    fleet.add(serial="JAE77001", hostname="Lyon-Core-1")
    fleet.add(serial="JAE77002", hostname="core-lyon")
    fleet.add(serial="A_B1", hostname="")
    fleet.add(serial="AXB1", hostname="")
    assert walk(read, search="foc2231x") == ["FOC2231X0AB"]
    assert walk(read, search="LYON") == ["JAE77001"]  # a prefix, not a substring: core-lyon stays out
    assert walk(read, search="jae7700") == ["JAE77001", "JAE77002"]
    assert walk(read, search="a_") == ["A_B1"]  # '_' and '%' are characters, not wildcards
    assert walk(read, search="%") == []
    site0 = [s for s, f in fleet.devices.items() if f["hostname"][:5] == "site0"]
    assert walk(read, search="site0") == sorted(site0, key=lambda s: (fleet.devices[s]["hostname"], s))
    assert walk(read, serial="jae770") == ["JAE77001", "JAE77002"]
    assert walk(read, serial="lyon") == []
    assert walk(read, search="\x00") == []  # no stored text has a NUL (PostgreSQL cannot hold one)
    assert len(walk(read, search="")) == len(fleet.devices)


def match_order(fleet: Fleet, text: str) -> list[str]:
    """The devices a search for ``text`` lists, in its order: serial matches by serial in lower case, then the
    hostname matches by hostname in lower case (the serial breaking ties)."""
    text = text.lower()
    by_serial = [s for s in fleet.devices if s.lower().startswith(text)]
    by_hostname = [s for s, f in fleet.devices.items()
                   if f["hostname"].lower().startswith(text) and s not in by_serial]
    return (sorted(by_serial, key=lambda s: (s.lower(), s))
            + sorted(by_hostname, key=lambda s: (fleet.devices[s]["hostname"].lower(), s)))


def test_a_search_lists_serial_matches_then_hostname_matches_while_devices_arrive(
        fleet: Fleet, read: Callable[[str], Any]) -> None:
    fleet.add(6, hostname="Fw-Edge")  # hostnames that start like the F... serials
    fleet.add(3, hostname="fw-core")
    for order in ("asc", "desc"):
        present = match_order(fleet, "f")
        assert len(present) > 20 and any(fleet.devices[s]["hostname"].lower().startswith("fw") for s in present)
        seen: list[str] = []
        for page in pages(read, 4, search="F", order=order):
            assert page["sort"] == "match" and page["order"] == order
            seen += [d["serial"] for d in page["items"]]
            fleet.add(1, hostname="fw-new")  # arrivals on both sides of the position, in both parts
            fleet.add(1)
        assert sorted(seen) == sorted(set(seen)), "a device was listed twice"
        assert set(present) <= set(seen), f"devices missed: {sorted(set(present) - set(seen))}"
        expected = match_order(fleet, "f")
        assert seen == [s for s in (expected if order == "asc" else expected[::-1]) if s in seen]


def test_a_search_in_another_order_and_a_count_that_stops(fleet: Fleet, read: Callable[[str], Any]) -> None:
    fleet.add(serial="JAE900001", hostname="foc-lab")  # a hostname match among the F... serial matches
    matches = set(match_order(fleet, "fo"))
    by_serial = walk(read, search="fo", sort="serial")
    assert by_serial == sorted(matches) and read("/devices?search=fo&sort=serial")["sort"] == "serial"
    by_pid = walk(read, search="fo", sort="pid", order="desc")
    assert by_pid == sorted(matches, key=lambda s: (fleet.devices[s]["pid"], s), reverse=True)
    first = read("/devices?search=fo")
    assert first["total"] == len(matches) and first["total_capped"] is False
    with fleet.app.app_context():  # more matches than a search counts
        db.session.execute(insert(Device), [{"serial": f"CAP{n:05d}", "state": "unclaimed", "first_seen": BASE,
                                             "last_seen": BASE, "variables": {}}
                                            for n in range(inventory.SEARCH_COUNT_LIMIT + 5)])
        db.session.commit()
    capped = read("/devices?search=cap")
    assert capped["total"] == inventory.SEARCH_COUNT_LIMIT and capped["total_capped"] is True
    assert read("/devices")["total"] == len(fleet.devices) + inventory.SEARCH_COUNT_LIMIT + 5  # not a search


# ---- counts and history ---------------------------------------------------------------------------------------------


def test_counts_agree_with_the_rows(fleet: Fleet, read: Callable[[str], Any]) -> None:
    fleet.add(5, state="expected")
    counts = read("/devices/counts")
    assert counts["total"] == len(fleet.devices) == read("/devices")["total"]
    assert set(counts["by_state"]) == set(DEVICE_STATES)
    for state, count in counts["by_state"].items():
        assert count == len(fleet.where(state=state)) == read(f"/devices?state={state}")["total"], state
    for protocol in ("cns", "pnp"):
        assert counts["by_protocol"][protocol] == read(f"/devices?protocol={protocol}")["total"]
    assert counts["by_protocol"]["none"] == len(fleet.where(protocol="")) >= 5
    assert sum(g["count"] for g in counts["groups"]) == counts["total"]
    assert {(g["state"], g["protocol"]) for g in counts["groups"]} == {
        (f["state"], f["protocol"] or "none") for f in fleet.devices.values()}


def test_history_shows_each_attempt_with_the_device_error_and_the_events(
        inventory_app: Flask, read: Callable[[str], Any]) -> None:
    error = "%Error opening flash:pnp-config.cfg (No space left on device)"
    with inventory_app.app_context():
        db.session.add(Profile(name="isr", match_pid="ISR*", config_template="hostname {{ serial }}"))
        db.session.commit()
        engine.contact(DeviceIdentity(serial="FOC10", protocol="pnp", pid="ISR4331"))  # a serial like FOC1's
        action = engine.contact(DeviceIdentity(serial="FOC1", protocol="pnp", pid="ISR4331"))
        for _ in range(3):
            action = engine.report("FOC1", action.correlator, Outcome(False, detail=error, error_code="1412"))
        record_event("gateway.state", {"state": "active"})  # names no device
        db.session.commit()
    history = read("/devices/FOC1/history")
    assert history["device"]["serial"] == "FOC1" and history["device"]["state"] == "failed"
    (job,) = history["jobs"]
    assert job["state"] == "failed" and job["failed_step"] == "identify"
    failed = [s for s in job["steps"] if s["state"] == "failed"]
    assert [s["attempt"] for s in failed] == [1, 2, 3]
    for step in failed:
        assert step["error"] == f"{error} (error 1412)"
        assert step["requested_at"] and step["answered_at"] and step["duration_ms"] >= 0
    events = history["events"]
    assert {e["payload"].get("job", {}).get("device", e["payload"].get("device", {}))["serial"]
            for e in events} == {"FOC1"}
    assert [e["type"] for e in events][:1] == ["job.failed"] and "device.connected" in [e["type"] for e in events]
    assert [e["created_at"] for e in events] == sorted((e["created_at"] for e in events), reverse=True)
    assert all(e["sent_at"] is None for e in events) and history["more_events"] is False
    assert read("/devices/FOC10/history")["jobs"][0]["state"] == "running"


def test_the_read_role_reads_the_inventory_and_no_token_reads_nothing(fleet: Fleet,
                                                                      read: Callable[[str], Any]) -> None:
    serial = next(iter(fleet.devices))
    assert read("/devices")["items"] and read("/devices/counts")["total"] == 40
    assert read(f"/devices/{serial}/history")["device"]["serial"] == serial
    for path in ("/devices", "/devices/counts", f"/devices/{serial}/history"):
        assert fleet.app.test_client().get(f"/api/v1{path}").status_code == 401


# ---- refusals -------------------------------------------------------------------------------------------------------


@pytest.fixture
def refused(app: Flask) -> Callable[[str], tuple[list[str], str]]:
    """``refused(query)``: (error.fields, error.message) of a GET /devices that must be a 422."""
    client = app.test_client()
    with app.app_context():
        headers = {"Authorization": f"Bearer {issue_token('console', 'read')}"}

    def get(query: str) -> tuple[list[str], str]:
        answer = client.get(f"/api/v1/devices?{query}", headers=headers)
        assert answer.status_code == 422, (query, answer.get_json())
        error = answer.get_json()["error"]
        return error["fields"], error["message"]

    return get


@pytest.mark.parametrize(("query", "field", "says"), [
    ("state=lost", "state", "state must be one of expected, unclaimed, claimed, provisioning, provisioned, failed"),
    ("protocol=snmp", "protocol", "protocol must be one of cns, pnp"),
    ("limit=0", "limit", "limit must be an integer from 1 to 500"),
    ("limit=10000", "limit", "limit must be an integer from 1 to 500"),
    ("limit=ten", "limit", "limit must be an integer from 1 to 500"),
    ("sort=hostname", "sort", "sort must be one of serial, last_seen, state, pid"),
    ("order=up", "order", "order must be asc or desc"),
    ("cursor=bm90LWEtY3Vyc29y", "cursor", "not a cursor this server handed out"),
    ("cursor=***", "cursor", "not a cursor this server handed out"),
    ("last_seen_after=yesterday", "last_seen_after", "must be an RFC 3339 date-time"),
    ("last_seen_before=2026-02-30T00:00:00Z", "last_seen_before", "must be an RFC 3339 date-time"),
    ("pid=" + "x" * 256, "pid", "longer than 255"),
    ("offset=50", "offset", "paged with cursor"),
    ("colour=red", "colour", "unknown query parameter"),
])
def test_bad_parameters_are_refused_naming_what_is_wrong(refused: Callable[[str], tuple[list[str], str]],
                                                         query: str, field: str, says: str) -> None:
    fields, message = refused(query)
    assert fields == [field] and says in message


def test_a_cursor_only_continues_its_own_walk(app: Flask, refused: Callable[[str], tuple[list[str], str]]) -> None:
    fleet = Fleet(app)
    fleet.add(5, state="failed")
    with app.app_context():
        first = inventory.read_page(inventory.inventory_query({"state": "failed", "limit": "2", "sort": "pid"}))
    cursor = first[1]
    assert cursor is not None
    for query in (f"cursor={cursor}&sort=pid", f"cursor={cursor}&state=claimed", f"cursor={cursor}&state=failed&"
                  "sort=serial", f"cursor={cursor}&state=failed&order=desc", f"cursor={cursor}x"):
        fields, message = refused(query)
        assert fields == ["cursor"] and "start the walk again without a cursor" in message, query


# ---- the plans ------------------------------------------------------------------------------------------------------

PLAN_DEVICES = 20_000


def full_scans(plan: list[str]) -> list[str]:
    """The plan's steps that read a whole table rather than an index (PostgreSQL's, then SQLite's words)."""
    return [line for line in plan if "Seq Scan on" in line or line in ("SCAN devices", "SCAN outbox")]


def sorts(plan: list[str]) -> list[str]:
    """The plan's steps that sort rows."""
    return [line for line in plan if "TEMP B-TREE" in line or re.search(r"(^|->)\s*(Incremental )?Sort\s+\(cost", line)]


def test_the_inventory_queries_run_on_their_indexes(inventory_app: Flask) -> None:
    """With a fleet of 20,000 (the planner's statistics up to date, as autovacuum keeps them on PostgreSQL), the first
    page, a deep page, a filter, a search, a sort by last seen, the counts and a device's events read indexes, never
    a whole table; the main query (by serial) needs no sort either."""
    rng = random.Random(5)
    with inventory_app.app_context():
        db.session.execute(insert(Device), [
            {"serial": f"FOC{n:07d}", "hostname": f"site{n % 500:03d}-sw{n:05d}", "pid": rng.choice(PIDS),
             "software_version": rng.choice(VERSIONS), "state": rng.choice(DEVICE_STATES), "protocol": "pnp",
             "first_seen": BASE, "last_seen": BASE + dt.timedelta(seconds=n), "variables": {}}
            for n in range(PLAN_DEVICES)])
        db.session.execute(insert(OutboxEvent), [
            {"event_id": f"e{n}", "type": "job.step", "created_at": BASE, "sent_at": BASE,
             "payload": {"job": {"id": n, "device": {"serial": f"FOC{n % PLAN_DEVICES:07d}"}}}}
            for n in range(3 * PLAN_DEVICES)])
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE devices")
                connection.exec_driver_sql("VACUUM ANALYZE outbox")
        deep = inventory.read_page(inventory.inventory_query({"limit": "500"}))[1]
        recent = inventory.read_page(inventory.inventory_query({"sort": "last_seen", "order": "desc"}))[1]
        queries = {
            "first page": inventory.page_statement(inventory.inventory_query({})),
            "deep page": inventory.page_statement(inventory.inventory_query({"cursor": deep or ""})),
            "failed": inventory.page_statement(inventory.inventory_query({"state": "failed"})),
            "search": inventory.page_statement(inventory.inventory_query({"search": "FOC00123"})),
            "search, hostname part": inventory.segment_statement(
                inventory.inventory_query({"search": "site012"}), "H", 51),
            "search by pid": inventory.page_statement(inventory.inventory_query({"search": "FOC00123", "sort": "pid"})),
            "search count": inventory.count_statement(inventory.inventory_query({"search": "FOC0012"})),
            "recently seen, deep": inventory.page_statement(inventory.inventory_query(
                {"sort": "last_seen", "order": "desc", "cursor": recent or ""})),
            "counts": inventory.COUNTS_STATEMENT,
            "events": inventory.device_events_statement("FOC0000042"),
        }
        plans = {name: inventory.query_plan(stmt) for name, stmt in queries.items()}
    for name, plan in plans.items():
        assert not full_scans(plan), f"{name} reads a whole table:\n" + "\n".join(plan)
        assert any("INDEX" in line.upper() for line in plan), f"{name} uses no index:\n" + "\n".join(plan)
    for name in ("first page", "deep page"):
        assert not sorts(plans[name]), f"{name} sorts instead of reading the serial index:\n" + "\n".join(plans[name])
    for name, index in (("search", "serial_folded"), ("search, hostname part", "hostname_folded"),
                        ("search count", "serial_folded")):
        assert index in "\n".join(plans[name]), f"{name} does not read {index}:\n" + "\n".join(plans[name])
    # The match order is the folded index's: a page reads a page of it, sorting at most the ties of one entry.
    assert not [line for line in sorts(plans["search"]) if "Incremental" not in line and "RIGHT PART" not in line], \
        "\n".join(plans["search"])
    by_pid = "\n".join(plans["search by pid"])
    assert "serial_folded" in by_pid and "hostname_folded" in by_pid, by_pid
