"""Child processes that die with their parent, and who holds a port: what ``pnpp run`` needs to stay one unit.

A node is ``pnpp run`` with two children, the simulated Prime and gunicorn. Killed by SIGKILL, the OOM killer or a
supervisor, a parent cannot stop its children itself, so each child asks the kernel for SIGTERM when its parent
dies (``PR_SET_PDEATHSIG``, kept across ``exec``): it then stops as on ``pnpp run``'s own SIGTERM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` of a child: SIGTERM when the parent process dies (Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def port_holder(port: int) -> str:
    """``pid 1234 (python -m pnp_integrated.prime serve)`` when another process listens on TCP ``port``; empty if none.

    A bind test first (the port is free in the common case, and that costs nothing); only a port that is taken is
    looked up among the host's sockets.
    """
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
            return ""
        except OSError:
            pass
    import psutil

    try:
        listening = [c for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    except (psutil.Error, OSError):
        return "another process"
    for conn in listening:
        if conn.pid is None:
            return "another process (its pid is not visible to this user)"
        try:
            command = " ".join(psutil.Process(conn.pid).cmdline())[:120]
        except psutil.Error:
            command = "?"
        return f"pid {conn.pid} ({command})"
    return "another process"
