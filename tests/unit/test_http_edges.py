"""Client mistakes at the edges of HTTP get a 4xx that says what to do, never a 500."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from pnp_integrated.api.tokens import issue_token


@pytest.fixture
def admin(app_factory: Callable[..., Flask]) -> tuple[Flask, dict[str, str]]:
    app = app_factory()
    with app.app_context():
        raw = issue_token("edge", "admin")
    return app, {"Authorization": f"Bearer {raw}"}


@pytest.mark.parametrize("job_id", ["9223372036854775807", "9223372036854775808", "99999999999999999999999"])
def test_a_job_id_beyond_64_bits_is_not_found(admin: tuple[Flask, dict[str, str]], job_id: str) -> None:
    app, headers = admin
    answer = app.test_client().get(f"/api/v1/jobs/{job_id}", headers=headers)
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"


def test_a_method_not_allowed_says_which_are(admin: tuple[Flask, dict[str, str]]) -> None:
    app, headers = admin
    answer = app.test_client().delete("/api/v1/jobs", headers=headers)
    assert answer.status_code == 405 and answer.get_json()["error"]["code"] == "method_not_allowed"
    assert set(answer.headers["Allow"].replace(" ", "").split(",")) >= {"GET"}
