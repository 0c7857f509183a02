"""The ``PnPGateway`` Flask extension and the application factory: the wiring at the top of the package.

The extension follows the flask-sqlalchemy ``init_app`` contract: it works with an app factory, registers itself in
``app.extensions["pnp_gateway"]``, refuses double registration and never keeps a reference to an app. Per-app state
lives in :class:`~pnp_integrated.context.GatewayState`; this module only builds it and registers every blueprint,
hook and error handler. Nothing below this module imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request
from flask_migrate import Migrate
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from .config import ConfigError, Settings, load_settings
from .context import EXTENSION_KEY, GatewayState
from .database import (
    MIGRATIONS_DIR,
    DatabaseIdConverter,
    SchemaError,
    SQLiteWriteTurn,
    check_schema_current,
    engine_options,
    sqlite_pragmas,
)
from .models import db
from .tls import ensure_certificates
from .version import __version__

log = logging.getLogger(__name__)


class PnPGateway:
    """Flask extension that turns an app into a PnP gateway node."""

    def __init__(self, app: Flask | None = None, *, check_schema: bool = True) -> None:
        self.check_schema = check_schema
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, settings: Settings | None = None) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("PnPGateway is already registered on this application")
        if settings is None:
            settings = load_settings(app.config.get("PNP_SETTINGS") or {})
        for sub in (settings.data_dir, settings.images_dir, settings.resources_dir):
            sub.mkdir(parents=True, exist_ok=True)
        certs = ensure_certificates(settings)

        app.config.setdefault("SQLALCHEMY_DATABASE_URI", settings.sqlalchemy_url)
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS",
                              engine_options(app.config["SQLALCHEMY_DATABASE_URI"], settings))
        # Flask's defaults hold MAX_CONTENT_LENGTH = None (no limit), so setdefault would leave every route unbounded.
        if app.config.get("MAX_CONTENT_LENGTH") is None:
            app.config["MAX_CONTENT_LENGTH"] = settings.http_max_body_bytes
        db.init_app(app)
        app.url_map.converters["int"] = DatabaseIdConverter  # before any route: ids above 2^63 - 1 match nothing
        migrate = Migrate(app, db, directory=str(MIGRATIONS_DIR), render_as_batch=True, compare_type=True)
        from .ha import initial_role, refuse_devices_when_passive
        from .storage import refuse_devices_when_disk_low

        state = GatewayState(settings=settings, certs=certs, role=initial_role(settings, measure=False),
                             migrate=migrate)
        if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
            state.write_turn = SQLiteWriteTurn(settings.data_dir / "db-write.lock")
        app.extensions[EXTENSION_KEY] = state
        app.before_request(refuse_devices_when_passive)  # HTTP device requests get 503 while PASSIVE
        app.before_request(refuse_devices_when_disk_low)  # ... and while the disk is nearly full

        with app.app_context():
            if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
                event.listen(db.engine, "connect", sqlite_pragmas)
            if self.check_schema:
                check_schema_current()

        from .status import blueprint as status_blueprint

        app.register_blueprint(status_blueprint)
        from .api import blueprint as api_blueprint  # REST API (/api/v1)

        app.register_blueprint(api_blueprint)
        from .pnp.views import blueprint as pnp_blueprint  # Open PnP (/pnp/HELLO, WORK-REQUEST, WORK-RESPONSE)
        from .webservices import register_web_services  # Config, Image and Resource web services

        app.register_blueprint(pnp_blueprint)
        register_web_services(app)

        from . import metrics
        from .console import blueprint as console_blueprint  # the operator console at /

        metrics.init_app(app)
        app.register_blueprint(console_blueprint)
        from .cns.imageservice import blueprint as cns_image_blueprint  # CNS image agent (/cns/HttpMsgDispatcher)
        app.register_blueprint(cns_image_blueprint)
        app.register_error_handler(sa_exc.TimeoutError, _database_busy)
        app.register_error_handler(sa_exc.OperationalError, _database_busy)
        app.register_error_handler(sa_exc.InternalError, _session_ended_or_raise)
        from .provisioning.engine import EngineBusy

        app.register_error_handler(EngineBusy, _database_busy)


def _database_busy(exc: Exception) -> Any:
    """Database saturated or briefly away: 503 with Retry-After, so a device backs off and retries; nothing is lost."""
    log.warning("%s %s answered 503: database busy (%s)", request.method, request.path, type(exc).__name__)
    db.session.rollback()
    return Response("gateway busy: database unavailable, retry later\n", status=503, mimetype="text/plain",
                    headers={"Retry-After": "5"})


IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03"  # PostgreSQL's SQLSTATE when it ends an idle transaction


def _session_ended_or_raise(exc: sa_exc.InternalError) -> Any:
    """PostgreSQL ended this node's transaction (idle past the dead-peer timeout, e.g. a starved worker): retryable."""
    if exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) == IDLE_IN_TRANSACTION_SESSION_TIMEOUT:
        return _database_busy(exc)
    raise exc


def create_app(config: Mapping[str, Any] | None = None, *, check_schema: bool = True) -> Flask:
    """Application factory.

    ``config`` may hold gateway settings by their lower-case names (``http_port``, ``data_dir`` ...), which override
    the TOML file and the environment, and Flask settings by their upper-case names (``TESTING`` ...).
    """
    app = Flask(__name__)
    overrides: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if key.isupper():
            app.config[key] = value
        else:
            overrides[key] = value
    app.config["PNP_SETTINGS"] = overrides
    settings = load_settings(overrides)
    _configure_logging(settings)
    PnPGateway(check_schema=check_schema).init_app(app, settings)
    app.logger.debug("pnp-integrated %s initialised", __version__)
    return app


def _configure_logging(settings: Settings) -> None:
    from .logs import configure

    configure(settings.log_format)


__all__ = ["ConfigError", "PnPGateway", "SchemaError", "create_app"]
