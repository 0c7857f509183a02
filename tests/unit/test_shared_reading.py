"""Status readers share one reading: a crowd of /status, /metrics and dashboard requests costs one build."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flask import Flask

from pnp_integrated.status import STATUS_MAX_AGE, SharedReading


def test_readers_at_once_share_one_build_and_a_later_reader_gets_a_new_one() -> None:
    reading, builds = SharedReading(), []

    def build() -> int:
        builds.append(1)
        time.sleep(0.2)  # a slow build: everyone arriving meanwhile waits for it instead of building too
        return len(builds)

    results: list[int] = []
    readers = [threading.Thread(target=lambda: results.append(reading.get(build, 5.0))) for _ in range(50)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert results == [1] * 50 and len(builds) == 1
    assert reading.get(build, 5.0) == 1  # still fresh
    assert reading.get(build, 0.0) == 2  # a reader that wants it newer than that gets a new build


def test_status_answers_from_a_reading_at_most_a_second_old(app_factory: Callable[..., Flask]) -> None:
    app = app_factory()
    client = app.test_client()
    first = client.get("/status").get_json()
    assert client.get("/status").get_json() == first  # within the second: the same reading
    time.sleep(STATUS_MAX_AGE + 0.1)
    again = client.get("/status").get_json()
    assert again["at"] != first["at"] and again["rows"]  # measured again (``at`` has whole seconds), a whole table
