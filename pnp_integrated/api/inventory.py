"""The device inventory behind ``GET /api/v1/devices``: filters, sort keys, keyset cursors, and the fleet counts.

Theory of operation
-------------------
A page is the first ``limit`` devices, in (sort key, serial) order, that come after a position; the position is
the last device of the previous page, carried by that page's ``next`` cursor. A page starts after a device's keys,
not after a count of devices, so devices added or removed during a walk never shift it: every device present all
along whose sort key does not change is listed exactly once, and a deep page costs what the first one does. The
serial breaks ties: unique like the id and as unchanging, it lets one index per column, (column, serial), serve
both the sort by that column and a filter on it in the default order, by serial.

A search (``search``, or the ``serial`` prefix) given no sort walks its prefix in the match order: the devices
whose serial starts with it, by folded serial, then those whose hostname does, by folded hostname; each part is a
walk of its folded index from the prefix, so a page costs the same whether ten devices match or ninety thousand
(sorting the matches instead cost 0.5 to 2 s for a one-letter search). A search in another order reads and sorts
all its matches (see :func:`page_statement`); its count stops at :data:`SEARCH_COUNT_LIMIT`.

The cursor is opaque to clients (base64url of a small JSON array): the sort and order it was made for, a digest of
the filters, and the position. A cursor read with other filters, or another sort or order, is refused: its
position would mean nothing there.

Every filter and sort has an index (migration 0004): (column, serial) for each sort key and equality filter,
(state, protocol) for the counts, ``lower(serial)`` and ``lower(hostname)`` for the case-insensitive prefix
search. A prefix is a range on ``lower(column)`` compared byte by byte (PostgreSQL's ``~>=~`` and ``~<~`` on a
``text_pattern_ops`` index; SQLite compares bytes anyway), so it means the same in any collation. :func:`query_plan`
shows how the database runs a statement; the tests hold the main queries to their indexes with it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.orm import InstrumentedAttribute, aliased, load_only
from sqlalchemy.orm.attributes import set_committed_value

from ..models import OUTBOX_DEVICE_SERIAL, Device, OutboxEvent, Profile, db
from ..provisioning.types import DEVICE_STATES
from .errors import invalid

if TYPE_CHECKING:
    from .schemas import DeviceQuery

DEFAULT_LIMIT, MAX_LIMIT = 50, 500
SORT_KEYS: dict[str, InstrumentedAttribute[Any]] = {
    "serial": Device.serial, "last_seen": Device.last_seen, "state": Device.state, "pid": Device.pid}
# A search's order when no sort is asked for: the devices whose serial starts with the text, by serial as folded to
# lower case, then those whose hostname does, by hostname as folded. Each is a walk of its folded index from the
# prefix, so a page costs the same whether ten devices match or ninety thousand.
MATCH = "match"
SORTS = (*SORT_KEYS, MATCH)  # what an answer's sort can say
SEGMENTS = {"S": Device.serial, "H": Device.hostname}  # a match order's parts, in ascending order
ORDERS = ("asc", "desc")
# A search counts its matches up to this many: counting costs what the matches number, a page does not.
SEARCH_COUNT_LIMIT = 1_000
PROTOCOLS = ("cns", "pnp")
# Filter -> longest value (the column's own length: a longer value can match nothing).
FILTERS = {"state": 32, "protocol": 16, "profile": 255, "pid": 255, "software_version": 100, "last_seen_after": 64,
           "last_seen_before": 64, "search": 255, "serial": 255}
HISTORY_EVENTS = 200  # a device's history lists at most this many of its latest events
MAX_CURSOR = 1024  # characters; a cursor this server hands out is a few hundred at most
CURSOR_VERSION = 1
# The last code point: lower(prefix) || _TOP is above every string that starts with the prefix.
_TOP = "\U0010ffff"
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))",
                      re.ASCII)


@dataclass(frozen=True)
class Position:
    """The last device of a page: its sort key and serial."""

    key: str | dt.datetime
    serial: str


@dataclass(frozen=True)
class InventoryQuery:
    """One inventory request, validated: the sort, the page size, the filters (as given) and where the page starts."""

    sort: str = "serial"
    descending: bool = False
    limit: int = DEFAULT_LIMIT
    filters: tuple[tuple[str, str], ...] = ()
    after: Position | None = None

    @property
    def order(self) -> str:
        return "desc" if self.descending else "asc"

    @property
    def prefix(self) -> tuple[str, bool] | None:
        """The prefix search that narrows the devices: (its text, whether hostnames match too); ``None``: none."""
        given = dict(self.filters)
        if given.get("search"):
            return given["search"], True
        if given.get("serial"):
            return given["serial"], False
        return None

    @property
    def searches(self) -> bool:
        return self.prefix is not None

    def fingerprint(self) -> str:
        """A digest of the filters: a cursor is only good for the walk it came from."""
        return hashlib.sha256(json.dumps(sorted(self.filters)).encode()).hexdigest()[:16]

    def cursor_after(self, device: Device, match_key: str = "") -> str:
        """The opaque cursor of the page that follows ``device`` (in the match order: after ``match_key``, its
        segment and folded text)."""
        key = match_key if self.sort == MATCH else getattr(device, self.sort)
        encoded = key.isoformat(timespec="microseconds") if isinstance(key, dt.datetime) else key
        raw = json.dumps([CURSOR_VERSION, self.sort, self.order, self.fingerprint(), encoded, device.serial],
                         separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


# ---- reading the query string ---------------------------------------------------------------------------------------


def timestamp(value: str) -> dt.datetime | None:
    """An RFC 3339 date-time as the naive UTC the database stores (``None``: not one); times beyond what it can hold
    are clamped."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = int((match.group(7) or ".0")[1:7].ljust(6, "0"))
    offset = dt.timedelta()
    if match.group(9):
        off_hours, off_minutes = int(match.group(10)), int(match.group(11))
        if off_hours > 23 or off_minutes > 59:
            return None
        offset = dt.timedelta(hours=off_hours, minutes=off_minutes) * (-1 if match.group(9) == "-" else 1)
    if second == 60:  # a leap second: the last instant of the minute before it
        second, fraction = 59, 999999
    try:
        local = dt.datetime(year, month, day, hour, minute, second, fraction, tzinfo=dt.timezone(offset))
    except ValueError:
        return None
    try:
        return local.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:  # the first or last day of year 1 or 9999, shifted past the calendar
        return dt.datetime.min if year == 1 else dt.datetime.max


def _bad_cursor(message: str) -> Exception:
    return invalid(f"cursor: {message}; start the walk again without a cursor", fields=["cursor"])


def _decode_cursor(cursor: str) -> list[Any]:
    if not cursor or len(cursor) > MAX_CURSOR:
        raise _bad_cursor("not a cursor this server handed out")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        fields = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_cursor("not a cursor this server handed out") from None
    if (not isinstance(fields, list) or len(fields) != 6 or fields[0] != CURSOR_VERSION
            or fields[1] not in SORTS or fields[2] not in ORDERS or not isinstance(fields[3], str)
            or not isinstance(fields[4], str) or len(fields[4]) > 256
            or (fields[1] == MATCH and fields[4][:1] not in SEGMENTS)
            or not isinstance(fields[5], str) or len(fields[5]) > 255):
        raise _bad_cursor("not a cursor this server handed out")
    return fields


def _position(sort: str, key: str, serial: str) -> Position:
    if sort != "last_seen":
        return Position(key, serial)
    try:
        return Position(dt.datetime.fromisoformat(key).replace(tzinfo=None), serial)
    except ValueError:
        raise _bad_cursor("not a cursor this server handed out") from None


def inventory_query(args: Mapping[str, str] | DeviceQuery) -> InventoryQuery:
    """The query of ``GET /devices`` (its query string, or that string read into its schema); 422 naming what is
    wrong."""
    from .reading import read
    from .schemas import DeviceQuery

    given = args if isinstance(args, DeviceQuery) else read(DeviceQuery, args, "query")
    filters = tuple(sorted((name, value) for name in FILTERS if (value := getattr(given, name)) is not None))
    limit, sort, order = given.limit, given.sort, given.order
    if given.cursor is None:
        default = MATCH if InventoryQuery(filters=filters).searches else "serial"
        return InventoryQuery(sort or default, order == "desc", limit, filters)
    _, cursor_sort, cursor_order, fingerprint, key, serial = _decode_cursor(given.cursor)
    if (sort or cursor_sort) != cursor_sort or (order or cursor_order) != cursor_order:
        raise _bad_cursor(f"it continues a walk by sort={cursor_sort}&order={cursor_order}")
    query = InventoryQuery(cursor_sort, cursor_order == "desc", limit, filters, _position(cursor_sort, key, serial))
    if query.fingerprint() != fingerprint:
        raise _bad_cursor("it continues a walk with other filters (send the same filters with every page)")
    return query


# ---- statements -----------------------------------------------------------------------------------------------------


def _dialect() -> str:
    return db.session.get_bind().dialect.name


_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def bytewise(left: Any, op: str, right: Any, dialect: str) -> ColumnElement[bool]:
    """``left op right`` compared byte by byte, as the folded indexes order (PostgreSQL: its pattern operators;
    SQLite compares bytes anyway)."""
    if dialect == "postgresql":
        return left.op(f"~{op}~", is_comparison=True)(right)  # type: ignore[no-any-return]
    return _COMPARE[op](left, right)  # type: ignore[no-any-return]


def folded_prefix(column: Any, prefix: str, dialect: str) -> ColumnElement[bool]:
    """``lower(column)`` starts with ``lower(prefix)``, as a range the folded index answers."""
    if dialect == "postgresql" and "\x00" in prefix:
        return false()  # PostgreSQL text cannot hold a NUL: nothing stored has one
    folded = func.lower(column)
    low = func.lower(literal(prefix))
    high = low.concat(literal(_TOP)).self_group()  # PostgreSQL's ~<~ binds as tightly as ||
    return and_(bytewise(folded, ">=", low, dialect), bytewise(folded, "<", high, dialect))


def _folded_order(column: Any, descending: bool, dialect: str) -> Any:
    if dialect == "postgresql":  # only the pattern operators' order is the folded index's order
        return text(f"lower({column.table.name}.{column.name}) USING {'~>~' if descending else '~<~'}")
    folded = func.lower(column)
    return folded.desc() if descending else folded.asc()


def _condition(name: str, value: str, dialect: str) -> ColumnElement[bool] | None:
    if dialect == "postgresql" and "\x00" in value:
        return false()  # PostgreSQL text cannot hold a NUL: nothing stored has one
    if name in ("state", "protocol", "pid", "software_version"):
        column: InstrumentedAttribute[str] = getattr(Device, name)
        return column == value
    if name == "profile":
        if not value:  # no profile name is empty: the devices without a profile
            return Device.profile_id.is_(None)
        return Device.profile_id == select(Profile.id).where(Profile.name == value).scalar_subquery()
    if name in ("last_seen_after", "last_seen_before"):
        when = timestamp(value)
        if when is None:  # read by the schema before any statement is made
            raise ValueError(f"{name} is not an RFC 3339 date-time")
        return Device.last_seen >= when if name == "last_seen_after" else Device.last_seen < when
    if not value:  # an empty search or serial prefix: every device
        return None
    if name == "serial":
        return folded_prefix(Device.serial, value, dialect)
    return or_(folded_prefix(Device.serial, value, dialect), folded_prefix(Device.hostname, value, dialect))


def conditions(query: InventoryQuery, dialect: str) -> list[ColumnElement[bool]]:
    """The WHERE clause of the query's filters (no position)."""
    found = (_condition(name, value, dialect) for name, value in query.filters)
    return [c for c in found if c is not None]


def _segments(query: InventoryQuery) -> list[str]:
    """The parts of the match order the page walks, in its direction, from the position's part on."""
    prefix = query.prefix
    assert prefix is not None
    segments = ["S", "H"] if prefix[1] else ["S"]
    if query.descending:
        segments.reverse()
    if query.after is not None:
        segments = segments[segments.index(str(query.after.key)[:1]):]
    return segments


def segment_statement(query: InventoryQuery, segment: str, limit: int,
                      dialect: str | None = None) -> Select[tuple[Device, str]]:
    """Up to ``limit`` devices of one part of the match order after the query's position, with their folded text:
    a walk of the folded index of serial (``S``) or hostname (``H``, the devices whose serial does not match)."""
    dialect = dialect or _dialect()
    prefix, _ = query.prefix or ("", False)
    column = SEGMENTS[segment]
    folded = func.lower(column)
    # Filters other than the one whose prefix the order walks.
    walked = "search" if dict(query.filters).get("search") else "serial"
    others = InventoryQuery(filters=tuple(f for f in query.filters if f[0] != walked))
    where = [folded_prefix(column, prefix, dialect), *conditions(others, dialect)]
    if segment == "H":
        where.append(not_(folded_prefix(Device.serial, prefix, dialect)))
    if query.after is not None and str(query.after.key)[:1] == segment:
        mark = literal(str(query.after.key)[1:])
        serial = literal(query.after.serial, Device.serial.type)
        if query.descending:
            where += [bytewise(folded, "<=", mark, dialect),
                      or_(bytewise(folded, "<", mark, dialect), Device.serial < serial)]
        else:
            where += [bytewise(folded, ">=", mark, dialect),
                      or_(bytewise(folded, ">", mark, dialect), Device.serial > serial)]
    order = (_folded_order(column, query.descending, dialect),
             Device.serial.desc() if query.descending else Device.serial.asc())
    return select(Device, folded.label("folded")).where(*where).order_by(*order).limit(limit)


def page_statement(query: InventoryQuery, dialect: str | None = None) -> Select[Any]:
    """The devices of the query's page, plus one: a row beyond ``limit`` means there is a next page. (In the match
    order, the page's first part: :func:`read_page` goes on into the next when the first runs out.)

    A search in another order reads its matches first, as a materialized CTE, and sorts them: else PostgreSQL walks
    the index of the sort key until it has a page of matches, expecting them spread out, while the devices whose
    serial starts with a prefix sit together in serial order (a six-letter prefix late in the alphabet took it a
    second on 100,000 devices). That costs what the matches number.
    """
    if query.sort == MATCH:
        return segment_statement(query, _segments(query)[0], query.limit + 1, dialect)
    where = conditions(query, dialect or _dialect())
    source: Any = Device
    if query.searches:
        source = aliased(Device, select(Device).where(*where).cte("matches").prefix_with("MATERIALIZED"))
        where = []
    key, serial = getattr(source, query.sort), source.serial
    columns = (key,) if query.sort == "serial" else (key, serial)
    stmt = select(source).where(*where)
    if query.after is not None:
        if query.sort == "serial":
            mark, start = serial, literal(query.after.serial, Device.serial.type)
        else:
            mark = tuple_(key, serial)
            start = tuple_(literal(query.after.key, SORT_KEYS[query.sort].type),
                           literal(query.after.serial, Device.serial.type))
        stmt = stmt.where(mark < start if query.descending else mark > start)
    order = [c.desc() if query.descending else c.asc() for c in columns]
    return stmt.order_by(*order).limit(query.limit + 1)


def count_statement(query: InventoryQuery, dialect: str | None = None) -> Select[tuple[int]]:
    """How many devices match the query's filters; a search's up to one beyond :data:`SEARCH_COUNT_LIMIT`."""
    where = conditions(query, dialect or _dialect())
    if query.searches:
        matches = select(Device.id).where(*where).limit(SEARCH_COUNT_LIMIT + 1).subquery()
        return select(func.count()).select_from(matches)
    return select(func.count()).select_from(Device).where(*where)


def count(query: InventoryQuery) -> tuple[int, bool]:
    """(devices matching the query, whether that is only a lower bound: a search stops counting at the limit)."""
    found = int(db.session.scalar(count_statement(query)) or 0)
    if query.searches and found > SEARCH_COUNT_LIMIT:
        return SEARCH_COUNT_LIMIT, True
    return found, False


# The names of the profiles of a page's devices, in one query: a selectinload costs several times as much per page,
# and a profile's other columns (templates, thousands of serials) are not part of a device's answer.
_PAGE_PROFILES = (select(Profile).options(load_only(Profile.name))
                  .where(Profile.id.in_(bindparam("ids", expanding=True))))


def _read_match_page(query: InventoryQuery) -> tuple[list[Device], str | None]:
    found: list[tuple[Device, str]] = []
    for index, segment in enumerate(_segments(query)):
        part = query if index == 0 else dataclasses.replace(query, after=None)
        rows = db.session.execute(segment_statement(part, segment, query.limit + 1 - len(found))).all()
        found += [(device, segment + folded) for device, folded in rows]
        if len(found) > query.limit:
            break
    cursor = query.cursor_after(*found[query.limit - 1]) if len(found) > query.limit else None
    return [device for device, _ in found[:query.limit]], cursor


def read_page(query: InventoryQuery) -> tuple[list[Device], str | None]:
    """The page's devices (their profiles loaded) and the cursor of the next page (``None`` after the last)."""
    if query.sort == MATCH:
        rows, cursor = _read_match_page(query)
    else:
        rows = list(db.session.scalars(page_statement(query)))
        cursor = query.cursor_after(rows[query.limit - 1]) if len(rows) > query.limit else None
        rows = rows[:query.limit]
    profile_ids = sorted({d.profile_id for d in rows if d.profile_id is not None})
    profiles = {p.id: p for p in db.session.scalars(_PAGE_PROFILES, {"ids": profile_ids})} if profile_ids else {}
    for device in rows:
        set_committed_value(device, "profile", profiles.get(device.profile_id or 0))
    return rows, cursor


COUNTS_STATEMENT = (select(Device.state, Device.protocol, func.count())
                    .group_by(Device.state, Device.protocol).order_by(Device.state, Device.protocol))


def fleet_counts() -> dict[str, Any]:
    """Devices by state and by protocol, from one grouped query (every state listed, zeros included).

    A device known only through the API (expected, never seen) has no protocol yet: it counts under ``none``.
    """
    rows = db.session.execute(COUNTS_STATEMENT)
    groups = [(state, protocol or "none", int(count)) for state, protocol, count in rows]
    by_state = dict.fromkeys(DEVICE_STATES, 0)
    by_protocol = dict.fromkeys((*PROTOCOLS, "none"), 0)
    for state, protocol, count in groups:
        by_state[state] = by_state.get(state, 0) + count
        by_protocol[protocol] = by_protocol.get(protocol, 0) + count
    return {"total": sum(count for _, _, count in groups), "by_state": by_state, "by_protocol": by_protocol,
            "groups": [{"state": s, "protocol": p, "count": c} for s, p, c in groups]}


# The serial an event names, as the outbox index has it (the same text, so that the database uses the index).
EVENT_SERIAL = literal_column(OUTBOX_DEVICE_SERIAL, String)


def device_events_statement(serial: str) -> Select[tuple[OutboxEvent]]:
    """The outbox events naming ``serial``, newest first, one beyond :data:`HISTORY_EVENTS` (there are more)."""
    return (select(OutboxEvent).where(EVENT_SERIAL == serial).order_by(OutboxEvent.id.desc())
            .limit(HISTORY_EVENTS + 1))


def query_plan(stmt: Select[Any]) -> list[str]:
    """How the database runs ``stmt``: SQLite's EXPLAIN QUERY PLAN details or PostgreSQL's EXPLAIN lines."""
    connection = db.session.connection()
    sql = str(stmt.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    if connection.dialect.name == "sqlite":
        return [str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    return [str(row[0]) for row in connection.exec_driver_sql(f"EXPLAIN {sql}")]
