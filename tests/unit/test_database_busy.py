"""A saturated or unreachable database makes devices back off (503 + Retry-After), never a 500."""

from pathlib import Path

import psycopg
import pytest
from flask.testing import FlaskClient
from sqlalchemy import exc

from pnp_integrated.provisioning import engine
from pnp_integrated.provisioning.types import EngineBusy

WORK_REQUEST = (Path(__file__).resolve().parents[1] / "data" / "pnp" / "csr1000v-17.3.4a-work-request.xml").read_bytes()


@pytest.mark.parametrize("error", [
    exc.TimeoutError("QueuePool limit reached"),
    exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    # PostgreSQL ended a transaction this worker left idle past PNP_DB_DEAD_PEER_TIMEOUT (a starved worker)
    exc.InternalError("SELECT 1", {}, psycopg.errors.IdleInTransactionSessionTimeout("terminating connection")),
    EngineBusy("the database stayed contended"),
], ids=["pool", "outage", "transaction-ended", "contended"])
def test_work_request_during_a_database_outage_is_told_to_retry(client: FlaskClient, monkeypatch: pytest.MonkeyPatch,
                                                                 error: Exception) -> None:
    def unavailable(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr(engine, "contact", unavailable)
    response = client.post("/pnp/WORK-REQUEST", data=WORK_REQUEST, content_type="text/xml")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert b"retry later" in response.data

    monkeypatch.undo()  # the database is back: the same device gets an answer
    assert client.post("/pnp/WORK-REQUEST", data=WORK_REQUEST, content_type="text/xml").status_code == 200
