"""The host commands and processes an HA lab runs: ``ip``, PostgreSQL's binaries, process groups and ports."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .plan import LabError


def run(*cmd: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{cmd[0]} is not installed (see deploy/system-packages.sh)") from None
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()}")
    return done


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise LabError(f"PostgreSQL's {name} not found: install the Debian package postgresql")
    return str(found[-1])


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there (on any address), else a port the kernel says is free."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise LabError("no free TCP port for the lab's PostgreSQL")


def alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait until no process of group ``pgid`` is left (reaping the leader if it is our child), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pgid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
