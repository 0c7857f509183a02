"""The REST API (``/api/v1``): profiles, devices, jobs, images, bootstrap rendering, the enrolment of a gateway
pair's secondary, and its OpenAPI document."""

from __future__ import annotations

from flask import Blueprint

from . import auth, errors

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
errors.install(blueprint)
auth.install(blueprint)

# The route modules attach their views to ``blueprint``; the contract serves the OpenAPI document generated from
# them.
from . import (  # noqa: E402, F401
    activity,
    bootstrap,
    contract,
    devices,
    enrolment,
    images,
    jobs,
    profiles,
    rendering,
)

__all__ = ["blueprint"]
