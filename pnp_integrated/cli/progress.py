"""Progress of the long ``pnpp`` commands, on stderr: a bar on a terminal, a few plain lines anywhere else.

A bar redraws one line with carriage returns; a log file or a CI transcript would keep every redraw, one per device
of a 10,000-device simulation. Off a terminal a plain line is written each time another tenth of the work is done,
and, while slow work advances, at least every ``LINE_EVERY`` seconds: about ten lines for a run of any size, plus
one per ``LINE_EVERY`` seconds of a long one. stdout keeps only what the command printed before, so scripts reading
its summary lines read the same text.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

import click

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

STEPS = 10  # a plain line at each tenth of the work
LINE_EVERY = 15.0  # seconds: the longest wait for a plain line while the work advances
MIB = 1024 * 1024


class Progress:
    """Work done out of ``total``, told with :meth:`advance` (from any thread) and shown on ``stream``.

    ``describe(done)`` says how far, in the work's own unit (``"3/10 devices"``, ``"12.0/40.0 MiB"``); a note given
    to :meth:`advance` follows it (``"2 done, 1 failed"``). Use it as a context manager: the bar ends its line on exit.
    """

    def __init__(self, total: int, label: str, describe: Callable[[int], str], *, stream: TextIO | None = None,
                 steps: int = STEPS, line_every: float = LINE_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(total, 0)
        self.label = label
        self.done = 0
        self._describe = describe
        self._note = ""
        self._stream = stream if stream is not None else sys.stderr
        self._steps, self._line_every, self._clock = steps, line_every, clock
        self._lock = threading.RLock()  # DeviceProgress counts and advances under it
        self._told_step = 0
        self._told_done = 0
        self._told_at = clock()
        self._bar: ProgressBar[str] | None = None
        if self._stream.isatty():
            self._bar = click.progressbar(length=self.total or 1, label=label, file=self._stream, show_eta=True,
                                          show_percent=True, item_show_func=lambda info: info)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    def advance(self, amount: int = 1, note: str | None = None) -> None:
        """Count ``amount`` more done; ``note`` (when given) replaces the text shown after the count."""
        with self._lock:
            self.done += amount
            if note is not None:
                self._note = note
            if self._bar is not None:
                self._bar.update(amount, self._info())
                return
            step = self._steps if self.total == 0 else min(self.done, self.total) * self._steps // self.total
            now = self._clock()
            if step > self._told_step or (now - self._told_at >= self._line_every and self.done != self._told_done):
                self._told_step, self._told_done, self._told_at = step, self.done, now
                percent = 100 if self.total == 0 else min(self.done, self.total) * 100 // self.total
                click.echo(f"{self.label}: {percent:3d}% {self._info()}", file=self._stream)

    def _info(self) -> str:
        text = self._describe(self.done)
        return f"{text} ({self._note})" if self._note else text


class DeviceProgress(Progress):
    """Simulated devices through day 0: how many finished of ``total``, how many of those did and how many failed."""

    def __init__(self, total: int, **options: Any) -> None:
        super().__init__(total, "day 0", lambda done: f"{done}/{total} devices", **options)
        self.ok = 0
        self.failed = 0

    def finished(self, ok: bool) -> None:
        """One more device finished (``ok``: provisioned); called from the simulators' threads."""
        with self._lock:
            if ok:
                self.ok += 1
            else:
                self.failed += 1
            self.advance(1, f"{self.ok} done, {self.failed} failed")


def byte_progress(total: int, label: str, **options: Any) -> Progress:
    """Progress of ``total`` bytes read, shown in MiB."""
    return Progress(total, label, lambda done: f"{done / MIB:.1f}/{total / MIB:.1f} MiB", **options)
