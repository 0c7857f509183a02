"""``pnpp simulate``: device simulators."""

from __future__ import annotations

import click

from .cns import simulate_cns

simulate = click.Group("simulate", help="Device simulators")
simulate.add_command(simulate_cns)
