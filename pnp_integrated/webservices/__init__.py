"""The web services devices fetch files from, on the HTTP and the HTTPS port.

* Config Web Service: ``GET /cns/config.asp?DeviceID=..[&Identifier=..]`` (:mod:`.config`);
* Image Web Service: ``GET|HEAD /images/<name>`` and Resource Web Service: ``GET|HEAD /resources/<path>``
  (:mod:`.files`).
"""

from __future__ import annotations

from flask import Flask


def register_web_services(app: Flask) -> None:
    """Register the Config, Image and Resource web services on ``app``."""
    from .config import blueprint as config_blueprint
    from .files import blueprint as files_blueprint

    app.register_blueprint(config_blueprint)
    app.register_blueprint(files_blueprint)
