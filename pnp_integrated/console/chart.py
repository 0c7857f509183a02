"""The overview's activity chart: jobs completed and failed per minute, HA transitions on the same time axis.

Pure geometry from the API's ``GET /activity`` answer to what the SVG template draws: one column per minute (per
few minutes beyond :data:`MAX_COLUMNS` minutes, so that a day stays a few hundred shapes), completions rising above
the axis and failures hanging below it (each with its own scale, stated on the chart, so that a few failures among
thousands of completions still show), and a vertical mark at each role change.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 960, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 26, 30
UP_SHARE = 0.68  # of the plot's height, for completions; the rest is for failures
TICK_STEPS = ((60, 10), (180, 30), (360, 60), (720, 120), (1440, 240))  # window (minutes) -> tick every
MAX_COLUMNS = 360


@dataclass(frozen=True)
class Column:
    """One minute (or a few): its bars and what its tooltip says."""

    x: float
    width: float
    minute: str  # its first minute, RFC 3339, UTC
    minutes: int
    completed: int
    failed: int
    up_y: float
    up_height: float
    down_height: float

    @property
    def label(self) -> str:
        first = _parse(self.minute)
        span = first.strftime("%H:%M")
        if self.minutes > 1:
            span += f" to {(first + dt.timedelta(minutes=self.minutes - 1)).strftime('%H:%M')}"
        return f"{span} UTC: {self.completed} completed, {self.failed} failed"


@dataclass(frozen=True)
class Transition:
    x: float
    at: str
    state: str
    node: str
    reason: str

    @property
    def label(self) -> str:
        return f"{self.at[11:19]} UTC: {self.node or 'the gateway'} became {self.state} ({self.reason})"


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class ActivityChart:
    width: int
    height: int
    left: float
    right: float
    top: float
    axis_y: float
    bottom: float
    columns: list[Column]
    transitions: list[Transition]
    ticks: list[Tick]
    most_completed: int
    most_failed: int
    total_completed: int
    total_failed: int
    minutes: int
    per_column: int  # minutes a column counts


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


def activity_chart(activity: dict[str, Any]) -> ActivityChart:
    """The chart of ``activity`` (the API's answer)."""
    since = _parse(activity["since"])
    minutes = int(activity["minutes"])
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    axis_y = TOP + plot_height * UP_SHARE
    step = plot_width / minutes
    per_column = -(-minutes // MAX_COLUMNS)
    sums: dict[int, list[int]] = {}  # column -> [completed, failed]
    for row in activity["per_minute"]:
        index = int((_parse(row["minute"]) - since).total_seconds() // 60)
        if 0 <= index < minutes:
            column = sums.setdefault(index // per_column, [0, 0])
            column[0] += int(row["completed"])
            column[1] += int(row["failed"])
    most_completed = max([1, *(c for c, _ in sums.values())])
    most_failed = max([1, *(f for _, f in sums.values())])
    columns = []
    for index, (completed, failed) in sorted(sums.items()):
        up = (axis_y - TOP) * completed / most_completed
        down = (HEIGHT - BOTTOM - axis_y) * failed / most_failed
        first = since + dt.timedelta(minutes=index * per_column)
        columns.append(Column(LEFT + index * per_column * step, max(1.0, step * per_column - 1),
                              first.strftime("%Y-%m-%dT%H:%M:00Z"), per_column, completed, failed,
                              axis_y - up, up, down))
    transitions = []
    for change in activity["transitions"]:
        offset = (_parse(change["at"]) - since).total_seconds() / 60
        transitions.append(Transition(LEFT + min(max(offset, 0.0), minutes) * step, change["at"], change["state"],
                                      change["node"], change["reason"]))
    every = next((tick for window, tick in TICK_STEPS if minutes <= window), 240)
    first = since + dt.timedelta(minutes=(-since.minute) % every)
    ticks = []
    at = first
    while at < since + dt.timedelta(minutes=minutes):
        ticks.append(Tick(LEFT + (at - since).total_seconds() / 60 * step, at.strftime("%H:%M")))
        at += dt.timedelta(minutes=every)
    return ActivityChart(WIDTH, HEIGHT, LEFT, WIDTH - RIGHT, TOP, axis_y, HEIGHT - BOTTOM, columns, transitions,
                         ticks, most_completed, most_failed, sum(c.completed for c in columns),
                         sum(c.failed for c in columns), minutes, per_column)
