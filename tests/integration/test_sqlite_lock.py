"""A worker waiting for SQLite's write lock keeps answering everything else (SQLite, the single-node default).

Another process holding the database's write lock stands in for the node's other worker in the middle of a long
transaction. Before the fix, sqlite3 waited for the lock inside C and the whole gevent worker (its accept loop too)
stood still until the lock came free.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.request
from collections.abc import Callable

from pnp_integrated.devsim.node import RunningNode
from pnp_integrated.devsim.pnp import SimulatedDevice
from pnp_integrated.pnp.messages import Backoff, WorkRequest, encode, parse_server_message

XML = {"Content-Type": "text/xml; charset=utf-8"}


def post_work_request(node: RunningNode, serial: str) -> tuple[int, bytes]:
    device = SimulatedDevice(serial=serial, pid="ISR4331/K9")
    body = encode(WorkRequest(udi=device.udi, correlator="CiscoPnP-1.0-R0-T1", hostname="Router"))
    request = urllib.request.Request(node.url("/pnp/WORK-REQUEST"), data=body, headers=XML, method="POST")
    with urllib.request.urlopen(request, timeout=60) as resp:
        return resp.status, resp.read()


def test_a_held_write_lock_does_not_stop_the_worker_from_answering(
        running_node: Callable[..., RunningNode]) -> None:
    node = running_node(workers=1)  # one worker: nobody else could answer for it
    holder = sqlite3.connect(node.data_dir / "pnp.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as another worker mid-transaction holds it
    answers: list[tuple[int, bytes]] = []
    waiting = threading.Thread(target=lambda: answers.append(post_work_request(node, "LOCK0001")))
    try:
        waiting.start()
        waiting.join(2.0)
        assert not answers, "the device's request needs the write lock: it waits until the lock comes free"

        # Meanwhile a new connection is accepted and served, and the status page (database reads) answers.
        with urllib.request.urlopen(node.url("/pnp/HELLO"), timeout=10) as resp:
            assert resp.status == 200
        status, data = node.get_json("/status")
        assert status == 200 and data["rows"]
    finally:
        holder.rollback()
        holder.close()
    waiting.join(60)
    assert answers, "the waiting request was answered once the lock came free"
    code, body = answers[0]
    assert code == 200
    assert isinstance(parse_server_message(body), Backoff)  # no profile claims LOCK0001: it is told to come back
