"""Prometheus metrics at ``/metrics``.

Node-wide figures (sessions per port, jobs and devices by state, outbox depth, HA state) are read from the database
at scrape time, so every worker answers the same; free disk space is the worker's reading, at most a second old.
Request latency histograms are per process; under gunicorn they are aggregated across workers through
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by ``deploy/gunicorn.conf.py``).
The dashboard ``deploy/grafana/pnp-gateway.json`` charts them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .context import gateway_state
from .models import Device, DeviceSession, OutboxEvent, ProvisioningJob, db
from .refusals import REFUSED
from .storage import disk_watch

blueprint = Blueprint("metrics", __name__)
METRICS_MAX_AGE = 2.0  # seconds a scrape may be answered from the last one (Prometheus scrapes every 15 s or so)

REQUEST_SECONDS = Histogram(
    "pnp_http_request_duration_seconds",
    "HTTP request latency by endpoint",
    ["endpoint", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class NodeCollector(Collector):
    """Gauges computed from the database when scraped."""

    def __init__(self, app: Flask) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        from .status import current_status

        settings = gateway_state(self._app).settings
        sessions = GaugeMetricFamily("pnp_sessions", "Live device sessions per port", labels=["port", "transport"])
        live = db.session.execute(
            select(DeviceSession.port, func.count()).where(DeviceSession.closed_at.is_(None))
            .group_by(DeviceSession.port)
        ).all()
        counts = {int(port): int(n) for port, n in live}
        for port in settings.gateway_ports:
            transport = "tls" if settings.gateway_port_is_tls(port) else "plain"
            sessions.add_metric([str(port), transport], counts.get(port, 0))
        yield sessions

        jobs = GaugeMetricFamily("pnp_jobs", "Provisioning jobs by state", labels=["state"])
        for state, n in db.session.execute(
            select(ProvisioningJob.state, func.count()).group_by(ProvisioningJob.state)
        ).all():
            jobs.add_metric([state], n)
        yield jobs

        devices = GaugeMetricFamily("pnp_devices", "Devices by state", labels=["state"])
        for state, n in db.session.execute(select(Device.state, func.count()).group_by(Device.state)).all():
            devices.add_metric([state], n)
        yield devices

        depth = db.session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None)))
        yield GaugeMetricFamily("pnp_outbox_depth", "Events waiting to be sent to Prime", value=depth or 0)

        status = current_status(self._app, max_age=METRICS_MAX_AGE)
        ha = GaugeMetricFamily("pnp_ha_state", "1 for the gateway's current HA state", labels=["state"])
        for state in ("ACTIVE", "PASSIVE", "REFUSED"):
            ha.add_metric([state], 1 if status.get("state") == state else 0)
        yield ha
        role = gateway_state(self._app).role
        if role is not None:
            # Each worker keeps its own role and count; the worker label keeps every series monotonic.
            transitions = CounterMetricFamily("pnp_ha_transitions", "ACTIVE/PASSIVE changes seen by this worker",
                                              labels=["worker"])
            transitions.add_metric([str(os.getpid())], role.transitions)
            yield transitions
        up = GaugeMetricFamily("pnp_service_up", "1 when a status row is UP", labels=["service", "mode"])
        for row in status["rows"]:
            if row["status"] in ("UP", "DOWN"):
                up.add_metric([row["service"], row["mode"]], 1 if row["status"] == "UP" else 0)
        yield up

        # The space the node's own refusal watches (PNP_DISK_MIN_FREE_MB), so a graph shows how close it is.
        watch = disk_watch(self._app)
        free = GaugeMetricFamily("pnp_disk_free_bytes", "Free space where the node writes", labels=["path"])
        size = GaugeMetricFamily("pnp_disk_size_bytes", "Size of the file systems the node writes to", labels=["path"])
        for reading in watch.readings():
            free.add_metric([reading.path], reading.free)
            size.add_metric([reading.path], reading.total)
        yield free
        yield size
        yield GaugeMetricFamily("pnp_disk_min_free_bytes", "Below this free space the node takes no new device work",
                                value=watch.minimum)


def _registry(app: Flask) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REQUEST_SECONDS)
        registry.register(REFUSED)
    registry.register(NodeCollector(app))
    return registry


@blueprint.get("/metrics")
def metrics_view() -> Response:
    from flask import current_app

    from .status import shared_reading

    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def build() -> bytes:
        body = generate_latest(_registry(app))
        db.session.remove()
        return body

    # Any number of scrapers at once cost one build per METRICS_MAX_AGE in each worker.
    return Response(shared_reading(app, "metrics").get(build, METRICS_MAX_AGE), mimetype=CONTENT_TYPE_LATEST)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def init_app(app: Flask) -> None:
    """Time every request; register ``/metrics``."""

    @app.before_request
    def _start_timer() -> None:
        g.pnp_request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Any) -> Any:
        started = g.get("pnp_request_started")
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"  # the app's routes: a bounded set
            method = request.method if request.method in HTTP_METHODS else "other"  # a client may send any word
            REQUEST_SECONDS.labels(endpoint, method).observe(time.perf_counter() - started)
        return response

    app.register_blueprint(blueprint)
