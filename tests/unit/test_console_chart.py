"""The overview's activity chart, drawn from the API's activity: a column per minute, and per few minutes for a day,
with every job counted once; the HA transitions where they happened on the same axis."""

from __future__ import annotations

import datetime as dt

from pnp_integrated.console.chart import LEFT, MAX_COLUMNS, WIDTH, activity_chart


def _activity(minutes: int, per_minute: list[tuple[int, int, int]],
              transitions: tuple[tuple[int, str], ...] = ()) -> dict[str, object]:
    since = dt.datetime(2026, 3, 1, 8, 0)

    def at(offset: float) -> str:
        return (since + dt.timedelta(minutes=offset)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    return {"since": at(0), "until": at(minutes), "minutes": minutes,
            "per_minute": [{"minute": at(m)[:17] + "00Z", "completed": c, "failed": f, "cancelled": 0}
                           for m, c, f in per_minute],
            "transitions": [{"at": at(m), "state": state, "node": "gw-b", "reason": "VIP here"}
                            for m, state in transitions]}


def test_three_hours_draw_a_column_per_minute_at_its_time() -> None:
    chart = activity_chart(_activity(180, [(0, 5, 0), (90, 40, 2), (179, 20, 4)], ((90, "ACTIVE"),)))
    assert [c.minutes for c in chart.columns] == [1, 1, 1]
    assert [c.label for c in chart.columns] == ["08:00 UTC: 5 completed, 0 failed",
                                                "09:30 UTC: 40 completed, 2 failed",
                                                "10:59 UTC: 20 completed, 4 failed"]
    busiest = chart.columns[1]
    assert busiest.up_height == chart.axis_y - chart.top  # the scale's top is the busiest minute
    assert chart.columns[2].down_height == chart.bottom - chart.axis_y  # failures have a scale of their own
    assert (chart.most_completed, chart.most_failed) == (40, 4)
    [mark] = chart.transitions
    assert mark.x == busiest.x and mark.label == "09:30:00 UTC: gw-b became ACTIVE (VIP here)"
    assert [t.label for t in chart.ticks] == ["08:00", "08:30", "09:00", "09:30", "10:00", "10:30"]


def test_a_day_draws_a_few_hundred_columns_counting_every_job_once() -> None:
    minutes = 1440
    per_minute = [(m, m % 7, m % 3) for m in range(minutes)]
    chart = activity_chart(_activity(minutes, per_minute))
    assert len(chart.columns) == MAX_COLUMNS and {c.minutes for c in chart.columns} == {4}
    assert chart.total_completed == sum(c for _, c, _ in per_minute)
    assert chart.total_failed == sum(f for _, _, f in per_minute)
    assert chart.columns[1].label == "08:04 to 08:07 UTC: " + f"{sum(m % 7 for m in range(4, 8))} completed, " \
        + f"{sum(m % 3 for m in range(4, 8))} failed"
    last = chart.columns[-1]
    assert LEFT <= last.x and last.x + last.width <= WIDTH
