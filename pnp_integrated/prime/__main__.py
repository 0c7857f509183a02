"""``python -m pnp_integrated.prime [serve options]``: the simulated Prime node, under gevent."""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from .commands import prime  # noqa: E402

if __name__ == "__main__":
    prime(args=sys.argv[1:] or ["serve"], prog_name="python -m pnp_integrated.prime")
