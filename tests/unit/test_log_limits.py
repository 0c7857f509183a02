"""Lines about client mistakes are rate-limited per message, with a count of what was held back."""

from __future__ import annotations

import logging

from pnp_integrated.logs import ClientMistakeLimit, client_mistake


def _record(msg: str, kind: str = "tls-refused-443") -> logging.LogRecord:
    record = logging.LogRecord("pnp_integrated.listeners", logging.INFO, __file__, 1, msg, (), None)
    if kind:
        record.__dict__.update(client_mistake(kind))
    return record


def test_a_flood_of_one_mistake_logs_twenty_lines_a_minute_then_says_how_many_were_held() -> None:
    clock = [0.0]
    limit = ClientMistakeLimit(per_minute=20, clock=lambda: clock[0])
    shown = [limit.filter(_record("TLS handshake refused on port %s")) for _ in range(1000)]
    assert shown.count(True) == 20
    assert limit.filter(_record("TLS handshake refused on port %s", "tls-refused-11012"))  # each port its own
    assert limit.filter(_record("device connected", kind=""))  # and ordinary lines are never held
    clock[0] += 61
    record = _record("TLS handshake refused on port %s")
    assert limit.filter(record)
    assert "(980 more like it in the last minute were not logged)" in str(record.msg)
