"""``python -m pnp_integrated.vip_pair``: the standalone gateway pair's watch process, under gevent.

``pnpp run`` starts it in a gateway pair (``PNP_GATEWAY_HA=pair``); ``pnpp ha watch`` runs it in the foreground for a
supervisor when gunicorn is started directly.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from ..config import ConfigError, load_settings  # noqa: E402
from ..listeners import ListenerBindError  # noqa: E402
from ..logs import configure  # noqa: E402
from .gateway import serve_gateway_pair  # noqa: E402


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.exit(f"pnpp ha watch: {exc}")
    if not (settings.standalone and settings.gateway_in_pair):
        sys.exit("pnpp ha watch: this gateway is not part of a standalone gateway pair (PNP_MODE=standalone, "
                 "PNP_GATEWAY_HA=pair)")
    configure(settings.log_format)
    try:
        serve_gateway_pair(settings)
    except ListenerBindError as exc:
        sys.exit(f"pnpp ha watch: the pair's health monitor cannot start: {exc}")


if __name__ == "__main__":
    main()
