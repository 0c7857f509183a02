"""Logging set-up: one line per event, plain text or JSON (``PNP_LOG_FORMAT``)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "message": record.getMessage(),
        }
        for key in ("device", "port", "peer", "job", "step"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


# Lines about what clients got wrong (refused TLS handshakes, clients gone mid-response) are logged with
# ``extra=client_mistake(kind)``: at most CLIENT_MISTAKES_PER_MINUTE of each kind a minute, then a count of the
# rest, so a scan or a flood cannot fill the disk with log lines.
CLIENT_MISTAKES_PER_MINUTE = 100


def client_mistake(kind: str) -> dict[str, str]:
    """The ``extra`` of a client-mistake log line; ``kind`` groups the lines that share an allowance."""
    return {"client_mistake": kind}


class ClientMistakeLimit(logging.Filter):
    """Lets through at most ``per_minute`` client-mistake records of each kind a minute; the first one after a
    minute in which some were held back says how many."""

    def __init__(self, per_minute: int = CLIENT_MISTAKES_PER_MINUTE, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.clock = clock
        self._windows: dict[tuple[str, str], list[float | int]] = {}  # (logger, kind) -> [start, shown, held]

    def filter(self, record: logging.LogRecord) -> bool:
        kind = getattr(record, "client_mistake", "")
        if not kind:
            return True
        now = self.clock()
        key = (record.name, str(kind))
        window = self._windows.get(key)
        if window is None or now - window[0] >= 60.0:
            held = int(window[2]) if window is not None else 0
            if len(self._windows) > 1000:  # only ever a handful of messages; never grows with clients
                self._windows.clear()
            self._windows[key] = [now, 1, 0]
            if held:
                record.msg = f"{record.msg} ({held} more like it in the last minute were not logged)"
            return True
        if window[1] < self.per_minute:
            window[1] += 1
            return True
        window[2] += 1
        return False


_configured: list[str] = []


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Configure the ``pnp_integrated`` logger once per process (repeat calls with the same format are no-ops)."""
    if _configured and _configured[-1] == fmt:
        return
    logger = logging.getLogger("pnp_integrated")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    handler.addFilter(ClientMistakeLimit())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    _configured.append(fmt)
