"""How ``pnpp run`` restarts its gateway with new settings when asked (the enrolment of a pair's secondary).

``pnpp run`` tells gunicorn its process id (:data:`~pnp_integrated.api.enrolment.RUN_PID_VARIABLE`); a worker that
has written new settings sends it :data:`~pnp_integrated.api.enrolment.RESTART_SIGNAL` once its answer is out.
``pnpp run`` then stops gunicorn as on SIGTERM (in-flight requests drain) and executes itself again with the same
arguments and environment: everything is read afresh from the configuration file (settings, migrations on the new
database, which ports to bind), as at a first start, and the process keeps its id, so a service manager or a test
that started it still holds it. Stopping (a secondary that leaves its pair) needs nothing new: SIGTERM is a stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

import click

from ..api.enrolment import RESTART_SIGNAL, RUN_PID_VARIABLE

# Runs the same `pnpp` command group in a fresh interpreter (the console script's path is not needed).
_ENTRY = "import sys; from pnp_integrated.cli import main; sys.exit(main(prog_name='pnpp'))"


class GatewayRestart:
    """Installed by ``pnpp run`` around its gunicorn child: a restart request stops the child, then re-executes."""

    def __init__(self) -> None:
        self.requested = False
        self._child: subprocess.Popen[bytes] | None = None

    @staticmethod
    def child_environment() -> dict[str, str]:
        """gunicorn's environment: this process's, and who to ask for a restart."""
        return {**os.environ, RUN_PID_VARIABLE: str(os.getpid())}

    def watch(self, child: subprocess.Popen[bytes]) -> None:
        """From now on :data:`RESTART_SIGNAL` stops ``child`` gracefully and marks the restart."""
        self._child = child
        signal.signal(RESTART_SIGNAL, self._on_request)

    def _on_request(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)

    def restart_if_requested(self) -> None:
        """Once the child has stopped: start ``pnpp run`` again afresh (does not return) if a restart was asked."""
        if not self.requested:
            return
        click.echo("pnp-integrated: restarting with the new settings")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-c", _ENTRY, *sys.argv[1:]])
