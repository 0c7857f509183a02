"""The simulated Open PnP agent rides out a gateway failover like a device: it asks again after 503 and resets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pnp_integrated.devsim.pnp import PROVISIONED, PnpAgent, SimulatedDevice
from pnp_integrated.pnp.messages import Backoff, Udi, encode


class FailingOverGateway(BaseHTTPRequestHandler):
    """Answers like a gateway during a failover: 503 + Retry-After, then a dropped connection, then it serves."""

    answers: list[str] = []  # what each request met, in order

    def _fail_first(self) -> bool:
        seen = len(self.answers)
        if seen < 2:
            self.answers.append("503")
            self.send_response(503)
            self.send_header("Retry-After", "10")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        if seen == 2:
            self.answers.append("reset")
            self.close_connection = True
            self.connection.close()  # the node died mid-request
            return True
        return False

    def do_GET(self) -> None:
        if self._fail_first():
            return
        self.answers.append("HELLO")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self._fail_first():
            return
        self.answers.append(self.path)
        body = encode(Backoff(Udi("CSR1000V", "V00", "RETRY1"), "c1", reason="provisioning complete", terminate=True))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    FailingOverGateway.answers = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FailingOverGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_agent_retries_after_503_and_connection_loss_then_completes(gateway: str) -> None:
    agent = PnpAgent(SimulatedDevice(serial="RETRY1"), gateway, time_scale=0.01, deadline=30, timeout=5)
    report = agent.run()
    assert report.outcome == PROVISIONED, report.reason
    assert FailingOverGateway.answers[:3] == ["503", "503", "reset"]
    assert FailingOverGateway.answers[3:] == ["HELLO", "/pnp/WORK-REQUEST"]
    assert agent.gateway_failures == 3


def test_agent_gives_up_at_its_deadline_when_the_gateway_never_returns() -> None:
    agent = PnpAgent(SimulatedDevice(serial="RETRY2"), "http://127.0.0.1:9", time_scale=0.01, deadline=1.5,
                     timeout=1)
    report = agent.run()
    assert report.outcome == "error"
    assert "Connection refused" in report.reason or "refused" in report.reason.lower()
    assert agent.gateway_failures >= 2
